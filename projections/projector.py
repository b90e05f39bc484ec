"""The projector: folds the event log into DuckDB tables (SPEC §8), exactly once.

Data flows one way, log → projections. Each round reads what is new in every
partition (``LogTail``, from the checkpoint), turns it into one Arrow table,
and in **one DuckDB transaction** inserts it into ``events``, folds it into
the other tables (``apply.sql``) and moves the per-partition checkpoints. A
crash before the commit leaves neither rows nor checkpoint behind, so the next
round reads the same events again: exactly once, with no dedup table.

A rebuild writes a fresh file beside the live one and swaps it in by rename:
worker processes turn the segments into Arrow tables (decoding holds the
GIL), this process inserts them into ``events``, and the same workers fold them
split by session (``_rebuild_in_parallel``); each partition's folded rows are
then placed in the file's tables once.
Because every merge in ``apply.sql`` is associative, a rebuild and any
sequence of incremental rounds give the same rows.

Each folded table is two: the rows of the sessions the fleet is working on
(``_X_open``), which rounds join against and rewrite, and those of sessions
that ended or went quiet (``_X_ended``), appended to in bunches; a view of the
plain name shows both. So a round costs what the batch and the live sessions
cost, not the history.

DuckDB allows one read-write process per file, so a Projector takes
``HOME/projections.lock`` for as long as it is open. While a fleet runs, its
projector actor owns the file and CLI queries go through it; otherwise the CLI
opens it itself. User SQL always runs in a ``READ ONLY`` transaction and must
be a single SELECT (or EXPLAIN).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import gc
import json
import multiprocessing
import os
import queue
import re
import signal
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from fleetlog.events.blobs import BlobStore
from fleetlog.events.codec import EnvelopeRow
from fleetlog.events.errors import ProjectionError, QueryError
from fleetlog.events.filelog import fsync_dir
from fleetlog.events.partitions import indexed_partitions
from fleetlog.events.schema import EVENT_TYPES
from fleetlog.events.source import FileSource, LogSource
from fleetlog.events.tail import read_segment, segment_bases

__all__ = [
    "SCHEMA_VERSION",
    "DB_FILE",
    "Projector",
    "rows_to_arrow",
    "check_read_only",
    "partitions",
]

#: Bump when tables.sql or apply.sql change what a row holds: older files are rebuilt.
SCHEMA_VERSION: Final = "6"
DB_FILE: Final = "projections.duckdb"
LOCK_FILE: Final = "projections.lock"

_SQL = resources.files("fleetlog.projections")
TABLES_SQL: Final = (_SQL / "tables.sql").read_text()
APPLY_SQL: Final = (_SQL / "apply.sql").read_text()

#: Every event field ``apply.sql`` reads, by name across all event types, with
#: the type ``_fields`` parses it as (absent fields are NULL; ``_with_fields``).
#: Costs are read as text so that they become exact DECIMALs.
_FIELDS: Final = {
    **dict.fromkeys(
        ["request_id", "model", "stop_reason", "error", "call_id", "tool", "input", "output"],
        "VARCHAR",
    ),
    **dict.fromkeys(
        ["verdict", "risk", "rule", "reason", "reviewer", "note", "idempotency_key"], "VARCHAR"
    ),
    "edited_input": "VARCHAR",
    **dict.fromkeys(
        ["task_id", "tenant", "agent_type", "prompt", "workspace", "owner", "result"], "VARCHAR"
    ),
    "purpose": "VARCHAR",
    **dict.fromkeys(["step", "status_code"], "INTEGER"),
    **dict.fromkeys(
        ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"], "BIGINT"
    ),
    "cost_usd": "VARCHAR",
    "latency_ms": "DOUBLE",
    **dict.fromkeys(["is_error", "approved", "in_doubt"], "BOOLEAN"),
    **dict.fromkeys(["limits", "tools"], "JSON"),
}


def _with_fields(sql: str) -> list[duckdb.Statement]:
    """``apply.sql``'s statements, each ``_fields(x)`` parsing only the fields it reads.

    ``_fields(x)`` becomes ``json_transform(x, <struct>)`` of the ``f.<name>``
    that statement reads (types from ``_FIELDS``): JSON parsed into 11 to 18
    fields instead of all of ``_FIELDS`` is parsed faster (the sessions' statement: -38% of
    its CPU). Each statement parses the events it reads fields of, where they
    are read: parsing every event once into a ``_new`` column cost twice as
    much (most of it copying the struct into the table).
    """
    statements = []
    for statement in duckdb.extract_statements(sql):
        text = statement.query
        names = sorted(set(re.findall(r"\bf\.(\w+)", text)))
        struct = json.dumps({name: _FIELDS[name] for name in names}).replace("'", "''")
        while (start := text.find("_fields(")) >= 0:
            end, depth = start + len("_fields("), 1
            while depth:  # to the parenthesis that closes the call
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            inner = text[start + len("_fields(") : end - 1]
            text = f"{text[:start]}json_transform({inner}, '{struct}'){text[end:]}"
        statements.append(text)
    return duckdb.extract_statements(";\n".join(statements))


#: Parsed once: parsing apply.sql costs ~11 ms, ~10% of a small round.
_APPLY: Final = _with_fields(APPLY_SQL)
#: An Arrow batch as rows of ``_new`` (what ``apply.sql`` folds): times to
#: TIMESTAMP (µs, UTC), the data as JSON text.
_NEW_ROWS: Final = """
SELECT "partition", position, session_id, seq, epoch, type,
       make_timestamp(round(ts * 1e6)::BIGINT) AS ts, data
FROM _batch
"""
#: The same batch into ``events``, the data checked as JSON on the way in.
_EVENTS_FROM_BATCH: Final = """
INSERT INTO events
SELECT "partition", position, session_id, seq, epoch, type,
       make_timestamp(round(ts * 1e6)::BIGINT), data::JSON
FROM _batch
"""

_ARROW_SCHEMA: Final = pa.schema(
    [
        ("partition", pa.int32()),
        ("position", pa.int64()),
        ("session_id", pa.string()),
        ("seq", pa.int64()),
        ("epoch", pa.int64()),
        ("type", pa.string()),
        ("ts", pa.float64()),
        ("data", pa.string()),
    ]
)
_json = msgspec.json.Encoder()
_TYPE_NAMES: Final = {t: t.__name__ for t in EVENT_TYPES}
#: Below this many events a rebuild decodes in-process (its workers cost ~1 s to start).
_POOL_MIN_EVENTS: Final = 400_000
#: A rebuild folds this many events at a time (in each worker): the
#: batch waits as Arrow (~0.3 KB per event) and the aggregates hold its text
#: fields; the larger the batch, the fewer merges (1M against 225k events:
#: -20% of a worker's CPU).
_FOLD_EVERY: Final = 1_000_000
#: Sessions' rows are moved to the ``_ended`` tables once this many sessions in
#: the ``_open`` ones have ended or gone quiet: a move is eight statements
#: (~80 ms on two cores), and a few dozen such sessions there cost a round
#: next to nothing.
_PUSH_AT: Final = 64
#: A session is quiet, and may move out, when the newest event of a round is
#: this many seconds later than its latest one. This bounds the ``_open``
#: tables by what the fleet is working on, not by how many sessions were left
#: waiting for a human or stopped with a lost host. An event for a session that
#: moved out moves it back: ~12 ms for one session at 10M events, ~0.1 s for
#: five. (Event times come from the hosts' clocks: a host far behind the others
#: costs those moves, never a wrong row.)
_QUIET_AFTER_S: Final = 60.0
#: Rows per row group of what the live file appends (DuckDB's default: 122,880).
#: DuckDB checkpoints the WAL into the file inside the commit that takes it past
#: 16 MB, and a checkpoint rewrites each table's last, partly filled row group
#: whole: with the default size, a fleet appending 10,000 events/s paid a 0.2 to
#: 4.3 s checkpoint every ~3 s, by how full the `events` tail was, and the events
#: that arrived meanwhile waited for it (catch-up lag p95 0.6-2.5 s). With 16,384
#: rows: 0.25-0.7 s, p95 0.4-0.7 s. (A higher threshold only made them rarer and
#: longer: ~1 s every ~20 s at 128 MB.) docs/benchmarks.md has the runs.
_LIVE_ROW_GROUP: Final = 16_384
#: DuckDB draws a progress bar on stdout, terminal or not, for any statement
#: that runs over 2 s, on by default on a connection (its cursors, which answer
#: queries, have it off): a rebuild's inserts and folds, or a long round, drew
#: it into `fleetlog project`'s output or a fleet's. A setting of each
#: connection only (``duckdb.connect``'s config refuses it).
_NO_PROGRESS_BAR: Final = "SET enable_progress_bar = false"
#: The name the projections file is attached under (``_connect``); its tables
#: are ``projections.main.*``, temp tables of the same names ``temp.main.*``.
_CATALOG: Final = "projections"
#: A round that finds nothing new checkpoints a WAL this big: a fleet that
#: appends in bursts pays for its checkpoints between them, when nothing waits.
_IDLE_CHECKPOINT_BYTES: Final = 4 * 1024 * 1024
#: ``push_at`` for a rebuild's folds: sessions are placed when a partition is flushed.
_NEVER: Final = 1 << 62
#: Events per read when a rebuild reads a log without segment files (PostgreSQL).
_READ_BATCH: Final = 100_000
_READ_ONLY: Final = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)


def partitions(home: Path) -> list[tuple[int, Path]]:
    """``(index, path)`` of every log partition under ``HOME/log``."""
    return indexed_partitions(home / "log")


def rows_to_arrow(rows: list[EnvelopeRow], partition: int, blobs: BlobStore | None) -> pa.Table:
    """One Arrow table of events, ``data`` as JSON text with blob payloads resolved."""
    with _gc_paused():
        positions, sids, seqs, epochs, times, _ids, events = zip(*rows, strict=True)
        lines = _json.encode_lines(events)
        # A BlobRef encodes as {"sha256":...}; inside a JSON string the quotes are
        # escaped, so this never matches user text. Rare: payloads over 64 KiB.
        if b'{"sha256":' in lines:
            if blobs is None:
                raise ProjectionError("events refer to blobs but no blob store was given")
            lines = _json.encode_lines([blobs.resolve_event(ev) for ev in events])
        # One line per event (JSON text never holds a raw newline), split in C++.
        # The lines as one string over msgspec's buffer, not copied, and not
        # checked as UTF-8: the encoder writes nothing else (both cost ~0.2 µs
        # per event, ~10% of this function).
        offsets = pa.array([0, len(lines) - 1], pa.int32()).buffers()[1]
        text = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(lines)])
        data = pc.split_pattern(text, "\n").flatten()
        types = list(map(_TYPE_NAMES.__getitem__, map(type, events)))
        return pa.Table.from_arrays(
            [
                pa.array([partition] * len(rows), pa.int32()),
                pa.array(positions, pa.int64()),
                pa.array(sids, pa.string()),
                pa.array(seqs, pa.int64()),
                pa.array(epochs, pa.int64()),
                pa.array(types, pa.string()),
                pa.array(times, pa.float64()),
                data,
            ],
            schema=_ARROW_SCHEMA,
        )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Decoding and converting a batch makes hundreds of thousands of objects
    # and no cycles; collections triggered by that churn cost ~30% of the time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _segment_table(log_path: str, partition: int, segment: str, upto: int) -> pa.Table:
    """One segment file as an Arrow table."""
    with _gc_paused():
        rows = read_segment(Path(log_path), Path(segment), upto)
    return rows_to_arrow(rows, partition, BlobStore(Path(log_path) / "blobs"))


#: A segment to decode: log path, partition, segment path, last position to read.
_Job = tuple[str, int, str, int]


def _segment_files(spool: str, job: _Job, buckets: int) -> list[str]:
    """A rebuild's worker: one segment as ``buckets`` Arrow IPC files in ``spool``; their paths.

    Bucket ``k`` holds the events of the sessions ``_bucket`` puts there, in log
    order. Files, not pickled tables: the parent maps them without copying
    them (pickling through a pipe copies every byte three times).
    """
    table = _segment_table(*job)
    pieces = [table] if buckets == 1 else _split_by_session(table, buckets)
    paths = []
    for k, piece in enumerate(pieces):
        path = os.path.join(spool, f"{job[1]}-{Path(job[2]).stem}-{k}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, piece.schema) as writer:
            writer.write_table(piece)
        paths.append(path)
    return paths


def _bucket(session_id: str, buckets: int) -> int:
    """Which of a rebuild's fold workers folds this session (the same in every process)."""
    return zlib.crc32(session_id.encode()) % buckets


def _split_by_session(table: pa.Table, buckets: int) -> list[pa.Table]:
    """``table`` as ``buckets`` tables by ``_bucket`` of each event's session, each in log order."""
    sids = table.column("session_id")
    distinct = pc.unique(sids)
    of_distinct = pa.array([_bucket(s, buckets) for s in distinct.to_pylist()], pa.int32())
    of_rows = pc.take(of_distinct, pc.index_in(sids, value_set=distinct))
    return [table.filter(pc.equal(of_rows, k)) for k in range(buckets)]


def check_read_only(sql: str) -> None:
    """Refuse anything but one SELECT/EXPLAIN statement (bad SQL gets DuckDB's first line)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(_first_line(e)) from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement (got {len(statements)})")
    kind = statements[0].type
    if kind not in _READ_ONLY:
        raise QueryError(f"projections are read-only: only SELECT is allowed (got {kind.name})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _query_error(error: BaseException) -> str:
    """DuckDB's first line, and its suggestion if it made one, on one line:
    ``Catalog Error: Table with name x does not exist! Did you mean "events"?``."""
    hints = [
        line.strip()
        for line in str(error).splitlines()[1:]
        if line.startswith(("Did you mean", "Candidate bindings"))
    ]
    return " ".join([_first_line(error), *hints])


class Projector:
    """Owns ``HOME/projections.duckdb`` read-write for as long as it is open."""

    def __init__(
        self, home: Path, con: duckdb.DuckDBPyConnection, lock_fd: int, source: LogSource
    ) -> None:
        self.home = home
        self.path = home / DB_FILE
        self.con = con
        self._lock_fd = lock_fd
        #: The log this file projects: HOME/log's partitions, or the shared PostgreSQL log.
        self.source = source
        self._write = threading.Lock()  # one writing transaction at a time
        # Held by readers while they use a cursor, and by a rebuild while it swaps
        # the file: a cursor never outlives the connection it came from.
        self._swap = threading.RLock()
        self.rebuilt_on_open = ""
        #: When sessions move out of the ``_open`` tables (tests lower them).
        self.push_at = _PUSH_AT
        self.quiet_after_s = _QUIET_AFTER_S
        #: A round with nothing new checkpoints a WAL of this many bytes (tests lower it).
        self.idle_checkpoint_bytes = _IDLE_CHECKPOINT_BYTES

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: Path,
        *,
        wait_s: float = 10.0,
        rebuild_from: int = _POOL_MIN_EVENTS,
        source: LogSource | None = None,
    ) -> Projector:
        """Take the projections lock (waiting up to ``wait_s``) and open or create the file.

        The file is rebuilt instead (``rebuilt_on_open`` says why) when it is of
        another schema version, unreadable, ahead of the log, or at least
        ``rebuild_from`` events behind it and at most half-way through it.
        """
        home = home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        lock_fd = _take_lock(home / LOCK_FILE, wait_s)
        projector: Projector | None = None
        try:
            reason = ""
            try:
                con = _connect(home / DB_FILE)
                version = _schema_version(con)
            except duckdb.Error as e:  # an unreadable file: projections are disposable
                reason = f"unreadable ({_first_line(e)})"
                _remove_db(home / DB_FILE)
                con = _connect(home / DB_FILE)
                version = None
            projector = cls(home, con, lock_fd, source or FileSource(home / "log"))
            if reason:
                pass
            elif version is not None and version != SCHEMA_VERSION:
                reason = f"schema version {version}, this fleetlog writes {SCHEMA_VERSION}"
            else:
                if version is None:
                    projector._create_schema(con)
                reason = projector._stale(rebuild_from)
            if reason:
                projector.rebuild()
                projector.rebuilt_on_open = reason
            return projector
        except BaseException as e:
            if projector is not None:
                projector.close()
            else:
                _release_lock(lock_fd)
            if isinstance(e, duckdb.Error):
                raise ProjectionError(f"{home / DB_FILE}: {_first_line(e)}") from None
            raise

    def _create_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute("BEGIN")
        con.execute(TABLES_SQL)
        con.execute("INSERT INTO _meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
        con.execute("COMMIT")

    def close(self) -> None:
        with self._write, self._swap:
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            if self._lock_fd >= 0:
                _release_lock(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- catching up -----------------------------------------------------------------------

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of its own for the calling thread (DuckDB MVCC: a consistent view)."""
        with self._swap:
            cur = self.con.cursor()
            try:
                cur.execute(f"USE {_CATALOG}")  # a cursor starts in the in-memory catalog
                yield cur
            finally:
                cur.close()

    def checkpoints(self) -> dict[int, int]:
        with self.cursor() as cur:
            rows = cur.execute("SELECT * FROM _checkpoints").fetchall()
        return {int(p): int(pos) for p, pos in rows}

    def step(self, limit: int = 100_000, *, commit: bool = True) -> int:
        """One round: up to about ``limit`` new events, committed with their checkpoints.

        ``commit=False`` is for crash tests: everything is done but the commit,
        which is abandoned as a dying process's would be.
        """
        return self._round(limit, commit)[0]

    def _round(self, limit: int, commit: bool = True) -> tuple[int, bool]:
        """``step``; also whether some partition had more than its share (more to read)."""
        with self._write:
            done = self.checkpoints()
            tables: list[pa.Table] = []
            moved: dict[int, int] = {}
            parts = self.source.readers()
            share = max(limit // max(len(parts), 1), 1)
            more = False
            for index, tail in parts:
                with _gc_paused():
                    rows = tail.read(done.get(index, 0) + 1, share, rows=True)
                if not rows:
                    continue
                more = more or len(rows) >= share
                _check_contiguous(index, done.get(index, 0), rows)
                tables.append(rows_to_arrow(rows, index, tail.blobs))
                moved[index] = rows[-1][0]
            if not tables:
                self._checkpoint_if_idle()
                return 0, False
            batch = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            self._apply(batch, moved, commit=commit)
            applied: int = batch.num_rows
            return applied, more

    def _apply(self, batch: pa.Table, moved: dict[int, int], *, commit: bool = True) -> None:
        con = self.con
        con.execute("BEGIN")
        try:
            con.register("_batch", batch)
            con.execute(_EVENTS_FROM_BATCH)
            _fold_new(con, self.push_at, self.quiet_after_s)
            _move_checkpoints(con, moved)
            if not commit:  # tests: a crash between the rows and the commit
                raise _SimulatedCrash
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister("_batch")

    def _checkpoint_if_idle(self) -> None:
        """Checkpoint a WAL of ``idle_checkpoint_bytes`` or more: nothing waits on it now."""
        if self.wal_bytes() >= self.idle_checkpoint_bytes:
            self.con.execute("CHECKPOINT")

    def wal_bytes(self) -> int:
        """Bytes of committed rounds in DuckDB's WAL, not yet checkpointed into the file."""
        try:
            return os.path.getsize(self.path.with_name(DB_FILE + ".wal"))
        except FileNotFoundError:
            return 0

    def catch_up(self, *, limit: int = 100_000) -> int:
        """Apply rounds until one finds the log's end; the number of events applied.

        A round that read less than its share of every partition reached the end
        as it was then: a log that keeps growing does not keep the caller waiting.
        """
        total = 0
        while True:
            n, more = self._round(limit)
            total += n
            if not more:
                return total

    def _stale(self, rebuild_from: int) -> str:
        """Why the tables should be rebuilt rather than caught up, or ''."""
        heads = _heads(self.source)
        done = self.checkpoints()
        for index, position in done.items():
            if position > heads.get(index, 0):
                return f"ahead of the log (p{index} at {position}, log at {heads.get(index, 0)})"
        behind = sum(max(head - done.get(index, 0), 0) for index, head in heads.items())
        # Catching up costs ~2.5 times what a rebuild does per event (rounds of
        # merges into the tables, decoded in this process): on a file that is far
        # behind (a fresh one next to a big log, say) a rebuild is the faster way.
        if behind >= rebuild_from and 2 * behind >= sum(heads.values()):
            return f"{behind:,} events behind the log (a rebuild is faster than catching up)"
        return ""

    def lag(self) -> dict[int, int]:
        """Events per partition that are in the log but not yet projected."""
        done = self.checkpoints()
        return {
            index: max(head - done.get(index, 0), 0) for index, head in _heads(self.source).items()
        }

    # --- rebuilding ------------------------------------------------------------------------

    def rebuild(
        self,
        *,
        workers: int | None = None,
        pool_from: int = _POOL_MIN_EVENTS,
        fold_every: int = _FOLD_EVERY,
    ) -> int:
        """Drop everything and project the whole log again; the number of events.

        Logs of ``pool_from`` events or more are decoded by ``workers`` processes
        (default: one per core); events are folded ``fold_every`` at a time.
        """
        with self._write:
            return self._rebuild(workers, pool_from, fold_every)

    def _rebuild(self, workers: int | None, pool_from: int, fold_every: int) -> int:
        tmp = self.path.with_name(DB_FILE + ".rebuild")
        _remove_db(tmp)
        con = _connect(tmp, row_group_size=None)
        try:
            self._create_schema(con)
            heads = _heads(self.source)
            total_events = sum(heads.values())
            workers = workers if workers is not None else _cores()
            # No enclosing transaction: the file is not live until it is renamed
            # (a crash leaves a .rebuild file that the next rebuild removes), and
            # a transaction would hold every appended row in memory until the end.
            if isinstance(self.source, FileSource) and workers > 1 and total_events >= pool_from:
                jobs = _segment_jobs(self.source.paths(), heads)
                _rebuild_in_parallel(con, jobs, workers, fold_every, self.quiet_after_s)
            else:
                batches: Iterator[tuple[int, pa.Table]]
                if isinstance(self.source, FileSource):
                    jobs = _segment_jobs(self.source.paths(), heads)
                    batches = ((job[1], _segment_table(*job)) for job in jobs)
                else:
                    batches = _read_tables(self.source, heads)
                _rebuild_here(con, batches, fold_every, self.quiet_after_s)
            if moved := {index: head for index, head in heads.items() if head}:
                _move_checkpoints(con, moved)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # Swap the new file in. We hold the lock: no other process has either file
        # open, and ``_swap`` keeps our own readers off the connection meanwhile.
        with self._swap:
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            _remove_db(self.path)
            os.replace(tmp, self.path)
            fsync_dir(self.home)
            self.con = _connect(self.path)
        return total_events

    # --- reading ---------------------------------------------------------------------------

    def query(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """Run one read-only statement; the result as an Arrow table."""
        check_read_only(sql)
        with self.cursor() as cur:
            try:
                cur.execute("BEGIN TRANSACTION READ ONLY")
                result = cur.sql(sql, params=params).to_arrow_table()
                cur.execute("ROLLBACK")
                return result
            except duckdb.Error as e:
                raise QueryError(_query_error(e)) from None

    def health(self, since: datetime | None = None, agent_type: str | None = None) -> pa.Table:
        """``agent_health_metrics`` for sessions created at or after ``since`` (UTC)."""
        args = []
        params: list[Any] = []
        if since is not None:
            args.append("since := ?::TIMESTAMP")
            params.append(since.replace(tzinfo=None))
        if agent_type is not None:
            args.append("agent := ?::VARCHAR")
            params.append(agent_type)
        return self.query(f"SELECT * FROM agent_health({', '.join(args)})", params)


def _rebuild_here(
    con: duckdb.DuckDBPyConnection,
    batches: Iterator[tuple[int, pa.Table]],
    fold_every: int,
    quiet_after_s: float,
) -> None:
    """A rebuild in this process: ``batches`` (partition, events in log order) into ``con``.

    One partition at a time: a session's stream never leaves its partition, so
    a partition's rows are folded into empty stand-ins (temp tables of the same
    names, which DuckDB resolves first) and placed in the file's tables when it
    is done (``_place``): no merge with other partitions' rows. Within a
    partition, events are folded every ``fold_every`` (the merges are
    associative), which bounds the memory the aggregates need.
    """
    current: int | None = None
    pending: list[pa.Table] = []
    for partition, table in batches:
        if partition != current:
            if current is not None:
                _fold_tables(con, pending, quiet_after_s)
                _place(
                    con, {name: [rows] for name, rows in _rows_to_place(con).items()}, quiet_after_s
                )
                _drop_stand_ins(con)
            current = partition
            _create_stand_ins(con)
        con.register("_batch", table)
        con.execute(_EVENTS_FROM_BATCH)
        con.unregister("_batch")
        pending.append(table)
        if sum(t.num_rows for t in pending) >= fold_every:
            _fold_tables(con, pending, quiet_after_s)
    if current is not None:
        _fold_tables(con, pending, quiet_after_s)
        _place(con, {name: [rows] for name, rows in _rows_to_place(con).items()}, quiet_after_s)
        _drop_stand_ins(con)


def _rebuild_in_parallel(
    con: duckdb.DuckDBPyConnection,
    jobs: list[_Job],
    workers: int,
    fold_every: int,
    quiet_after_s: float,
) -> None:
    """A rebuild that uses every core: the folds split by session across processes.

    ``workers`` processes (``_rebuild_worker``) decode the segments, each into
    ``workers`` buckets of sessions (``_bucket``); this process inserts every
    event into ``events`` (the part no split can share: one process writes a
    DuckDB file), and worker ``k`` also folds bucket ``k`` into an in-memory
    DuckDB with the same ``apply.sql``. A session's events all reach one
    worker, in log order, so each folds its sessions as a rebuild here would:
    the folds of different sessions never meet. When the log is read, each
    worker hands back its folded rows per partition, sorted and marked for
    placing (``_rows_to_place``), and they are appended as ``_rebuild_here``
    appends its own (``_place``).
    """
    with (
        tempfile.TemporaryDirectory(prefix="fleetlog-rebuild-", dir=_spool_dir(workers)) as spool,
        _Workers(workers, spool, fold_every) as pool,
    ):
        for job, paths in zip(jobs, pool.decoded(jobs), strict=True):
            con.register("_batch", pa.concat_tables(map(_mapped, paths)))
            con.execute(_EVENTS_FROM_BATCH)
            con.unregister("_batch")
            pool.fold(job[1], paths)  # each worker unlinks its file once it has read it
            # A partition every worker has finished is placed while they fold the next.
            for files in pool.folded():
                _place_files(con, files, quiet_after_s)
        for files in pool.finish():
            _place_files(con, files, quiet_after_s)


def _place_files(
    con: duckdb.DuckDBPyConnection, files: dict[str, list[str]], quiet_after_s: float
) -> None:
    """``_place`` a partition's rows handed back by the fold workers; the files are removed."""
    try:
        _place(
            con, {name: list(map(_mapped, paths)) for name, paths in files.items()}, quiet_after_s
        )
    finally:
        for paths in files.values():
            for path in paths:
                os.unlink(path)


def _mapped(path: str) -> pa.Table:
    """An Arrow IPC file as a table, zero-copy: its buffers are the mapped file.

    The mapping lives as long as the table does (closing the file does not
    unmap it), and the file may be unlinked meanwhile.
    """
    with pa.memory_map(path) as source:
        return pa.ipc.open_file(source).read_all()


#: Segments each worker of a parallel rebuild decodes ahead of the one this process inserts.
_DECODE_AHEAD: Final = 2


class _Workers:
    """A parallel rebuild's processes (``_rebuild_worker``): each decodes and folds.

    One kind of process, not a decoding pool beside fold workers: the two
    jobs take turns in it instead of five processes taking two cores from
    each other (on two cores: 5-17% less CPU per event, 6-20% more events/s).
    """

    def __init__(self, workers: int, spool: str, fold_every: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # not fork: DuckDB and Ray threads here
        self._outbox: Any = ctx.Queue()
        self._inboxes: list[Any] = []
        self._procs: list[Any] = []
        #: Job index -> its bucket files, decoded but not yet taken by ``decoded``.
        self._decoded: dict[int, list[str]] = {}
        #: Partition -> table name -> the workers' files, until every worker's are in.
        self._rows: dict[int, dict[str, list[str]]] = {}
        self._reports: collections.Counter[int] = collections.Counter()
        self._done = 0
        try:
            for k in range(workers):
                # Unbounded: what is in flight is bounded by the decoding window.
                inbox = ctx.Queue()
                args = (inbox, self._outbox, spool, k, workers, fold_every, os.getpid())
                proc = ctx.Process(target=_rebuild_worker, args=args, daemon=True)
                proc.start()
                self._inboxes.append(inbox)
                self._procs.append(proc)
        except BaseException:
            self.__exit__()
            raise

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join()

    def decoded(self, jobs: list[_Job]) -> Iterator[list[str]]:
        """Each job's bucket files, in job order: job ``i`` is decoded by worker ``i % n``.

        Each worker has ``_DECODE_AHEAD`` segments to decode queued, not more,
        so that decoded segments do not pile up. A worker works through its
        queue in order, so a fold queued before a segment delays that segment;
        the buckets are even, so the workers fold at about the same time.
        """
        n = len(self._inboxes)
        sent = 0
        for index in range(len(jobs)):
            while sent < min(index + n * _DECODE_AHEAD, len(jobs)):
                self._inboxes[sent % n].put(("decode", sent, jobs[sent]))
                sent += 1
            while index not in self._decoded:
                self._poll(0.5)
            yield self._decoded.pop(index)

    def fold(self, partition: int, paths: list[str]) -> None:
        """Hand bucket ``k`` of a segment of ``partition`` (``paths[k]``) to worker ``k``."""
        for inbox, path in zip(self._inboxes, paths, strict=True):
            inbox.put(("fold", partition, path))

    def folded(self) -> list[dict[str, list[str]]]:
        """The rows of the partitions every worker has finished since the last call."""
        while self._poll(0):
            pass
        return self._take(lambda partition: self._reports[partition] == len(self._procs))

    def finish(self) -> list[dict[str, list[str]]]:
        """Wait for the workers to finish; the rows of every partition not yet taken."""
        for inbox in self._inboxes:
            inbox.put(None)
        while self._done < len(self._procs):
            self._poll(0.5)
        return self._take(lambda partition: True)

    def _take(self, ready: Callable[[int], bool]) -> list[dict[str, list[str]]]:
        return [self._rows.pop(p) for p in sorted(self._rows) if ready(p)]

    def _poll(self, wait_s: float) -> bool:
        """Take a worker's message if one came within ``wait_s``; fail if a worker did."""
        try:
            kind, value = self._outbox.get(timeout=wait_s) if wait_s else self._outbox.get_nowait()
        except queue.Empty:
            for proc in self._procs:
                if proc.exitcode not in (None, 0):
                    raise ProjectionError(
                        f"rebuild: a worker died (exit code {proc.exitcode})"
                    ) from None
            return False
        if kind == "error":
            raise ProjectionError(f"rebuild: a worker failed: {value}")
        if kind == "done":
            self._done += 1
        elif kind == "decoded":
            index, paths = value
            self._decoded[index] = paths
        else:
            partition, files = value
            for name, path in files.items():
                self._rows.setdefault(partition, {}).setdefault(name, []).append(path)
            self._reports[partition] += 1
        return True


def _rebuild_worker(
    inbox: Any, outbox: Any, spool: str, k: int, buckets: int, fold_every: int, parent: int
) -> None:
    """Worker ``k`` of a parallel rebuild: decodes segments, folds bucket ``k`` of sessions.

    Takes, until ``None``: ``("decode", i, job)``, puts ``("decoded", (i,
    paths))`` (``_segment_files``); ``("fold", partition, Arrow IPC file)``, in
    log order, folded ``fold_every`` events at a time into its own in-memory
    tables, as ``_rebuild_here`` does. Puts ``("rows", (partition, {table:
    file}))`` when it is done with a partition, ``("done", None)`` at the end
    (``("error", text)`` if it fails).
    """
    _die_with_parent(parent)
    try:
        con = _fold_connection()
        current: int | None = None
        pending: list[pa.Table] = []
        while (item := inbox.get()) is not None:
            if item[0] == "decode":
                _kind, index, job = item
                outbox.put(("decoded", (index, _segment_files(spool, job, buckets))))
                continue
            _kind, partition, path = item
            if partition != current:
                if current is not None:
                    _fold_tables(con, pending, _QUIET_AFTER_S)
                    outbox.put(("rows", (current, _hand_back(con, spool, k, current))))
                current = partition
            # Mapped, not copied: the pages stay until the table is folded and freed.
            pending.append(_mapped(path))
            os.unlink(path)
            if sum(t.num_rows for t in pending) >= fold_every:
                _fold_tables(con, pending, _QUIET_AFTER_S)
        if current is not None:
            _fold_tables(con, pending, _QUIET_AFTER_S)
            outbox.put(("rows", (current, _hand_back(con, spool, k, current))))
        outbox.put(("done", None))
    except BaseException as e:
        outbox.put(("error", f"{type(e).__name__}: {_first_line(e)}"))


def _fold_connection() -> duckdb.DuckDBPyConnection:
    """A fold worker's database: in memory, the tables only.

    One thread: the parallelism is the workers'.
    """
    con = duckdb.connect(config={"preserve_insertion_order": False, "threads": 1})
    con.execute(_NO_PROGRESS_BAR)
    con.execute(TABLES_SQL)
    return con


def _hand_back(
    con: duckdb.DuckDBPyConnection, spool: str, k: int, partition: int
) -> dict[str, str]:
    """A fold worker's rows of one partition as Arrow IPC files; its tables are emptied."""
    files = {}
    for name, table in _rows_to_place(con).items():
        path = os.path.join(spool, f"rows-{partition}-{k}-{name}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        con.execute(f"DELETE FROM _{name}_open")
        files[name] = path
    return files


def _fold_tables(
    con: duckdb.DuckDBPyConnection, tables: list[pa.Table], quiet_after_s: float
) -> None:
    """A rebuild's fold of these batches (events in log order) into the ``_open`` tables.

    No session is moved out meanwhile: ``_place`` places each one once. ``tables`` is emptied.
    """
    if tables:
        con.register("_batch", pa.concat_tables(tables) if len(tables) > 1 else tables[0])
        _fold_new(con, _NEVER, quiet_after_s)
        con.unregister("_batch")
        tables.clear()


def _rows_to_place(con: duckdb.DuckDBPyConnection) -> dict[str, pa.Table]:
    """A rebuild's folded rows of one partition, from the ``_open`` tables, for ``_place``.

    Each row carries where its session stands: ``_moved`` (``_MOVED``),
    ``_ended`` and ``_updated`` (its latest event's time); rows are in
    ``_moved`` order, which is what lets ``_move_back`` skip most row groups of
    the ``_ended`` tables.
    """
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _placing AS
        SELECT id, {_MOVED} AS _moved, ended_status IS NOT NULL AS _ended, updated_at AS _updated
        FROM _agent_executions_open
        """
    )
    rows = {
        name: con.sql(
            f"SELECT r.*, p._moved, p._ended, p._updated FROM _{name}_open r "
            f"JOIN _placing p ON r.{column} = p.id ORDER BY p._moved"
        ).to_arrow_table()
        for name, column in _FOLDED.items()
    }
    con.execute("DROP TABLE _placing")
    return rows


def _place(
    con: duckdb.DuckDBPyConnection, rows: dict[str, list[pa.Table]], quiet_after_s: float
) -> None:
    """Append a partition's folded rows (from ``_rows_to_place``) to the file's tables.

    Sessions that ended, or had no event in the partition's last
    ``quiet_after_s`` seconds, go to the ``_ended`` tables, as rounds would
    have moved them; the others to ``_open``. ``rows`` may come in pieces
    (one per fold worker, each in ``_moved`` order).
    """
    quiet = int(quiet_after_s * 1_000_000)
    con.register("_rows", pa.concat_tables(rows["agent_executions"]))
    [(newest,)] = con.execute("SELECT max(_updated) FROM _rows").fetchall()
    con.unregister("_rows")
    moving = f"_ended OR coalesce(_updated <= ?::TIMESTAMP - to_microseconds({quiet}), false)"
    params = [newest]
    for name in _FOLDED:
        con.register("_rows", pa.concat_tables(rows[name]))
        con.execute(
            f"INSERT INTO {_CATALOG}.main._{name}_ended BY NAME "
            f"SELECT * EXCLUDE (_moved, _ended, _updated), _moved AS moved FROM _rows "
            f"WHERE {moving}",
            params,
        )
        con.execute(
            f"INSERT INTO {_CATALOG}.main._{name}_open BY NAME "
            f"SELECT * EXCLUDE (_moved, _ended, _updated) FROM _rows WHERE NOT ({moving})",
            params,
        )
        con.unregister("_rows")


def _heads(source: LogSource) -> dict[int, int]:
    """The last whole position of each partition now (0 for an empty one)."""
    return {index: reader.head() for index, reader in source.readers()}


def _read_tables(source: LogSource, heads: dict[int, int]) -> Iterator[tuple[int, pa.Table]]:
    """A rebuild's input from a log without segment files (PostgreSQL): read in batches."""
    for index, reader in source.readers():
        position = 1
        while position <= heads.get(index, 0):
            with _gc_paused():
                count = min(_READ_BATCH, heads[index] - position + 1)
                rows = reader.read(position, count, rows=True)
            if not rows:
                break
            rows = [r for r in rows if r[0] <= heads[index]]
            yield index, rows_to_arrow(rows, index, reader.blobs)
            position = rows[-1][0] + 1


def _move_checkpoints(con: duckdb.DuckDBPyConnection, positions: dict[int, int]) -> None:
    """Set the checkpoints of these partitions, in one statement."""
    con.execute(
        "INSERT OR REPLACE INTO _checkpoints SELECT * FROM (VALUES "
        + ", ".join(["(?::INTEGER, ?::BIGINT)"] * len(positions))
        + ")",
        [value for item in positions.items() for value in item],
    )


#: The folded tables by the column naming their session; each is an ``_open`` and
#: an ``_ended`` table (tables.sql).
_FOLDED: Final = {
    "agent_executions": "id",
    "agent_tool_calls": "execution_id",
    "model_calls": "execution_id",
    "agent_steps": "execution_id",
}
_TWINS: Final = tuple(f"_{name}_{kind}" for name in _FOLDED for kind in ("open", "ended"))


def _create_stand_ins(con: duckdb.DuckDBPyConnection) -> None:
    """Empty temp tables shadowing the folded tables: a rebuild folds a partition into them."""
    for name in _TWINS:
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {_CATALOG}.main.{name} LIMIT 0")


def _drop_stand_ins(con: duckdb.DuckDBPyConnection) -> None:
    for name in _TWINS:
        con.execute(f"DROP TABLE temp.main.{name}")


def _fold_new(con: duckdb.DuckDBPyConnection, push_at: int, quiet_after_s: float) -> None:
    """Fold the events of ``_batch`` (registered Arrow) into the tables other than ``events``.

    ``apply.sql`` reads them as ``_new``, a view: each of its statements scans
    the batch for the events it needs (materializing it cost more).

    The fold reads and writes the ``_open`` tables only (apply.sql). A session
    of the batch whose rows are in the ``_ended`` tables (an event after its
    end, or after it went quiet) has them moved back first. Once ``push_at``
    sessions in the ``_open`` tables have ended or gone quiet (nothing of theirs
    in the last ``quiet_after_s`` seconds of the log), their rows are moved out.
    Where a session's rows are is not part of what they say: the views show
    both twins.
    """
    con.execute(f"CREATE OR REPLACE TEMP VIEW _new AS {_NEW_ROWS}")
    late = "SELECT id, moved FROM _agent_executions_ended WHERE id IN (SELECT session_id FROM _new)"
    if _sessions(con, late):
        _move_back(con)
    for statement in _APPLY:
        con.execute(statement)
    newest = "SELECT max(ts) FROM _new"
    if _done_sessions(con, "_agent_executions_open", newest, quiet_after_s) >= push_at:
        _move_out(con)
    con.execute("DROP VIEW _new")
    con.execute("DROP TABLE _moving")


def _sessions(con: duckdb.DuckDBPyConnection, query: str) -> int:
    """Collect these sessions (``id``, ``moved``) into ``_moving``; how many there are."""
    row = con.execute(f"CREATE OR REPLACE TEMP TABLE _moving AS {query}").fetchone()
    return int(row[0]) if row else 0


def _done_sessions(
    con: duckdb.DuckDBPyConnection, sessions: str, newest: str, quiet_after_s: float
) -> int:
    """Collect into ``_moving`` the sessions of table ``sessions`` that may move out.

    Those that ended, or whose latest event is ``quiet_after_s`` older than the
    time ``newest`` (a query) gives; how many there are.
    """
    quiet = int(quiet_after_s * 1_000_000)
    return _sessions(
        con,
        f"""
        SELECT id, {_MOVED} AS moved FROM {sessions}
        WHERE ended_status IS NOT NULL OR updated_at <= ({newest}) - to_microseconds({quiet})
        """,
    )


#: A session's rows in the ``_ended`` tables carry where its stream stood when
#: they moved there: partition and position of its latest event, which no other
#: session shares (positions stay below 2**40).
_MOVED: Final = '("partition"::BIGINT << 40) | last_position'


def _move_out(con: duckdb.DuckDBPyConnection) -> None:
    """Move the rows of the sessions in ``_moving`` (id, moved) to the ``_ended`` tables."""
    for name, column in _FOLDED.items():
        _append_ended(con, f"_{name}_ended", f"_{name}_open", column)
        con.execute(f"DELETE FROM _{name}_open WHERE {column} IN (SELECT id FROM _moving)")


def _append_ended(con: duckdb.DuckDBPyConnection, target: str, source: str, column: str) -> None:
    """Append the rows of ``source`` of the sessions in ``_moving`` to ``target``, with ``moved``.

    In ``moved`` order: each row group then covers a narrow range of it, which
    is what lets ``_move_back`` skip the others.
    """
    con.execute(
        f"INSERT INTO {target} SELECT r.*, m.moved "
        f"FROM {source} r JOIN _moving m ON r.{column} = m.id ORDER BY m.moved"
    )


def _move_back(con: duckdb.DuckDBPyConnection) -> None:
    """Move the rows of the sessions in ``_moving`` (id, moved) back to the ``_open`` tables."""
    numbers = sorted({int(n) for (n,) in con.execute("SELECT moved FROM _moving").fetchall()})
    # As constants, so that zone maps skip the row groups that hold none of them
    # (a join would scan the whole history).
    where = f"WHERE moved IN ({', '.join(map(str, numbers))})"
    for name in _FOLDED:
        con.execute(f"INSERT INTO _{name}_open SELECT * EXCLUDE (moved) FROM _{name}_ended {where}")
        con.execute(f"DELETE FROM _{name}_ended {where}")


class _SimulatedCrash(Exception):
    """Raised by ``_apply(commit=False)``: the transaction is abandoned like a dead process's."""


def _check_contiguous(index: int, done: int, rows: list[EnvelopeRow]) -> None:
    first, last = rows[0][0], rows[-1][0]
    if first != done + 1 or last - first + 1 != len(rows):
        raise ProjectionError(
            f"partition p{index}: expected events from position {done + 1}, "
            f"read {first}..{last}; run `fleetlog project --rebuild`"
        )


def _segment_jobs(parts: list[tuple[int, Path]], heads: dict[int, int]) -> list[_Job]:
    """What a rebuild decodes: each segment up to its partition's head, in log order."""
    return [
        (str(path), index, str(seg), heads[index])
        for index, path in parts
        for base, seg in segment_bases(path)
        if base <= heads[index]
    ]


def _die_with_parent(parent: int) -> None:
    """A rebuild's worker: have the kernel kill this process when ``parent`` dies.

    A rebuild killed outright (SIGKILL, or a SIGTERM, which runs no clean-up)
    would leave its workers waiting on their queues for good, each holding
    its memory: their own ends of the queues' pipes keep them open. Linux
    only (``PR_SET_PDEATHSIG``); it fires when the thread that started the
    worker ends, which outlives the rebuild.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


_PR_SET_PDEATHSIG: Final = 1


def _cores() -> int:
    """The cores this process may run on (fewer than the machine's under ``taskset``)."""
    return len(os.sched_getaffinity(0)) or 1


def _spool_dir(workers: int) -> str | None:
    """Memory-backed /dev/shm when it has room for the window of segments in flight.

    Containers often mount a 64 MiB /dev/shm; then the system's temp directory.
    """
    # Each worker's queued segments and the one being inserted: a 64 MiB
    # segment as Arrow, with margin.
    need = (workers * _DECODE_AHEAD + 1) * 512 * 1024 * 1024
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    if stat.f_bavail * stat.f_frsize < need or not os.access("/dev/shm", os.W_OK):
        return None
    return "/dev/shm"


def _connect(
    path: Path, *, row_group_size: int | None = _LIVE_ROW_GROUP
) -> duckdb.DuckDBPyConnection:
    """The projections file at ``path``, as this connection's default catalog.

    Attached, not opened, for the row group size: an option of ``ATTACH`` only,
    not kept in the file (``None``: DuckDB's default, for a rebuild's bulk inserts).
    """
    # Insertion order is meaningless here (every table has its keys), and
    # keeping it costs memory and time on big inserts.
    con = duckdb.connect(config={"preserve_insertion_order": False})
    try:
        options = f" (ROW_GROUP_SIZE {row_group_size})" if row_group_size else ""
        quoted = "'" + str(path).replace("'", "''") + "'"
        con.execute(f"ATTACH {quoted} AS {_CATALOG}{options}")
        con.execute(f"USE {_CATALOG}")
        con.execute(_NO_PROGRESS_BAR)
    except BaseException:
        con.close()
        raise
    return con


def _schema_version(con: duckdb.DuckDBPyConnection) -> str | None:
    has_meta = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = '_meta' AND NOT temporary"
    ).fetchone()
    if not has_meta or not has_meta[0]:
        return None
    row = con.execute("SELECT value FROM _meta WHERE key = 'schema_version'").fetchone()
    return str(row[0]) if row else "?"


def _remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _take_lock(path: Path, wait_s: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ProjectionError(
                    f"projections are open in another process (pid {holder}); while a "
                    "fleet runs, `fleetlog sql` asks its projector instead"
                ) from None
            time.sleep(0.05)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd


def _release_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
