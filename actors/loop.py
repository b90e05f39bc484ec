"""The agent loop as pure functions: ``evolve_agent`` folds events, ``decide`` picks the effect.

Neither reads a clock, draws a random number or does I/O: the current time is
an argument, and ids are derived from the state. The effect runner
(``actors/runner.py``) performs what ``decide`` asks for and appends the events
that record it, following DESIGN.md's effect table:

* a model call is bracketed by ``ModelCallRequested`` and ``ModelResponded`` /
  ``ModelCallFailed``; a call left without its "after" event is made again;
* a tool call goes ``ToolCallProposed`` → ``ToolCallVetted`` (→ review) →
  ``ToolCallStarted`` → ``ToolCallCompleted`` / ``ToolCallFailed``; one left
  ``running`` by a crash is run again only if the tool is idempotent,
  otherwise it is *in doubt* and goes to a human.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import msgspec

from fleetlog.events.schema import (
    ContextCompacted,
    Envelope,
    Event,
    LimitExceeded,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionCancelled,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallRejected,
)
from fleetlog.events.state import SessionState, call_hash, evolve

__all__ = [
    "AgentState",
    "LoopConfig",
    "Finish",
    "Wait",
    "Emit",
    "CallModel",
    "VetCall",
    "RunTool",
    "Decision",
    "evolve_agent",
    "fold_agent",
    "decide",
    "fail",
    "estimate_context_tokens",
]

Message = dict[str, Any]


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    """A session's state plus what the loop needs: the conversation and the current step."""

    session: SessionState
    messages: tuple[Message, ...] = ()
    step_calls: tuple[str, ...] = ()  # tool_use ids of the last response, in order
    results: dict[str, Message] = {}  # tool_result blocks gathered for step_calls
    signatures: tuple[str, ...] = ()  # tool + input of every proposed call, in order
    started_at: float = 0.0  # the session's first event: total time survives restarts
    last_stop_reason: str = ""
    final_text: str = ""
    context_chars: int = 0  # JSON size of ``messages``, kept as they change (token estimates)


class LoopConfig(msgspec.Struct, frozen=True, kw_only=True):
    context_window: int = 200_000
    compact_at: float = 0.8
    keep_recent_turns: int = 4
    idempotent_tools: frozenset[str] = frozenset()


class Finish(msgspec.Struct, frozen=True):
    """Nothing more to do: the session is terminal."""


class Wait(msgspec.Struct, frozen=True):
    """Blocked on a human decision."""

    reason: str


class Emit(msgspec.Struct, frozen=True):
    """Append these events; no effect outside the log."""

    events: list[Event]


class CallModel(msgspec.Struct, frozen=True):
    step: int
    request_id: str
    again: bool = False  # a call requested before a crash and never answered


class VetCall(msgspec.Struct, frozen=True):
    call_id: str


class RunTool(msgspec.Struct, frozen=True):
    call_id: str
    attempt: int


Decision = Finish | Wait | Emit | CallModel | VetCall | RunTool


# --- evolve ----------------------------------------------------------------------------


def _tool_result(call_id: str, text: str, *, is_error: bool) -> Message:
    block: Message = {"type": "tool_result", "tool_use_id": call_id, "content": text}
    if is_error:
        block["is_error"] = True
    return block


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(msgspec.to_builtins(value))


def evolve_agent(state: AgentState, envelope: Envelope) -> AgentState:
    event = envelope.event
    changes: dict[str, Any] = {"session": evolve(state.session, envelope)}
    result: tuple[str, Message] | None = None
    match event:
        case SessionCreated():
            changes["messages"] = ({"role": "user", "content": _text(event.prompt)},)
            changes["started_at"] = envelope.ts
        case ModelResponded():
            blocks: list[Message] = json.loads(_text(event.content))
            changes["messages"] = (*state.messages, {"role": "assistant", "content": blocks})
            changes["step_calls"] = tuple(b["id"] for b in blocks if b.get("type") == "tool_use")
            changes["results"] = {}
            changes["last_stop_reason"] = event.stop_reason
            changes["final_text"] = "\n".join(
                b.get("text", "") for b in blocks if b.get("type") == "text"
            ).strip()
        case ToolCallProposed():
            changes["signatures"] = (*state.signatures, f"{event.tool}\x00{_text(event.input)}")
        case ToolCallCompleted():
            result = (
                event.call_id,
                _tool_result(event.call_id, _text(event.output), is_error=event.is_error),
            )
        case ToolCallFailed():
            result = event.call_id, _tool_result(event.call_id, event.error, is_error=True)
        case ToolCallRejected():
            result = event.call_id, _tool_result(event.call_id, event.reason, is_error=True)
        case ReviewDecided() if not event.approved:
            note = f": {event.note}" if event.note else ""
            text = f"denied by reviewer {event.reviewer or ''}".rstrip() + note
            result = event.call_id, _tool_result(event.call_id, text, is_error=True)
        case ContextCompacted():
            task = state.messages[0]["content"]
            if isinstance(task, list):  # compacted before: its first block is the task
                task = task[0]["text"]
            summary = _text(event.summary)
            head: Message = {
                "role": "user",
                "content": [
                    {"type": "text", "text": _text(task)},
                    {"type": "text", "text": f"[Earlier steps, compacted]\n{summary}"},
                ],
            }
            changes["messages"] = (head, *state.messages[1 + event.dropped_messages :])
        case _:
            pass
    if result is not None and result[0] in state.step_calls:
        results = {**state.results, result[0]: result[1]}
        if all(c in results for c in state.step_calls):
            # The tool_result blocks go back in the order of their tool_use blocks,
            # all in the one user message that follows the assistant's.
            user = {"role": "user", "content": [results[c] for c in state.step_calls]}
            changes["messages"] = (*changes.get("messages", state.messages), user)
            changes["step_calls"] = ()
            changes["results"] = {}
        else:
            changes["results"] = results
    messages = changes.get("messages")
    if messages is not None:
        old = state.messages
        if len(messages) > len(old) and messages[: len(old)] == old:
            grown = sum(len(json.dumps(m)) + 2 for m in messages[len(old) :])
            changes["context_chars"] = state.context_chars + grown
        else:
            changes["context_chars"] = len(json.dumps(messages))
    return msgspec.structs.replace(state, **changes)


def fold_agent(session_id: str, envelopes: Iterable[Envelope]) -> AgentState:
    state = AgentState(session=SessionState(session_id=session_id))
    for envelope in envelopes:
        state = evolve_agent(state, envelope)
    return state


# --- decide ----------------------------------------------------------------------------


def fail(code: str, detail: str, *, limit: float = 0.0, value: float = 0.0) -> Emit:
    return Emit(
        [
            LimitExceeded(code=code, limit=limit, value=value, detail=detail),
            SessionFailed(error=f"{code}: {detail}"),
        ]
    )


def estimate_context_tokens(state: AgentState) -> int:
    """~4 characters a token over the conversation: cheap, and only used to trigger compaction."""
    return state.context_chars // 4 + len(state.session.system) // 4


def _identical_run(signatures: tuple[str, ...], upto: int) -> int:
    """How many calls in a row, ending at index ``upto``, have the same tool and input."""
    run = 1
    i = upto
    while i > 0 and signatures[i - 1] == signatures[upto]:
        run += 1
        i -= 1
    return run


def _compaction(state: AgentState, config: LoopConfig) -> ContextCompacted | None:
    """Drop the oldest whole turns, keeping the task and the last ``keep_recent_turns``.

    The cut always falls just before an assistant message, so a tool_use and
    its tool_result (the user message right after it) are never split.
    """
    body = state.messages[1:]  # body[0] is an assistant message, then they alternate
    keep = 2 * config.keep_recent_turns
    dropped = len(body) - keep
    dropped -= dropped % 2
    if dropped <= 0:
        return None
    lines = []
    for message in body[:dropped]:
        content = message["content"]
        blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for block in blocks:
            kind = block.get("type")
            if kind == "tool_use":
                lines.append(f"- called {block['name']}({json.dumps(block.get('input'))[:200]})")
            elif kind == "tool_result":
                err = " (error)" if block.get("is_error") else ""
                lines.append(f"  -> result{err}: {str(block.get('content'))[:200]}")
            elif kind == "text" and block.get("text"):
                lines.append(f"- said: {block['text'][:200]}")
    before = estimate_context_tokens(state)
    summary = "\n".join(lines)
    after = before - len(json.dumps(body[:dropped])) // 4 + len(summary) // 4
    return ContextCompacted(
        step=state.session.step,
        tokens_before=before,
        tokens_after=max(after, 0),
        dropped_messages=dropped,
        summary=summary,
    )


def _close_open_calls(state: AgentState) -> list[Event]:
    """Before a cancelled session ends, every call of its step gets an outcome on record.

    A call left running by a crash may or may not have taken effect: it is recorded
    as failed *in doubt*, never left ``running``; one never started will not run.
    """
    events: list[Event] = []
    for call_id in state.step_calls:
        if call_id in state.results:
            continue
        call = state.session.tool_calls[call_id]
        if call.status == "running" or call.in_doubt:
            events.append(
                ToolCallFailed(
                    call_id=call_id,
                    error=f"in doubt: {call.tool} was started but not confirmed before a "
                    "restart, and the session was cancelled",
                )
            )
        elif call.status in ("pending", "awaiting_review"):
            events.append(
                ToolCallRejected(call_id=call_id, reason="not run: the session was cancelled")
            )
    return events


def decide(state: AgentState, now: float, config: LoopConfig) -> Decision:
    s = state.session
    limits = s.limits
    if s.terminal:
        return Finish()
    if s.cancel_requested:
        return Emit([*_close_open_calls(state), SessionCancelled(note="cancel requested")])
    if state.started_at and now - state.started_at > limits.total_timeout_s:
        return fail(
            "TOTAL_TIMEOUT",
            f"session ran {now - state.started_at:.1f}s (limit {limits.total_timeout_s:g}s)",
            limit=limits.total_timeout_s,
            value=now - state.started_at,
        )
    if s.token_count > limits.max_tokens:
        return fail(
            "MAX_TOKENS_EXCEEDED",
            f"{s.token_count} tokens used (limit {limits.max_tokens})",
            limit=limits.max_tokens,
            value=s.token_count,
        )
    if s.cost_usd > limits.max_cost_usd:
        return fail(
            "MAX_COST_EXCEEDED",
            f"${s.cost_usd:.4f} spent (limit ${limits.max_cost_usd:g})",
            limit=limits.max_cost_usd,
            value=s.cost_usd,
        )
    if s.pending_request:
        return CallModel(step=s.step, request_id=s.pending_request, again=True)

    for index, call_id in enumerate(state.step_calls):
        if call_id in state.results:
            continue
        call = s.tool_calls[call_id]
        if call.status == "awaiting_review":
            return Wait(f"tool call {call_id} ({call.tool}) awaits review")
        if call.status == "pending" and not call.verdict:
            position = len(state.signatures) - len(state.step_calls) + index
            run = _identical_run(state.signatures, position)
            if run >= limits.max_identical_calls:
                return fail(
                    "LOOP_DETECTED",
                    f"{call.tool} called {run} times in a row with the same input",
                    limit=limits.max_identical_calls,
                    value=run,
                )
            return VetCall(call_id)
        if call.status == "pending":
            return RunTool(call_id, attempt=call.attempts + 1)
        if call.status == "running":
            # Started before a crash, never finished: did it run or not?
            if call.tool in config.idempotent_tools:
                return RunTool(call_id, attempt=call.attempts + 1)
            return Emit(
                [
                    ReviewRequested(
                        call_id=call_id,
                        reason=f"in doubt: {call.tool} was started but not confirmed before "
                        "a restart; approve to run it again, deny to skip it",
                        in_doubt=True,
                        call_hash=call_hash(call.tool, call.input),
                    )
                ]
            )
        # succeeded / failed / denied without a result block cannot happen: the
        # event that set the status also produced the block.

    if (
        state.last_stop_reason
        and not state.step_calls
        and state.messages[-1]["role"] == "assistant"
    ):
        return Emit([SessionCompleted(result=state.final_text)])
    if s.step >= limits.max_steps:
        return fail(
            "MAX_STEPS_EXCEEDED",
            f"{s.step} steps taken (limit {limits.max_steps})",
            limit=limits.max_steps,
            value=s.step,
        )
    if estimate_context_tokens(state) > config.compact_at * config.context_window:
        compacted = _compaction(state, config)
        if compacted is None or compacted.tokens_after > config.compact_at * config.context_window:
            return fail(
                "CONTEXT_EXHAUSTED",
                f"~{estimate_context_tokens(state)} tokens cannot be brought under "
                f"{config.compact_at:g} of the {config.context_window}-token window",
                limit=config.compact_at * config.context_window,
                value=estimate_context_tokens(state),
            )
        return Emit([compacted])
    step = s.step + 1
    return CallModel(step=step, request_id=f"{s.session_id}:step-{step}")
