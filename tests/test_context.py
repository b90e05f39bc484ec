"""Context management (``actors/context.py``) and the loop's use of it (``actors/loop.py``),
as properties over random conversations: what must hold whatever the session looks like.

* every valid conversation verifies clean; clearing old tool results and summarizing older
  turns keep it valid, keep the task verbatim first and never touch the recent turns;
* the loop, asked at every point of a random session with a window small enough to force
  compaction, always ends up with a request that fits (or fails CONTEXT_EXHAUSTED only when
  even the task and the kept turns cannot fit), in a bounded number of rounds;
* ``repair`` makes any corrupted conversation valid, deterministically and idempotently;
* bounding, paging and the transcript of a summary request keep to their limits.

The tests at the end pin bugs these properties found (fixed; each failed before its fix).
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fleetlog.actors.context import (
    CLEARED_PREFIX,
    SUMMARY_HEADER,
    SUMMARY_SYSTEM,
    apply_clear,
    apply_summary,
    clear_plan,
    excerpt,
    message_tokens,
    overflow_tokens,
    page,
    render_transcript,
    repair,
    summary_range,
    task_of,
    text_tokens,
    verify,
)
from fleetlog.actors.loop import (
    COMPACTION,
    AgentState,
    CallModel,
    Emit,
    LoopConfig,
    decide,
    estimate_context_tokens,
    evolve_agent,
    fold_agent,
    output_room,
    raw_request_tokens,
    summary_budget,
)
from fleetlog.events.schema import (
    ContextCompacted,
    ContextRepaired,
    Envelope,
    Event,
    Limits,
    ModelCallFailed,
    ModelCallRequested,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionClaimed,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallRejected,
    ToolCallStarted,
    ToolCallVetted,
)

Message = dict[str, Any]

T0 = 1_700_000_000.0
MODEL = "m"
#: No cap but the context gets in the way of the properties below.
NO_LIMITS = Limits(
    max_steps=10_000,
    max_tokens=10**15,
    max_cost_usd=1e12,
    total_timeout_s=1e12,
    max_identical_calls=10_000,
)


def fast(examples: int) -> settings:
    """Few examples, no deadline: the suite must stay fast on slow CI machines."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# --- strategies ---------------------------------------------------------------------------

# Quotes, backslashes, control characters and multi-byte characters make the JSON estimate
# and the byte estimate differ; no "[" so that a note found in a cut output is the note.
CHARS = 'abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789\n\t"\\{}:,.é日🙂'
words = st.text(alphabet=CHARS, min_size=1, max_size=40)
tasks = st.text(alphabet=CHARS, min_size=1, max_size=80).filter(lambda s: s.strip() != "")
tool_names = st.one_of(
    st.sampled_from(["read_file", "bash", "send_email", "search", "w" * 64]),
    st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True),
)
tool_inputs = st.dictionaries(
    st.sampled_from(["path", "cmd", "q", "n", "body"]),
    st.one_of(words, st.integers(), st.lists(words, max_size=3)),
    max_size=3,
)


def _big(size: int, piece: str) -> str:
    piece += "|"
    return (piece * (size // len(piece) + 1))[:size]


huge = st.builds(_big, st.integers(2_000, 40_000), words)
outputs = st.one_of(words, st.sampled_from(["", " ", "ok", "{}"]), huge)


@st.composite
def result_contents(draw: st.DrawFn) -> str | list[Message]:
    text = draw(outputs)
    if text and draw(st.integers(0, 4)) == 0:  # the API's other form: a list of text blocks
        return [{"type": "text", "text": text}]
    return text


@st.composite
def conversations(
    draw: st.DrawFn, max_turns: int = 40, contents: Any = None
) -> tuple[str, tuple[Message, ...]]:
    """``(task, messages)``: a valid Messages API conversation of 1 to ``max_turns`` turns."""
    contents = result_contents() if contents is None else contents
    task = draw(tasks)
    first: Message = {"role": "user", "content": task}
    if draw(st.booleans()):  # compacted before: the task, then an earlier summary
        summary = SUMMARY_HEADER + draw(words)
        first = {
            "role": "user",
            "content": [{"type": "text", "text": task}, {"type": "text", "text": summary}],
        }
    messages: list[Message] = [first]
    turns = draw(st.integers(1, max_turns))
    for t in range(turns):
        end_turn = t == turns - 1 and draw(st.booleans())
        texts = [{"type": "text", "text": w} for w in draw(st.lists(words, max_size=2))]
        if end_turn:
            messages.append(
                {"role": "assistant", "content": texts or [{"type": "text", "text": "done"}]}
            )
            break
        calls = draw(st.integers(1, 4))
        uses = [
            {
                "type": "tool_use",
                "id": f"toolu_{t:02d}_{j}",
                "name": draw(tool_names),
                "input": draw(tool_inputs),
            }
            for j in range(calls)
        ]
        messages.append({"role": "assistant", "content": [*texts, *uses]})
        results = []
        for use in uses:
            block: Message = {
                "type": "tool_result",
                "tool_use_id": use["id"],
                "content": draw(contents),
            }
            if draw(st.integers(0, 3)) == 0:
                block["is_error"] = True
            results.append(block)
        messages.append({"role": "user", "content": results})
    return task, tuple(messages)


def _ids(messages: tuple[Message, ...] | list[Message], kind: str) -> list[str]:
    key = "id" if kind == "tool_use" else "tool_use_id"
    return [
        str(b[key])
        for m in messages
        if isinstance(m.get("content"), list)
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == kind
    ]


def _results(message: Message) -> dict[str, Message]:
    content = message.get("content")
    if not isinstance(content, list):
        return {}
    return {b["tool_use_id"]: b for b in content if b.get("type") == "tool_result"}


# --- 1-2: the generator, and verify on what it generates -----------------------------------


@fast(60)
@given(conversations())
def test_valid_conversations_verify_clean(conv: tuple[str, tuple[Message, ...]]) -> None:
    task, messages = conv
    assert verify(messages, task) == []
    assert task_of(messages) == task
    uses = _ids(messages, "tool_use")
    assert len(uses) == len(set(uses))
    assert sorted(uses) == sorted(_ids(messages, "tool_result"))
    # ...and verify is not blind: any other task, or a missing result, is reported.
    assert verify(messages, task + "!") != []
    for i, m in enumerate(messages):
        if _results(m):
            broken = list(messages)
            broken[i] = {**m, "content": m["content"][1:] or ""}
            assert verify(broken, task) != []
            break


# --- 3: stage (a), clearing old tool results ------------------------------------------------


@fast(60)
@given(conversations(), st.data())
def test_clearing_keeps_the_conversation_valid(
    conv: tuple[str, tuple[Message, ...]], data: st.DataObject
) -> None:
    task, messages = conv
    keep_from = data.draw(st.integers(0, len(messages) + 2), label="keep_from")
    need = data.draw(st.one_of(st.integers(0, 200), st.integers(0, 100_000)), label="need")
    snapshot = copy.deepcopy(messages)
    ids, saved = clear_plan(messages, keep_from, need)
    out = apply_clear(messages, ids)
    assert messages == snapshot  # pure: the input is not changed
    assert len(ids) == len(set(ids))
    assert verify(out, task) == []
    assert task_of(out) == task and out[0] == messages[0]
    answered = _ids(out, "tool_result")
    assert sorted(answered) == sorted(_ids(messages, "tool_use"))  # each answered, once
    assert len(out) == len(messages)
    for i, (before, after) in enumerate(zip(messages, out, strict=True)):
        if i >= keep_from:
            assert after == before, f"message {i} >= keep_from={keep_from} was touched"
        assert after["role"] == before["role"]
        assert message_tokens(after) <= message_tokens(before), f"message {i} grew"
        if after != before:
            assert message_tokens(after) < message_tokens(before)
        old, new = _results(before), _results(after)
        assert list(old) == list(new)  # same results, same order
        for call_id, block in new.items():
            if call_id in ids:
                assert block["content"].startswith(CLEARED_PREFIX)
                assert call_id in block["content"]  # says how to read it again
                assert block.get("is_error") == old[call_id].get("is_error")
            else:
                assert block == old[call_id]
    # What it saved is real, and when it saved less than asked there is nothing left.
    assert (saved > 0) == bool(ids)
    if saved < need:
        assert clear_plan(out, keep_from, need)[0] == []
    # Cleared ids are never planned again; clearing them again keeps the conversation
    # valid and no larger (that it is exactly the same: test_bug_clearing_twice_...).
    assert not set(clear_plan(out, keep_from, 10**9)[0]) & set(ids)
    twice = apply_clear(out, ids)
    assert verify(twice, task) == []
    assert all(message_tokens(a) <= message_tokens(b) for a, b in zip(twice, out, strict=True))


# --- 4: stage (b), summarizing older turns --------------------------------------------------


@fast(60)
@given(conversations(), st.integers(1, 6))
def test_summary_keeps_task_pairs_and_recent_turns(
    conv: tuple[str, tuple[Message, ...]], keep: int
) -> None:
    task, messages = conv
    upto = summary_range(messages, keep)
    if not upto:
        assert len(messages) - 2 * keep <= 2  # nothing worth summarizing
        return
    assert 3 <= upto <= len(messages) - 2 * keep
    assert upto >= len(messages) - 2 * keep - 1  # keeps no more than one extra message
    assert messages[upto]["role"] == "assistant"
    snapshot = copy.deepcopy(messages)
    out = apply_summary(messages, upto, "SUMMARY")
    assert messages == snapshot
    assert verify(out, task) == []
    assert task_of(out) == task
    assert out[0]["content"][1] == {"type": "text", "text": SUMMARY_HEADER + "SUMMARY"}
    assert out[len(out) - 2 * keep :] == messages[len(messages) - 2 * keep :]
    assert out[1:] == messages[upto:]
    # A summary of a summary: the task is still first and verbatim.
    again = summary_range(out, 1)
    if again:
        twice = apply_summary(out, again, "AGAIN")
        assert verify(twice, task) == [] and task_of(twice) == task


# --- 5: the loop, compacting at every point of a session -----------------------------------


class _Session:
    """A session's log, and its state folded event by event as the log grows."""

    def __init__(self, state: AgentState, log: list[Envelope] | None = None) -> None:
        self.state = state
        self.log = log or []

    def feed(self, *events: Event) -> AgentState:
        for ev in events:
            position = len(self.log) + 1
            env = Envelope(position, "s", self.state.session.seq + 1, 1, T0 + position, "", ev)
            self.log.append(env)
            self.state = evolve_agent(self.state, env)
        return self.state

    def branch(self) -> _Session:
        return _Session(self.state, list(self.log))


@st.composite
def loop_configs(draw: st.DrawFn) -> LoopConfig:
    window = draw(st.integers(300, 5000))
    min_output = draw(st.integers(1, min(256, window // 4)))
    # Any compact_at: under it, a request leaving less than min_output tokens of room
    # compacts too (test_bug_exhausted_under_compact_at_without_compacting).
    compact_at = draw(st.floats(0.3, 0.95))
    return LoopConfig(
        context_window=window,
        compact_at=compact_at,
        compact_to=compact_at * draw(st.floats(0.2, 0.9)),
        keep_recent_turns=draw(st.integers(1, 4)),
        max_tool_result_share=draw(st.sampled_from([0.05, 0.1, 0.3])),
        max_compaction_failures=draw(st.integers(1, 3)),
        summary_max_tokens=draw(st.sampled_from([64, 256, 2048])),
        tools_tokens=draw(st.integers(0, 100)),
        max_tokens=draw(st.integers(64, 4096)),
        min_output_tokens=min_output,
    )


OUTCOMES = ("ok", "ok", "ok", "error", "failed", "rejected", "denied")


@st.composite
def session_specs(draw: st.DrawFn) -> dict[str, Any]:
    turns = []
    n = draw(st.integers(1, 12))
    for t in range(n):
        end_turn = t == n - 1 and draw(st.booleans())
        calls = (
            []
            if end_turn
            else draw(
                st.lists(
                    st.tuples(tool_names, tool_inputs, st.sampled_from(OUTCOMES), outputs),
                    min_size=1,
                    max_size=4,
                )
            )
        )
        texts = draw(st.lists(words, min_size=1 if end_turn else 0, max_size=2))
        order = draw(st.permutations(range(len(calls))))
        turns.append({"texts": texts, "calls": calls, "order": order})
    return {
        "task": draw(tasks),
        "system": draw(st.sampled_from(["", "be brief", "x" * 400])),
        "turns": turns,
    }


def _result_chars(state: AgentState, config: LoopConfig) -> int:
    """What the runner lets the model see of one tool output (``runner._result_chars``)."""
    ratio = state.calibration.get(MODEL, 1.0)
    return max(int(config.max_tool_result_share * config.context_window * 4 / ratio), 400)


def _turn_events(
    state: AgentState, turn: dict[str, Any], step: int, config: LoopConfig, ratio: float
) -> list[list[Event]]:
    """The events of one step, in the batches they follow each other in."""
    request_id = f"s:step-{step}"
    basis = raw_request_tokens(state, config)
    blocks: list[Message] = [{"type": "text", "text": t} for t in turn["texts"]]
    ids = [f"c{step}_{j}" for j in range(len(turn["calls"]))]
    blocks += [
        {"type": "tool_use", "id": cid, "name": name, "input": inp}
        for cid, (name, inp, _, _) in zip(ids, turn["calls"], strict=True)
    ]
    batches: list[list[Event]] = [
        [
            ModelCallRequested(step=step, request_id=request_id, model=MODEL, estimate_basis=basis),
            ModelResponded(
                step=step,
                request_id=request_id,
                model=MODEL,
                content=json.dumps(blocks),
                stop_reason="tool_use" if ids else "end_turn",
                input_tokens=math.ceil(basis * ratio),
                output_tokens=10,
            ),
            *[
                ToolCallProposed(
                    step=step, call_id=cid, tool=name, input=json.dumps(inp, sort_keys=True)
                )
                for cid, (name, inp, _, _) in zip(ids, turn["calls"], strict=True)
            ],
        ]
    ]
    limit = _result_chars(state, config)
    for j in turn["order"]:
        cid = ids[j]
        name, _, outcome, output = turn["calls"][j]
        if outcome in ("ok", "error"):
            shown = excerpt(output, limit, cid)
            batches.append(
                [
                    ToolCallVetted(call_id=cid, verdict="allow", risk="read"),
                    ToolCallStarted(call_id=cid, idempotency_key=f"s:{cid}"),
                    ToolCallCompleted(
                        call_id=cid,
                        output=output,
                        is_error=outcome == "error",
                        excerpt=shown if shown is not output else "",
                    ),
                ]
            )
        elif outcome == "failed":
            batches.append(
                [
                    ToolCallVetted(call_id=cid, verdict="allow", risk="read"),
                    ToolCallStarted(call_id=cid, idempotency_key=f"s:{cid}"),
                    ToolCallFailed(call_id=cid, error=f"{name} failed: {output[:limit]}"),
                ]
            )
        elif outcome == "rejected":
            batches.append(
                [
                    ToolCallVetted(call_id=cid, verdict="deny", risk="external"),
                    ToolCallRejected(call_id=cid, reason="denied by policy"),
                ]
            )
        else:
            batches.append(
                [
                    ToolCallVetted(call_id=cid, verdict="ask", risk="external"),
                    ReviewRequested(call_id=cid, reason="ask"),
                    ReviewDecided(call_id=cid, approved=False, reviewer="ana", note="no"),
                ]
            )
    return batches


def _accounted(state: AgentState) -> None:
    """The incremental per-message estimate is the one a recount gives."""
    assert state.message_tokens == tuple(message_tokens(m) for m in state.messages)


def _cannot_fit(state: AgentState, config: LoopConfig) -> bool:
    """Whether even the first message (the task, and a summary already written) and the
    last ``keep_recent_turns`` turns leave too little room: what alone may exhaust a session.

    Older turns under twice a summary's budget are not worth summarizing (the summary may
    be as long): they count as that much.
    """
    n = len(state.messages)
    k = config.keep_recent_turns
    kept = state.messages[max(n - 2 * k, 1) :]
    raw = (
        message_tokens(state.messages[0])
        + sum(message_tokens(m) for m in kept)
        + state.system_tokens
        + config.tools_tokens
    )
    ratio = state.calibration.get(MODEL, 1.0)
    older = 2 * summary_budget(config) if n - 2 * k >= 3 else 0
    best = math.ceil(raw * ratio) + older
    return output_room(best, config.context_window) < config.min_output_tokens


def _compact_until_ready(
    session: _Session,
    config: LoopConfig,
    task: str,
    true_ratio: float,
    data: st.DataObject,
    failures: bool,
) -> CallModel | None:
    """Run ``decide`` until it asks for the next step (or gives up), doing what it asks.

    Model calls are simulated: a summary request is answered (or, with ``failures``,
    sometimes fails); a step the real API would refuse (its true size is the raw estimate
    times ``true_ratio``) is refused with the API's "prompt is too long" error.
    Returns the step's CallModel, or None when the session failed.
    """
    state = session.state
    assert state.compaction_failures == 0
    in_row = 0  # failures in a row, as the simulation caused them
    results = len(_ids(state.messages, "tool_result"))
    bound = results + 3 * config.max_compaction_failures + 8
    window = config.context_window
    for _ in range(bound):
        state = session.state
        decision = decide(state, T0, config)
        if in_row >= config.max_compaction_failures:
            assert isinstance(decision, Emit), decision
        if isinstance(decision, Emit):
            last = decision.events[-1]
            if isinstance(last, SessionFailed):
                assert last.error.startswith("CONTEXT_EXHAUSTED"), last.error
                if "compaction failed" in last.error:
                    assert in_row >= config.max_compaction_failures
                else:
                    assert _cannot_fit(state, config), (
                        f"gave up although the task and the last turns fit: {last.error}"
                    )
                event("exhausted: " + ("breaker" if "compaction failed" in last.error else "size"))
                return None
            for ev in decision.events:
                assert isinstance(ev, ContextCompacted), ev  # never a repair
                assert ev.stage == "clear_tool_results" and ev.cleared
            event("cleared tool results")
            before = state.messages
            state = session.feed(*decision.events)
            _accounted(state)
            assert verify(state.messages, task) == []
            keep_from = max(len(before) - 2 * config.keep_recent_turns, 1)
            assert state.messages[keep_from:] == before[keep_from:]
            continue
        assert isinstance(decision, CallModel), decision
        assert not decision.again
        if decision.purpose == COMPACTION:
            upto = decision.upto
            assert 3 <= upto <= len(state.messages) - 2 * config.keep_recent_turns
            assert state.messages[upto]["role"] == "assistant"
            # The request as the runner builds it (``runner._request``).
            ratio = state.calibration.get(MODEL, 1.0)
            out = summary_budget(config)
            room = int((window - out) * 0.8 / ratio) - text_tokens(SUMMARY_SYSTEM) - 16
            cap = max(2000 >> state.compaction_failures, 40)
            transcript = render_transcript(state.messages, upto, room, cap)
            request = {"role": "user", "content": transcript}
            basis = message_tokens(request) + text_tokens(SUMMARY_SYSTEM)
            requested = ModelCallRequested(
                step=decision.step,
                request_id=decision.request_id,
                model=MODEL,
                purpose=COMPACTION,
                compact_upto=upto,
                estimate_basis=basis,
            )
            if failures and data.draw(st.integers(0, 2), label="summary fails") == 0:
                failed = ModelCallFailed(
                    step=decision.step,
                    request_id=decision.request_id,
                    error="overloaded",
                    status_code=529,
                    purpose=COMPACTION,
                )
                state = session.feed(requested, failed)
                in_row += 1
                continue
            summary = f"summary of messages 1 to {upto - 1}: " + "s" * data.draw(
                st.integers(0, 4 * out // 2), label="summary length"
            )
            kept = state.messages[upto:]
            state = session.feed(
                requested,
                ModelResponded(
                    step=decision.step,
                    request_id=decision.request_id,
                    model=MODEL,
                    content=json.dumps([{"type": "text", "text": summary}]),
                    stop_reason="end_turn",
                    input_tokens=math.ceil(basis * true_ratio),
                    output_tokens=text_tokens(summary),
                    purpose=COMPACTION,
                ),
                ContextCompacted(
                    stage="summarize",
                    step=decision.step,
                    tokens_before=0,
                    tokens_after=0,
                    first_message=1,
                    dropped_messages=upto - 1,
                    summary=summary,
                    request_id=decision.request_id,
                ),
            )
            in_row = 0
            event("summarized")
            _accounted(state)
            assert state.messages[1:] == kept
            assert verify(state.messages, task) == []
            continue
        # The next step: it must be a request the loop believes fits, and valid.
        estimate = estimate_context_tokens(state, config)
        assert estimate + config.min_output_tokens <= window
        assert verify(state.messages, task) == []
        assert state.messages[0]["role"] == "user" and task_of(state.messages) == task
        raw = raw_request_tokens(state, config)
        true_tokens = math.ceil(raw * true_ratio)
        max_tokens = max(min(config.max_tokens, output_room(estimate, window)), 1)
        if true_tokens + max_tokens > window:  # the real API refuses it; the loop learns
            state = session.feed(
                ModelCallRequested(
                    step=decision.step,
                    request_id=decision.request_id,
                    model=MODEL,
                    estimate_basis=raw,
                ),
                ModelCallFailed(
                    step=decision.step,
                    request_id=decision.request_id,
                    error=f"prompt is too long: {true_tokens} tokens > {window} maximum",
                    status_code=400,
                ),
            )
            in_row += 1
            event("refused by the API")
            continue
        return decision
    raise AssertionError(f"no request after {bound} rounds of compaction")


@fast(200)
@given(
    spec=session_specs(),
    config=loop_configs(),
    carry_on=st.booleans(),
    failures=st.booleans(),
    true_ratio=st.sampled_from([1.0, 0.8, 1.3, 1.6]),
    data=st.data(),
)
def test_compacted_at_every_point(
    spec: dict[str, Any],
    config: LoopConfig,
    carry_on: bool,
    failures: bool,
    true_ratio: float,
    data: st.DataObject,
) -> None:
    """At every point where the session is about to call the model, the loop brings the
    context within the window (or fails for good reason), never looping.

    ``carry_on``: the session goes on from the compacted state, as a real one does
    (compacting again and again); otherwise each point is compacted on a branch and the
    session goes on uncompacted, so that every prefix of a long stream is tried.
    """
    task = spec["task"]
    session = _Session(fold_agent("s", []))
    session.feed(
        SessionCreated(
            task_id="t",
            prompt=task,
            model=MODEL,
            system=spec["system"],
            tools=["read_file", "bash"],
            limits=NO_LIMITS,
        ),
        SessionClaimed(owner="h", epoch=1),
    )
    for turn in spec["turns"]:
        state = session.state
        _accounted(state)
        assert verify(state.messages, task) == [] and state.messages[-1]["role"] == "user"
        here = session if carry_on else session.branch()
        decision = _compact_until_ready(here, config, task, true_ratio, data, failures)
        if carry_on:
            if decision is None:
                event("carried on: failed")
                break  # the session failed: nothing more happens
            step = decision.step
        else:
            step = state.session.step + 1
        for batch in _turn_events(session.state, turn, step, config, true_ratio):
            session.feed(*batch)
    else:
        event(f"carried on={carry_on}: all turns")
        state = session.state
        _accounted(state)
        assert verify(state.messages, task) == []
        if not spec["turns"][-1]["calls"]:  # ended with the model's answer
            done = decide(state, T0, config)
            assert isinstance(done, Emit) and isinstance(done.events[0], SessionCompleted)
    # Replay: the log, folded from scratch, is the state the session got to.
    assert fold_agent("s", session.log) == session.state


# --- 6: repair ------------------------------------------------------------------------------

CORRUPTIONS = (
    "drop_result",
    "dup_result",
    "orphan_result",
    "swap_role",
    "drop_task",
    "empty_message",
    "dup_tool_use_id",
    "trailing_tool_use",
    "drop_message",
    "dup_message",
    "bad_role",
    "empty_text",
    "move_result",
    "str_assistant",
)


def _corrupt(messages: list[Message], kind: str, seed: int) -> None:
    """Break ``messages`` in place, in the way ``kind`` names (``seed`` picks where)."""

    def pick(items: list[Any]) -> Any:
        return items[seed % len(items)] if items else None

    with_results = [i for i, m in enumerate(messages) if _results(m)]
    with_uses = [
        i
        for i, m in enumerate(messages)
        if isinstance(m.get("content"), list)
        and any(b.get("type") == "tool_use" for b in m["content"] if isinstance(b, dict))
    ]
    index = seed % len(messages) if messages else 0
    if kind == "drop_result" and with_results:
        m = messages[pick(with_results)]
        blocks = list(m["content"])
        del blocks[seed % len(blocks)]
        m["content"] = blocks
    elif kind == "dup_result" and with_results:
        m = messages[pick(with_results)]
        m["content"] = [*m["content"], dict(pick(list(m["content"])))]
    elif kind == "orphan_result" and messages:
        m = messages[index]
        orphan = {"type": "tool_result", "tool_use_id": f"orphan_{seed}", "content": "?"}
        if isinstance(m.get("content"), list):
            m["content"] = [*m["content"], orphan]
        else:
            m["content"] = [{"type": "text", "text": str(m.get("content"))}, orphan]
    elif kind == "swap_role" and messages:
        m = messages[index]
        m["role"] = "assistant" if m.get("role") == "user" else "user"
    elif kind == "drop_task" and messages:
        del messages[0]
    elif kind == "empty_message" and messages:
        messages[index]["content"] = ("", [], None)[seed % 3]
    elif kind == "dup_tool_use_id" and with_uses:
        uses = [
            b
            for i in with_uses
            for b in messages[i]["content"]
            if isinstance(b, dict) and b.get("type") == "tool_use"
        ]
        if len(uses) > 1:
            target = uses[1 + seed % (len(uses) - 1)]
            target["id"] = uses[seed % len(uses)]["id"]
    elif kind == "trailing_tool_use":
        use = {"type": "tool_use", "id": f"trail_{seed}", "name": "bash", "input": {}}
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "t"}, use]})
    elif kind == "drop_message" and messages:
        del messages[index]
    elif kind == "dup_message" and messages:
        messages.insert(index, copy.deepcopy(messages[index]))
    elif kind == "bad_role":
        messages.insert(index, {"role": "system", "content": "be nice"})
    elif kind == "empty_text" and messages:
        m = messages[index]
        blocks = m["content"] if isinstance(m.get("content"), list) else []
        m["content"] = [{"type": "text", "text": ""}, *blocks]
    elif kind == "move_result" and with_results and len(messages) > 2:
        source = messages[pick(with_results)]
        block = source["content"][0]
        source["content"] = source["content"][1:]
        target = messages[(index + 2) % len(messages)]
        content = target.get("content")
        target["content"] = [*(content if isinstance(content, list) else []), block]
    elif kind == "str_assistant":
        for i in range(index, len(messages)):
            if messages[i].get("role") == "assistant":
                messages[i]["content"] = "plain words"
                break


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[str, tuple[Message, ...], list[Message]]:
    task, messages = draw(conversations(max_turns=8, contents=words))
    broken = copy.deepcopy(list(messages))
    changes = draw(
        st.lists(
            st.tuples(st.sampled_from(CORRUPTIONS), st.integers(0, 10**6)), min_size=1, max_size=4
        )
    )
    for kind, seed in changes:
        _corrupt(broken, kind, seed)
    return task, messages, broken


def _normalized(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    return tuple(
        {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
        if isinstance(m["content"], str)
        else m
        for m in messages
    )


@fast(150)
@given(corrupted())
def test_repair_makes_any_conversation_valid(
    case: tuple[str, tuple[Message, ...], list[Message]],
) -> None:
    task, valid, broken = case
    snapshot = copy.deepcopy(broken)
    fixed = repair(broken, task)
    assert broken == snapshot  # pure
    assert verify(fixed, task) == [], (verify(broken, task), fixed)
    assert task_of(fixed) == task and fixed[0]["role"] == "user"
    assert repair(copy.deepcopy(snapshot), task) == fixed  # deterministic
    assert repair(list(fixed), task) == fixed  # idempotent
    # A valid conversation: clean too, and changed only in form (a str becomes a block).
    kept = repair(valid, task)
    assert verify(kept, task) == []
    assert kept == _normalized(valid)
    assert repair(kept, task) == kept


@fast(100)
@given(
    tasks,
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant", "x"]),
                "content": st.one_of(
                    words,
                    st.just(""),
                    st.lists(
                        st.one_of(
                            st.fixed_dictionaries(
                                {"type": st.just("text"), "text": st.one_of(words, st.just(""))}
                            ),
                            st.fixed_dictionaries(
                                {
                                    "type": st.just("tool_use"),
                                    "id": st.sampled_from(["a", "b", "c"]),
                                    "name": st.just("bash"),
                                    "input": st.just({}),
                                }
                            ),
                            st.fixed_dictionaries(
                                {
                                    "type": st.just("tool_result"),
                                    "tool_use_id": st.sampled_from(["a", "b", "c"]),
                                    "content": words,
                                }
                            ),
                        ),
                        max_size=4,
                    ),
                ),
            }
        ),
        max_size=8,
    ),
)
def test_repair_of_arbitrary_message_lists(task: str, messages: list[Message]) -> None:
    fixed = repair(messages, task)
    assert verify(fixed, task) == []
    assert task_of(fixed) == task
    assert repair(list(fixed), task) == fixed


@fast(60)
@given(corrupted())
def test_the_loop_repairs_a_broken_conversation_once(
    case: tuple[str, tuple[Message, ...], list[Message]],
) -> None:
    """A conversation that does not verify is never sent: one ContextRepaired, then a
    request. The task is what the first message opens with (the loop has no other)."""
    _, _, broken = case
    base = _steps(0, 0).state
    state = msgspec.structs.replace(
        base, messages=tuple(broken), message_tokens=tuple(message_tokens(m) for m in broken)
    )
    problems = verify(broken, task_of(broken))
    decision = decide(state, T0, LoopConfig())
    if not problems:
        assert decision == CallModel(step=1, request_id="s:step-1")
        return
    assert isinstance(decision, Emit) and len(decision.events) == 1
    repaired = decision.events[0]
    assert isinstance(repaired, ContextRepaired) and repaired.problems == problems[:20]
    after = _Session(state).feed(repaired)
    _accounted(after)
    task = task_of(broken) or "(no task)"  # the first message opened with no text at all
    assert verify(after.messages, task) == []
    assert task_of(after.messages) == task
    assert decide(after, T0, LoopConfig()) == CallModel(step=1, request_id="s:step-1")


# --- 7: units -----------------------------------------------------------------------------

NOTE = re.compile(
    r"\n\[\.\.\. ([\d,]+) of ([\d,]+) characters cut here to save context; the whole output is "
    r'kept: read_output\(call_id="([^"]*)", offset=(\d+)\) pages through it \.\.\.\]\n'
)


def _numbered(size: int, head: str, tail: str) -> str:
    """``size`` characters that never repeat a line: ``head``, numbered lines, ``tail``."""
    body = "".join(f"{i}:{i * 7919 % 10007}\n" for i in range(size // 6 + 1))
    return (head + body)[: max(size - len(tail), 0)] + tail[:size]


long_texts = st.one_of(
    st.text(alphabet=CHARS, max_size=300),
    st.builds(_numbered, st.integers(0, 12_000), words, words),
)


@settings(max_examples=200, deadline=None)
@given(
    long_texts,
    st.integers(400, 5000),
    st.from_regex(r"[a-z0-9_]{1,40}", fullmatch=True),
)
def test_excerpt_keeps_head_and_tail_and_says_what_was_cut(
    text: str, limit: int, call_id: str
) -> None:
    out = excerpt(text, limit, call_id)
    if len(text) <= limit:
        assert out is text
        event("fits")
        return
    notes = list(NOTE.finditer(out))
    assert len(notes) == 1, out
    note = notes[0]
    head, tail = out[: note.start()], out[note.end() :]
    cut, total = (int(g.replace(",", "")) for g in note.group(1, 2))
    assert total == len(text)
    assert cut == len(text) - len(head) - len(tail) > 0
    assert text.startswith(head) and text.endswith(tail)
    assert head and tail and len(head) >= len(tail)
    assert note.group(3) == call_id
    assert int(note.group(4)) == len(head)  # read_output from the first character not shown
    assert len(out) <= limit + 300
    assert len(out) < len(text)


def test_excerpt_examples() -> None:
    text = "".join(f"{i:05d}\n" for i in range(2000))  # 12,000 characters
    out = excerpt(text, 1000, "toolu_1")
    assert out.startswith("00000\n00001\n")
    assert out.endswith("01998\n01999\n")
    assert "characters cut here" in out and 'read_output(call_id="toolu_1", offset=' in out
    assert excerpt("short", 1000, "x") == "short"


HEADER = re.compile(
    r"\[characters ([\d,]+) to ([\d,]+) of ([\d,]+)"
    r'(; next page: read_output\(call_id="([^"]*)", offset=(\d+)\))?\]'
)


@settings(max_examples=200, deadline=None)
@given(
    long_texts,
    st.integers(0, 3000),
    st.from_regex(r"[a-z0-9_]{1,20}", fullmatch=True),
)
def test_pages_tile_the_whole_output(text: str, limit: int, call_id: str) -> None:
    offset = 0
    seen = []
    for _ in range(len(text) + 2):
        out = page(text, call_id, offset, limit)
        header, _, body = out.partition("\n")
        match = HEADER.fullmatch(header)
        assert match, header
        start, end, total = (int(g.replace(",", "")) for g in match.group(1, 2, 3))
        assert (start, total) == (offset, len(text))
        assert body == text[start:end]
        seen.append(body)
        if match.group(4) is None:
            assert end == len(text)
            break
        assert match.group(5) == call_id
        assert int(match.group(6)) == end > offset
        offset = end
    else:
        raise AssertionError("pages did not reach the end")
    assert "".join(seen) == text
    for bad in (-1, len(text) + 1):
        with pytest.raises(ValueError):
            page(text, call_id, bad, limit)


def test_overflow_tokens() -> None:
    assert overflow_tokens("prompt is too long: 208310 tokens > 200000 maximum") == (208310, 200000)
    assert overflow_tokens(
        'Error code: 400 - {"type":"error","error":{"type":"invalid_request_error",'
        '"message":"prompt is too long: 208310 tokens > 200000 maximum"}}'
    ) == (208310, 200000)
    assert overflow_tokens(
        "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000, "
        "decrease input length or `max_tokens` and try again"
    ) == (198000, 200000)
    for other in (
        "",
        "overloaded",
        "rate limit exceeded",
        "prompt is too long",
        "max_tokens: 8192 > 4096, which is the maximum allowed",
        "messages.1: tool_use ids were found without tool_result blocks",
    ):
        assert overflow_tokens(other) is None


@fast(80)
@given(conversations(max_turns=20), st.data())
def test_render_transcript_within_budget_and_deterministic(
    conv: tuple[str, tuple[Message, ...]], data: st.DataObject
) -> None:
    _, messages = conv
    upto = data.draw(st.integers(1, len(messages)), label="upto")
    budget = data.draw(st.integers(200, 20_000), label="budget")
    cap = data.draw(st.sampled_from([40, 100, 500, 2000]), label="cap")
    out = render_transcript(messages, upto, budget, cap)
    assert out == render_transcript(copy.deepcopy(messages), upto, budget, cap)
    # The head (task, earlier summary) is clipped to half the budget at most; the whole,
    # with the note saying how many lines were left out, keeps to the budget.
    head = render_transcript(messages, 1, budget, cap)
    assert out.startswith(head)
    assert text_tokens(head) <= budget // 2
    assert text_tokens(out) <= budget, (text_tokens(out), budget)


# --- bugs these properties found (fixed): each test fails with KnownBug if one comes back ---


class KnownBug(AssertionError):
    """Raised by the last check of a test pinning a known bug (any other failure is real)."""


def _known_bug(ok: bool, what: str) -> None:
    if not ok:
        raise KnownBug(what)


def _steps(n: int, size: int) -> _Session:
    """A session of ``n`` steps, each one read_file call returning ``size`` characters."""
    session = _Session(fold_agent("s", []))
    session.feed(
        SessionCreated(task_id="t", prompt="do the thing", model=MODEL, limits=NO_LIMITS),
        SessionClaimed(owner="h", epoch=1),
    )
    for step in range(1, n + 1):
        cid = f"c{step}"
        use = {"type": "tool_use", "id": cid, "name": "read_file", "input": {"path": f"f{step}"}}
        session.feed(
            ModelCallRequested(step=step, request_id=f"s:step-{step}", model=MODEL),
            ModelResponded(
                step=step,
                request_id=f"s:step-{step}",
                model=MODEL,
                content=json.dumps([use]),
                stop_reason="tool_use",
            ),
            ToolCallProposed(step=step, call_id=cid, tool="read_file", input="{}"),
            ToolCallVetted(call_id=cid, verdict="allow", risk="read"),
            ToolCallStarted(call_id=cid, idempotency_key=f"s:{cid}"),
            ToolCallCompleted(call_id=cid, output="x" * size),
        )
    return session


def test_bug_exhausted_under_compact_at_without_compacting() -> None:
    """Under ``compact_at`` of the window no compaction is tried, but over
    ``(window - 16 - min_output_tokens) / 1.1`` the request does not fit: in between, the
    session fails CONTEXT_EXHAUSTED although clearing old results would make it fit. With
    the default compact_at=0.8 and min_output_tokens=256 that is any window under ~2,270
    tokens; with compact_at >= 0.91, any window at all.
    """
    state = _steps(8, 400).state
    estimate = estimate_context_tokens(state, LoopConfig())
    config = LoopConfig(context_window=math.ceil(estimate / 0.8))  # defaults otherwise
    assert estimate <= config.compact_at * config.context_window
    # Clearing the results of all but the last four turns would leave room enough:
    keep_from = len(state.messages) - 2 * config.keep_recent_turns
    cleared = apply_clear(state.messages, clear_plan(state.messages, keep_from, 10**9)[0])
    after = sum(message_tokens(m) for m in cleared)
    assert output_room(after, config.context_window) >= config.min_output_tokens
    decision = decide(state, T0, config)
    failed = isinstance(decision, Emit) and isinstance(decision.events[-1], SessionFailed)
    _known_bug(not failed, f"gave up at ~{estimate} of {config.context_window}: {decision}")


def test_bug_empty_summary_reply_is_retried_forever() -> None:
    """A summary reply without text gets no ContextCompacted (``runner._compacted``: "the
    reply's ModelResponded alone counts as a failed compaction (loop.py)"), but
    ``evolve_agent`` counts no failure for a ModelResponded of purpose "compaction": the
    circuit breaker never trips and the loop asks for a summary again and again.
    """
    config = LoopConfig(context_window=1000, keep_recent_turns=2, max_compaction_failures=3)
    session = _steps(8, 400)
    summaries = 0
    for _ in range(20):
        decision = decide(session.state, T0, config)
        if isinstance(decision, Emit):
            if isinstance(decision.events[-1], SessionFailed):
                break
            session.feed(*decision.events)  # clearing old results
            continue
        assert isinstance(decision, CallModel) and decision.purpose == COMPACTION
        summaries += 1
        session.feed(
            ModelCallRequested(
                step=decision.step,
                request_id=decision.request_id,
                model=MODEL,
                purpose=COMPACTION,
                compact_upto=decision.upto,
            ),
            ModelResponded(
                step=decision.step,
                request_id=decision.request_id,
                model=MODEL,
                content="[]",  # no text: no summary
                stop_reason="end_turn",
                purpose=COMPACTION,
            ),
        )
    assert summaries >= 1
    _known_bug(
        summaries <= config.max_compaction_failures,
        f"{summaries} summary requests, failures counted: {session.state.compaction_failures}",
    )


def test_bug_transcript_note_is_over_budget() -> None:
    """``render_transcript`` drops the oldest lines until the rest fits the budget, then
    adds "[N earlier lines left out to fit]" on top of it: over the budget by that line.
    (The head, the task clipped to 2,000 characters and an earlier summary to 4 * cap,
    is not bounded by the budget either.)
    """
    messages: list[Message] = [{"role": "user", "content": "0"}]
    for t in range(20):
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": f"toolu_{t:02d}_0", "name": "read_file", "input": {}}
                ],
            }
        )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": f"toolu_{t:02d}_0", "content": "0"}
                ],
            }
        )
    out = render_transcript(messages, len(messages), 200, 40)
    assert "earlier lines left out to fit]" in out
    _known_bug(text_tokens(out) <= 200, f"{text_tokens(out)} tokens in a 200-token budget")


def test_bug_clearing_twice_is_not_idempotent() -> None:
    """``apply_clear`` of an id already cleared makes a new placeholder from the old one:
    "returned 4,000 characters" becomes "returned <length of the placeholder> characters".
    (clear_plan never plans a cleared id again, so the loop itself does not do this.)
    """
    messages = _steps(3, 4000).state.messages
    ids, _ = clear_plan(messages, len(messages), 10**9)
    assert ids
    once = apply_clear(messages, ids)
    assert "returned 4,000 characters" in once[2]["content"][0]["content"]
    twice = apply_clear(once, ids)
    _known_bug(
        twice == once,
        f"{once[2]['content'][0]['content']!r} became {twice[2]['content'][0]['content']!r}",
    )


def test_bug_excerpt_with_a_tiny_limit() -> None:
    """Under a limit of 304 characters the kept head and tail are 64 characters whatever
    the limit: a text between the limit and 64 characters comes back longer, twice over,
    with a negative count of characters cut. (The runner never asks under 400.)
    """
    text = "abcdefghij"
    out = excerpt(text, 5, "c1")
    _known_bug(len(out) <= len(text) + 300 and "-" not in out.split("characters cut")[0], repr(out))


def test_bug_repair_of_a_first_message_opening_with_empty_text() -> None:
    """Found in CI by ``test_the_loop_repairs_a_broken_conversation_once``: a first message
    whose first text block is empty has the task "" (``task_of``); ``repair`` dropped the
    empty block, so the next text (an earlier summary) became "the task", and the repaired
    conversation still did not verify. An empty task is now "(no task)", put first."""
    broken: list[Message] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": ""},
                {"type": "text", "text": "[Earlier steps, compacted]\nread a file"},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {}}],
        },
        {"role": "user", "content": []},
    ]
    fixed = repair(broken, task_of(broken))
    _known_bug(verify(fixed, "(no task)") == [], f"{verify(fixed, '(no task)')}: {fixed}")
    assert task_of(fixed) == "(no task)" and repair(list(fixed), task_of(fixed)) == fixed
