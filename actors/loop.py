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
import math
from collections.abc import Iterable
from typing import Any

import msgspec

from fleetlog.actors.context import (
    READ_OUTPUT,
    apply_clear,
    apply_summary,
    clear_plan,
    message_tokens,
    overflow_tokens,
    repair,
    summary_range,
    task_of,
    text_tokens,
    verify,
)
from fleetlog.events.schema import (
    ContextCompacted,
    ContextRepaired,
    Envelope,
    Event,
    LimitExceeded,
    ModelCallFailed,
    ModelCallRequested,
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
    "raw_request_tokens",
    "offered_tools",
    "summary_budget",
    "output_room",
    "COMPACTION",
]

#: ``purpose`` of a model call that writes a compaction summary (not a step of the task).
COMPACTION = "compaction"

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
    # --- context accounting (``context.py``): all derived from events, so replay agrees
    message_tokens: tuple[int, ...] = ()  # raw estimate of each message, kept as they change
    system_tokens: int = 0
    #: model -> reported input tokens / raw estimate, from the replies (and 400s) so far
    calibration: dict[str, float] = {}
    basis: int = 0  # raw estimate of the request in flight (ModelCallRequested)
    pending_purpose: str = ""  # of the request in flight: "" (a step) or COMPACTION
    pending_upto: int = 0  # a summary request in flight replaces messages[1:pending_upto]
    compaction_failures: int = 0  # in a row: failed summaries, "prompt is too long" answers
    summary_calls: int = 0
    paged: bool = False  # some output was cut or cleared: read_output is offered
    repaired: bool = False  # the conversation was just repaired (twice in a row is a bug)


class LoopConfig(msgspec.Struct, frozen=True, kw_only=True):
    context_window: int = 200_000
    compact_at: float = 0.8
    keep_recent_turns: int = 4
    idempotent_tools: frozenset[str] = frozenset()
    #: What a compaction aims for (fraction of the window): well under ``compact_at``,
    #: so that the next steps do not compact again at once.
    compact_to: float = 0.5
    #: A tool result over this share of the window is cut to head and tail at ingestion.
    max_tool_result_share: float = 0.1
    #: Compactions that may fail in a row before the session ends CONTEXT_EXHAUSTED.
    max_compaction_failures: int = 3
    summary_max_tokens: int = 2048
    tools_tokens: int = 0  # raw estimate of the tool definitions sent with each request
    max_tokens: int = 4096  # output tokens asked for, when the window has room
    min_output_tokens: int = 256  # a request leaving less room than this does not fit


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
    purpose: str = ""  # "" (the next step) or COMPACTION (a summary of messages[1:upto])
    upto: int = 0


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


def _edit_note(state: AgentState, call_id: str) -> str:
    """What the model is told first about a call a reviewer approved with another input."""
    call = state.session.tool_calls.get(call_id)
    if call is None or not call.edited_from:
        return ""
    used = _text(call.input)
    return f"[a reviewer changed this call's input before it ran; it ran with {used}]\n"


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(msgspec.to_builtins(value))


def _calibrated(state: AgentState, model: str, observed: int, *, floor: bool) -> dict[str, float]:
    """The calibration after a request of ``state.basis`` raw tokens was ``observed`` tokens.

    A running mean of the last ratio and the new one; ``floor`` (the API refused the
    request as too long) never lets the ratio fall, whatever the mean says.
    """
    if state.basis <= 0 or observed <= 0:
        return state.calibration
    ratio = min(max(observed / state.basis, 0.25), 4.0)
    old = state.calibration.get(model)
    new = ratio if old is None else (old + ratio) / 2
    if floor and old is not None:
        new = max(new, ratio, old)
    return {**state.calibration, model: round(new, 6)}


def evolve_agent(state: AgentState, envelope: Envelope) -> AgentState:
    event = envelope.event
    changes: dict[str, Any] = {"session": evolve(state.session, envelope)}
    result: tuple[str, Message] | None = None
    match event:
        case SessionCreated():
            changes["messages"] = ({"role": "user", "content": _text(event.prompt)},)
            changes["started_at"] = envelope.ts
            changes["system_tokens"] = text_tokens(event.system)
        case ModelCallRequested():
            changes["basis"] = event.estimate_basis
            changes["pending_purpose"] = event.purpose
            changes["pending_upto"] = event.compact_upto
            changes["repaired"] = False
            if event.purpose == COMPACTION:
                changes["summary_calls"] = state.summary_calls + 1
        case ModelResponded():
            model = state.session.model
            observed = event.input_tokens + event.cache_read_tokens + event.cache_write_tokens
            changes["calibration"] = _calibrated(state, model, observed, floor=False)
            changes["pending_purpose"] = ""
            if event.purpose != COMPACTION:  # a summary is not a turn: ContextCompacted uses it
                blocks: list[Message] = json.loads(_text(event.content))
                changes["messages"] = (*state.messages, {"role": "assistant", "content": blocks})
                changes["step_calls"] = tuple(
                    b["id"] for b in blocks if b.get("type") == "tool_use"
                )
                changes["results"] = {}
                changes["last_stop_reason"] = event.stop_reason
                changes["final_text"] = "\n".join(
                    b.get("text", "") for b in blocks if b.get("type") == "text"
                ).strip()
                changes["compaction_failures"] = 0
            else:
                # A failure until its ContextCompacted (flushed with it) says otherwise: a
                # reply without a summary must trip the breaker, not be asked for forever.
                changes["compaction_failures"] = state.compaction_failures + 1
        case ModelCallFailed():
            changes["pending_purpose"] = ""
            too_long = overflow_tokens(event.error) if event.status_code == 400 else None
            if too_long is not None:
                # The API counted the request: the best calibration there is.
                model = state.session.model
                changes["calibration"] = _calibrated(state, model, too_long[0], floor=True)
            if too_long is not None or event.purpose == COMPACTION:
                changes["compaction_failures"] = state.compaction_failures + 1
        case ToolCallProposed():
            changes["signatures"] = (*state.signatures, f"{event.tool}\x00{_text(event.input)}")
        case ToolCallCompleted():
            shown = _edit_note(state, event.call_id) + (event.excerpt or _text(event.output))
            result = (event.call_id, _tool_result(event.call_id, shown, is_error=event.is_error))
            if event.excerpt:
                changes["paged"] = True
        case ToolCallFailed():
            text = _edit_note(state, event.call_id) + event.error
            result = event.call_id, _tool_result(event.call_id, text, is_error=True)
        case ToolCallRejected():
            text = _edit_note(state, event.call_id) + event.reason
            result = event.call_id, _tool_result(event.call_id, text, is_error=True)
        case ReviewDecided() if not event.approved:
            note = f": {event.note}" if event.note else ""
            text = f"denied by reviewer {event.reviewer or ''}".rstrip() + note
            result = event.call_id, _tool_result(event.call_id, text, is_error=True)
        case ContextCompacted():
            if event.stage == "clear_tool_results":
                changes["messages"] = apply_clear(state.messages, event.cleared)
                changes["paged"] = True
            else:  # "summarize" (or "digest", from older versions): the head replaces a range
                upto = event.first_message + event.dropped_messages
                changes["messages"] = apply_summary(state.messages, upto, _text(event.summary))
                changes["compaction_failures"] = 0
                changes["pending_upto"] = 0
        case ContextRepaired():
            changes["messages"] = repair(state.messages, task_of(state.messages))
            changes["repaired"] = True
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
        counted = state.message_tokens
        if len(messages) > len(old) and len(counted) == len(old) and messages[: len(old)] == old:
            grown = tuple(message_tokens(m) for m in messages[len(old) :])
            changes["message_tokens"] = counted + grown
        else:
            changes["message_tokens"] = tuple(message_tokens(m) for m in messages)
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


def raw_request_tokens(state: AgentState, config: LoopConfig) -> int:
    """The uncalibrated estimate of the next request: messages, system prompt, tools."""
    return sum(state.message_tokens) + state.system_tokens + config.tools_tokens


def estimate_context_tokens(state: AgentState, config: LoopConfig | None = None) -> int:
    """The next request's input tokens: the raw estimate times the model's calibration."""
    raw = raw_request_tokens(state, config or LoopConfig())
    return math.ceil(raw * state.calibration.get(state.session.model, 1.0))


def output_room(estimate: int, window: int) -> int:
    """Output tokens a request of ``estimate`` input tokens leaves in ``window``.

    Input plus ``max_tokens`` must fit the window (the API refuses the request
    otherwise); the estimate gets a 10% margin for its error.
    """
    return window - math.ceil(estimate * 1.1) - 16


def summary_budget(config: LoopConfig) -> int:
    """The most output a summary may take: small next to the window it must fit in."""
    return max(64, min(config.summary_max_tokens, config.context_window // 8))


def offered_tools(state: AgentState) -> tuple[str, ...]:
    """The session's tools, plus ``read_output`` once some output was cut or cleared."""
    tools = state.session.tools
    if state.paged and READ_OUTPUT not in tools:
        return (*tools, READ_OUTPUT)
    return tools


def _identical_run(signatures: tuple[str, ...], upto: int) -> int:
    """How many calls in a row, ending at index ``upto``, have the same tool and input."""
    run = 1
    i = upto
    while i > 0 and signatures[i - 1] == signatures[upto]:
        run += 1
        i -= 1
    return run


def _context(state: AgentState, config: LoopConfig) -> Decision | None:
    """Before the next request: compact, repair, or give up; None when it may be sent.

    Over ``compact_at`` of the window: (a) clear the oldest tool results, aiming at
    ``compact_to``; when that is not enough, (b) summarize older turns (a model call,
    which ``decide`` is asked for again until it is answered: one at a time). When
    neither helps and the request does not fit, or compaction failed
    ``max_compaction_failures`` times in a row: CONTEXT_EXHAUSTED, never a request the
    API would refuse.
    """
    s = state.session
    window = config.context_window
    estimate = estimate_context_tokens(state, config)
    ratio = state.calibration.get(s.model, 1.0)
    if state.compaction_failures >= config.max_compaction_failures:
        return fail(
            "CONTEXT_EXHAUSTED",
            f"compaction failed {state.compaction_failures} times in a row "
            f"(~{estimate} tokens, {window}-token window)",
            limit=config.max_compaction_failures,
            value=state.compaction_failures,
        )
    # Compact over ``compact_at``, and also under it when the request would leave too
    # little room for the reply (small windows, compact_at close to 1).
    fits = (window - 16 - config.min_output_tokens) / 1.1
    if estimate > config.compact_at * window or estimate > fits:
        keep_from = max(len(state.messages) - 2 * config.keep_recent_turns, 1)
        target = min(config.compact_to * window, fits)
        need = math.ceil((estimate - target) / ratio)
        cleared, saved = clear_plan(state.messages, keep_from, need)
        if cleared:
            first = next(
                i
                for i, m in enumerate(state.messages)
                if m["role"] == "user"
                and isinstance(m["content"], list)
                and any(b.get("tool_use_id") == cleared[0] for b in m["content"])
            )
            return Emit(
                [
                    ContextCompacted(
                        stage="clear_tool_results",
                        step=s.step,
                        tokens_before=estimate,
                        tokens_after=max(estimate - math.floor(saved * ratio), 0),
                        first_message=first,
                        dropped_messages=0,
                        cleared=cleared,
                    )
                ]
            )
        upto = summary_range(state.messages, config.keep_recent_turns)
        older = sum(state.message_tokens[1:upto]) * ratio if upto else 0
        if older > 2 * summary_budget(config):
            return CallModel(
                step=s.step,
                request_id=f"{s.session_id}:compact-{state.summary_calls + 1}",
                purpose=COMPACTION,
                upto=upto,
            )
    if output_room(estimate, window) < config.min_output_tokens:
        return fail(
            "CONTEXT_EXHAUSTED",
            f"~{estimate} tokens cannot be brought under the {window}-token window "
            f"(the task and the last {config.keep_recent_turns} turns are kept whole)",
            limit=window,
            value=estimate,
        )
    problems = verify(state.messages, task_of(state.messages))
    if problems:
        if state.repaired:  # the repair did not take: a bug, never a request sent
            return Emit(
                [
                    SessionFailed(
                        error=f"INTERNAL_ERROR: the conversation cannot be repaired: {problems[0]}"
                    )
                ]
            )
        return Emit([ContextRepaired(step=s.step, problems=problems[:20])])
    return None


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
        return CallModel(
            step=s.step,
            request_id=s.pending_request,
            again=True,
            purpose=state.pending_purpose,
            upto=state.pending_upto,
        )

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
    context = _context(state, config)
    if context is not None:
        return context
    step = s.step + 1
    return CallModel(step=step, request_id=f"{s.session_id}:step-{step}")
