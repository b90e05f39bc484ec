"""The ``EventLog`` port: the one way events get into, and out of, the log.

Backends (``FileLog``, ``PostgresLog``) implement this protocol and pass the
same contract suite (``tests/contract_log.py``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from .blobs import BlobStore
from .schema import EVENT_TYPES, BlobRef, Envelope, Event, UnknownEvent

__all__ = ["AppendResult", "EventLog", "check_append", "follow", "settle_future"]

_APPENDABLE = frozenset(t for t in EVENT_TYPES if t is not UnknownEvent)
_WITH_BLOB_FIELDS = frozenset(t for t in _APPENDABLE if t.blob_fields)


def check_append(
    session_id: str, events: Sequence[Event], expected_seq: int, epoch: int | None
) -> bool:
    """Validate an append's arguments the same way in every backend.

    True when some event has fields a backend may move to its blob store.
    """
    if not isinstance(session_id, str) or not session_id:
        raise ValueError("session_id must be a non-empty string")
    if len(session_id) > 0x3FFF and len(session_id.encode()) > 0xFFFF:
        raise ValueError("session_id is longer than 65535 bytes")
    if not events:
        raise ValueError("append needs at least one event")
    if expected_seq < 0 or (epoch is not None and epoch < 0):
        raise ValueError("expected_seq and epoch must not be negative")
    # Checked per type, not per event: appends of hundreds of events are common.
    types = set(map(type, events))
    if not types <= _APPENDABLE:
        bad = next(e for e in events if type(e) not in _APPENDABLE)
        raise TypeError(f"not an appendable event: {bad!r}")
    return not types.isdisjoint(_WITH_BLOB_FIELDS)


def settle_future(
    future: asyncio.Future[AppendResult] | None, result: AppendResult | BaseException
) -> None:
    """Hand an append's outcome to the task awaiting it (on its loop's thread)."""
    if future is None or future.done():  # the awaiting task may have been cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class AppendResult(msgspec.Struct, frozen=True):
    """Where an acknowledged (durable) append landed."""

    first_position: int
    last_position: int
    last_seq: int
    epoch: int
    ts: float = 0.0  # the time the log stamped on these events


@runtime_checkable
class EventLog(Protocol):
    """An append-only, durable log of per-session event streams.

    * ``append`` is atomic per call and returns only once the events are durable.
      ``expected_seq`` is the seq of the last event the caller knows of (0 for a
      new session); a mismatch raises ``ConcurrencyError``. ``epoch`` is the
      owner's epoch: appending with an epoch older than one already used for
      the session raises ``FencedError``; a newer epoch claims the session.
      ``epoch=None`` appends at whatever epoch is current, unfenced (still
      checked against ``expected_seq``): for tools and tests only. fleetlog's
      own writers always pass an epoch: a new session is created at epoch 0,
      an owner appends at its claim's, and an offline operator command holds
      the partition's lock and appends at the session's current epoch.
    * positions are global and contiguous from 1; seqs per session likewise.
    * ``blobs`` stores large payloads where every reader of the log finds them.
    """

    @property
    def blobs(self) -> BlobStore: ...

    def append(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult: ...

    async def append_async(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult: ...

    def read_stream(
        self, session_id: str, from_seq: int = 1, *, resolve_blobs: bool = True
    ) -> list[Envelope]: ...

    def read_all(self, from_position: int = 1, limit: int = 10_000) -> list[Envelope]: ...

    def head(self) -> int:
        """The last durable position (0 for an empty log)."""
        ...

    def last_seq(self, session_id: str) -> int: ...

    def current_epoch(self, session_id: str) -> int: ...

    def session_ids(self) -> list[str]: ...

    def wait(self, after_position: int, timeout: float) -> int:
        """Block until the head passes ``after_position`` or ``timeout`` elapses; return it."""
        ...

    def load_blob(self, ref: BlobRef) -> bytes: ...

    def close(self) -> None: ...


def follow(
    log: EventLog,
    from_position: int = 1,
    *,
    stop: threading.Event,
    batch: int = 10_000,
    poll_s: float = 0.5,
) -> Iterator[list[Envelope]]:
    """Tail the log: yield batches of new events as they become durable, until ``stop`` is set."""
    position = from_position
    while not stop.is_set():
        events = log.read_all(position, batch)
        if events:
            position = events[-1].position + 1
            yield events
        else:
            log.wait(position - 1, poll_s)
