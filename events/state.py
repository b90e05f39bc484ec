"""A session's state as a pure fold of its events: ``evolve(state, envelope) -> state``.

No clock, no randomness, no I/O: every time and id comes from the events, so
folding the same stream always yields the same state (replay, golden logs,
projections and the actors all rely on that). ``evolve`` never mutates its
input; it returns a new state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import msgspec

from .schema import (
    CancelRequested,
    ContextCompacted,
    ContextRepaired,
    Envelope,
    LimitExceeded,
    Limits,
    ModelCallFailed,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
    Payload,
    ReviewDecided,
    ReviewRequested,
    SessionCancelled,
    SessionClaimed,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
    SnapshotTaken,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallRejected,
    ToolCallStarted,
    ToolCallVetted,
    UnknownEvent,
)

__all__ = [
    "SessionStatus",
    "SETTLED",
    "TERMINAL",
    "ToolCallState",
    "SessionState",
    "call_hash",
    "evolve",
    "fold",
]

SessionStatus = Literal["pending", "running", "completed", "failed", "cancelled", "awaiting_review"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
#: Terminal, or waiting for a human: nothing happens until someone acts.
SETTLED: frozenset[str] = TERMINAL | {"awaiting_review"}

ToolStatus = Literal["pending", "awaiting_review", "running", "succeeded", "failed", "denied"]


class ToolCallState(msgspec.Struct, frozen=True, kw_only=True):
    call_id: str
    tool: str
    input: Payload
    step: int
    status: ToolStatus = "pending"
    verdict: str = ""
    risk: str = ""
    reason: str = ""
    in_doubt: bool = False
    idempotency_key: str = ""
    attempts: int = 0
    output: Payload = ""
    error: str = ""
    decision: str = ""  # "approve" / "deny" once a reviewer decided (commands are idempotent)
    edited_from: Payload = ""  # the model's input, when a reviewer approved an edited one


class SessionState(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    seq: int = 0
    epoch: int = 0
    status: SessionStatus = "pending"
    task_id: str = ""
    prompt: Payload = ""
    agent_type: str = "default"
    tenant: str = "default"
    model: str = ""
    system: str = ""
    tools: tuple[str, ...] = ()
    limits: Limits = Limits()
    workspace: str = ""
    owner: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    completed_at: float | None = None
    step: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    restarts: int = 0
    pending_request: str = ""  # a model call requested but not yet answered
    model_retries: int = 0
    compactions: int = 0
    tool_calls: dict[str, ToolCallState] = {}
    cancel_requested: bool = False
    result: Payload = ""
    error: str = ""
    unknown_events: int = 0

    @property
    def token_count(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def row(self) -> dict[str, object]:
        """The session as one row: what `fleetlog sessions --json` and the fleet report."""
        return {
            "id": self.session_id,
            "task_id": self.task_id,
            "status": self.status,
            "agent_type": self.agent_type,
            "tenant": self.tenant,
            "step_count": self.step,
            "token_count": self.token_count,
            "cost_usd": round(self.cost_usd, 6),
            "error": self.error,
            "restarts": self.restarts,
        }

    def awaiting_review(self) -> list[ToolCallState]:
        """Calls a human can still decide: none once the session has ended."""
        if self.terminal:
            return []
        return [c for c in self.tool_calls.values() if c.status == "awaiting_review"]


_replace = msgspec.structs.replace


def call_hash(tool: str, tool_input: Payload) -> str:
    """What an approval is bound to besides the call id: the tool and its exact input."""
    # Over the input's SHA-256, which is also a blob's name: the same hash whether the
    # input was read resolved or as a reference to the blob store.
    if isinstance(tool_input, str):
        digest = hashlib.sha256(tool_input.encode()).hexdigest()
    else:
        digest = tool_input.sha256
    return hashlib.sha256(f"{tool}\x00{digest}".encode()).hexdigest()[:16]


def _with_call(state: SessionState, call: ToolCallState, **changes: object) -> dict[str, object]:
    calls = dict(state.tool_calls)
    calls[call.call_id] = _replace(call, **changes)
    return {"tool_calls": calls}


def _status_after_review(state: SessionState, calls: dict[str, ToolCallState]) -> SessionStatus:
    if state.status in TERMINAL:
        return state.status
    if any(c.status == "awaiting_review" for c in calls.values()):
        return "awaiting_review"
    return "running" if state.owner else "pending"


def evolve(state: SessionState, envelope: Envelope) -> SessionState:
    """The state after ``envelope``. Pure: same inputs, same output."""
    event = envelope.event
    common: dict[str, object] = {
        "seq": envelope.seq,
        "epoch": max(state.epoch, envelope.epoch),
        "updated_at": envelope.ts,
    }
    changes: dict[str, object]
    match event:
        case SessionCreated():
            changes = {
                "task_id": event.task_id,
                "prompt": event.prompt,
                "agent_type": event.agent_type,
                "tenant": event.tenant,
                "model": event.model,
                "system": event.system,
                "tools": tuple(event.tools),
                "limits": event.limits,
                "workspace": event.workspace,
                "created_at": envelope.ts,
            }
        case SessionClaimed():
            changes = {
                "owner": event.owner,
                "restarts": state.restarts + (1 if state.owner else 0),
            }
            if state.status == "pending":
                changes["status"] = "running"
        case CancelRequested():
            changes = {"cancel_requested": True}
        case SessionCompleted():
            changes = {"status": "completed", "result": event.result, "completed_at": envelope.ts}
        case SessionFailed():
            changes = {"status": "failed", "error": event.error, "completed_at": envelope.ts}
        case SessionCancelled():
            changes = {"status": "cancelled", "completed_at": envelope.ts}
        case SnapshotTaken():
            changes = {}
        case ModelCallRequested():
            changes = {"step": max(state.step, event.step), "pending_request": event.request_id}
        case ModelCallRetried():
            changes = {"model_retries": state.model_retries + 1}
        case ModelResponded():
            changes = {
                "pending_request": "",
                "input_tokens": state.input_tokens + event.input_tokens,
                "output_tokens": state.output_tokens + event.output_tokens,
                "cost_usd": state.cost_usd + event.cost_usd,
            }
        case ModelCallFailed():
            changes = {"pending_request": ""}
        case ToolCallProposed():
            call = ToolCallState(
                call_id=event.call_id, tool=event.tool, input=event.input, step=event.step
            )
            changes = {"tool_calls": {**state.tool_calls, event.call_id: call}}
        case ToolCallVetted():
            call = state.tool_calls[event.call_id]
            changes = _with_call(
                state, call, verdict=event.verdict, risk=event.risk, reason=event.reason
            )
        case ToolCallRejected():
            call = state.tool_calls[event.call_id]
            changes = _with_call(state, call, status="denied", error=event.reason)
        case ReviewRequested():
            call = state.tool_calls[event.call_id]
            changes = _with_call(
                state,
                call,
                status="awaiting_review",
                reason=event.reason,
                in_doubt=event.in_doubt,
                decision="",  # a new question (in doubt after a crash) wants a new answer
            )
            if state.status not in TERMINAL:
                changes["status"] = "awaiting_review"
        case ReviewDecided():
            call = state.tool_calls[event.call_id]
            if event.approved and event.edited_input:
                # Vetted again with the new input (the verdict cleared), then run with it.
                changes = _with_call(
                    state,
                    call,
                    status="pending",
                    in_doubt=False,
                    decision="approve",
                    input=event.edited_input,
                    verdict="",
                    edited_from=call.input,
                )
            elif event.approved:
                changes = _with_call(
                    state, call, status="pending", in_doubt=False, decision="approve"
                )
            else:
                changes = _with_call(
                    state, call, status="denied", error=event.note or "denied", decision="deny"
                )
            calls = changes["tool_calls"]
            assert isinstance(calls, dict)
            changes["status"] = _status_after_review(state, calls)
        case ToolCallStarted():
            call = state.tool_calls[event.call_id]
            changes = _with_call(
                state,
                call,
                status="running",
                idempotency_key=event.idempotency_key,
                attempts=call.attempts + 1,
            )
        case ToolCallCompleted():
            call = state.tool_calls[event.call_id]
            changes = _with_call(
                state,
                call,
                status="failed" if event.is_error else "succeeded",
                output=event.output,
            )
        case ToolCallFailed():
            call = state.tool_calls[event.call_id]
            changes = _with_call(state, call, status="failed", error=event.error)
        case ContextCompacted():
            changes = {"compactions": state.compactions + 1}
        case LimitExceeded() | ContextRepaired():
            changes = {}
        case UnknownEvent():
            changes = {"unknown_events": state.unknown_events + 1}
    return _replace(state, **common, **changes)


def fold(session_id: str, envelopes: Iterable[Envelope]) -> SessionState:
    state = SessionState(session_id=session_id)
    for envelope in envelopes:
        state = evolve(state, envelope)
    return state
