"""FileLog durability beyond SIGKILL: power loss, poisoned logs, and acks that follow syncs.

SIGKILL keeps the page cache, so the crash tests pass even if FileLog never
synced. Here a simulated disk sits between FileLog and ``os``: it remembers, per
file, how many bytes were durable at each ``fdatasync``/``fsync`` and which
new names a directory ``fsync`` made durable, and journals every
acknowledgement. A "power loss" at any point of that journal keeps only what
the simulated disk kept (the unsynced tail cut, turned to zeros, or partly
kept; unsynced new names gone), and every event acknowledged before that point
must still be there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetlog.events import filelog
from fleetlog.events.codec import HEADER, crc32c, encode_frame
from fleetlog.events.errors import CorruptLogError, LogClosedError
from fleetlog.events.filelog import FRAME_OK, FileLog, iter_frames, scan_log
from fleetlog.events.log import AppendResult
from fleetlog.events.schema import CancelRequested
from fleetlog.events.verify import verify_log

SEGMENT_BYTES = 2048


def _segments(path: Path) -> list[Path]:
    return sorted((path / "segments").glob("*.seg"))


def _note(session_id: str, seq: int) -> str:
    return f"{session_id}:{seq}"


def _events(session_id: str, after_seq: int, n: int) -> list[CancelRequested]:
    return [CancelRequested(note=_note(session_id, after_seq + 1 + i)) for i in range(n)]


def _fill(log: FileLog, sessions: int = 3, per: int = 10) -> None:
    for i in range(per):
        for s in range(sessions):
            log.append(f"s{s}", _events(f"s{s}", i, 1), i)


def _assert_intact(log: FileLog, expected: dict[str, int]) -> None:
    """Each session holds exactly seqs 1..n with the notes the writers gave them."""
    for sid, n in expected.items():
        stream = log.read_stream(sid)
        assert [e.seq for e in stream] == list(range(1, n + 1)), sid
        assert [e.event.note for e in stream] == [_note(sid, s) for s in range(1, n + 1)]  # type: ignore[union-attr]
    head = log.head()
    assert [e.position for e in log.read_all(1, limit=1_000_000)] == list(range(1, head + 1))


# --- Task 1: a tail that reads back as zeros is an unacknowledged tail -------------------


@pytest.mark.parametrize("zeros", [1, HEADER.size, 4096, 100_000])
def test_zero_filled_tail_is_truncated_like_a_torn_tail(tmp_path: Path, zeros: int) -> None:
    log_dir = tmp_path / "log"
    with FileLog.open(log_dir) as log:
        _fill(log)
        before = log.read_all(1)
    seg = _segments(log_dir)[-1]
    good_size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(zeros))  # the size reached the disk, the data did not
    report = verify_log(log_dir)
    assert report.ok, [str(f) for f in report.faults]
    assert "incomplete final record" in report.notes[0]
    # A reader in another process treats it as not yet written, and cuts nothing.
    reader = FileLog.open(log_dir, readonly=True)
    try:
        assert reader.head() == 30 and reader.read_all(1) == before
        reader.refresh()
        assert reader.head() == 30
    finally:
        reader.close()
    assert seg.stat().st_size == good_size + zeros
    with FileLog.open(log_dir) as log:
        assert log.torn_bytes_truncated == zeros
        assert seg.stat().st_size == good_size
        assert log.read_all(1) == before
        log.append("s0", _events("s0", 10, 2), 10)
        _assert_intact(log, {"s0": 12, "s1": 10, "s2": 10})
    report = verify_log(log_dir)
    assert report.ok and not report.notes, (report.faults, report.notes)


@pytest.mark.parametrize("extra_zeros", [0, 1, 5000])
def test_intact_header_with_zero_body_at_the_end_is_an_unacknowledged_tail(
    tmp_path: Path, extra_zeros: int
) -> None:
    log_dir = tmp_path / "log"
    with FileLog.open(log_dir) as log:
        _fill(log)
        before = log.read_all(1)
    seg = _segments(log_dir)[-1]
    good_size = seg.stat().st_size
    frame = encode_frame("s0", 31, 11, 0, [])
    tail = frame[: HEADER.size] + bytes(len(frame) - HEADER.size + extra_zeros)
    with open(seg, "ab") as f:
        f.write(tail)
    assert verify_log(log_dir).ok
    with FileLog.open(log_dir) as log:
        assert log.torn_bytes_truncated == len(tail)
        assert seg.stat().st_size == good_size and log.read_all(1) == before


def test_zero_header_is_never_an_empty_frame(tmp_path: Path) -> None:
    # A header of zeros says length 0, and so would a forged header with matching CRCs:
    # neither is a frame (every body holds at least META), so neither is read as one.
    path = tmp_path / "f"
    head = (0).to_bytes(4, "little") + crc32c(b"").to_bytes(4, "little")
    forged = head + crc32c(head).to_bytes(4, "little")
    for data in (bytes(HEADER.size), forged, bytes(HEADER.size) * 3):
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            statuses = [status for status, *_ in iter_frames(fd, 0, len(data))]
        finally:
            os.close(fd)
        assert statuses and FRAME_OK not in statuses
    # The forged empty frame is not zeros: at the end of a log it is damage, not a tail.
    log_dir = tmp_path / "log"
    with FileLog.open(log_dir) as log:
        _fill(log, per=2)
    with open(_segments(log_dir)[-1], "ab") as f:
        f.write(forged + bytes(100))
    with pytest.raises(CorruptLogError):
        FileLog.open(log_dir)


@pytest.mark.parametrize(
    "tail",
    [
        bytes(4096) + b"\x01",  # zeros, then data: not a tail that never reached the disk
        bytes(HEADER.size) + b"garbage" + bytes(100),
        b"\x01" + bytes(HEADER.size * 2),  # a damaged header, then zeros
    ],
)
def test_zeros_then_data_is_corruption(tmp_path: Path, tail: bytes) -> None:
    log_dir = tmp_path / "log"
    with FileLog.open(log_dir) as log:
        _fill(log)
    seg = _segments(log_dir)[-1]
    with open(seg, "ab") as f:
        f.write(tail)
    size = seg.stat().st_size
    with pytest.raises(CorruptLogError):
        FileLog.open(log_dir)
    assert seg.stat().st_size == size  # nothing was cut
    report = verify_log(log_dir)
    assert not report.ok and report.faults[0].kind == "bad_header"


def test_intact_header_then_zeros_then_data_is_corruption(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    with FileLog.open(log_dir) as log:
        _fill(log)
    frame = encode_frame("s0", 31, 11, 0, [])
    with open(_segments(log_dir)[-1], "ab") as f:
        f.write(frame[: HEADER.size] + bytes(len(frame) - HEADER.size) + b"\x07")
    with pytest.raises(CorruptLogError):
        FileLog.open(log_dir)
    assert not verify_log(log_dir).ok


@pytest.mark.parametrize("zeros", [1, HEADER.size, 4096])
def test_zero_filled_tail_in_a_sealed_segment_is_a_fault(tmp_path: Path, zeros: int) -> None:
    log_dir = tmp_path / "log"
    with FileLog.open(log_dir, segment_bytes=1024) as log:
        _fill(log, per=20)
    segments = _segments(log_dir)
    assert len(segments) > 2
    with open(segments[1], "ab") as f:
        f.write(bytes(zeros))
    size = segments[1].stat().st_size
    report = verify_log(log_dir)
    assert not report.ok
    assert report.faults[0].kind == "torn_sealed_segment"
    assert report.faults[0].segment == segments[1].name
    with pytest.raises(CorruptLogError):
        FileLog.open(log_dir, segment_bytes=1024)
    with pytest.raises(CorruptLogError):
        FileLog.open(log_dir, readonly=True)
    assert segments[1].stat().st_size == size  # nothing was cut


def test_reader_following_a_zero_tail_sees_the_writer_continue(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    with FileLog.open(log_dir) as log:
        _fill(log, per=3)
    with open(_segments(log_dir)[-1], "ab") as f:
        f.write(bytes(8192))
    reader = FileLog.open(log_dir, readonly=True)
    try:
        assert reader.head() == 9
        with FileLog.open(log_dir) as log:
            assert log.torn_bytes_truncated == 8192
            log.append("s1", _events("s1", 3, 1), 3)
            assert reader.wait(9, timeout=5) == 10
            assert reader.read_all(1) == log.read_all(1)
    finally:
        reader.close()


# --- Task 2: a poisoned log says so, closes, and opens again ---------------------------


def _failed(log: FileLog) -> str | None:
    return log.failed


def test_poisoned_log_reports_failed_and_reopens(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    log = FileLog.open(log_dir)
    _fill(log, per=4)
    assert log.failed is None
    os.close(log._write_fd)  # the disk goes away under the writer
    with pytest.raises(LogClosedError):
        log.append("s0", _events("s0", 4, 1), 4)
    reason = _failed(log)  # (a fresh read: mypy narrowed log.failed to None above)
    assert reason is not None and "write failed" in reason
    with pytest.raises(LogClosedError):
        log.append("s1", _events("s1", 4, 1), 4)

    async def later() -> None:
        await log.append_async("s2", _events("s2", 4, 1), 4)

    with pytest.raises(LogClosedError):
        asyncio.run(later())
    log.close()  # works, and releases the lock
    with FileLog.open(log_dir) as log:
        assert log.failed is None
        _assert_intact(log, {"s0": 4, "s1": 4, "s2": 4})
        log.append("s0", _events("s0", 4, 1), 4)
    assert verify_log(log_dir).ok


# --- Task 3: a simulated disk that keeps only what was synced --------------------------


@dataclass(frozen=True)
class Op:
    kind: str  # create | write | sync | dirsync | ack
    path: str = ""  # the file (or directory) it concerns; the session for an ack
    length: int = 0  # write: the file's size after it; sync: the size it made durable
    ack: AppendResult | None = None


@dataclass
class SimDisk:
    drop_data_syncs: bool = False  # mutation: fdatasync/fsync of files does nothing
    drop_dir_syncs: bool = False  # mutation: fsync of directories does nothing
    fail_sync_at: int = 0  # the n-th data sync (1-based) fails with EIO
    journal: list[Op] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    data_syncs: int = 0

    def record(self, op: Op) -> None:
        with self.lock:
            self.journal.append(op)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class _SimOS:
    """What ``filelog`` sees as ``os``: the real one, with writes and syncs journaled.

    Syncs are not passed on (the simulated disk decides what survives), which
    also keeps these tests fast.
    """

    def __init__(self, disk: SimDisk) -> None:
        self._disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd = os.open(path, flags, mode, **kw)
        if flags & os.O_CREAT:
            self._disk.record(Op("create", _fd_path(fd)))
        return fd

    def write(self, fd: int, data: Any) -> int:
        n = os.write(fd, data)
        self._disk.record(Op("write", _fd_path(fd), os.fstat(fd).st_size))
        return n

    def fdatasync(self, fd: int) -> None:
        self._sync(fd)

    def fsync(self, fd: int) -> None:
        self._sync(fd)

    def _sync(self, fd: int) -> None:
        disk = self._disk
        st = os.fstat(fd)  # raises EBADF for a closed descriptor, as the real sync would
        if stat.S_ISDIR(st.st_mode):
            if not disk.drop_dir_syncs:
                disk.record(Op("dirsync", _fd_path(fd)))
            return
        with disk.lock:
            disk.data_syncs += 1
            n = disk.data_syncs
        if n == disk.fail_sync_at:
            raise OSError(errno.EIO, "simulated I/O error")
        if not disk.drop_data_syncs:
            disk.record(Op("sync", _fd_path(fd), st.st_size))


@contextlib.contextmanager
def simulated_disk(disk: SimDisk) -> Iterator[SimDisk]:
    """Route ``filelog``'s system calls through ``disk`` and journal every acknowledgement."""
    settle = filelog._Append.settle

    def journaled_settle(self: Any, result: Any, here: Any = None) -> None:
        if isinstance(result, AppendResult):
            disk.record(Op("ack", self.session_id, ack=result))  # before the caller can see it
        settle(self, result, here)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(filelog, "os", _SimOS(disk))
        mp.setattr(filelog._Append, "settle", journaled_settle)
        yield disk


@dataclass
class DiskState:
    """The simulated disk after the first ``upto`` journal entries."""

    written: dict[str, int] = field(default_factory=dict)
    durable: dict[str, int] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    named: set[str] = field(default_factory=set)  # names a directory sync made durable
    acks: list[tuple[str, AppendResult]] = field(default_factory=list)

    @classmethod
    def replay(
        cls, journal: list[Op], upto: int, on_ack: Callable[[DiskState, Op], None] | None = None
    ) -> DiskState:
        state = cls()
        for op in journal[:upto]:
            if op.kind == "create":
                state.created.append(op.path)
            elif op.kind == "write":
                state.written[op.path] = op.length
            elif op.kind == "sync":
                state.durable[op.path] = max(state.durable.get(op.path, 0), op.length)
            elif op.kind == "dirsync":
                state.named.update(p for p in state.created if os.path.dirname(p) == op.path)
                state.named.add(op.path + "/")  # the directory's own entries were synced
            elif op.kind == "ack":
                assert op.ack is not None
                if on_ack is not None:
                    on_ack(state, op)
                state.acks.append((op.path, op.ack))
        return state


def _writer_batch(sid: str, seq: int) -> int:
    return 1 + (len(sid) + seq) % 3


def _run_workload(log: FileLog, per_writer: int = 30) -> list[tuple[str, AppendResult]]:
    """Appends from asyncio tasks on two loops and from threads at once; every ack seen."""
    seen: list[tuple[str, AppendResult]] = []
    seen_lock = threading.Lock()

    def note(sid: str, result: AppendResult) -> None:
        with seen_lock:
            seen.append((sid, result))

    async def async_writer(sid: str) -> None:
        seq = 0
        for _ in range(per_writer):
            n = _writer_batch(sid, seq)
            result = await log.append_async(sid, _events(sid, seq, n), seq)
            note(sid, result)
            seq = result.last_seq

    def thread_writer(sid: str) -> None:
        seq = 0
        for _ in range(per_writer):
            n = _writer_batch(sid, seq)
            result = log.append(sid, _events(sid, seq, n), seq)
            note(sid, result)
            seq = result.last_seq

    async def loop_writers(prefix: str, count: int) -> None:
        await asyncio.gather(*(async_writer(f"{prefix}{i}") for i in range(count)))

    threads = [threading.Thread(target=thread_writer, args=(f"t{i}",)) for i in range(3)]
    # A second event loop in its own thread: its acks cross loops.
    threads.append(threading.Thread(target=asyncio.run, args=(loop_writers("l", 2),)))
    for t in threads:
        t.start()
    try:
        asyncio.run(loop_writers("a", 4))
    finally:
        for t in threads:
            t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return seen


def _frames(log_dir: Path) -> dict[int, tuple[str, int]]:
    """first position -> (real path of its segment, byte offset just past the frame)."""
    frames: dict[int, tuple[str, int]] = {}

    def on_body(seg: Any, off: int, meta: Any, body: bytes) -> None:
        frames[meta.first_position] = (os.path.realpath(seg.path), off + HEADER.size + len(body))

    scan = scan_log(log_dir, on_body=on_body)
    for seg in scan.segments:
        seg.close()
    assert not scan.faults
    return frames


def _check_acks_follow_syncs(disk: SimDisk, log_dir: Path) -> None:
    """Each ack comes after a sync that covers its frame and the name of its segment."""
    frames = _frames(log_dir)
    root = os.path.realpath(log_dir)
    seg_dir = os.path.realpath(log_dir / "segments")

    def on_ack(state: DiskState, op: Op) -> None:
        assert op.ack is not None
        path, end = frames[op.ack.first_position]
        name = os.path.basename(path)
        assert state.durable.get(path, 0) >= end, (
            f"positions {op.ack.first_position}..{op.ack.last_position} acknowledged before "
            f"{name} was synced to byte {end} (durable: {state.durable.get(path, 0)})"
        )
        assert path in state.named, f"acknowledged into {name} before its name was synced"
        assert root + "/" in state.named and os.path.dirname(root) + "/" in state.named, (
            "acknowledged before the new log's directories were synced"
        )
        assert seg_dir + "/" in state.named

    state = DiskState.replay(disk.journal, len(disk.journal), on_ack)
    assert state.acks


def _crash_points(journal: list[Op], rng: random.Random) -> list[int]:
    """Journal prefixes to lose power after: right after writes (unsynced data in
    flight), right after segment creations (a name not yet synced), and the end."""
    writes = [i + 1 for i, op in enumerate(journal) if op.kind == "write"]
    creates = [i + 1 for i, op in enumerate(journal) if op.kind == "create"]
    points = rng.sample(writes, min(14, len(writes))) + rng.sample(creates, min(4, len(creates)))
    return sorted({*points, len(journal)})


def _power_loss_image(
    state: DiskState, final: dict[str, bytes], dest: Path, mode: str, rng: random.Random
) -> int:
    """Write the log as the disk kept it; return how many unsynced bytes it holds."""
    (dest / "segments").mkdir(parents=True)
    (dest / "blobs").mkdir()
    unsynced = 0
    for path in state.created:
        if not path.endswith(".seg") or path not in state.named:
            continue  # a name never synced is lost with the power
        durable = state.durable.get(path, 0)
        written = state.written.get(path, 0)
        data = final[path][:durable]
        if mode == "zeros":  # the new size reached the disk, the data did not
            data += bytes(written - durable)
            unsynced += written - durable
        elif mode == "partial":  # some of the unsynced data reached the disk
            data = final[path][: rng.randint(durable, written)]
        (dest / "segments" / os.path.basename(path)).write_bytes(data)
    return unsynced


def _check_power_losses(disk: SimDisk, log_dir: Path, work: Path, seed: str) -> int:
    """Lose power at many points of the journal; acked events must all be there. Returns
    how many crash images held unsynced bytes (i.e. the check was not vacuous)."""
    rng = random.Random(seed)
    final = {os.path.realpath(p): p.read_bytes() for p in _segments(log_dir)}
    interesting = 0
    for k in _crash_points(disk.journal, rng):
        state = DiskState.replay(disk.journal, k)
        for mode in ("cut", "zeros", "partial"):
            image = work / f"crash-{k}-{mode}"
            unsynced = _power_loss_image(state, final, image, mode, rng)
            interesting += unsynced > 0
            if mode != "partial":
                report = verify_log(image)
                assert report.ok, (k, mode, [str(f) for f in report.faults])
            with FileLog.open(image, segment_bytes=SEGMENT_BYTES) as log:
                if mode == "zeros":
                    assert log.torn_bytes_truncated == unsynced
                last: dict[str, int] = {}
                for sid, ack in state.acks:
                    count = ack.last_position - ack.first_position + 1
                    got = log.read_all(ack.first_position, limit=count)
                    first_seq = ack.last_seq - count + 1
                    assert [(e.position, e.session_id, e.seq) for e in got] == [
                        (ack.first_position + i, sid, first_seq + i) for i in range(count)
                    ], f"crash after journal entry {k} ({mode}): acked {sid} {ack} lost"
                    assert [e.event.note for e in got] == [  # type: ignore[union-attr]
                        _note(sid, first_seq + i) for i in range(count)
                    ]
                    last[sid] = max(last.get(sid, 0), ack.last_seq)
                for sid, seq in last.items():
                    assert log.last_seq(sid) >= seq
                # The log goes on after recovery.
                sid = "after-crash"
                log.append(sid, _events(sid, 0, 1), 0)
            assert verify_log(image).ok, (k, mode)
    return interesting


def _run_on_simulated_disk(disk: SimDisk, log_dir: Path) -> list[tuple[str, AppendResult]]:
    with simulated_disk(disk):
        log = FileLog.open(log_dir, segment_bytes=SEGMENT_BYTES)
        try:
            seen = _run_workload(log)
        finally:
            log.close()
    return seen


def _by_position(item: tuple[str, AppendResult | None]) -> int:
    assert item[1] is not None
    return item[1].first_position


def test_every_ack_follows_the_sync_that_makes_it_durable(tmp_path: Path) -> None:
    log_dir = tmp_path / "parent" / "log"
    disk = SimDisk()
    seen = _run_on_simulated_disk(disk, log_dir)
    # What the callers were told is exactly what the journal recorded as acknowledged.
    journaled = [(op.path, op.ack) for op in disk.journal if op.kind == "ack"]
    assert sorted(seen, key=_by_position) == sorted(journaled, key=_by_position)
    assert len(seen) == 9 * 30
    assert len(_segments(log_dir)) > 5, "segment rolls were not exercised"
    expected: dict[str, int] = {}
    for sid, result in seen:
        expected[sid] = max(expected.get(sid, 0), result.last_seq)
    with FileLog.open(log_dir) as log:
        _assert_intact(log, expected)
    _check_acks_follow_syncs(disk, log_dir)
    assert _check_power_losses(disk, log_dir, tmp_path / "crashes", "acks-follow-syncs") > 10


@pytest.mark.parametrize("mutation", ["drop_data_syncs", "drop_dir_syncs"])
def test_the_simulated_disk_catches_a_missing_sync(tmp_path: Path, mutation: str) -> None:
    """The checks above have teeth: with data (or directory) syncs turned into no-ops
    they fail, as they would if FileLog stopped calling them."""
    log_dir = tmp_path / "parent" / "log"
    disk = SimDisk(
        drop_data_syncs=mutation == "drop_data_syncs", drop_dir_syncs=mutation == "drop_dir_syncs"
    )
    _run_on_simulated_disk(disk, log_dir)
    with pytest.raises(AssertionError):
        _check_acks_follow_syncs(disk, log_dir)
    with pytest.raises(AssertionError):
        _check_power_losses(disk, log_dir, tmp_path / "crashes", mutation)


def test_failed_sync_poisons_and_nothing_unsynced_is_acknowledged(tmp_path: Path) -> None:
    log_dir = tmp_path / "parent" / "log"
    disk = SimDisk(fail_sync_at=5)
    with simulated_disk(disk):
        log = FileLog.open(log_dir, segment_bytes=SEGMENT_BYTES)
        acked: dict[str, int] = {}
        with pytest.raises(LogClosedError):
            for i in range(100):
                sid = f"s{i % 3}"
                seq = acked.get(sid, 0)
                acked[sid] = log.append(sid, _events(sid, seq, 1), seq).last_seq
        assert log.failed is not None and "simulated I/O error" in log.failed
        with pytest.raises(LogClosedError):
            log.append("s0", _events("s0", acked["s0"], 1), acked["s0"])
        log.close()
    _check_acks_follow_syncs(disk, log_dir)
    with FileLog.open(log_dir, segment_bytes=SEGMENT_BYTES) as log:
        for sid, seq in acked.items():
            assert log.last_seq(sid) >= seq
            assert [e.seq for e in log.read_stream(sid)][:seq] == list(range(1, seq + 1))
        sid = "after"
        log.append(sid, _events(sid, 0, 1), 0)
    assert verify_log(log_dir).ok


# --- an asyncio committer cancelled while a thread commits ------------------------------


def test_cancelled_async_committer_does_not_keep_the_commit_lock(tmp_path: Path) -> None:
    """asyncio.run cancels the committer task when its loop ends; if a thread was
    committing, the committer's worker thread still gets the commit lock later and
    must hand it back, and the request left queued by the gone loop is committed
    by the next writer without breaking the acknowledgement of the others."""
    log = FileLog.open(tmp_path / "log")
    loop = asyncio.new_event_loop()
    try:
        assert log._commit_lock.acquire(timeout=5)  # a thread is committing
        held = True
        writer = loop.create_task(log.append_async("gone", _events("gone", 0, 1), 0))

        async def committer_waits() -> None:
            while True:  # poll: the committer is parked on the lock
                committer = log._async_committers.get(loop)
                if committer is not None and committer.get_coro().cr_await is not None:  # type: ignore[union-attr]
                    return
                await asyncio.sleep(0)

        loop.run_until_complete(asyncio.wait_for(committer_waits(), 10))
        tasks = asyncio.all_tasks(loop)
        for task in tasks:  # what asyncio.run does when its main coroutine returns
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        assert writer.cancelled()
        log._commit_lock.release()  # the committing thread is done
        held = False
        loop.run_until_complete(loop.shutdown_default_executor())  # the worker got the lock
    finally:
        if held:
            log._commit_lock.release()
        loop.close()
    assert log._commit_lock.acquire(timeout=5), "the cancelled committer kept the lock"
    log._commit_lock.release()
    # The next append commits the orphaned request too; its own ack must still come.
    results: list[AppendResult] = []
    thread = threading.Thread(
        target=lambda: results.append(log.append("next", _events("next", 0, 1), 0)), daemon=True
    )
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), "an append committed with a gone loop's request never returned"
    assert results[0].last_seq == 1
    log.close()
    with FileLog.open(tmp_path / "log") as log:
        assert [e.session_id for e in log.read_all(1)] == ["gone", "next"]
