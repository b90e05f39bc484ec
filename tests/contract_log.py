"""The EventLog contract: written once, run against every backend.

A backend's test module subclasses :class:`EventLogContract` and provides two
fixtures: ``log`` (a fresh, empty, open log) and ``reopen`` (a function that
closes a log and opens the same store again).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import msgspec
import pytest

from fleetlog.events.errors import ConcurrencyError, FencedError, LogError
from fleetlog.events.log import EventLog, follow
from fleetlog.events.schema import (
    EVENT_TYPES,
    BlobRef,
    CancelRequested,
    ContextCompacted,
    ContextRepaired,
    LimitExceeded,
    Limits,
    ModelCallFailed,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
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

Reopen = Callable[[EventLog], EventLog]


def sample_events() -> list:  # one of every writable event type
    return [
        SessionCreated(
            task_id="t-1",
            prompt="Summarise README.md",
            agent_type="coder",
            tenant="acme",
            model="claude-sonnet-4-5",
            system="You are careful.",
            tools=["read_file", "send_email"],
            limits=Limits(max_steps=7),
            workspace="ws",
        ),
        SessionClaimed(owner="host-0", node="node-a", epoch=1),
        ModelCallRequested(step=1, request_id="r1", model="claude-sonnet-4-5"),
        ModelCallRetried(step=1, request_id="r1", attempt=1, error="overloaded", status_code=529),
        ModelResponded(
            step=1,
            request_id="r1",
            model="claude-sonnet-4-5",
            content='[{"type":"tool_use","id":"toolu_1","name":"read_file","input":{}}]',
            stop_reason="tool_use",
            input_tokens=100,
            output_tokens=20,
            cost_usd=0.0006,
            latency_ms=12.5,
        ),
        ModelCallFailed(step=2, request_id="r2", error="server error", status_code=500),
        ToolCallProposed(step=1, call_id="toolu_1", tool="read_file", input='{"path":"a"}'),
        ToolCallVetted(call_id="toolu_1", verdict="ask", risk="read", reason="policy"),
        ReviewRequested(call_id="toolu_1", reason="policy ask", in_doubt=False),
        ReviewDecided(call_id="toolu_1", approved=True, reviewer="ana", note="ok"),
        ToolCallStarted(call_id="toolu_1", idempotency_key="s:toolu_1"),
        ToolCallCompleted(call_id="toolu_1", output="contents", latency_ms=1.0),
        ToolCallProposed(step=2, call_id="toolu_2", tool="nope", input="{}"),
        ToolCallRejected(call_id="toolu_2", reason="unknown tool"),
        ToolCallFailed(call_id="toolu_1", error="boom", latency_ms=2.0),
        ContextCompacted(step=3, tokens_before=900, tokens_after=300, dropped_messages=4),
        ContextRepaired(step=3, problems=["orphaned tool_result toolu_1"]),
        LimitExceeded(code="MAX_STEPS_EXCEEDED", limit=7, value=8),
        SnapshotTaken(upto_seq=17, state="{}"),
        CancelRequested(by="cli", note="stop"),
        SessionCancelled(note="stop"),
        SessionCompleted(result="done"),
        SessionFailed(error="INTERNAL_ERROR: test"),
    ]


class EventLogContract:
    """Behaviour every EventLog backend must have."""

    def test_sample_covers_every_event_type(self) -> None:
        written = {type(e) for e in sample_events()}
        assert written == set(EVENT_TYPES) - {UnknownEvent}

    def test_append_and_read_back_every_event_type(self, log: EventLog) -> None:
        events = sample_events()
        result = log.append("s1", events, expected_seq=0, epoch=1)
        assert (result.first_position, result.last_position) == (1, len(events))
        assert result.last_seq == len(events)
        stored = log.read_stream("s1")
        assert [e.event for e in stored] == events
        assert [e.seq for e in stored] == list(range(1, len(events) + 1))
        assert [e.position for e in stored] == list(range(1, len(events) + 1))
        assert {e.session_id for e in stored} == {"s1"}
        assert {e.epoch for e in stored} == {1}
        assert len({e.event_id for e in stored}) == len(events)
        assert all(e.ts > 1_600_000_000 for e in stored)
        assert log.read_all(1) == stored

    def test_positions_are_global_and_contiguous(self, log: EventLog) -> None:
        log.append("a", [CancelRequested()], 0)
        log.append("b", [CancelRequested(), CancelRequested()], 0)
        r = log.append("a", [SessionCancelled()], 1)
        assert (r.first_position, r.last_seq) == (4, 2)
        everything = log.read_all(1)
        assert [e.position for e in everything] == [1, 2, 3, 4]
        assert [(e.session_id, e.seq) for e in everything] == [
            ("a", 1),
            ("b", 1),
            ("b", 2),
            ("a", 2),
        ]
        assert log.head() == 4
        assert log.last_seq("a") == 2 and log.last_seq("b") == 2 and log.last_seq("zz") == 0
        assert sorted(log.session_ids()) == ["a", "b"]

    def test_read_all_from_position_and_limit(self, log: EventLog) -> None:
        for i in range(30):
            log.append(f"s{i % 3}", [CancelRequested(note=str(i))], i // 3)
        assert [e.position for e in log.read_all(10, limit=5)] == [10, 11, 12, 13, 14]
        assert [e.position for e in log.read_all(28)] == [28, 29, 30]
        assert log.read_all(31) == []
        assert log.read_all(0, limit=1)[0].position == 1

    def test_read_stream_from_seq(self, log: EventLog) -> None:
        log.append("s", [CancelRequested(note=str(i)) for i in range(5)], 0)
        log.append("s", [CancelRequested(note=str(i)) for i in range(5, 8)], 5)
        assert [e.seq for e in log.read_stream("s", from_seq=4)] == [4, 5, 6, 7, 8]
        assert [e.event.note for e in log.read_stream("s", from_seq=7)] == ["6", "7"]  # type: ignore[union-attr]
        assert log.read_stream("s", from_seq=9) == []
        assert log.read_stream("missing") == []

    @pytest.mark.parametrize("expected", [0, 1, 3])
    def test_stale_or_future_expected_seq_is_refused(self, log: EventLog, expected: int) -> None:
        log.append("s", [CancelRequested(), CancelRequested()], 0)
        with pytest.raises(ConcurrencyError) as info:
            log.append("s", [SessionCancelled()], expected)
        assert (info.value.session_id, info.value.expected_seq, info.value.actual_seq) == (
            "s",
            expected,
            2,
        )
        assert log.last_seq("s") == 2 and log.head() == 2  # nothing was written

    def test_fencing(self, log: EventLog) -> None:
        log.append("s", [SessionClaimed(owner="h1", epoch=1)], 0, epoch=1)
        log.append("s", [SessionClaimed(owner="h2", epoch=2)], 1, epoch=2)  # a new owner claims
        with pytest.raises(FencedError) as info:
            log.append("s", [CancelRequested()], 2, epoch=1)  # the stale owner
        assert (info.value.epoch, info.value.current_epoch) == (1, 2)
        assert log.current_epoch("s") == 2
        # A non-owner (an operator's decision) is not fenced, but still seq-checked,
        # and its event carries the current owner epoch.
        log.append("s", [CancelRequested(by="cli")], 2)
        assert log.read_stream("s", 3)[0].epoch == 2
        log.append("s", [CancelRequested()], 3, epoch=2)
        # Fencing is per session.
        log.append("other", [CancelRequested()], 0, epoch=1)

    def test_bad_arguments(self, log: EventLog) -> None:
        with pytest.raises(ValueError):
            log.append("s", [], 0)
        with pytest.raises(ValueError):
            log.append("", [CancelRequested()], 0)
        with pytest.raises(ValueError):
            log.append("s", [CancelRequested()], -1)
        with pytest.raises(TypeError):
            log.append("s", ["not an event"], 0)  # type: ignore[list-item]
        with pytest.raises(TypeError):
            log.append("s", [UnknownEvent(type_name="X")], 0)
        assert log.head() == 0

    def test_durable_across_reopen(self, log: EventLog, reopen: Reopen) -> None:
        events = sample_events()
        log.append("s1", events[:5], 0, epoch=1)
        log.append("s2", events[5:], 0, epoch=3)
        before = log.read_all(1)
        log = reopen(log)
        assert log.read_all(1) == before
        assert log.last_seq("s1") == 5 and log.current_epoch("s2") == 3
        with pytest.raises(FencedError):
            log.append("s2", [CancelRequested()], len(events) - 5, epoch=2)
        r = log.append("s1", [CancelRequested()], 5, epoch=1)
        assert r.first_position == len(events) + 1

    def test_concurrent_threads_distinct_sessions(self, log: EventLog) -> None:
        n_threads, per_thread = 8, 40
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for i in range(per_thread):
                    log.append(f"t{t}", [CancelRequested(note=f"{t}:{i}")], i)
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        everything = log.read_all(1, limit=100_000)
        assert [e.position for e in everything] == list(range(1, n_threads * per_thread + 1))
        for t in range(n_threads):
            notes = [e.event.note for e in log.read_stream(f"t{t}")]  # type: ignore[union-attr]
            assert notes == [f"{t}:{i}" for i in range(per_thread)]

    def test_racing_writers_on_one_session_exactly_one_wins(self, log: EventLog) -> None:
        log.append("s", [CancelRequested()], 0)
        barrier = threading.Barrier(6)
        outcomes: list[str] = []

        def race(i: int) -> None:
            barrier.wait()
            try:
                log.append("s", [CancelRequested(note=str(i))], 1)
                outcomes.append("won")
            except ConcurrencyError:
                outcomes.append("lost")

        threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(outcomes) == ["lost"] * 5 + ["won"]
        assert log.last_seq("s") == 2

    def test_async_appends_group(self, log: EventLog) -> None:
        async def writer(w: int) -> None:
            for i in range(25):
                await log.append_async(f"w{w}", [CancelRequested(note=str(i))], i, epoch=1)

        async def main() -> None:
            await asyncio.gather(*(writer(w) for w in range(10)))
            with pytest.raises(ConcurrencyError):
                await log.append_async("w0", [CancelRequested()], 3, epoch=1)
            with pytest.raises(FencedError):
                await log.append_async("w0", [CancelRequested()], 25, epoch=0)

        asyncio.run(main())
        assert log.head() == 250
        assert [e.seq for e in log.read_stream("w7")] == list(range(1, 26))

    def test_wait_and_follow_see_new_events(self, log: EventLog) -> None:
        assert log.wait(0, timeout=0.05) == 0
        stop = threading.Event()
        seen: list[int] = []

        def tail() -> None:
            for batch in follow(log, 1, stop=stop, poll_s=0.05):
                seen.extend(e.position for e in batch)
                if len(seen) >= 20:
                    stop.set()

        th = threading.Thread(target=tail)
        th.start()
        for i in range(20):
            log.append("s", [CancelRequested()], i)
        th.join(timeout=10)
        assert not th.is_alive()
        assert seen == list(range(1, 21))
        assert log.wait(5, timeout=1) == 20

    def test_large_payloads_are_stored_once(self, log: EventLog) -> None:
        big = "0123456789abcdef" * 8192  # 128 KiB
        log.append("s", [ToolCallCompleted(call_id="c1", output=big)], 0)
        log.append("s", [ToolCallCompleted(call_id="c2", output=big)], 1)
        raw = log.read_all(1)
        refs = [e.event.output for e in raw]  # type: ignore[union-attr]
        assert all(isinstance(r, BlobRef) for r in refs)
        assert refs[0] == refs[1]  # one blob, referenced twice
        assert isinstance(refs[0], BlobRef) and log.load_blob(refs[0]) == big.encode()
        resolved = log.read_stream("s")
        assert [e.event.output for e in resolved] == [big, big]  # type: ignore[union-attr]
        small = log.append("s", [ToolCallCompleted(call_id="c3", output="tiny")], 2)
        assert log.read_all(small.first_position)[0].event.output == "tiny"  # type: ignore[union-attr]

    def test_envelopes_encode_as_json_for_projections(self, log: EventLog) -> None:
        log.append("s", sample_events()[:3], 0)
        doc = msgspec.json.decode(msgspec.json.encode(log.read_all(1)[0].event))
        assert doc["type"] == "SessionCreated" and doc["tenant"] == "acme"

    def test_errors_are_one_tree(self) -> None:
        from fleetlog.events.errors import FleetlogError

        assert issubclass(ConcurrencyError, LogError) and issubclass(LogError, FleetlogError)
        assert issubclass(FencedError, FleetlogError)
