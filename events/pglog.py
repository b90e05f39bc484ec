"""PostgresLog: the shared event log in PostgreSQL, for fleets that span machines.

It implements the ``EventLog`` protocol exactly as ``FileLog`` does (same errors,
same return types) and passes the same contract suite (``tests/contract_log.py``).

Tables (schema ``fleetlog``, created on open, idempotently, under an advisory lock)::

    meta(key, value)                       schema_version = 1
    log_position(next_position)            one row: the global position counter
    streams(session_id, version, epoch)    one row per session: last seq, newest epoch
    events(position, tx, session_id, seq, epoch, ts, event_id, type, data)
                                           primary key position; unique (session_id, seq)
    blobs(sha256, size, data)              large payloads, content-addressed

**Global order.** The contract wants positions global and *contiguous from 1*,
so they cannot come from a sequence (a rolled-back or crashed transaction leaves
a hole, and a sequence value is drawn before a transaction commits, in no
particular commit order). Positions are drawn instead from the single
``log_position`` row, updated inside the writing transaction: its row lock is
held until commit, so a second transaction waits for the first to commit (or
roll back) before it gets a position. Hence commit order = position order and
the committed rows always form a gapless prefix ``1..head``: a reader that asks
for ``position >= P`` can never pass a row that commits later with a lower
position (the sequence-versus-commit-order problem), because no such row can
exist. The price is that transactions serialize on that row for the span of
their inserts and commit (DESIGN.md measured 1.7-4.4k transactions/s for this
family of designs); the per-session checks run *before* the counter is taken,
so only the inserts and the commit are serialized, and group commit (below)
spreads one such span over many appends. (The alternative in DESIGN.md, a
transaction-id watermark over a ``bigserial``, keeps writers concurrent but
leaves gaps, which the contract forbids; ``events.tx`` is kept so a later
version can add it.)

**Group commit.** Every append, sync or async, from any thread or event loop,
is queued to one writer thread per ``PostgresLog``, which owns one connection
and commits whatever queued while it was busy as *one* transaction (one commit,
one WAL flush, one hold of the counter lock): up to ``MAX_BATCH_APPENDS``
appends or ``MAX_BATCH_BYTES`` of payload. Callers are told through a future
(an asyncio one is resolved with ``call_soon_threadsafe``, so the event loop
never blocks). A thread, not an asyncio task, because the log serves several
event loops and plain threads at once and the blocking psycopg calls must not
run on anybody's loop. A transaction costs four round trips whatever its size
(BEGIN, lock the streams, one statement for all the writes, COMMIT; the old
per-append transaction took seven), so a lone session pays about what it did,
and many sessions share both the round trips and the fsync. Measured on the
2-core reference machine, fsync on, one event per append: ``append_async``
from 1 / 10 / 100 sessions on one loop, ~0.57k / ~2.8k / ~11k appends/s
(one transaction per append before: ~0.58k/s at any concurrency); one thread
calling ``append`` in a loop is ~10% slower than before (the hand-off to the
writer thread and back).

**Fencing and optimistic concurrency** are enforced in the database, in the
writing transaction: the batch's ``streams`` rows are locked ``FOR UPDATE``
(missing ones inserted first), and each append's ``expected_seq`` is compared
with its stream's version (``ConcurrencyError``) and its epoch with the
stream's (``FencedError`` for an older one), in queue order, so a second
append to one session in one batch sees the first. A refused append writes
nothing and fails alone: the rest of its batch commits. Every transaction
locks its stream rows in the database's sort order of session ids and the
counter last, so two hosts' batches never deadlock. ``unique (session_id,
seq)`` is a second line of defence: an append that collides with rows already
there rolls the batch back, and it is redone with one savepoint per append, so
that only the colliding append fails (positions stay gapless: they are handed
out only to appends that were written). Two processes (two hosts) on one
database therefore fence each other exactly as FileLog's single writer does.

**Large payloads** go to ``blobs`` (FileLog's threshold logic, ``BlobStore``),
committed before the event that references them, so every node reads them.

**Waiting**: a batch does ``NOTIFY fleetlog_events`` inside its transaction
(delivered at commit). ``wait`` listens on one background connection and falls
back to polling ``head()`` every ``poll_s`` seconds, so a lost notification or
listener connection costs latency, never correctness.

**Failures.** A connection error before a batch's COMMIT was sent is retried
with backoff (nothing was written), within ``retry_s`` of each append's call.
An error *during* the COMMIT leaves the outcome unknown; it is resolved by
reading each append's last row back (the event ids are unique), never by
guessing. The read-back first takes the counter row's lock, which the lost
transaction held from before its COMMIT until it ended (and a backend that
outlives its client connection is terminated on reconnecting), so what the
read-back sees is final: appends that landed are acknowledged; a batch that did
not land is written again (safe: nothing of it was committed), until
``retry_s``, then ``LogError``; an outcome that cannot be read back is a
``LogError`` saying so. Reads retry connection errors the same way, on a small
pool whose callers connect themselves, so a reader recovers the moment the
server is back (not on a background pool's reconnect schedule). Every
PostgreSQL error surfaces as one line in a ``LogError`` naming
``host:port/dbname``, never the password.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from .blobs import DEFAULT_BLOB_THRESHOLD, BlobStore
from .codec import _decode_raw_event
from .errors import (
    BlobMissingError,
    ConcurrencyError,
    FencedError,
    LogClosedError,
    LogError,
)
from .log import AppendResult, check_append, settle_future
from .schema import BlobRef, Envelope, Event

__all__ = ["MAX_BATCH_APPENDS", "MAX_BATCH_BYTES", "SCHEMA_VERSION", "PostgresLog"]

SCHEMA_VERSION: Final = 1
CHANNEL: Final = "fleetlog_events"

_encoder: Final = msgspec.msgpack.Encoder()

T = TypeVar("T")

_SCHEMA: Final = (
    "CREATE SCHEMA IF NOT EXISTS fleetlog",
    "CREATE TABLE IF NOT EXISTS fleetlog.meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE IF NOT EXISTS fleetlog.log_position (
        id boolean PRIMARY KEY DEFAULT true CHECK (id),
        next_position bigint NOT NULL)""",
    "INSERT INTO fleetlog.log_position (id, next_position) VALUES (true, 1) ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS fleetlog.streams (
        session_id text PRIMARY KEY,
        version bigint NOT NULL,
        epoch bigint NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS fleetlog.events (
        position bigint PRIMARY KEY,
        tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
        session_id text NOT NULL,
        seq bigint NOT NULL,
        epoch bigint NOT NULL,
        ts double precision NOT NULL,
        event_id text NOT NULL,
        type text NOT NULL,
        data bytea NOT NULL,
        UNIQUE (session_id, seq))""",
    """CREATE TABLE IF NOT EXISTS fleetlog.blobs (
        sha256 text PRIMARY KEY,
        size bigint NOT NULL,
        data bytea NOT NULL)""",
)

_COLUMNS: Final = "position, session_id, seq, epoch, ts, event_id, data"
_INSERT: Final = (
    "INSERT INTO fleetlog.events (position, session_id, seq, epoch, ts, event_id, type, data) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
# A batch's writes in one statement (one round trip): draw the positions from the
# counter (taking its row lock), insert the events at counter + offset, set the
# streams' versions and epochs, and notify listeners (delivered at commit).
_WRITE: Final = (
    """
WITH counter AS (
    UPDATE fleetlog.log_position SET next_position = next_position + %s
    RETURNING next_position - %s AS first
), inserted AS (
    INSERT INTO fleetlog.events (position, session_id, seq, epoch, ts, event_id, type, data)
    SELECT counter.first + r.k, r.session_id, r.seq, r.epoch, r.ts, r.event_id, r.type, r.data
    FROM counter, unnest(%s::bigint[], %s::text[], %s::bigint[], %s::bigint[],
                         %s::float8[], %s::text[], %s::text[], %s::bytea[])
        AS r(k, session_id, seq, epoch, ts, event_id, type, data)
), streams AS (
    UPDATE fleetlog.streams AS s SET version = u.version, epoch = u.epoch
    FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS u(session_id, version, epoch)
    WHERE s.session_id = u.session_id
)
SELECT counter.first, pg_notify('"""
    + CHANNEL
    + """', '') FROM counter
"""
)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _where(dsn: str) -> str:
    """``host:port/dbname`` of a DSN: what error messages name (never the password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparsable DSN>"
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    db = params.get("dbname") or params.get("user") or "postgres"
    return f"{host}:{port}/{db}"


def _password(dsn: str) -> str | None:
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        return None
    return str(password) if password else None


class _StreamsMissing(psycopg.OperationalError):
    """Stream rows this writer saw are gone: forget them, write the batch again."""


class _NoConnection(psycopg.OperationalError):
    """Every pooled connection stayed busy for as long as the caller could wait."""


class _Connections:
    """Connections for reads and blob writes: idle ones are reused, new ones are made
    by the caller that needs one (at most ``size`` at a time).

    Unlike a pool that reconnects in the background on its own backoff schedule, a
    caller reconnects as soon as its own retry loop says so: reads recover the
    moment the server is back. One dead connection found means the server went
    away since the idle ones were made: they are all dropped, not tried one by one.
    """

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    @contextlib.contextmanager
    def connection(self, timeout: float) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=timeout):
            raise _NoConnection(f"no free connection within {timeout:.3g}s")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = psycopg.connect(
                    self._dsn, autocommit=True, connect_timeout=max(2, math.ceil(timeout))
                )
            try:
                yield conn
            finally:
                self._put(conn)
        finally:
            self._slots.release()

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        status = conn.info.transaction_status
        with self._lock:
            if not conn.broken and status == psycopg.pq.TransactionStatus.IDLE:
                if not self._closed:
                    self._idle.append(conn)
                    return
                dead: list[psycopg.Connection[Any]] = []
            else:
                dead, self._idle = self._idle, []
        for c in [conn, *dead]:
            with contextlib.suppress(Exception):
                c.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


class _PgBlobs(BlobStore):
    """BlobStore's threshold logic, with the blobs in PostgreSQL."""

    def __init__(self, log: PostgresLog, threshold: int) -> None:
        super().__init__(Path(log.where), threshold)
        self._log = log

    def put(self, data: bytes) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()

        def store(conn: psycopg.Connection[Any]) -> None:
            # Autocommit: durable before the event that references it is appended.
            conn.execute(
                "INSERT INTO fleetlog.blobs (sha256, size, data) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (digest, len(data), data),
            )

        self._log._retrying(store)
        return BlobRef(sha256=digest, size=len(data))

    def get(self, ref: BlobRef) -> bytes:
        def fetch(conn: psycopg.Connection[Any]) -> bytes | None:
            row = conn.execute(
                "SELECT data FROM fleetlog.blobs WHERE sha256 = %s", (ref.sha256,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        data = self._log._retrying(fetch)
        if data is None:
            raise BlobMissingError(ref.sha256, "missing from the blob table")
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobMissingError(ref.sha256, "content does not match its hash")
        return data


#: A batch holds at most this many appends and (beyond its first append) this many
#: payload bytes: bounds the transaction, the counter lock's hold time and memory.
MAX_BATCH_APPENDS: Final = 256
MAX_BATCH_BYTES: Final = 4 << 20


class _Request:
    """One queued append and how to tell its caller the outcome."""

    __slots__ = (
        "afuture",
        "deadline",
        "epoch",
        "event_ids",
        "expected_seq",
        "future",
        "loop",
        "payloads",
        "session_id",
        "size",
        "ts",
    )

    def __init__(
        self,
        session_id: str,
        payloads: list[tuple[str, bytes]],
        event_ids: list[str],
        expected_seq: int,
        epoch: int | None,
        retry_s: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.session_id = session_id
        self.payloads = payloads
        self.event_ids = event_ids
        self.expected_seq = expected_seq
        self.epoch = epoch
        self.size = sum(len(data) for _type, data in payloads)
        self.ts = time.time()
        self.deadline = time.monotonic() + retry_s
        self.loop = loop
        self.future: Future[AppendResult] | None = None
        self.afuture: asyncio.Future[AppendResult] | None = None
        if loop is None:
            self.future = Future()
        else:
            self.afuture = loop.create_future()

    def settle(self, outcome: AppendResult | LogError) -> None:
        if self.future is not None:
            if not self.future.done():
                if isinstance(outcome, LogError):
                    self.future.set_exception(outcome)
                else:
                    self.future.set_result(outcome)
            return
        assert self.loop is not None
        # A closed loop took its waiting task with it (asyncio.run cancels it at exit).
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(settle_future, self.afuture, outcome)


class _Attempt:
    """One try at committing a batch: what was accepted, refused, and whether COMMIT was sent."""

    def __init__(self) -> None:
        self.accepted: list[tuple[_Request, AppendResult]] = []
        self.refused: list[tuple[_Request, LogError]] = []
        self.committing = False


Outcome = AppendResult | LogError


class PostgresLog:
    """The shared event log. Open it with :meth:`open`; any number of processes per database."""

    #: Test hook: called inside a batch's transaction after its inserts, before commit,
    #: once per append of the batch, with ``(session_id, first_position)``. Runs on the
    #: writer thread; lets tests hold a transaction open.
    _before_commit: Callable[[str, int], None] | None = None
    #: Test hook: called on the writer thread right after a batch's COMMIT returned. A
    #: ``psycopg.OperationalError`` raised here looks exactly like a commit whose reply
    #: was lost, so tests can drive the unknown-outcome path deterministically.
    _after_commit: Callable[[], None] | None = None

    def __init__(
        self,
        dsn: str,
        *,
        blob_threshold: int,
        pool_size: int,
        retry_s: float,
        poll_s: float,
    ) -> None:
        self.dsn = dsn
        self.where = _where(dsn)
        self._secret = _password(dsn)
        self.retry_s = retry_s
        self.poll_s = poll_s
        self.blobs = _PgBlobs(self, blob_threshold)
        self._pool = _Connections(dsn, pool_size)
        self._closed = False
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count()
        self._ids_lock = threading.Lock()
        # Appends: a queue drained by one writer thread, which owns one connection.
        self._queue: collections.deque[_Request] = collections.deque()
        self._queue_cond = threading.Condition()
        self._writer: threading.Thread | None = None
        self._wconn: psycopg.Connection[Any] | None = None
        self._wbackend: tuple[int, Any] | None = None  # (pid, backend_start) of _wconn
        self._known_streams: set[str] = set()  # sessions whose streams row exists
        # wait(): a generation bumped on every notification, and the listener thread.
        self._cond = threading.Condition()
        self._gen = 0
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()

    # --- opening and closing ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        dsn: str,
        *,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
        pool_size: int = 16,
        retry_s: float = 10.0,
        poll_s: float = 0.5,
    ) -> PostgresLog:
        """Connect, create or check the schema, and open a connection pool."""
        try:
            conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's parse errors quote the DSN, password included: never repeat them.
            raise LogError("PostgreSQL log: the DSN cannot be parsed") from None
        log = cls(
            dsn, blob_threshold=blob_threshold, pool_size=pool_size, retry_s=retry_s, poll_s=poll_s
        )
        try:
            log._create_schema()
        except psycopg.Error as e:
            raise log._error(e) from None
        return log

    def _create_schema(self) -> None:
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('fleetlog-schema'))")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO fleetlog.meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT DO NOTHING",
                    (str(SCHEMA_VERSION),),
                )
                row = conn.execute(
                    "SELECT value FROM fleetlog.meta WHERE key = 'schema_version'"
                ).fetchone()
            if row is None or row[0] != str(SCHEMA_VERSION):
                found = "none" if row is None else row[0]
                raise LogError(
                    f"PostgreSQL log {self.where} holds fleetlog schema version {found}; "
                    f"this fleetlog needs version {SCHEMA_VERSION}"
                )

    def close(self) -> None:
        """Stop the writer and the listener, and close the pool. Idempotent.

        Appends still queued fail with ``LogClosedError``; a batch already being
        committed finishes first (its outcome is not left unknown by closing).
        """
        with self._queue_cond:
            if self._closed:
                return
            self._closed = True
            self._queue_cond.notify_all()
        self._stop.set()
        writer = self._writer
        if writer is not None:
            writer.join(timeout=5)
            conn = self._wconn
            if writer.is_alive() and conn is not None:
                # Stuck behind another host's lock: cancel rather than hang the caller.
                with contextlib.suppress(Exception):
                    conn.cancel_safe(timeout=2)
                writer.join(timeout=5)
        if self._listener is not None:
            self._listener.join(timeout=5)
        self._pool.close()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> PostgresLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------

    def _closed_error(self) -> LogClosedError:
        return LogClosedError(self.where, "closed")

    def _text(self, error: BaseException) -> str:
        """One line of an error, with the password blanked should libpq ever quote it."""
        text = _one_line(error)
        return text.replace(self._secret, "***") if self._secret else text

    def _error(self, error: BaseException, what: str = "") -> LogError:
        return LogError(f"PostgreSQL log {self.where}: {what}{self._text(error)}")

    def _retrying(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a pooled connection; retry connection failures with backoff.

        Only for work that is safe to repeat (reads, idempotent writes). An idle
        connection found dead (the server restarted since) is no sign of an outage:
        the first such failure is retried at once; failures to reach the server
        back off.
        """
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        retried_stale = False
        while True:
            if self._closed:
                raise self._closed_error()
            stale = False
            try:
                wait_s = max(deadline - time.monotonic(), 0.05)
                with self._pool.connection(timeout=wait_s) as conn:
                    try:
                        return work(conn)
                    except psycopg.OperationalError:
                        stale = conn.broken
                        raise
            except psycopg.OperationalError as e:
                if self._closed:
                    raise self._closed_error() from None
                now = time.monotonic()
                if now >= deadline:
                    raise self._error(e) from None
                if stale and not retried_stale:
                    retried_stale = True
                    continue
                self._stop.wait(min(delay, deadline - now))
                delay = min(delay * 2, 1.0)
            except psycopg.Error as e:
                raise self._error(e) from None

    def _next_ids(self, n: int) -> list[str]:
        with self._ids_lock:
            start = next(self._ids)
            for _ in range(n - 1):
                next(self._ids)
        return [f"{self._id_prefix}{start + i:012x}" for i in range(n)]

    # --- appending --------------------------------------------------------------------

    def _request(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> _Request:
        try:
            payloads = [(type(e).__name__, _encoder.encode(e)) for e in events]
        except (ValueError, TypeError) as e:
            raise LogError(f"session {session_id}: cannot encode append: {e}") from None
        ids = self._next_ids(len(payloads))
        return _Request(session_id, payloads, ids, expected_seq, epoch, self.retry_s, loop)

    def _externalize(self, events: Sequence[Event]) -> list[Event]:
        return [self.blobs.externalize(e) if e.blob_fields else e for e in events]

    def _enqueue(self, request: _Request) -> None:
        with self._queue_cond:
            if self._closed:
                raise self._closed_error()
            self._queue.append(request)
            self._queue_cond.notify()
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="fleetlog-pg-writer", daemon=True
                )
                self._writer.start()

    def append(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult:
        if self._closed:
            raise self._closed_error()
        if threading.current_thread() is self._writer:
            raise RuntimeError("PostgresLog.append called from its own writer thread")
        if check_append(session_id, events, expected_seq, epoch):
            events = self._externalize(events)
        request = self._request(session_id, events, expected_seq, epoch, None)
        self._enqueue(request)
        assert request.future is not None
        return request.future.result()

    async def append_async(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult:
        """``append`` for asyncio: joins the next batch; the event loop never blocks.

        Cancelling the awaiting task does not withdraw the append: it may still
        commit (its caller, cancelled, just does not hear of it).
        """
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        if check_append(session_id, events, expected_seq, epoch):
            events = await asyncio.to_thread(self._externalize, events)  # network I/O
        request = self._request(session_id, events, expected_seq, epoch, loop)
        self._enqueue(request)
        assert request.afuture is not None
        return await request.afuture

    def _take_batch(self) -> list[_Request] | None:
        """Wait for appends; take up to MAX_BATCH_APPENDS / MAX_BATCH_BYTES of them."""
        with self._queue_cond:
            while not self._queue and not self._closed:
                self._queue_cond.wait()
            if self._closed:
                return None
            batch = [self._queue.popleft()]
            size = batch[0].size
            while self._queue and len(batch) < MAX_BATCH_APPENDS:
                size += self._queue[0].size
                if size > MAX_BATCH_BYTES:
                    break
                batch.append(self._queue.popleft())
            return batch

    def _write_loop(self) -> None:
        """The writer thread: commit batch after batch; whatever queues meanwhile joins the next."""
        try:
            while (batch := self._take_batch()) is not None:
                try:
                    self._commit_batch(batch)
                except BaseException as e:  # a bug must not leave callers waiting forever
                    self._drop_writer_connection()
                    failure = LogError(f"PostgreSQL log {self.where}: append failed: {e!r}")
                    for request in batch:
                        request.settle(failure)
                    if not isinstance(e, Exception):
                        raise
        finally:
            with self._queue_cond:
                left, self._queue = list(self._queue), collections.deque()
            for request in left:
                request.settle(self._closed_error())
            self._drop_writer_connection()

    def _writer_connection(self, deadline: float) -> psycopg.Connection[Any]:
        conn = self._wconn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop_writer_connection()
        conn = psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=max(2, math.ceil(deadline - time.monotonic())),
            application_name="fleetlog-writer",
            # A dead peer must not leave a COMMIT waiting forever for its reply.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        try:
            if self._wbackend is not None:
                # The backend of a connection lost on the client's side may live on,
                # in an open transaction holding the counter lock: end it, so that
                # every writer can go on and a read-back sees its final outcome.
                # (pid, backend_start) names one backend, never a later one.
                with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                    conn.execute(
                        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                        "WHERE pid = %s AND backend_start = %s",
                        self._wbackend,
                    )
            row = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        self._wbackend = None if row is None else (row[0], row[1])
        self._wconn = conn
        return conn

    def _drop_writer_connection(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            if not conn.broken:
                self._wbackend = None  # closed cleanly: its backend ends by itself
            with contextlib.suppress(Exception):
                conn.close()

    def _commit_batch(self, batch: list[_Request]) -> None:
        """Commit one batch, retrying what is safe to retry; settle every request."""
        deadline = min(request.deadline for request in batch)
        delay = 0.05
        careful = False
        while True:
            if self._closed:
                for request in batch:
                    request.settle(self._closed_error())
                return
            attempt = _Attempt()
            try:
                conn = self._writer_connection(deadline)
                outcomes = self._write_batch(conn, batch, attempt, careful=careful)
                if self._after_commit is not None and attempt.committing:
                    self._after_commit()
            except psycopg.errors.IntegrityError:
                if careful:
                    raise  # _insert_each catches these: a bug
                careful = True  # rolled back, nothing written: again, append by append
                continue
            except psycopg.OperationalError as e:
                # Lost connection, server restart, deadlock: the transaction is gone.
                self._drop_writer_connection()
                if not attempt.committing:
                    failure = self._error(e)  # nothing was committed: try the batch again
                else:
                    # COMMIT was sent and its reply lost: read back what landed.
                    for request, refusal in attempt.refused:
                        request.settle(refusal)
                    try:
                        resolved = self._resolve_unknown(attempt.accepted, e)
                    except LogError as unknown:
                        for request, _result in attempt.accepted:
                            request.settle(unknown)
                        return
                    if resolved is not None:
                        for (request, _result), outcome in zip(
                            attempt.accepted, resolved, strict=True
                        ):
                            request.settle(outcome)
                        return
                    # Nothing of it landed, and its transaction has ended: safe to retry.
                    batch = [request for request, _result in attempt.accepted]
                    failure = self._error(e, "append was not committed: ")
                now = time.monotonic()
                if now >= deadline:
                    for request in batch:
                        request.settle(failure)
                    return
                self._stop.wait(min(delay, deadline - now))
                delay = min(delay * 2, 1.0)
            except psycopg.Error as e:
                # Refused by the server outright (nothing committed); not worth retrying.
                self._drop_writer_connection()
                failure = self._error(e)
                for request in batch:
                    request.settle(failure)
                return
            else:
                for request, outcome in zip(batch, outcomes, strict=True):
                    request.settle(outcome)
                return

    @staticmethod
    def _check(
        request: _Request, streams: dict[str, tuple[int, int]]
    ) -> LogError | tuple[int, int]:
        """An append against its stream's state: a refusal, or (version, epoch) to write at."""
        version, current_epoch = streams[request.session_id]
        if request.epoch is not None and request.epoch < current_epoch:
            return FencedError(request.session_id, request.epoch, current_epoch)
        if request.expected_seq != version:
            return ConcurrencyError(request.session_id, request.expected_seq, version)
        return version, current_epoch if request.epoch is None else request.epoch

    @staticmethod
    def _rows(
        request: _Request, position: int, version: int, epoch: int
    ) -> list[tuple[int, str, int, int, float, str, str, bytes]]:
        return [
            (
                position + i,
                request.session_id,
                version + 1 + i,
                epoch,
                request.ts,
                request.event_ids[i],
                type_name,
                data,
            )
            for i, (type_name, data) in enumerate(request.payloads)
        ]

    def _write_batch(
        self,
        conn: psycopg.Connection[Any],
        batch: list[_Request],
        attempt: _Attempt,
        *,
        careful: bool,
    ) -> list[Outcome]:
        """One transaction for the whole batch; each append succeeds or fails on its own.

        A refused append (``ConcurrencyError``, ``FencedError``) is refused by a check
        on its locked stream row and writes nothing, so it needs no savepoint. The
        inserts go in one statement; should one collide with rows already there
        (``IntegrityError``: a foreign writer, a damaged streams row), the
        transaction rolls back and the caller runs it again ``careful``: one
        savepoint per append, so that only the colliding appends fail.

        Round trips, which is what a commit costs on a busy machine besides its
        fsync: BEGIN, lock the streams, write (counter, events, streams, NOTIFY in
        one statement), COMMIT; one more when the batch has sessions new to this
        writer.
        """
        sessions = sorted({request.session_id for request in batch})
        outcomes: list[Outcome | None] = [None] * len(batch)
        with conn.transaction():
            # Every transaction takes its stream rows in one order (the database's
            # sort order of session ids; missing rows inserted first, in that order
            # too), then the counter last: two batches of two hosts cannot deadlock.
            # Stream rows are never deleted, so a session seen once needs no insert.
            if any(sid not in self._known_streams for sid in sessions):
                conn.execute(
                    "INSERT INTO fleetlog.streams (session_id, version, epoch) "
                    "SELECT s, 0, 0 FROM unnest(%s::text[]) AS s ORDER BY s "
                    "ON CONFLICT DO NOTHING",
                    (sessions,),
                )
            locked = {
                str(sid): (int(version), int(epoch))
                for sid, version, epoch in conn.execute(
                    "SELECT session_id, version, epoch FROM fleetlog.streams "
                    "WHERE session_id = ANY(%s) ORDER BY session_id FOR UPDATE",
                    (sessions,),
                ).fetchall()
            }
            if len(locked) != len(sessions):
                self._known_streams.clear()
                raise _StreamsMissing("stream rows missing (deleted by hand?): trying again")
            streams = dict(locked)
            if careful:
                written = self._insert_each(conn, batch, streams, outcomes)
            else:
                written = self._insert_all(conn, batch, streams, outcomes)
            if not written:
                raise psycopg.Rollback()
            if self._before_commit is not None:
                for request, result in written:
                    self._before_commit(request.session_id, result.first_position)
            attempt.accepted = written
            attempt.refused = [
                (request, outcome)
                for request, outcome in zip(batch, outcomes, strict=True)
                if isinstance(outcome, LogError)
            ]
            attempt.committing = True
        if attempt.committing:
            if len(self._known_streams) > 100_000:
                self._known_streams.clear()
            self._known_streams.update(sessions)
        final = [outcome for outcome in outcomes if outcome is not None]
        assert len(final) == len(batch)
        return final

    def _insert_all(
        self,
        conn: psycopg.Connection[Any],
        batch: list[_Request],
        streams: dict[str, tuple[int, int]],
        outcomes: list[Outcome | None],
    ) -> list[tuple[_Request, AppendResult]]:
        """Check every append in queue order, then write all accepted ones in one statement."""
        planned: list[tuple[int, _Request, int, int]] = []
        for i, request in enumerate(batch):
            checked = self._check(request, streams)
            if isinstance(checked, LogError):
                outcomes[i] = checked
                continue
            version, epoch = checked
            # Two appends to one session in one batch: the second sees the first.
            streams[request.session_id] = (version + len(request.payloads), epoch)
            planned.append((i, request, version, epoch))
        if not planned:
            return []
        rows: list[tuple[int, str, int, int, float, str, str, bytes]] = []
        offset = 0
        for _i, request, version, epoch in planned:
            rows += self._rows(request, offset, version, epoch)
            offset += len(request.payloads)
        changed = sorted({request.session_id for _i, request, _v, _e in planned})
        # The global counter is drawn after the checks, and in the same statement as
        # the inserts: its row lock serializes batches from here to commit, so
        # commit order = position order. Positions: the counter plus each row's offset.
        row = conn.execute(
            _WRITE,
            (
                offset,
                offset,
                *[list(column) for column in zip(*rows, strict=True)],
                changed,
                [streams[sid][0] for sid in changed],
                [streams[sid][1] for sid in changed],
            ),
        ).fetchone()
        assert row is not None
        position = int(row[0])
        written: list[tuple[_Request, AppendResult]] = []
        for i, request, version, epoch in planned:
            n = len(request.payloads)
            result = AppendResult(position, position + n - 1, version + n, epoch, request.ts)
            outcomes[i] = result
            written.append((request, result))
            position += n
        return written

    def _insert_each(
        self,
        conn: psycopg.Connection[Any],
        batch: list[_Request],
        streams: dict[str, tuple[int, int]],
        outcomes: list[Outcome | None],
    ) -> list[tuple[_Request, AppendResult]]:
        """Like ``_insert_all``, one savepoint per append: a colliding append fails alone.

        Positions are handed out only to appends that were written: still gapless.
        """
        pos_row = conn.execute(
            "SELECT next_position FROM fleetlog.log_position FOR UPDATE"
        ).fetchone()
        assert pos_row is not None
        position = int(pos_row[0])
        locked = dict(streams)
        written: list[tuple[_Request, AppendResult]] = []
        for i, request in enumerate(batch):
            checked = self._check(request, streams)
            if isinstance(checked, LogError):
                outcomes[i] = checked
                continue
            version, epoch = checked
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(_INSERT, self._rows(request, position, version, epoch))
            except psycopg.errors.IntegrityError as e:
                outcomes[i] = self._error(e, f"append to session {request.session_id} refused: ")
                continue
            n = len(request.payloads)
            streams[request.session_id] = (version + n, epoch)
            result = AppendResult(position, position + n - 1, version + n, epoch, request.ts)
            outcomes[i] = result
            written.append((request, result))
            position += n
        if written:
            changed = [sid for sid in streams if streams[sid] != locked[sid]]
            conn.execute(
                "UPDATE fleetlog.streams AS s SET version = u.version, epoch = u.epoch "
                "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) "
                "AS u(session_id, version, epoch) WHERE s.session_id = u.session_id",
                (changed, [streams[s][0] for s in changed], [streams[s][1] for s in changed]),
            )
            conn.execute("UPDATE fleetlog.log_position SET next_position = %s", (position,))
            conn.execute(f"NOTIFY {CHANNEL}")
        return written

    def _resolve_unknown(
        self, accepted: list[tuple[_Request, AppendResult]], error: BaseException
    ) -> list[Outcome] | None:
        """After a COMMIT whose reply was lost: which appends landed? Read them back.

        Returns each append's outcome, or None when none of them landed (the batch
        was not committed, so it is safe to write again). Raises ``LogError`` when
        the outcome cannot be learned within ``retry_s``. Never guesses: the lost
        transaction held the counter row's lock from before its COMMIT until it
        ended (and its backend, should it outlive the connection, is terminated
        on reconnecting), so once this read holds that lock too, whatever it
        committed is visible and nothing more of it can commit later.
        """
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        keys = ([r.session_id for r, _ in accepted], [res.last_seq for _, res in accepted])
        while True:
            try:
                conn = self._writer_connection(deadline)
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '5s'")
                    conn.execute("SELECT 1 FROM fleetlog.log_position FOR SHARE")
                    rows = conn.execute(
                        "SELECT e.session_id, e.seq, e.position, e.epoch, e.event_id "
                        "FROM fleetlog.events AS e "
                        "JOIN unnest(%s::text[], %s::bigint[]) AS k(session_id, seq) "
                        "ON e.session_id = k.session_id AND e.seq = k.seq",
                        keys,
                    ).fetchall()
                break
            except psycopg.Error as e:
                self._drop_writer_connection()
                now = time.monotonic()
                if self._closed or now >= deadline or not isinstance(e, psycopg.OperationalError):
                    raise LogError(
                        f"PostgreSQL log {self.where}: append has an unknown outcome (commit "
                        f"failed: {self._text(error)}; could not read it back: {self._text(e)})"
                    ) from None
                self._stop.wait(min(delay, deadline - now))
                delay = min(delay * 2, 1.0)
        found = {(str(r[0]), int(r[1])): (int(r[2]), int(r[3]), str(r[4])) for r in rows}
        outcomes: list[Outcome | None] = []
        for request, result in accepted:
            hit = found.get((request.session_id, result.last_seq))
            if hit is None or hit[2] != request.event_ids[-1]:
                outcomes.append(None)
                continue
            n = len(request.payloads)
            outcomes.append(
                AppendResult(hit[0] - n + 1, hit[0], result.last_seq, hit[1], request.ts)
            )
        if all(outcome is None for outcome in outcomes):
            return None
        # One transaction commits all or nothing: a partial read-back cannot happen.
        return [
            self._error(error, f"append to session {request.session_id} was not committed: ")
            if outcome is None
            else outcome
            for (request, _result), outcome in zip(accepted, outcomes, strict=True)
        ]

    # --- reading ----------------------------------------------------------------------

    @staticmethod
    def _envelopes(rows: list[tuple[Any, ...]]) -> list[Envelope]:
        return [
            Envelope(
                int(position),
                sid,
                int(seq),
                int(epoch),
                float(ts),
                event_id,
                _decode_raw_event(msgspec.Raw(bytes(data))),
            )
            for position, sid, seq, epoch, ts, event_id, data in rows
        ]

    def read_stream(
        self, session_id: str, from_seq: int = 1, *, resolve_blobs: bool = True
    ) -> list[Envelope]:
        rows = self._retrying(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM fleetlog.events "
                "WHERE session_id = %s AND seq >= %s ORDER BY seq",
                (session_id, from_seq),
            ).fetchall()
        )
        out = self._envelopes(rows)
        return [self.blobs.resolve(env) for env in out] if resolve_blobs else out

    def read_all(self, from_position: int = 1, limit: int = 10_000) -> list[Envelope]:
        if limit <= 0:
            if self._closed:
                raise self._closed_error()
            return []
        # Committed rows always form the gapless prefix 1..head (see the module
        # docstring), so "position >= P" never passes a row that commits later.
        rows = self._retrying(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM fleetlog.events "
                "WHERE position >= %s ORDER BY position LIMIT %s",
                (max(from_position, 1), limit),
            ).fetchall()
        )
        return self._envelopes(rows)

    def head(self) -> int:
        row = self._retrying(
            lambda conn: conn.execute(
                "SELECT next_position - 1 FROM fleetlog.log_position"
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    def last_seq(self, session_id: str) -> int:
        row = self._retrying(
            lambda conn: conn.execute(
                "SELECT version FROM fleetlog.streams WHERE session_id = %s", (session_id,)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    def current_epoch(self, session_id: str) -> int:
        row = self._retrying(
            lambda conn: conn.execute(
                "SELECT epoch FROM fleetlog.streams WHERE session_id = %s", (session_id,)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    def session_ids(self) -> list[str]:
        rows = self._retrying(
            lambda conn: conn.execute(
                "SELECT session_id FROM fleetlog.streams WHERE version > 0 ORDER BY session_id"
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    def load_blob(self, ref: BlobRef) -> bytes:
        return self.blobs.get(ref)

    # --- waiting ----------------------------------------------------------------------

    def wait(self, after_position: int, timeout: float) -> int:
        """Block until the head passes ``after_position`` or ``timeout`` elapses; return it.

        Woken by NOTIFY (one listener connection per log); polls ``head()`` every
        ``poll_s`` seconds as well, so a missed notification only adds latency.
        """
        deadline = time.monotonic() + timeout
        self._ensure_listener()
        while True:
            with self._cond:
                gen = self._gen
            head = self.head()
            remaining = deadline - time.monotonic()
            if head > after_position or remaining <= 0:
                return head
            with self._cond:
                if self._gen == gen and not self._closed:
                    self._cond.wait(min(remaining, self.poll_s))

    def _ensure_listener(self) -> None:
        if self._listener is not None or self._closed:
            return
        with self._cond:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen, name="fleetlog-pg-listen", daemon=True
                )
                self._listener.start()

    def _wake(self) -> None:
        with self._cond:
            self._gen += 1
            self._cond.notify_all()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._wake()  # anything committed before LISTEN: look again
                    while not self._stop.is_set():
                        for _note in conn.notifies(timeout=0.2):
                            self._wake()
            except psycopg.Error:
                # Polling covers the gap; try to listen again shortly.
                self._stop.wait(0.5)
