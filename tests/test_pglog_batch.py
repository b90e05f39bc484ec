"""PostgresLog group commit: concurrent appends share one transaction, and fail alone.

A batch is the appends queued while the writer thread was busy with the previous
one. Tests that need a batch of a known shape hold the writer inside a first
append's transaction (``_before_commit``), queue the appends behind it, then let go.
Batching is counted in the database: ``events.tx`` is each row's transaction id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import msgspec
import psycopg
import pytest
from pg_server import pg_database, postgres

from fleetlog.events.errors import ConcurrencyError, FencedError, LogError
from fleetlog.events.log import AppendResult
from fleetlog.events.pglog import MAX_BATCH_APPENDS, PostgresLog
from fleetlog.events.schema import CancelRequested, SessionClaimed, SessionCreated

__all__ = ["pg_database", "postgres"]


@pytest.fixture
def log(pg_database: str) -> Iterator[PostgresLog]:
    opened = PostgresLog.open(pg_database, poll_s=0.05)
    yield opened
    opened.close()


def _transactions(dsn: str) -> list[tuple[int, list[str]]]:
    """Each writing transaction, in commit order: (row count, its sessions in order)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT count(*), array_agg(session_id ORDER BY position) FROM fleetlog.events "
            "WHERE position < 1000000 GROUP BY tx ORDER BY min(position)"
        ).fetchall()
    return [(int(n), list(sessions)) for n, sessions in rows]


def _assert_gapless(log: PostgresLog) -> None:
    positions = [e.position for e in log.read_all(1, limit=100_000) if e.position < 1_000_000]
    assert positions == list(range(1, log.head() + 1))


async def _one_batch(
    log: PostgresLog, appends: list[Coroutine[Any, Any, AppendResult]]
) -> list[AppendResult | BaseException]:
    """Run ``appends`` as one batch: hold the writer in a first append ("gate") until
    all of them are queued behind it."""
    entered, release = threading.Event(), threading.Event()

    def hold(session_id: str, first_position: int) -> None:
        if session_id == "gate":
            entered.set()
            assert release.wait(10)

    log._before_commit = hold
    seq = await asyncio.to_thread(log.last_seq, "gate")
    gate = asyncio.ensure_future(log.append_async("gate", [CancelRequested()], seq))
    deadline = time.monotonic() + 10
    while not entered.is_set():
        assert time.monotonic() < deadline and not gate.done(), gate
        await asyncio.sleep(0.002)
    tasks = [asyncio.ensure_future(a) for a in appends]
    while len(log._queue) < len(tasks):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.002)
    release.set()
    await gate
    log._before_commit = None
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_concurrent_sessions_share_transactions(log: PostgresLog, pg_database: str) -> None:
    sessions, per_session = 100, 5

    async def session(k: int) -> list[AppendResult]:
        results = []
        for i in range(per_session):
            events = [CancelRequested(note=f"{k}:{i}")]
            results.append(await log.append_async(f"s{k}", events, i, epoch=1))
        return results

    async def main() -> list[list[AppendResult]]:
        return await asyncio.gather(*(session(k) for k in range(sessions)))

    results = asyncio.run(main())
    total = sessions * per_session
    assert log.head() == total
    _assert_gapless(log)
    assert sorted(r.first_position for rs in results for r in rs) == list(range(1, total + 1))
    for k in (0, 37, 99):
        stream = log.read_stream(f"s{k}")
        assert [e.seq for e in stream] == list(range(1, per_session + 1))
        assert [e.event.note for e in stream] == [f"{k}:{i}" for i in range(per_session)]  # type: ignore[union-attr]
    transactions = _transactions(pg_database)
    assert sum(n for n, _ in transactions) == total
    # One commit (one fsync) per batch: far fewer than one per append.
    print(f"{total} appends in {len(transactions)} transactions")
    assert len(transactions) <= total // 5, len(transactions)


def test_threads_and_event_loops_share_the_writer(log: PostgresLog, pg_database: str) -> None:
    """Sync appends from threads and async ones from two event loops, all at once."""
    errors: list[BaseException] = []
    positions: list[int] = []
    lock = threading.Lock()

    def threaded(k: int) -> None:
        try:
            for i in range(20):
                r = log.append(f"t{k}", [CancelRequested(note=str(i))], i, epoch=1)
                with lock:
                    positions.append(r.first_position)
        except BaseException as e:
            errors.append(e)

    def loop(k: int) -> None:
        async def session(s: int) -> None:
            for i in range(5):
                r = await log.append_async(f"l{k}-{s}", [CancelRequested()], i, epoch=1)
                with lock:
                    positions.append(r.first_position)

        async def main() -> None:
            await asyncio.gather(*(session(s) for s in range(20)))

        try:
            asyncio.run(main())
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=threaded, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    total = 4 * 20 + 2 * 20 * 5
    assert sorted(positions) == list(range(1, total + 1))
    _assert_gapless(log)
    assert len(_transactions(pg_database)) < total


def test_refused_appends_fail_alone_in_their_batch(log: PostgresLog, pg_database: str) -> None:
    log.append("fenced", [SessionClaimed(owner="new", epoch=2)], 0, epoch=2)
    log.append("stale", [CancelRequested()], 0, epoch=1)

    async def main() -> list[AppendResult | BaseException]:
        return await _one_batch(
            log,
            [
                log.append_async("a", [CancelRequested()] * 2, 0, epoch=1),
                log.append_async("fenced", [CancelRequested()], 1, epoch=1),
                log.append_async("stale", [CancelRequested()], 5, epoch=1),
                log.append_async("twice", [CancelRequested()], 0, epoch=1),
                log.append_async("twice", [CancelRequested()], 1, epoch=1),  # sees the first
                log.append_async("b", [CancelRequested()], 0, epoch=1),
            ],
        )

    a, fenced, stale, twice1, twice2, b = asyncio.run(main())
    assert isinstance(fenced, FencedError) and (fenced.epoch, fenced.current_epoch) == (1, 2)
    assert isinstance(stale, ConcurrencyError) and stale.actual_seq == 1
    # Positions: 1-2 set-up, 3 the gate, then the batch's writes in queue order.
    assert isinstance(a, AppendResult) and (a.first_position, a.last_position) == (4, 5)
    assert isinstance(twice1, AppendResult) and (twice1.first_position, twice1.last_seq) == (6, 1)
    assert isinstance(twice2, AppendResult) and (twice2.first_position, twice2.last_seq) == (7, 2)
    assert isinstance(b, AppendResult) and b.first_position == 8
    assert log.head() == 8
    _assert_gapless(log)
    assert _transactions(pg_database)[-1] == (5, ["a", "a", "twice", "twice", "b"])
    assert log.last_seq("fenced") == 1 and log.last_seq("stale") == 1


def test_an_append_colliding_with_foreign_rows_fails_alone(
    log: PostgresLog, pg_database: str
) -> None:
    """A unique violation (here a row some other writer put at seq 1 of "x" without
    its streams row) fails that append only; the rest of the batch commits, gapless."""
    log.append("setup", [CancelRequested()], 0)
    with psycopg.connect(pg_database) as conn:
        conn.execute(
            "INSERT INTO fleetlog.events (position, session_id, seq, epoch, ts, event_id, "
            "type, data) VALUES (1000000, 'x', 1, 0, 0, 'foreign', 'CancelRequested', %s)",
            (msgspec.msgpack.encode(CancelRequested(note="foreign")),),
        )

    async def main() -> list[AppendResult | BaseException]:
        return await _one_batch(
            log,
            [
                log.append_async("a", [CancelRequested()], 0),
                log.append_async("x", [CancelRequested()], 0),
                log.append_async("x", [CancelRequested()], 1),  # its predecessor failed
                log.append_async("b", [CancelRequested()] * 3, 0),
            ],
        )

    a, x0, x1, b = asyncio.run(main())
    assert type(x0) is LogError
    message = str(x0)
    assert "\n" not in message and log.where in message and "session x" in message
    assert isinstance(x1, ConcurrencyError) and x1.actual_seq == 0
    assert isinstance(a, AppendResult) and a.first_position == 3
    assert isinstance(b, AppendResult) and (b.first_position, b.last_position) == (4, 6)
    assert log.head() == 6
    _assert_gapless(log)
    assert _transactions(pg_database)[-1] == (4, ["a", "b", "b", "b"])
    assert log.last_seq("x") == 0


def test_batches_are_bounded_in_appends_and_bytes(log: PostgresLog, pg_database: str) -> None:
    n = MAX_BATCH_APPENDS + 44

    async def many() -> list[AppendResult | BaseException]:
        return await _one_batch(
            log, [log.append_async(f"s{i}", [CancelRequested()], 0) for i in range(n)]
        )

    assert all(isinstance(r, AppendResult) for r in asyncio.run(many()))
    assert [count for count, _ in _transactions(pg_database)] == [1, MAX_BATCH_APPENDS, 44]

    big = "x" * (1_500_000)  # inline (not a blob field): 1.5 MB of payload per append

    async def large() -> list[AppendResult | BaseException]:
        return await _one_batch(
            log, [log.append_async(f"big{i}", [CancelRequested(note=big)], 0) for i in range(5)]
        )

    assert all(isinstance(r, AppendResult) for r in asyncio.run(large()))
    # At most 4 MB a batch: 2 + 2 + 1 of them.
    assert [count for count, _ in _transactions(pg_database)][3:] == [1, 2, 2, 1]
    _assert_gapless(log)


def test_async_append_with_a_blob(log: PostgresLog) -> None:
    prompt = "p" * 300_000

    async def main() -> AppendResult:
        return await log.append_async("s", [SessionCreated(task_id="t", prompt=prompt)], 0)

    result = asyncio.run(main())
    [envelope] = log.read_stream("s")
    assert envelope.position == result.first_position
    assert envelope.event.prompt == prompt  # type: ignore[union-attr]
    [raw] = log.read_stream("s", resolve_blobs=False)
    assert not isinstance(raw.event.prompt, str)  # type: ignore[union-attr]
