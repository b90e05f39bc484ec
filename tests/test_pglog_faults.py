"""PostgresLog when PostgreSQL fails: restarts and crashes mid-append, commits whose
reply is lost, and bad input. Each failure surfaces as one line naming host:port/db,
never the password; nothing is acknowledged that is not committed, and nothing
acknowledged is lost or written twice.

These tests stop and crash their own server (not the session's shared one).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pg_server import PgServer, _free_port

from fleetlog.events.errors import LogError
from fleetlog.events.log import AppendResult, follow
from fleetlog.events.pglog import PostgresLog
from fleetlog.events.schema import CancelRequested

PASSWORD = "s3cret-Pw"


@pytest.fixture(scope="module")
def server() -> Iterator[PgServer]:
    own = PgServer()
    try:
        own.start()
        own.require_password("fleet", PASSWORD)
        yield own
    finally:
        own.stop("immediate")  # thrown away: no shutdown checkpoint to wait for


@pytest.fixture
def dbname(server: PgServer) -> str:
    if not server.started:  # a failed test left it down
        server.resume()
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _fleet_dsn(server: PgServer, dbname: str, password: str = PASSWORD) -> str:
    return f"postgresql://fleet:{password}@127.0.0.1:{server.port}/{dbname}"


def _poll(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _one_line_without_password(error: BaseException, where: str) -> str:
    message = str(error)
    assert "\n" not in message, message
    assert where in message, message
    assert PASSWORD not in message and PASSWORD not in repr(error), message
    return message


# --- restarts and crashes during appends ------------------------------------------------


@pytest.mark.parametrize("crash", ["restart-immediate", "kill-postmaster"])
def test_appends_and_readers_survive_a_server_crash(
    server: PgServer, dbname: str, crash: str
) -> None:
    """Sync threads on one host and 20 asyncio sessions on another append while the
    server crashes (``pg_ctl restart -m immediate``, or SIGKILL of the postmaster and a
    start). Afterwards every acknowledged append is there exactly once, where its
    AppendResult says; positions are gapless, seqs contiguous, no event twice; a
    tailing reader saw every event once, in order, across the crash."""
    dsn = server.dsn_for(dbname)
    hosts = [PostgresLog.open(dsn, retry_s=30, poll_s=0.05) for _ in range(3)]
    sync_host, async_host, reader = hosts
    stop = threading.Event()
    lock = threading.Lock()
    acked: list[tuple[str, list[str], AppendResult]] = []
    failed: list[tuple[str, list[str], BaseException]] = []
    serial = itertools.count()

    def notes(sid: str) -> list[str]:
        k = next(serial)
        return [f"{sid}/{k}/{j}" for j in range(1 + k % 3)]

    def record(sid: str, batch: list[str], outcome: AppendResult | BaseException) -> None:
        with lock:
            if isinstance(outcome, AppendResult):
                acked.append((sid, batch, outcome))
            else:
                failed.append((sid, batch, outcome))

    def sync_writer(sid: str) -> None:
        seq = 0
        while not stop.is_set():
            batch = notes(sid)
            try:
                result = sync_host.append(sid, [CancelRequested(note=n) for n in batch], seq, 1)
            except LogError as e:  # may or may not have landed: ask the log
                record(sid, batch, e)
                seq = sync_host.last_seq(sid)
                continue
            record(sid, batch, result)
            seq = result.last_seq

    async def async_session(sid: str) -> None:
        seq = 0
        while not stop.is_set():
            batch = notes(sid)
            try:
                events = [CancelRequested(note=n) for n in batch]
                result = await async_host.append_async(sid, events, seq, 1)
            except LogError as e:
                record(sid, batch, e)
                seq = await asyncio.to_thread(async_host.last_seq, sid)
                continue
            record(sid, batch, result)
            seq = result.last_seq

    def async_writers() -> None:
        async def main() -> None:
            await asyncio.gather(*(async_session(f"a{k}") for k in range(20)))

        asyncio.run(main())

    tailed: list[int] = []
    tail_stop = threading.Event()

    def tail() -> None:
        for batch in follow(reader, 1, stop=tail_stop, batch=100, poll_s=0.05):
            tailed.extend(e.position for e in batch)

    unexpected: list[BaseException] = []

    def guarded(target: object, *args: object) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)  # type: ignore[operator]
            except BaseException as e:
                unexpected.append(e)

        return threading.Thread(target=run)

    threads = [guarded(sync_writer, f"t{k}") for k in range(3)]
    threads += [guarded(async_writers), guarded(tail)]
    try:
        for th in threads:
            th.start()
        _poll(lambda: len(acked) >= 100, 30, "appends before the crash")
        if crash == "restart-immediate":
            server.restart("immediate")
        else:
            server.kill()
            server.resume()
        before = len(acked)
        _poll(lambda: len(acked) >= before + 300, 60, "appends after the crash")
    finally:
        stop.set()
        for th in threads[:-1]:
            th.join(60)
    try:
        assert not unexpected, unexpected
        # The crash lasted well under retry_s: every append got through (some maybe
        # by reading back a commit whose reply the crash swallowed).
        assert not failed, failed[:3]
        everything = reader.read_all(1, limit=1_000_000)
        head = reader.head()
        assert [e.position for e in everything] == list(range(1, head + 1))
        by_position = {e.position: e for e in everything}
        logged = [e.event.note for e in everything]  # type: ignore[union-attr]
        assert len(set(logged)) == len(logged), "an event was written twice"
        assert sorted(logged) == sorted(n for _sid, batch, _r in acked for n in batch)
        for sid, batch, result in acked:
            assert result.last_position - result.first_position + 1 == len(batch)
            for j, note in enumerate(batch):
                envelope = by_position[result.first_position + j]
                assert (envelope.session_id, envelope.event.note) == (sid, note)  # type: ignore[union-attr]
                assert envelope.seq == result.last_seq - len(batch) + 1 + j
        for sid in {sid for sid, _b, _r in acked}:
            seqs = [e.seq for e in reader.read_stream(sid)]
            assert seqs == list(range(1, len(seqs) + 1))
        # The tailing reader (read_all + wait) went through the crash and saw it all.
        _poll(lambda: len(tailed) >= head, 30, "the tailing reader")
        assert tailed == list(range(1, head + 1))
        # And wait() wakes on a new commit after the crash.
        waiting = threading.Thread(target=lambda: tailed.append(reader.wait(head, 20)))
        waiting.start()
        sync_host.append("after", [CancelRequested(note="after")], 0)
        waiting.join(20)
        assert tailed[-1] == head + 1
    finally:
        tail_stop.set()
        threads[-1].join(10)
        for host in hosts:
            host.close()


# --- a commit whose reply is lost -------------------------------------------------------


def _terminate_writer(dsn: str) -> None:
    """End the log's writer backend from another connection, as a crash would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'fleetlog-writer' "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed == [(True,)], killed


def _rows(dsn: str) -> list[tuple[int, str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT position, session_id, seq FROM fleetlog.events ORDER BY position"
        ).fetchall()
    return [(int(p), str(s), int(q)) for p, s, q in rows]


def test_a_commit_whose_reply_is_lost_is_read_back_as_committed(
    server: PgServer, dbname: str
) -> None:
    """A batch's COMMIT succeeds, then its reply is "lost" (the hook raises the error a
    dropped connection raises): each append of the batch is resolved by reading it
    back, and returned, not written again (which a stale expected_seq would refuse)."""
    dsn = server.dsn_for(dbname)
    log = PostgresLog.open(dsn)
    entered, release = threading.Event(), threading.Event()
    commits: list[int] = []

    def before_commit(session_id: str, first_position: int) -> None:
        if session_id == "gate":
            entered.set()
            assert release.wait(10)

    def after_commit() -> None:
        commits.append(1)
        if len(commits) == 2:  # the batch queued behind the gate's
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    log._before_commit = before_commit
    log._after_commit = after_commit

    async def main() -> list[AppendResult]:
        gate = asyncio.ensure_future(log.append_async("gate", [CancelRequested()], 0))
        while not entered.is_set():
            await asyncio.sleep(0.002)
        tasks = [
            asyncio.ensure_future(log.append_async(f"s{k}", [CancelRequested()] * 2, 0))
            for k in range(3)
        ]
        while len(log._queue) < 3:
            await asyncio.sleep(0.002)
        release.set()
        await gate
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(asyncio.wait_for(main(), 20))
        assert len(commits) == 2  # the lost reply was not followed by another commit
        assert [(r.first_position, r.last_position, r.last_seq) for r in results] == [
            (2, 3, 2),
            (4, 5, 2),
            (6, 7, 2),
        ]
        assert _rows(dsn) == [
            (1, "gate", 1),
            *[(p, f"s{(p - 2) // 2}", 1 + p % 2) for p in range(2, 8)],
        ]
        assert log.head() == 7 and log.last_seq("s2") == 2
    finally:
        release.set()
        log.close()


def test_a_lost_reply_of_a_single_append(server: PgServer, dbname: str) -> None:
    dsn = server.dsn_for(dbname)
    log = PostgresLog.open(dsn)
    armed = threading.Event()
    lost: list[int] = []

    def after_commit() -> None:
        if armed.is_set() and not lost:
            lost.append(1)
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    log._after_commit = after_commit
    try:
        log.append("s0", [CancelRequested()], 0)
        armed.set()
        result = log.append("s0", [CancelRequested()] * 3, 1)  # its reply is lost
        assert lost == [1]
        assert (result.first_position, result.last_position, result.last_seq) == (2, 4, 4)
        assert _rows(dsn) == [(p, "s0", p) for p in range(1, 5)]
        assert log.append("s0", [CancelRequested()], 4).first_position == 5
    finally:
        log.close()


def test_a_commit_that_did_not_land_is_retried_once_known_safe(
    server: PgServer, dbname: str
) -> None:
    """The writer's backend is terminated just before its COMMIT: the COMMIT fails with
    the outcome unknown; the read-back shows nothing landed (and the transaction is over),
    so the batch is written again: acknowledged once, present once."""
    dsn = server.dsn_for(dbname)
    log = PostgresLog.open(dsn)
    terminated: list[str] = []

    def before_commit(session_id: str, first_position: int) -> None:
        if not terminated:
            terminated.append(session_id)
            _terminate_writer(dsn)

    log._before_commit = before_commit
    try:
        result = log.append("s", [CancelRequested()] * 2, 0)
        assert terminated == ["s"]
        assert (result.first_position, result.last_position, result.last_seq) == (1, 2, 2)
        assert _rows(dsn) == [(1, "s", 1), (2, "s", 2)]
    finally:
        log.close()


def test_a_commit_that_never_lands_raises_and_writes_nothing(server: PgServer, dbname: str) -> None:
    """Every COMMIT fails (the backend is terminated each time): after retry_s the
    append raises LogError, one line, and nothing of it is in the log."""
    dsn = server.dsn_for(dbname)
    log = PostgresLog.open(_fleet_dsn(server, dbname), retry_s=1.0)
    log._before_commit = lambda session_id, first_position: _terminate_writer(dsn)
    try:
        started = time.monotonic()
        with pytest.raises(LogError) as info:
            log.append("s", [CancelRequested()] * 2, 0)
        assert time.monotonic() - started < 5
        message = _one_line_without_password(info.value, f"127.0.0.1:{server.port}/{dbname}")
        assert "not committed" in message
        assert _rows(dsn) == []
        assert log.head() == 0 and log.last_seq("s") == 0
    finally:
        log.close()


# --- bad input: one line, naming host:port/db, never the password ------------------------


def test_unreachable_server(server: PgServer) -> None:
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(LogError) as info:
        PostgresLog.open(f"postgresql://fleet:{PASSWORD}@127.0.0.1:{port}/fleetdb", retry_s=0.5)
    assert time.monotonic() - started < 5
    _one_line_without_password(info.value, f"127.0.0.1:{port}/fleetdb")


def test_wrong_password_unknown_role_and_unknown_database(server: PgServer, dbname: str) -> None:
    where = f"127.0.0.1:{server.port}/{dbname}"
    PostgresLog.open(_fleet_dsn(server, dbname)).close()  # the right password works
    with pytest.raises(LogError) as info:
        PostgresLog.open(_fleet_dsn(server, dbname, "not-the-Pw"))
    message = _one_line_without_password(info.value, where)
    assert "password authentication failed" in message and "not-the-Pw" not in message
    with pytest.raises(LogError) as info:
        PostgresLog.open(f"postgresql://nobody:{PASSWORD}@127.0.0.1:{server.port}/{dbname}")
    assert 'role "nobody" does not exist' in _one_line_without_password(info.value, where)
    with pytest.raises(LogError) as info:
        PostgresLog.open(_fleet_dsn(server, "nope"))
    message = _one_line_without_password(info.value, f"127.0.0.1:{server.port}/nope")
    assert 'database "nope" does not exist' in message


def test_unparsable_dsn_is_not_repeated() -> None:
    with pytest.raises(LogError) as info:
        PostgresLog.open(f"host=127.0.0.1 password={PASSWORD} trailing")
    assert "\n" not in str(info.value)
    assert PASSWORD not in str(info.value) and "trailing" not in str(info.value)


def test_another_schema_version_is_refused(server: PgServer, dbname: str) -> None:
    dsn = _fleet_dsn(server, dbname)
    PostgresLog.open(dsn).close()
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE fleetlog.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LogError) as info:
        PostgresLog.open(dsn)
    message = _one_line_without_password(info.value, f"127.0.0.1:{server.port}/{dbname}")
    assert "schema version 99" in message


def test_server_going_away_mid_run(server: PgServer, dbname: str) -> None:
    """The server stops: appends (sync and async) and reads raise LogError within
    retry_s, in one line; once it is back, the same log works again."""
    where = f"127.0.0.1:{server.port}/{dbname}"
    log = PostgresLog.open(_fleet_dsn(server, dbname), retry_s=1.0)
    try:
        log.append("s", [CancelRequested()], 0)
        server.halt("fast")
        for attempt in ("sync", "async", "read"):
            started = time.monotonic()
            with pytest.raises(LogError) as info:
                if attempt == "sync":
                    log.append("s", [CancelRequested()], 1)
                elif attempt == "async":
                    asyncio.run(log.append_async("s", [CancelRequested()], 1))
                else:
                    log.read_all(1)
            assert time.monotonic() - started < 1.0 + 2.0, attempt
            _one_line_without_password(info.value, where)
        server.resume()
        assert log.append("s", [CancelRequested()], 1).first_position == 2
        assert [e.position for e in log.read_all(1)] == [1, 2]
    finally:
        if not server.started:
            server.resume()
        log.close()
