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
``log_position`` row, updated inside the append's transaction: its row lock is
held until commit, so a second append waits for the first to commit (or roll
back) before it gets a position. Hence commit order = position order and the
committed rows always form a gapless prefix ``1..head``: a reader that asks for
``position >= P`` can never pass a row that commits later with a lower position
(the sequence-versus-commit-order problem), because no such row can exist. The
price is that appends serialize on that row for the span of their inserts and
commit (DESIGN.md measured 1.7-4.4k transactions/s for this family of designs);
the per-session checks run *before* the counter is taken, so only the inserts
and the commit are serialized. (The alternative in DESIGN.md, a transaction-id
watermark over a ``bigserial``, keeps writers concurrent but leaves gaps, which
the contract forbids; ``events.tx`` is kept so a later version can add it.)

**Fencing and optimistic concurrency** are enforced in the database, in the
append's transaction: the session's ``streams`` row is locked ``FOR UPDATE``,
its version is compared with ``expected_seq`` (``ConcurrencyError``) and its
epoch with the writer's (``FencedError`` for an older one), then the events are
inserted and the row updated before commit. ``unique (session_id, seq)`` is a
second line of defence. Two processes (two hosts) on one database therefore
fence each other exactly as FileLog's single writer does.

**Large payloads** go to ``blobs`` (FileLog's threshold logic, ``BlobStore``),
committed before the event that references them, so every node reads them.

**Waiting**: appends ``NOTIFY fleetlog_events`` inside their transaction
(delivered at commit). ``wait`` listens on one background connection and falls
back to polling ``head()`` every ``poll_s`` seconds, so a lost notification or
listener connection costs latency, never correctness.

**Failures**: a connection error before the commit was sent is retried with
backoff (nothing was written); an error *during* the commit leaves the outcome
unknown, and it is resolved by reading the session's rows back (the event ids
are unique), never by guessing. Every PostgreSQL error surfaces as one line in
a ``LogError`` naming the host and database, never the password.

``append_async`` runs ``append`` in a worker thread (``asyncio.to_thread``):
correct and simple; a native ``AsyncConnectionPool`` is future work.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from .blobs import DEFAULT_BLOB_THRESHOLD, BlobStore
from .codec import _decode_raw_event
from .errors import (
    BlobMissingError,
    ConcurrencyError,
    FencedError,
    LogClosedError,
    LogError,
)
from .log import AppendResult, check_append
from .schema import BlobRef, Envelope, Event

__all__ = ["SCHEMA_VERSION", "PostgresLog"]

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


class _Fenced(Exception):
    """Carries a ConcurrencyError/FencedError out of the transaction (which rolls back)."""

    def __init__(self, error: LogError) -> None:
        self.error = error


class PostgresLog:
    """The shared event log. Open it with :meth:`open`; any number of processes per database."""

    #: Test hook: called inside an append's transaction after its inserts, before commit,
    #: with ``(session_id, first_position)``. Lets tests hold a transaction open.
    _before_commit: Callable[[str, int], None] | None = None

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
        self.retry_s = retry_s
        self.poll_s = poll_s
        self.blobs = _PgBlobs(self, blob_threshold)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": 10},
            name="fleetlog",
            timeout=30.0,
        )
        self._closed = False
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count()
        self._ids_lock = threading.Lock()
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
        log = cls(
            dsn, blob_threshold=blob_threshold, pool_size=pool_size, retry_s=retry_s, poll_s=poll_s
        )
        try:
            log._create_schema()
            log._pool.open(wait=True, timeout=30.0)
        except psycopg.Error as e:
            log._pool.close()
            raise LogError(f"PostgreSQL log {log.where}: {_one_line(e)}") from None
        except BaseException:
            log._pool.close()
            raise
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
        """Stop the listener and close the pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
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

    def _retrying(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a pooled connection; retry connection failures with backoff.

        Only for work that is safe to repeat (reads, idempotent writes).
        """
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            if self._closed:
                raise self._closed_error()
            try:
                with self._pool.connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as e:
                if self._closed:
                    raise self._closed_error() from None
                if time.monotonic() + delay > deadline:
                    raise LogError(f"PostgreSQL log {self.where}: {_one_line(e)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as e:
                raise LogError(f"PostgreSQL log {self.where}: {_one_line(e)}") from None

    def _next_ids(self, n: int) -> list[str]:
        with self._ids_lock:
            start = next(self._ids)
            for _ in range(n - 1):
                next(self._ids)
        return [f"{self._id_prefix}{start + i:012x}" for i in range(n)]

    # --- appending --------------------------------------------------------------------

    def append(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult:
        if self._closed:
            raise self._closed_error()
        if check_append(session_id, events, expected_seq, epoch):
            events = [self.blobs.externalize(e) if e.blob_fields else e for e in events]
        try:
            payloads = [(type(e).__name__, _encoder.encode(e)) for e in events]
        except (ValueError, TypeError) as e:
            raise LogError(f"session {session_id}: cannot encode append: {e}") from None
        event_ids = self._next_ids(len(payloads))
        ts = time.time()
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            if self._closed:
                raise self._closed_error()
            committing = False
            try:
                with self._pool.connection() as conn:
                    try:
                        with conn.transaction():
                            result = self._append_tx(
                                conn, session_id, payloads, event_ids, expected_seq, epoch, ts
                            )
                            committing = True
                    except _Fenced as refused:
                        raise refused.error from None
                    return result
            except psycopg.OperationalError as e:
                if committing:
                    # The commit was sent and its outcome is unknown: read it back.
                    return self._resolve_unknown(
                        session_id, event_ids, expected_seq, len(payloads), ts, e
                    )
                if self._closed:
                    raise self._closed_error() from None
                if time.monotonic() + delay > deadline:
                    raise LogError(f"PostgreSQL log {self.where}: {_one_line(e)}") from None
                time.sleep(delay)  # nothing was committed: safe to try again
                delay = min(delay * 2, 1.0)
            except psycopg.Error as e:
                raise LogError(f"PostgreSQL log {self.where}: {_one_line(e)}") from None

    def _append_tx(
        self,
        conn: psycopg.Connection[Any],
        session_id: str,
        payloads: list[tuple[str, bytes]],
        event_ids: list[str],
        expected_seq: int,
        epoch: int | None,
        ts: float,
    ) -> AppendResult:
        """The append's transaction body: lock the stream, check, draw positions, insert."""
        lock = "SELECT version, epoch FROM fleetlog.streams WHERE session_id = %s FOR UPDATE"
        row = conn.execute(lock, (session_id,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO fleetlog.streams (session_id, version, epoch) VALUES (%s, 0, 0) "
                "ON CONFLICT DO NOTHING",
                (session_id,),
            )
            row = conn.execute(lock, (session_id,)).fetchone()
            assert row is not None
        version, current_epoch = int(row[0]), int(row[1])
        if epoch is not None and epoch < current_epoch:
            raise _Fenced(FencedError(session_id, epoch, current_epoch))
        if expected_seq != version:
            raise _Fenced(ConcurrencyError(session_id, expected_seq, version))
        new_epoch = current_epoch if epoch is None else epoch
        n = len(payloads)
        # The global counter: its row lock serializes appends from here to commit.
        pos_row = conn.execute(
            "UPDATE fleetlog.log_position SET next_position = next_position + %s "
            "RETURNING next_position - %s",
            (n, n),
        ).fetchone()
        assert pos_row is not None
        first_position = int(pos_row[0])
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO fleetlog.events "
                "(position, session_id, seq, epoch, ts, event_id, type, data) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        first_position + i,
                        session_id,
                        version + 1 + i,
                        new_epoch,
                        ts,
                        event_ids[i],
                        type_name,
                        data,
                    )
                    for i, (type_name, data) in enumerate(payloads)
                ],
            )
        conn.execute(
            "UPDATE fleetlog.streams SET version = %s, epoch = %s WHERE session_id = %s",
            (version + n, new_epoch, session_id),
        )
        conn.execute(f"NOTIFY {CHANNEL}")
        if self._before_commit is not None:
            self._before_commit(session_id, first_position)
        return AppendResult(first_position, first_position + n - 1, version + n, new_epoch, ts)

    def _resolve_unknown(
        self,
        session_id: str,
        event_ids: list[str],
        expected_seq: int,
        n: int,
        ts: float,
        error: BaseException,
    ) -> AppendResult:
        """After a commit whose outcome is unknown: did our rows land? Read them back."""
        last_seq = expected_seq + n

        def read_back(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            return conn.execute(
                "SELECT position, epoch, event_id FROM fleetlog.events "
                "WHERE session_id = %s AND seq = %s",
                (session_id, last_seq),
            ).fetchone()

        try:
            row = self._retrying(read_back)
        except LogError:
            raise LogError(
                f"PostgreSQL log {self.where}: append to session {session_id} has an unknown "
                f"outcome (commit failed: {_one_line(error)}; could not read it back)"
            ) from None
        if row is not None and row[2] == event_ids[-1]:
            last_position = int(row[0])
            return AppendResult(last_position - n + 1, last_position, last_seq, int(row[1]), ts)
        raise LogError(
            f"PostgreSQL log {self.where}: append to session {session_id} was not committed "
            f"({_one_line(error)})"
        )

    async def append_async(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult:
        return await asyncio.to_thread(self.append, session_id, events, expected_seq, epoch)

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
