"""Where a fleet's log lives, behind one interface: FileLog partitions or PostgreSQL.

``[fleet] log = "file"`` (the default) keeps the log on this machine, one FileLog
partition per host under ``HOME/log/p<k>`` (``partitions.py``); a fleet lives on
that machine. ``log = "postgresql://…"`` (or ``FLEETLOG_LOG``, which wins) puts it
in one shared PostgresLog that every node reads and writes, so a host restarted
on another node finds its sessions there.

Every recovery path — a host's restart, the ledger, the dispatcher, the
projector, the CLI's readers — asks a :class:`LogSource` instead of opening
files, so the two backends are interchangeable:

* ``readers()``: ``(partition, reader)`` pairs to tail (``PartitionReader``);
  PostgreSQL is one partition, numbered 0, with one global position order.
* ``open_host(index, hosts)``: the writable logs a host owns, by partition.
* ``owner(session, partition, hosts)``: which host runs a session. With files,
  the host owning the session's partition; with PostgreSQL (one partition, any
  host may write, the database fences), ``host_for`` of the session id.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from .blobs import BlobStore
from .errors import FleetlogError, LogLockedError
from .filelog import FileLog
from .log import EventLog
from .partitions import indexed_partitions, partition_path
from .pglog import PostgresLog, _where
from .tail import LogTail

__all__ = [
    "FileSource",
    "LogSource",
    "PartitionReader",
    "PgSource",
    "host_for",
    "is_postgres",
    "log_spec",
    "iter_tail",
    "source_for",
    "source_of",
]

_PG_PREFIXES = ("postgresql://", "postgres://")


def host_for(session_id: str, hosts: int) -> int:
    """Which host owns a new session: stable for a given fleet size."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % hosts


def is_postgres(spec: str) -> bool:
    return spec.startswith(_PG_PREFIXES)


def log_spec(configured: str) -> str:
    """The log a fleet uses: ``FLEETLOG_LOG`` if set, else ``[fleet] log``; checked."""
    spec = (os.environ.get("FLEETLOG_LOG") or "").strip() or configured
    if spec != "file" and not is_postgres(spec):
        raise FleetlogError(
            f'log: {spec.split("@")[-1]!r} is neither "file" nor a postgresql:// DSN'
        )
    return spec


class PartitionReader(Protocol):
    """Reads one partition forward; calling again from where it stopped reads what is new."""

    @property
    def blobs(self) -> BlobStore: ...

    def read(self, from_position: int, limit: int = 50_000, *, rows: bool = False) -> list[Any]:
        """Envelopes from ``from_position`` on (``EnvelopeRow`` tuples with ``rows=True``)."""
        ...

    def head(self) -> int: ...


class LogSource(Protocol):
    spec: str
    #: One log that every node reads and writes (PostgreSQL), not this machine's files.
    shared: bool

    def readers(self) -> list[tuple[int, PartitionReader]]: ...

    def open_host(self, index: int, hosts: int, lock_wait_s: float) -> dict[int, EventLog]: ...

    def reopen(self, index: int, lock_wait_s: float) -> EventLog: ...

    def owner(self, session_id: str, partition: int, hosts: int) -> int: ...

    def exists(self) -> bool:
        """Whether there is a log to read at all (a file log may not be created yet)."""
        ...

    def where(self) -> str:
        """What error messages name: a directory, or host:port/db (never a password)."""
        ...

    def close(self) -> None: ...


class _FileReader(LogTail):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.blobs = BlobStore(path / "blobs")


class FileSource:
    """FileLog partitions under ``root`` (``HOME/log``)."""

    shared = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = "file"
        # Tails keep their place between calls: reading on costs only what is new.
        self._readers: dict[Path, _FileReader] = {}

    def paths(self) -> list[tuple[int, Path]]:
        return indexed_partitions(self.root)

    def readers(self) -> list[tuple[int, PartitionReader]]:
        out: list[tuple[int, PartitionReader]] = []
        for index, path in self.paths():
            reader = self._readers.get(path)
            if reader is None:
                reader = self._readers[path] = _FileReader(path)
            out.append((index, reader))
        return out

    def open_host(self, index: int, hosts: int, lock_wait_s: float) -> dict[int, EventLog]:
        # A fleet restarted with fewer hosts still has every partition owned by one.
        count = max([hosts, *(i + 1 for i, _path in self.paths())])
        return {p: self.reopen(p, lock_wait_s) for p in range(count) if p % hosts == index}

    def reopen(self, index: int, lock_wait_s: float) -> EventLog:
        # After a restart elsewhere the previous owner may not be dead yet: its
        # lock is the fence. Wait for it rather than ever share a partition.
        path = partition_path(self.root, index)
        deadline = time.monotonic() + lock_wait_s
        while True:
            try:
                return FileLog.open(path)
            except LogLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def owner(self, session_id: str, partition: int, hosts: int) -> int:
        return partition % hosts

    def exists(self) -> bool:
        return bool(self.paths())

    def where(self) -> str:
        return str(self.root)

    def close(self) -> None:
        self._readers.clear()


class _PgReader:
    def __init__(self, source: PgSource) -> None:
        self.source = source

    @property
    def blobs(self) -> BlobStore:
        return self.source.log().blobs

    def read(self, from_position: int, limit: int = 50_000, *, rows: bool = False) -> list[Any]:
        envelopes = self.source.log().read_all(from_position, limit)
        if not rows:
            return envelopes
        return [
            (e.position, e.session_id, e.seq, e.epoch, e.ts, e.event_id, e.event) for e in envelopes
        ]

    def head(self) -> int:
        return self.source.log().head()


class PgSource:
    """One shared PostgresLog: partition 0, every host writes it, the database fences."""

    shared = True

    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        self.spec = dsn
        self.pool_size = pool_size
        self._log: PostgresLog | None = None
        self._reader = _PgReader(self)

    def log(self) -> PostgresLog:
        # Opened on first use: making a source (argument checks, say) connects to nothing.
        if self._log is None:
            self._log = PostgresLog.open(self.spec, pool_size=self.pool_size)
        return self._log

    def readers(self) -> list[tuple[int, PartitionReader]]:
        reader: PartitionReader = self._reader
        return [(0, reader)]

    def open_host(self, index: int, hosts: int, lock_wait_s: float) -> dict[int, EventLog]:
        return {0: self.reopen(0, lock_wait_s)}

    def reopen(self, index: int, lock_wait_s: float) -> EventLog:
        log: EventLog = PostgresLog.open(self.spec)
        return log

    def owner(self, session_id: str, partition: int, hosts: int) -> int:
        return host_for(session_id, hosts)

    def exists(self) -> bool:
        return True

    def where(self) -> str:
        return f"PostgreSQL log {_where(self.spec)}"

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def source_for(home: Path, configured: str = "file") -> LogSource:
    """The log of the fleet at ``home`` with ``[fleet] log = configured`` (or FLEETLOG_LOG)."""
    return source_of(home, log_spec(configured))


def source_of(home: Path, spec: str) -> LogSource:
    """The log named by an already resolved ``spec`` (what a fleet passes to its actors)."""
    if spec == "file":
        return FileSource(home / "log")
    return PgSource(spec)


def iter_tail(
    source: LogSource, checkpoints: dict[int, int] | None, batch: int = 50_000
) -> Iterator[tuple[int, list[Any]]]:
    """``(partition, envelopes)`` of every event after ``checkpoints`` (all of them if None)."""
    done = checkpoints or {}
    for index, reader in source.readers():
        position = done.get(index, 0) + 1
        while chunk := reader.read(position, batch):
            yield index, chunk
            position = chunk[-1].position + 1
