"""PostgresLog under concurrency: a tailing reader never skips, fencing holds in the database.

Several ``PostgresLog`` instances on one database stand for several hosts.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from pg_server import pg_database, postgres

from fleetlog.events.errors import ConcurrencyError, FencedError, LogClosedError, LogError
from fleetlog.events.log import follow
from fleetlog.events.pglog import PostgresLog
from fleetlog.events.schema import CancelRequested, SessionClaimed

__all__ = ["pg_database", "postgres"]


@pytest.fixture
def hosts(pg_database: str) -> Iterator[list[PostgresLog]]:
    logs = [PostgresLog.open(pg_database, poll_s=0.05) for _ in range(3)]
    yield logs
    for log in logs:
        log.close()


def _tail(reader: PostgresLog, total: int, out: list[list[int]], stop: threading.Event) -> None:
    for batch in follow(reader, 1, stop=stop, batch=7, poll_s=0.05):
        out.append([e.position for e in batch])
        if sum(map(len, out)) >= total:
            stop.set()


def test_late_commit_with_lower_position_is_never_skipped(hosts: list[PostgresLog]) -> None:
    slow, fast, reader = hosts
    holding = threading.Event()
    slow_positions: list[int] = []

    def hold_open(session_id: str, first_position: int) -> None:
        # Inside the slow host's transaction, after its inserts, before its commit.
        slow_positions.append(first_position)
        holding.set()
        time.sleep(0.15)

    slow._before_commit = hold_open
    n_fast, per_fast, n_slow = 6, 15, 8
    total = n_fast * per_fast + n_slow * 3
    batches: list[list[int]] = []
    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(reader, total, batches, stop))
    tail.start()

    arrived_during_hold: list[tuple[float, int]] = []
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            for i in range(n_slow):
                slow.append("slow", [CancelRequested(note=str(i))] * 3, i * 3, epoch=1)
        except BaseException as e:
            errors.append(e)

    def fast_writer(w: int) -> None:
        try:
            for i in range(per_fast):
                during = holding.is_set()
                r = fast.append(f"fast{w}", [CancelRequested(note=f"{w}:{i}")], i, epoch=1)
                if during:
                    arrived_during_hold.append((time.monotonic(), r.first_position))
                time.sleep(random.random() * 0.01)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=slow_writer)]
    threads += [threading.Thread(target=fast_writer, args=(w,)) for w in range(n_fast)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    tail.join(timeout=30)
    stop.set()
    assert not errors
    assert not tail.is_alive()

    # Every event exactly once, in order, and every batch continues the last one.
    seen = [p for batch in batches for p in batch]
    assert seen == list(range(1, total + 1))
    for before, after in itertools.pairwise(batches):
        assert after[0] == before[-1] + 1
    # Appends that arrived while a lower position was still uncommitted were ordered after it.
    assert arrived_during_hold
    assert all(p > slow_positions[0] for _t, p in arrived_during_hold)
    # Streams are whole and in seq order.
    everything = reader.read_all(1, limit=100_000)
    assert len(everything) == total
    for w in range(n_fast):
        notes = [e.event.note for e in reader.read_stream(f"fast{w}")]  # type: ignore[union-attr]
        assert notes == [f"{w}:{i}" for i in range(per_fast)]
    assert [e.seq for e in reader.read_stream("slow")] == list(range(1, n_slow * 3 + 1))


def test_reader_sees_only_a_gapless_prefix_while_a_writer_holds_its_transaction(
    hosts: list[PostgresLog],
) -> None:
    slow, fast, reader = hosts
    fast.append("a", [CancelRequested()], 0)
    inside = threading.Event()
    release = threading.Event()

    def hold(session_id: str, first_position: int) -> None:
        inside.set()
        assert release.wait(10)

    slow._before_commit = hold
    results: dict[str, int] = {}

    def slow_append() -> None:
        results["slow"] = slow.append("b", [CancelRequested()] * 2, 0).first_position

    def fast_append() -> None:
        results["fast"] = fast.append("c", [CancelRequested()], 0).first_position

    t_slow = threading.Thread(target=slow_append)
    t_slow.start()
    assert inside.wait(10)
    t_fast = threading.Thread(target=fast_append)
    t_fast.start()
    time.sleep(0.3)
    # Positions 2-3 are drawn but not committed: nothing past position 1 is visible yet,
    # and the later writer waits rather than commit a higher position first.
    assert [e.position for e in reader.read_all(1)] == [1]
    assert reader.head() == 1
    assert reader.wait(1, timeout=0.1) == 1
    assert t_fast.is_alive()
    release.set()
    t_slow.join(10)
    t_fast.join(10)
    assert results == {"slow": 2, "fast": 4}
    assert [(e.position, e.session_id) for e in reader.read_all(1)] == [
        (1, "a"),
        (2, "b"),
        (3, "b"),
        (4, "c"),
    ]


def test_fencing_across_hosts(hosts: list[PostgresLog]) -> None:
    old, new, reader = hosts
    old.append("s", [SessionClaimed(owner="old", epoch=1)], 0, epoch=1)
    new.append("s", [SessionClaimed(owner="new", epoch=2)], 1, epoch=2)
    with pytest.raises(FencedError) as info:
        old.append("s", [CancelRequested()], 2, epoch=1)
    assert (info.value.epoch, info.value.current_epoch) == (1, 2)
    assert reader.last_seq("s") == 2 and reader.head() == 2
    assert old.current_epoch("s") == 2  # no host caches it: it is the database's


def test_claim_racing_an_open_append_is_serialized(hosts: list[PostgresLog]) -> None:
    old, new, reader = hosts
    old.append("s", [SessionClaimed(owner="old", epoch=1)], 0, epoch=1)
    inside = threading.Event()

    def hold(session_id: str, first_position: int) -> None:
        inside.set()
        time.sleep(0.3)

    old._before_commit = hold
    t = threading.Thread(target=lambda: old.append("s", [CancelRequested()], 1, epoch=1))
    t.start()
    assert inside.wait(10)
    # The new owner's claim waits for the open append, then sees its seq.
    with pytest.raises(ConcurrencyError) as info:
        new.append("s", [SessionClaimed(owner="new", epoch=2)], 1, epoch=2)
    assert info.value.actual_seq == 2
    t.join(10)
    old._before_commit = None
    new.append("s", [SessionClaimed(owner="new", epoch=2)], 2, epoch=2)
    with pytest.raises(FencedError):
        old.append("s", [CancelRequested()], 3, epoch=1)
    assert [e.epoch for e in reader.read_stream("s")] == [1, 1, 2]


def test_seq_is_unique_in_the_database(hosts: list[PostgresLog], pg_database: str) -> None:
    hosts[0].append("s", [CancelRequested()], 0)
    with psycopg.connect(pg_database) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "INSERT INTO fleetlog.events (position, session_id, seq, epoch, ts, event_id, "
            "type, data) VALUES (99, 's', 1, 0, 0, 'x', 'CancelRequested', '')"
        )


def test_closed_log_refuses(pg_database: str) -> None:
    log = PostgresLog.open(pg_database)
    log.close()
    log.close()
    with pytest.raises(LogClosedError):
        log.append("s", [CancelRequested()], 0)
    with pytest.raises(LogClosedError):
        log.read_all(1)


def test_unreachable_database_is_one_line_without_password(postgres: str) -> None:
    with pytest.raises(LogError) as info:
        PostgresLog.open("postgresql://who:s3cret@127.0.0.1:1/nowhere", retry_s=0.1)
    message = str(info.value)
    assert "127.0.0.1:1/nowhere" in message and "s3cret" not in message
    assert "\n" not in message


def test_other_schema_version_is_refused(pg_database: str) -> None:
    PostgresLog.open(pg_database).close()
    with psycopg.connect(pg_database) as conn:
        conn.execute("UPDATE fleetlog.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LogError, match="schema version 99"):
        PostgresLog.open(pg_database)
