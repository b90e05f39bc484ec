"""The agent loop's pure core: evolve_agent folds, decide picks the next effect."""

from __future__ import annotations

import json

import msgspec

from fleetlog.actors.loop import (
    AgentState,
    CallModel,
    Emit,
    Finish,
    LoopConfig,
    RunTool,
    VetCall,
    Wait,
    decide,
    evolve_agent,
    fold_agent,
)
from fleetlog.events.schema import (
    CancelRequested,
    ContextCompacted,
    Envelope,
    Event,
    LimitExceeded,
    Limits,
    ModelCallRequested,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionCancelled,
    SessionClaimed,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
    ToolCallCompleted,
    ToolCallProposed,
    ToolCallStarted,
    ToolCallVetted,
)

T0 = 1_700_000_000.0
CONFIG = LoopConfig(idempotent_tools=frozenset({"read_file"}))


DEFAULT_LIMITS = Limits()


def build(*events: Event, limits: Limits = DEFAULT_LIMITS, start: float = T0) -> AgentState:
    history: list[Event] = [
        SessionCreated(
            task_id="t", prompt="do the thing", tools=["read_file", "send_email"], limits=limits
        ),
        SessionClaimed(owner="h", epoch=1),
        *events,
    ]
    return fold_agent(
        "s",
        [Envelope(i + 1, "s", i + 1, 1, start + i, "", e) for i, e in enumerate(history)],
    )


def respond(
    step: int, *calls: tuple[str, str, dict[str, object]], text: str = "", tokens: int = 10
) -> list[Event]:
    blocks: list[dict[str, object]] = [{"type": "text", "text": text}] if text else []
    blocks += [
        {"type": "tool_use", "id": cid, "name": name, "input": inp} for cid, name, inp in calls
    ]
    return [
        ModelCallRequested(step=step, request_id=f"s:step-{step}", model="m"),
        ModelResponded(
            step=step,
            request_id=f"s:step-{step}",
            model="m",
            content=json.dumps(blocks),
            stop_reason="tool_use" if calls else "end_turn",
            input_tokens=tokens,
            output_tokens=tokens,
            cost_usd=0.001,
        ),
        *[
            ToolCallProposed(step=step, call_id=c, tool=n, input=json.dumps(i, sort_keys=True))
            for c, n, i in calls
        ],
    ]


def ran(call_id: str, output: str = "ok") -> list[Event]:
    return [
        ToolCallVetted(call_id=call_id, verdict="allow", risk="read"),
        ToolCallStarted(call_id=call_id, idempotency_key=f"s:{call_id}"),
        ToolCallCompleted(call_id=call_id, output=output),
    ]


def test_first_decision_is_a_model_call() -> None:
    state = build()
    assert state.messages == ({"role": "user", "content": "do the thing"},)
    assert decide(state, T0 + 1, CONFIG) == CallModel(step=1, request_id="s:step-1")


def test_tool_round_trip_builds_paired_messages() -> None:
    state = build(
        *respond(1, ("c1", "read_file", {"path": "a"}), ("c2", "read_file", {"path": "b"}))
    )
    assert decide(state, T0, CONFIG) == VetCall("c1")
    state = build(
        *respond(1, ("c1", "read_file", {"path": "a"}), ("c2", "read_file", {"path": "b"})),
        *ran("c1", "A"),
    )
    assert decide(state, T0, CONFIG) == VetCall("c2")
    assert len(state.messages) == 2  # results wait until every call of the step has one
    state = build(
        *respond(1, ("c1", "read_file", {"path": "a"}), ("c2", "read_file", {"path": "b"})),
        *ran("c2", "B"),
        *ran("c1", "A"),
    )
    last = state.messages[-1]
    assert last["role"] == "user"
    assert [b["tool_use_id"] for b in last["content"]] == ["c1", "c2"]  # tool_use order
    assert decide(state, T0, CONFIG) == CallModel(step=2, request_id="s:step-2")


def test_end_turn_completes_with_the_text() -> None:
    state = build(*respond(1, text="all done"))
    decision = decide(state, T0, CONFIG)
    assert decision == Emit([SessionCompleted(result="all done")])


def test_unanswered_model_call_is_made_again() -> None:
    state = build(ModelCallRequested(step=1, request_id="s:step-1", model="m"))
    assert decide(state, T0, CONFIG) == CallModel(step=1, request_id="s:step-1", again=True)


def test_in_doubt_tool_call_goes_to_review_unless_idempotent() -> None:
    events = [
        *respond(1, ("c1", "send_email", {"to": "x"})),
        ToolCallVetted(call_id="c1", verdict="allow", risk="external"),
        ToolCallStarted(call_id="c1", idempotency_key="s:c1"),
    ]
    decision = decide(build(*events), T0, CONFIG)
    assert isinstance(decision, Emit)
    review = decision.events[0]
    assert isinstance(review, ReviewRequested) and review.in_doubt
    assert decide(build(*events, review), T0, CONFIG) == Wait(
        "tool call c1 (send_email) awaits review"
    )
    approved = ReviewDecided(call_id="c1", approved=True)
    assert decide(build(*events, review, approved), T0, CONFIG) == RunTool("c1", attempt=2)
    idem = [
        *respond(1, ("c1", "read_file", {"path": "a"})),
        ToolCallVetted(call_id="c1", verdict="allow", risk="read"),
        ToolCallStarted(call_id="c1", idempotency_key="s:c1"),
    ]
    assert decide(build(*idem), T0, CONFIG) == RunTool("c1", attempt=2)


def test_denied_review_tells_the_model() -> None:
    state = build(
        *respond(1, ("c1", "send_email", {"to": "x"})),
        ToolCallVetted(call_id="c1", verdict="ask", risk="external"),
        ReviewRequested(call_id="c1", reason="ask"),
        ReviewDecided(call_id="c1", approved=False, reviewer="ana", note="no"),
    )
    block = state.messages[-1]["content"][0]
    assert block["is_error"] and "denied by reviewer ana: no" in block["content"]
    assert state.session.status == "running"
    assert isinstance(decide(state, T0, CONFIG), CallModel)


def test_loop_detection() -> None:
    same = ("read_file", {"path": "a"})
    events: list[Event] = []
    for step, cid in enumerate(["c1", "c2"], start=1):
        events += [*respond(step, (cid, *same)), *ran(cid)]
    events += respond(3, ("c3", *same))
    decision = decide(build(*events), T0, CONFIG)
    assert isinstance(decision, Emit)
    assert (
        isinstance(decision.events[0], LimitExceeded) and decision.events[0].code == "LOOP_DETECTED"
    )
    assert isinstance(decision.events[1], SessionFailed)
    assert decision.events[1].error.startswith("LOOP_DETECTED: read_file called 3 times")


def _code(decision: object) -> str:
    assert isinstance(decision, Emit), decision
    failed = decision.events[-1]
    assert isinstance(failed, SessionFailed)
    return failed.error.split(":", 1)[0]


def test_caps() -> None:
    two_steps = [
        *respond(1, ("c1", "read_file", {"path": "a"})),
        *ran("c1"),
        *respond(2, ("c2", "read_file", {"path": "b"})),
        *ran("c2"),
    ]
    assert (
        _code(decide(build(*two_steps, limits=Limits(max_steps=2)), T0, CONFIG))
        == "MAX_STEPS_EXCEEDED"
    )
    assert (
        _code(
            decide(
                build(
                    *respond(1, ("c1", "read_file", {"path": "a"}), tokens=600),
                    limits=Limits(max_tokens=1000),
                ),
                T0,
                CONFIG,
            )
        )
        == "MAX_TOKENS_EXCEEDED"
    )
    assert (
        _code(decide(build(*two_steps, limits=Limits(max_cost_usd=0.0015)), T0, CONFIG))
        == "MAX_COST_EXCEEDED"
    )
    # Total time counts from the first event, so it survives restarts.
    assert (
        _code(decide(build(limits=Limits(total_timeout_s=60)), T0 + 61, CONFIG)) == "TOTAL_TIMEOUT"
    )
    assert isinstance(decide(build(limits=Limits(total_timeout_s=60)), T0 + 59, CONFIG), CallModel)


def test_cancel_and_terminal() -> None:
    assert decide(build(CancelRequested(by="cli")), T0, CONFIG) == Emit(
        [SessionCancelled(note="cancel requested")]
    )
    assert decide(build(CancelRequested(), SessionCancelled()), T0, CONFIG) == Finish()


def test_compaction_clears_old_results_first_then_asks_for_a_summary() -> None:
    events: list[Event] = []
    for step in range(1, 9):
        cid = f"c{step}"
        events += [*respond(step, (cid, "read_file", {"path": f"f{step}"})), *ran(cid, "x" * 400)]
    state = build(*events)
    config = LoopConfig(context_window=1000, compact_at=0.8, keep_recent_turns=2)
    decision = decide(state, T0, config)
    # (a) first: the oldest tool results are cleared, the pairs kept.
    assert isinstance(decision, Emit)
    compacted = decision.events[0]
    assert isinstance(compacted, ContextCompacted) and compacted.stage == "clear_tool_results"
    assert compacted.cleared[:2] == ["c1", "c2"]
    after = evolve_agent(state, Envelope(999, "s", state.session.seq + 1, 1, T0, "", compacted))
    assert after.messages[0]["content"] == "do the thing"  # the task, verbatim
    for i in range(1, len(after.messages) - 1, 2):
        uses = [b["id"] for b in after.messages[i]["content"] if b["type"] == "tool_use"]
        results = [b["tool_use_id"] for b in after.messages[i + 1]["content"]]
        assert uses == results  # no pair was split
    assert after.messages[2]["content"][0]["content"].startswith("[cleared to save context]")
    assert after.messages[-1] == state.messages[-1]  # the recent turns are untouched
    # (b) with nothing left worth clearing and still over: a summary call of older turns.
    again = decide(after, T0, config)
    assert isinstance(again, CallModel) and again.purpose == "compaction"
    assert again.upto == len(after.messages) - 4 and after.messages[again.upto]["role"] == (
        "assistant"
    )
    # Nothing to compact (the task and the kept turns alone) and over the window: the
    # circuit breaker, not a request the API would refuse.
    recent = build(*events[: 2 * (len(respond(1, ("c", "t", {}))) + len(ran("c")))])
    tiny = LoopConfig(context_window=100, compact_at=0.8, keep_recent_turns=2)
    assert len(recent.messages) <= 5
    assert _code(decide(recent, T0, tiny)) == "CONTEXT_EXHAUSTED"
    # ...and after N failed compactions in a row, whatever the size.
    failing = msgspec.structs.replace(after, compaction_failures=3)
    assert _code(decide(failing, T0, config)) == "CONTEXT_EXHAUSTED"
