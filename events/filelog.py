"""FileLog: the embedded, durable, append-only event log.

Layout of a log directory::

    LOCK                          flock'd by the one writing process
    segments/<first position>.seg frames (see ``codec``), rolled at ``segment_bytes``
    blobs/<sha256[:2]>/<sha256>   large payloads, content-addressed

Writes go through one flusher thread that takes every append queued since its
last write, checks them (expected seq, epoch) in queue order, writes their
frames with one ``write`` and makes them durable with one ``fdatasync``: group
commit. ``append`` returns only after that sync, so an acknowledged event
survives ``kill -9`` and power loss. A failed write or sync poisons the log
(every later append fails) rather than guess what reached the disk.

Readers in the same process see only durable frames. A read-only open (another
process, e.g. a CLI query next to a running fleet) takes no lock and treats an
incomplete tail as "not yet written".

An incomplete tail is either a frame cut short at the end of the newest segment
or, after a power loss, a *zero-filled* tail: the file's new size reached the
disk but its data did not, so everything from the first unreadable frame to the
end of the file reads back as zero bytes. Neither can hold an acknowledged
event (acknowledgement follows the sync that would have written those bytes),
so the writer's open cuts both. Zeros followed by anything else, or an
incomplete tail in any segment but the newest, is damage and is reported.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .blobs import DEFAULT_BLOB_THRESHOLD, BlobStore
from .codec import (
    HEADER,
    MAX_FRAME_BODY,
    META,
    FrameMeta,
    crc32c,
    decode_payload,
    encode_frame,
    parse_meta,
)
from .errors import (
    ConcurrencyError,
    CorruptLogError,
    Fault,
    FencedError,
    LogClosedError,
    LogError,
    LogLockedError,
)
from .log import _WITH_BLOB_FIELDS, AppendResult, check_append, settle_future
from .schema import BlobRef, Envelope, Event

__all__ = [
    "FileLog",
    "DEFAULT_SEGMENT_BYTES",
    "scan_log",
    "ScanResult",
    "FRAME_OK",
    "FRAME_TORN",
    "iter_frames",
    "segment_files",
    "fsync_dir",
    "zeros_to_end",
]


DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
_SEG_SHIFT: Final = 40  # an address is segment number << 40 | byte offset
_OFF_MASK: Final = (1 << _SEG_SHIFT) - 1
_INDEX_EVERY: Final = 4096  # bytes between sparse position-index entries
_READ_CHUNK: Final = 1 << 20

# Frame scan outcomes.
_OK, _BAD_CRC, _TORN, _BAD_HEADER = range(4)
#: For sequential readers (``events.tail``): a whole frame, and a frame cut short at the end.
FRAME_OK: Final = _OK
FRAME_TORN: Final = _TORN


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zeros_to_end(fd: int, start: int, end: int) -> bool:
    """True when every byte of ``[start, end)`` reads back as zero: a tail never written out.

    Bytes past a file that shrank while being read count as zeros: whoever
    shrank it (the writer's open) was cutting an incomplete tail.
    """
    off = start
    while off < end:
        data = os.pread(fd, min(_READ_CHUNK, end - off), off)
        if not data:
            return True
        if data.count(0) != len(data):
            return False
        off += len(data)
    return True


def _segment_name(base_position: int) -> str:
    return f"{base_position:020d}.seg"


def _iter_frames(fd: int, start: int, end: int) -> Iterator[tuple[int, int, bytes, int]]:
    """Yield ``(status, offset, body, body_crc)`` for the frames in ``[start, end)``.

    ``_TORN`` and ``_BAD_HEADER`` end the iteration: past them no frame
    boundary can be trusted. A ``_BAD_CRC`` frame has an intact header, so the
    frames after it are still found.

    A header of zero bytes (what a tail that never reached the disk reads back
    as) is ``_BAD_HEADER``, never an empty frame: its CRC does not match
    (``crc32c`` of eight zero bytes is not zero) and a length of 0 is below
    ``META.size``, which every frame body holds.
    """
    buf = b""
    buf_off = start  # file offset of buf[0]
    off = start

    def fill(upto: int) -> None:
        nonlocal buf, buf_off
        if buf_off + len(buf) >= upto:
            return
        # Drop what was consumed, then read at least a chunk.
        buf = buf[off - buf_off :]
        buf_off = off
        want = max(upto - (buf_off + len(buf)), _READ_CHUNK)
        want = min(want, end - (buf_off + len(buf)))
        parts = [buf]
        got_to = buf_off + len(buf)
        while want > 0:
            data = os.pread(fd, want, got_to)
            if not data:
                break
            parts.append(data)
            got_to += len(data)
            want -= len(data)
        buf = b"".join(parts)

    while off < end:
        if off + HEADER.size > end:
            yield _TORN, off, b"", 0
            return
        fill(off + HEADER.size)
        rel = off - buf_off
        if len(buf) - rel < HEADER.size:
            yield _TORN, off, b"", 0
            return
        length, body_crc, head_crc = HEADER.unpack_from(buf, rel)
        if crc32c(buf[rel : rel + 8]) != head_crc or not META.size <= length <= MAX_FRAME_BODY:
            yield _BAD_HEADER, off, b"", 0
            return
        frame_end = off + HEADER.size + length
        if frame_end > end:
            yield _TORN, off, b"", 0
            return
        fill(frame_end)
        rel = off - buf_off
        body = buf[rel + HEADER.size : rel + HEADER.size + length]
        if len(body) < length:  # the file shrank under us
            yield _TORN, off, b"", 0
            return
        yield (_OK if crc32c(body) == body_crc else _BAD_CRC), off, body, body_crc
        off = frame_end


@dataclass(eq=False)
class _Segment:
    number: int
    base_position: int
    path: Path
    size: int = 0  # bytes of complete, valid frames
    next_position: int = 0  # the position after this segment's last event
    # Sparse index: the first position of a frame roughly every _INDEX_EVERY bytes.
    index_pos: array[int] = field(default_factory=lambda: array("q"))
    index_off: array[int] = field(default_factory=lambda: array("q"))
    last_indexed: int = -_INDEX_EVERY
    read_fd: int = -1

    def note_frame(self, offset: int, first_position: int) -> None:
        if offset - self.last_indexed >= _INDEX_EVERY:
            self.index_pos.append(first_position)
            self.index_off.append(offset)
            self.last_indexed = offset

    def offset_for(self, position: int) -> int:
        i = bisect.bisect_right(self.index_pos, position) - 1
        return self.index_off[i] if i >= 0 else 0

    def fd(self) -> int:
        if self.read_fd < 0:
            self.read_fd = os.open(self.path, os.O_RDONLY)
        return self.read_fd

    def close(self) -> None:
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


class _Stream:
    """What the log keeps in memory per session: enough to check appends and find frames."""

    __slots__ = ("addrs", "epoch", "last_seq", "seqs", "w_epoch", "w_seq")

    def __init__(self) -> None:
        self.last_seq = 0  # durable, visible to readers
        self.epoch = 0
        self.w_seq = 0  # written (maybe not yet durable): what the committer checks against
        self.w_epoch = 0
        self.seqs: array[int] = array("q")  # first seq of each frame
        self.addrs: array[int] = array("q")  # segment << 40 | offset of each frame


BodyCallback = Callable[[_Segment, int, FrameMeta, bytes], None]


@dataclass
class ScanResult:
    """What scanning a log directory found."""

    segments: list[_Segment]
    streams: dict[str, _Stream]
    next_position: int
    faults: list[Fault]
    torn_tail: tuple[_Segment, int] | None = None  # (segment, offset of the incomplete record)
    events: int = 0
    frames: int = 0


def _segment_files(seg_dir: Path) -> list[Path]:
    """Segment files in position order (names are zero-padded first positions)."""
    return [p for p in sorted(seg_dir.glob("*.seg")) if p.stem.isdigit()]


iter_frames = _iter_frames
segment_files = _segment_files
fsync_dir = _fsync_dir
zeros_to_end = _zeros_to_end


def _list_segments(seg_dir: Path) -> list[_Segment]:
    return [_Segment(i, int(p.stem), p) for i, p in enumerate(_segment_files(seg_dir))]


def _scan_segment(
    seg: _Segment,
    start: int,
    file_size: int,
    streams: dict[str, _Stream],
    next_position: int,
    result: ScanResult,
    on_body: BodyCallback | None = None,
    *,
    last: bool = False,
) -> int:
    """Scan ``seg`` from ``start``: index frames, check continuity, return the next position.

    ``last``: ``seg`` is the newest segment, where a zero-filled tail is an
    unacknowledged one (``result.torn_tail``) rather than damage.
    """
    name = seg.path.name
    fd = seg.fd()
    for status, off, body, _crc in _iter_frames(fd, start, file_size):
        if status == _TORN:
            result.torn_tail = (seg, off)
            break
        if status in (_BAD_HEADER, _BAD_CRC):
            # A zero header, or an intact header whose body and everything after it
            # is zeros: written, never synced, so never acknowledged.
            zeros_from = off if status == _BAD_HEADER else off + HEADER.size
            if _zeros_to_end(fd, zeros_from, file_size):
                if last:
                    result.torn_tail = (seg, off)
                else:
                    result.faults.append(
                        Fault(
                            "torn_sealed_segment",
                            name,
                            off,
                            f"zero-filled tail of {file_size - off} bytes in a segment "
                            "that is not the last one",
                        )
                    )
                break
        if status == _BAD_HEADER:
            result.faults.append(
                Fault(
                    "bad_header",
                    name,
                    off,
                    f"frame header damaged; {file_size - off} bytes from here are unreadable",
                )
            )
            break
        meta = parse_meta(body)
        if status == _BAD_CRC:
            result.faults.append(
                Fault(
                    "corrupt_frame",
                    name,
                    off,
                    f"checksum mismatch in a frame of {meta.count} event(s)",
                    position=meta.first_position,
                )
            )
            # The header is intact, so positions still advance past this frame.
            next_position = meta.first_position + meta.count
            continue
        if meta.first_position != next_position:
            result.faults.append(
                Fault(
                    "position_gap",
                    name,
                    off,
                    f"expected position {next_position}, found {meta.first_position}",
                    position=meta.first_position,
                )
            )
        stream = streams.get(meta.session_id)
        if stream is None:
            stream = streams[meta.session_id] = _Stream()
        if meta.first_seq != stream.last_seq + 1:
            result.faults.append(
                Fault(
                    "seq_gap",
                    name,
                    off,
                    f"expected seq {stream.last_seq + 1}, found {meta.first_seq}",
                    position=meta.first_position,
                    session_id=meta.session_id,
                )
            )
        if meta.epoch < stream.epoch:
            result.faults.append(
                Fault(
                    "epoch_regressed",
                    name,
                    off,
                    f"epoch {meta.epoch} after epoch {stream.epoch}",
                    position=meta.first_position,
                    session_id=meta.session_id,
                )
            )
        stream.last_seq = meta.first_seq + meta.count - 1
        stream.epoch = max(stream.epoch, meta.epoch)
        stream.seqs.append(meta.first_seq)
        stream.addrs.append(seg.number << _SEG_SHIFT | off)
        seg.note_frame(off, meta.first_position)
        if on_body is not None:
            on_body(seg, off, meta, body)
        next_position = meta.first_position + meta.count
        seg.size = off + HEADER.size + len(body)
        result.frames += 1
        result.events += meta.count
    seg.next_position = next_position
    return next_position


def scan_log(path: Path, on_body: BodyCallback | None = None) -> ScanResult:
    """Scan every segment of the log at ``path`` (read-only), collecting all faults."""
    segments = _list_segments(path / "segments")
    result = ScanResult(segments, {}, 1, [])
    next_position = 1
    for i, seg in enumerate(segments):
        result.torn_tail = None
        if seg.base_position != next_position and seg.path.stat().st_size > 0:
            result.faults.append(
                Fault(
                    "position_gap",
                    seg.path.name,
                    0,
                    f"segment starts at position {seg.base_position}, expected {next_position}",
                    position=seg.base_position,
                )
            )
        file_size = seg.path.stat().st_size
        next_position = _scan_segment(
            seg,
            0,
            file_size,
            result.streams,
            next_position,
            result,
            on_body,
            last=i == len(segments) - 1,
        )
        torn: tuple[_Segment, int] | None = result.torn_tail  # set by _scan_segment
        if torn is not None and i != len(segments) - 1:
            tseg, toff = torn
            result.faults.append(
                Fault(
                    "torn_sealed_segment",
                    tseg.path.name,
                    toff,
                    "incomplete record in a segment that is not the last one",
                )
            )
            result.torn_tail = None
    result.next_position = next_position
    return result


class _Append:
    """One queued append call and how to tell its caller the outcome."""

    __slots__ = ("afuture", "epoch", "events", "expected_seq", "future", "loop", "session_id", "ts")

    def __init__(
        self,
        session_id: str,
        events: list[Event],
        expected_seq: int,
        epoch: int | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.session_id = session_id
        self.events = events
        self.expected_seq = expected_seq
        self.epoch = epoch
        self.ts = time.time()
        self.loop = loop
        self.future: Future[AppendResult] | None = None
        self.afuture: asyncio.Future[AppendResult] | None = None
        if loop is None:
            self.future = Future()
        else:
            self.afuture = loop.create_future()

    def done(self) -> bool:
        if self.future is not None:
            return self.future.done()
        assert self.afuture is not None
        return self.afuture.done()

    def settle(
        self, result: AppendResult | BaseException, here: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Tell the caller; ``here`` is the loop the settling code runs on, if any."""
        if self.future is not None:
            if isinstance(result, BaseException):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)
            return
        assert self.loop is not None
        if here is self.loop or (here is None and _running_loop() is self.loop):
            settle_future(self.afuture, result)
        else:
            # A closed loop took its waiting task with it (asyncio.run cancels
            # it at exit); the append is committed all the same, and the other
            # requests of this batch must still be told.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(settle_future, self.afuture, result)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Accepted:
    __slots__ = ("count", "epoch", "first_position", "first_seq", "frame", "request")

    def __init__(
        self, request: _Append, frame: bytes, first_position: int, first_seq: int, epoch: int
    ) -> None:
        self.request = request
        self.count = len(request.events)
        self.frame = frame
        self.first_position = first_position
        self.first_seq = first_seq
        self.epoch = epoch


class FileLog:
    """The embedded event log. Open it with :meth:`open`; one writing process per directory.

    Group commit: every append queued while a commit is in flight joins the next
    one, so N concurrent writers share one ``fdatasync``. Threads commit as
    leader/followers around ``_commit_lock`` (whoever holds it commits the whole
    queue); asyncio callers are committed by a task on their loop, which waits
    for a committing thread from a worker thread rather than on the loop (see
    ``_commit_async`` for why the sync itself runs on the loop).
    """

    def __init__(self, path: Path, *, readonly: bool, segment_bytes: int, blob_threshold: int):
        self.path = path
        self.readonly = readonly
        self.segment_bytes = segment_bytes
        self.blobs = BlobStore(path / "blobs", blob_threshold)
        self._lock_fd = -1
        self._segments: list[_Segment] = []
        self._streams: dict[str, _Stream] = {}
        self._next_position = 1  # durable head + 1
        self._index_lock = threading.Lock()
        self._committed = threading.Condition(self._index_lock)
        # Writer state.
        self._write_fd = -1
        self._queue: list[_Append] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._async_committers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._closed = False
        self._failed: str | None = None
        self._written_position = 1  # next position to assign (writer side)
        self._id_prefix = os.urandom(6).hex()
        self._id_counter = 0
        self.torn_bytes_truncated = 0

    @property
    def failed(self) -> str | None:
        """Why this log refuses appends after a failed write or sync; None while it is healthy.

        A poisoned log stays poisoned (what reached the disk is unknown): the
        host closes it and opens it again, which rescans the files and cuts any
        unacknowledged tail.
        """
        return self._failed

    # --- opening and closing ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
    ) -> FileLog:
        log = cls(
            Path(path),
            readonly=readonly,
            segment_bytes=segment_bytes,
            blob_threshold=blob_threshold,
        )
        try:
            log._open()
        except BaseException:
            log._release()
            raise
        return log

    def _open(self) -> None:
        if self.readonly:
            if not (self.path / "segments").is_dir():
                raise LogError(f"no event log at {self.path}")
        else:
            created = not (self.path / "segments").is_dir()
            (self.path / "segments").mkdir(parents=True, exist_ok=True)
            (self.path / "blobs").mkdir(exist_ok=True)
            if created:
                # A new log's directories must survive a crash before its first ack
                # (_new_segment syncs only segments/ itself).
                _fsync_dir(self.path)
                _fsync_dir(self.path.parent)
            self._take_lock()
        scan = scan_log(self.path)
        self._segments = scan.segments  # so that _release closes their descriptors
        if scan.faults:
            raise CorruptLogError(str(self.path), scan.faults)
        self._streams = scan.streams
        self._next_position = scan.next_position
        self._written_position = scan.next_position
        for stream in self._streams.values():
            stream.w_seq, stream.w_epoch = stream.last_seq, stream.epoch
        if self.readonly:
            return
        if scan.torn_tail is not None:
            # Only an incomplete *final* record is ever cut: it was never acknowledged.
            seg, off = scan.torn_tail
            self.torn_bytes_truncated = seg.path.stat().st_size - off
            with open(seg.path, "r+b") as f:
                f.truncate(off)
                os.fsync(f.fileno())
            seg.size = off
        if not self._segments:
            self._new_segment(self._next_position)
        self._write_fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    def _take_lock(self) -> None:
        lock_path = self.path / "LOCK"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LogLockedError(str(self.path), holder) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Commit what is queued, then release files and the lock. Idempotent."""
        if self._closed:
            return
        if not self.readonly:
            with self._commit_lock:
                with self._queue_lock:
                    self._closed = True
                self._drain_locked()
        self._closed = True
        self._release()

    def _release(self) -> None:
        for seg in self._segments:
            seg.close()
        if self._write_fd >= 0:
            fd, self._write_fd = self._write_fd, -1
            try:
                os.close(fd)
            except OSError:
                # A poisoned log is closed so that it can be opened again; its
                # descriptor may be what failed.
                if self._failed is None:
                    raise
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1

    def __enter__(self) -> FileLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- appending --------------------------------------------------------------------

    def _check(
        self, session_id: str, events: Sequence[Event], expected_seq: int, epoch: int | None
    ) -> bool:
        """Validate an append's arguments; True when some payload must go to the blob store."""
        if self.readonly:
            raise LogClosedError(str(self.path), "opened read-only")
        if not check_append(session_id, events, expected_seq, epoch):
            return False
        would = self.blobs.would_externalize
        return any(would(e) for e in events if type(e) in _WITH_BLOB_FIELDS)

    def _externalize(self, events: Sequence[Event]) -> list[Event]:
        # Blobs are durable before the event that references them is queued.
        return [self.blobs.externalize(e) if e.blob_fields else e for e in events]

    def _enqueue(
        self,
        session_id: str,
        events: list[Event],
        expected_seq: int,
        epoch: int | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> _Append:
        request = _Append(session_id, events, expected_seq, epoch, loop)
        with self._queue_lock:
            if self._failed is not None or self._closed:
                raise LogClosedError(str(self.path), self._failed or "closed")
            self._queue.append(request)
        return request

    def append(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult:
        if self._check(session_id, events, expected_seq, epoch):
            events = self._externalize(events)
        request = self._enqueue(session_id, list(events), expected_seq, epoch, None)
        # Leader/follower: whoever gets the lock commits everything queued so far,
        # including the requests of the threads queued up behind it.
        with self._commit_lock:
            if not request.done():
                # On failure _poison has failed every waiter, this one included.
                with contextlib.suppress(Exception):
                    self._drain_locked()
        assert request.future is not None
        return request.future.result()

    async def append_async(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_seq: int,
        epoch: int | None = None,
    ) -> AppendResult:
        loop = asyncio.get_running_loop()
        if self._check(session_id, events, expected_seq, epoch):
            # Writing a blob fsyncs: keep that off the event loop.
            events = await asyncio.to_thread(self._externalize, events)
        request = self._enqueue(session_id, list(events), expected_seq, epoch, loop)
        committer = self._async_committers.get(loop)
        if committer is None or committer.done():
            self._async_committers[loop] = loop.create_task(self._commit_async(loop))
        assert request.afuture is not None
        return await request.afuture

    def _take_queue(self) -> list[_Append]:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        return batch

    def _drain_locked(self) -> None:
        """Commit until the queue is empty (caller holds ``_commit_lock``)."""
        while batch := self._take_queue():
            try:
                accepted = self._prepare(batch)
                placed = self._write(accepted)
                if accepted:
                    os.fdatasync(self._write_fd)
            except BaseException as e:
                self._poison(batch, e)
                raise
            self._publish(accepted, placed)

    async def _commit_async(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit queued appends on ``loop`` until the queue is empty.

        The fdatasync runs on the loop itself. Measured on the 2-core reference
        machine (bench/log_bench.py), handing it to a worker thread costs more
        than it saves: the thread handoff and the GIL round trip are ~2x the
        ~0.2 ms sync, and writers waiting on their acks have nothing to overlap.
        """
        while self._queue and self._failed is None:
            if not self._commit_lock.acquire(blocking=False):
                # A thread is committing; wait for it without blocking the loop.
                await self._take_commit_lock(loop)
            try:
                self._drain_locked()
            except Exception:
                return  # every waiter was failed by _poison; the log now refuses appends
            finally:
                self._commit_lock.release()
            # Let the acknowledged writers run and queue their next appends.
            await asyncio.sleep(0)

    async def _take_commit_lock(self, loop: asyncio.AbstractEventLoop) -> None:
        """Acquire ``_commit_lock`` in a worker thread; on return the caller holds it.

        Cancellation-safe: when this task is cancelled while the worker waits
        (asyncio.run cancels the committer when its loop ends while a thread
        commits), the worker still gets the lock later and hands it back
        instead of holding it for a task that is gone: a lock held that way
        blocks every later append and ``close`` for good.
        """
        guard = threading.Lock()
        held = abandoned = False

        def take() -> None:
            nonlocal held
            self._commit_lock.acquire()
            with guard:
                if abandoned:
                    self._commit_lock.release()
                else:
                    held = True

        try:
            await loop.run_in_executor(None, take)
        except BaseException:
            with guard:
                abandoned = True
                if held:  # taken for us just as we were cancelled
                    self._commit_lock.release()
            raise

    def _poison(self, batch: list[_Append], error: BaseException) -> None:
        # After a failed write or fsync the page cache may not match the disk
        # (see PostgreSQL's fsync failure handling): accept nothing more.
        reason = f"write failed: {error!r}"
        with self._queue_lock:
            self._failed = reason
            pending, self._queue = self._queue, []
        failure = LogClosedError(str(self.path), reason)
        for request in batch + pending:
            if not request.done():
                request.settle(failure)

    def _prepare(self, batch: list[_Append]) -> list[_Accepted]:
        """Check each append against the written state (in queue order) and encode its frame."""
        position = self._written_position
        accepted: list[_Accepted] = []
        prefix = self._id_prefix
        counter = self._id_counter
        streams = self._streams
        for request in batch:
            sid = request.session_id
            stream = streams.get(sid)
            if stream is None:
                with self._index_lock:
                    stream = streams[sid] = _Stream()
            if request.epoch is not None and request.epoch < stream.w_epoch:
                request.settle(FencedError(sid, request.epoch, stream.w_epoch))
                continue
            if request.expected_seq != stream.w_seq:
                request.settle(ConcurrencyError(sid, request.expected_seq, stream.w_seq))
                continue
            epoch = stream.w_epoch if request.epoch is None else request.epoch
            first_seq = stream.w_seq + 1
            ts = request.ts
            events = request.events
            # Tuples encode exactly like the array_like Envelope, at half the cost.
            envelopes = [
                (position + i, sid, first_seq + i, epoch, ts, f"{prefix}{counter + i:012x}", ev)
                for i, ev in enumerate(events)
            ]
            try:
                frame = encode_frame(sid, position, first_seq, epoch, envelopes)
            except (ValueError, TypeError) as e:
                request.settle(LogError(f"session {sid}: cannot encode append: {e}"))
                continue
            counter += len(events)
            accepted.append(_Accepted(request, frame, position, first_seq, epoch))
            stream.w_seq = first_seq + len(events) - 1
            stream.w_epoch = epoch
            position += len(events)
        self._id_counter = counter
        self._written_position = position
        return accepted

    def _write(self, accepted: list[_Accepted]) -> list[tuple[_Segment, int]]:
        """Write the frames at the end of the log, rolling segments as needed.

        Everything but the last segment written to is synced here; the caller
        syncs ``_write_fd`` before publishing.
        """
        placed: list[tuple[_Segment, int]] = []
        seg = self._segments[-1]
        offset = seg.size
        run: list[bytes] = []
        for item in accepted:
            frame = item.frame
            if offset > 0 and offset + len(frame) > self.segment_bytes:
                self._write_run(run)
                os.fdatasync(self._write_fd)
                run = []
                seg = self._roll(item.first_position)
                offset = 0
            placed.append((seg, offset))
            run.append(frame)
            offset += len(frame)
        self._write_run(run)
        return placed

    def _write_run(self, run: list[bytes]) -> None:
        if not run:
            return
        view = memoryview(b"".join(run) if len(run) > 1 else run[0])
        while view:
            written = os.write(self._write_fd, view)
            view = view[written:]

    def _publish(self, accepted: list[_Accepted], placed: list[tuple[_Segment, int]]) -> None:
        """Make durable appends visible to readers, then acknowledge them (the hot path)."""
        if not accepted:
            return
        streams = self._streams
        with self._index_lock:
            for item, (seg, off) in zip(accepted, placed, strict=True):
                stream = streams[item.request.session_id]
                stream.last_seq = item.first_seq + item.count - 1
                stream.epoch = item.epoch
                stream.seqs.append(item.first_seq)
                stream.addrs.append(seg.number << _SEG_SHIFT | off)
                if off - seg.last_indexed >= _INDEX_EVERY:
                    seg.note_frame(off, item.first_position)
                seg.size = off + len(item.frame)
                seg.next_position = item.first_position + item.count
            self._next_position = seg.next_position
            self._committed.notify_all()
        here = _running_loop()
        for item in accepted:
            n = item.count - 1
            item.request.settle(
                AppendResult(
                    item.first_position,
                    item.first_position + n,
                    item.first_seq + n,
                    item.epoch,
                    item.request.ts,
                ),
                here,
            )

    def _roll(self, base_position: int) -> _Segment:
        os.close(self._write_fd)
        self._write_fd = -1
        seg = self._new_segment(base_position)
        self._write_fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        return seg

    def _new_segment(self, base_position: int) -> _Segment:
        seg_dir = self.path / "segments"
        path = seg_dir / _segment_name(base_position)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.fsync(fd)
        os.close(fd)
        _fsync_dir(seg_dir)  # the new name must survive a crash before any frame in it is acked
        seg = _Segment(len(self._segments), base_position, path, next_position=base_position)
        with self._index_lock:
            self._segments.append(seg)
        return seg

    # --- reading ----------------------------------------------------------------------

    def head(self) -> int:
        if self.readonly:
            self.refresh()
        return self._next_position - 1

    def last_seq(self, session_id: str) -> int:
        if self.readonly:
            self.refresh()
        stream = self._streams.get(session_id)
        return stream.last_seq if stream is not None else 0

    def current_epoch(self, session_id: str) -> int:
        if self.readonly:
            self.refresh()
        stream = self._streams.get(session_id)
        return stream.epoch if stream is not None else 0

    def session_ids(self) -> list[str]:
        if self.readonly:
            self.refresh()
        with self._index_lock:
            return list(self._streams)

    def _read_frame(self, seg: _Segment, off: int) -> list[Envelope]:
        fd = seg.fd()
        head = os.pread(fd, HEADER.size, off)
        length, body_crc, _ = HEADER.unpack(head)
        body = os.pread(fd, length, off + HEADER.size)
        if len(body) != length or crc32c(body) != body_crc:
            raise CorruptLogError(
                str(self.path),
                [Fault("corrupt_frame", seg.path.name, off, "checksum mismatch on read")],
            )
        return decode_payload(memoryview(body)[parse_meta(body).payload_offset :])

    def read_stream(
        self, session_id: str, from_seq: int = 1, *, resolve_blobs: bool = True
    ) -> list[Envelope]:
        if self.readonly:
            self.refresh()
        with self._index_lock:
            stream = self._streams.get(session_id)
            if stream is None:
                return []
            n = len(stream.seqs)
            start = max(bisect.bisect_right(stream.seqs, from_seq, 0, n) - 1, 0)
            addrs = stream.addrs[start:n]
            segments = self._segments
        out: list[Envelope] = []
        for addr in addrs:
            for env in self._read_frame(segments[addr >> _SEG_SHIFT], addr & _OFF_MASK):
                if env.seq >= from_seq:
                    out.append(self.blobs.resolve(env) if resolve_blobs else env)
        return out

    def read_all(self, from_position: int = 1, limit: int = 10_000) -> list[Envelope]:
        if self.readonly and from_position >= self._next_position:
            self.refresh()
        from_position = max(from_position, 1)
        with self._index_lock:
            head_next = self._next_position
            segments = list(self._segments)
            bounds = [(seg.size, seg.next_position) for seg in segments]
        if from_position >= head_next or limit <= 0:
            return []
        bases = [seg.base_position for seg in segments]
        out: list[Envelope] = []
        i = max(bisect.bisect_right(bases, from_position) - 1, 0)
        for seg, (size, _next) in zip(segments[i:], bounds[i:], strict=True):
            start = seg.offset_for(from_position)
            for status, off, body, _crc in _iter_frames(seg.fd(), start, size):
                if status != _OK:
                    raise CorruptLogError(
                        str(self.path),
                        [Fault("corrupt_frame", seg.path.name, off, "damaged frame on read")],
                    )
                first_position, _fs, count = META.unpack_from(body, 0)[:3]
                if first_position + count <= from_position:
                    continue
                for env in decode_payload(memoryview(body)[parse_meta(body).payload_offset :]):
                    if env.position >= from_position:
                        out.append(env)
                if len(out) >= limit:
                    return out[:limit]
        return out

    def wait(self, after_position: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        if self.readonly:
            # Another process writes: nothing to be notified by, so poll the files.
            while True:
                head = self.head()
                remaining = deadline - time.monotonic()
                if head > after_position or remaining <= 0:
                    return head
                time.sleep(min(0.05, remaining))
        with self._committed:
            while self._next_position - 1 <= after_position:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._committed.wait(remaining)
            return self._next_position - 1

    def refresh(self) -> None:
        """Read-only opens: pick up what the writing process made durable since."""
        if not self.readonly:
            return
        with self._index_lock:
            # Only the last known segment can have grown; any newer ones are new.
            first = max(len(self._segments) - 1, 0)
            known = {seg.path.name for seg in self._segments}
            for path in _segment_files(self.path / "segments"):
                if path.name not in known:
                    self._segments.append(_Segment(len(self._segments), int(path.stem), path))
            result = ScanResult(self._segments, self._streams, self._next_position, [])
            position = self._next_position
            newest = self._segments[-1] if self._segments else None
            for seg in self._segments[first:]:
                file_size = os.fstat(seg.fd()).st_size
                if file_size > seg.size:
                    position = _scan_segment(
                        seg,
                        seg.size,
                        file_size,
                        self._streams,
                        position,
                        result,
                        last=seg is newest,
                    )
            if result.faults:
                raise CorruptLogError(str(self.path), result.faults)
            self._next_position = position

    def load_blob(self, ref: BlobRef) -> bytes:
        return self.blobs.get(ref)

    def stats(self) -> dict[str, int]:
        with self._index_lock:
            return {
                "head": self._next_position - 1,
                "sessions": len(self._streams),
                "segments": len(self._segments),
                "bytes": sum(seg.size for seg in self._segments),
            }
