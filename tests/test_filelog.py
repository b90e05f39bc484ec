"""FileLog behaviour beyond the shared contract: locking, segments, recovery, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from fleetlog.events.codec import encode_frame
from fleetlog.events.errors import CorruptLogError, LogClosedError, LogLockedError
from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import CancelRequested, ToolCallCompleted, UnknownEvent
from fleetlog.events.verify import salvage_prefix, verify_log


def _segments(path: Path) -> list[Path]:
    return sorted((path / "segments").glob("*.seg"))


def _fill(log: FileLog, sessions: int = 3, per: int = 10) -> None:
    for i in range(per):
        for s in range(sessions):
            log.append(f"s{s}", [CancelRequested(note=f"{s}-{i}")], i, epoch=1)


def test_second_writer_in_same_process_is_refused(tmp_path: Path) -> None:
    with FileLog.open(tmp_path / "log"):
        with pytest.raises(LogLockedError) as info:
            FileLog.open(tmp_path / "log")
        assert f"pid {os.getpid()}" in str(info.value)
    FileLog.open(tmp_path / "log").close()  # released on close


def test_second_writer_process_is_refused(tmp_path: Path) -> None:
    with FileLog.open(tmp_path / "log") as log:
        log.append("s", [CancelRequested()], 0)
        code = (
            "import sys\n"
            "from fleetlog.events.filelog import FileLog\n"
            "from fleetlog.events.errors import LogLockedError\n"
            "try:\n"
            f"    FileLog.open({str(tmp_path / 'log')!r})\n"
            "except LogLockedError as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True
        )
        assert proc.returncode == 3, proc.stderr
        assert "is locked by another process" in proc.stdout
        # A reader in another process is fine and sees the durable events.
        code = (
            "from fleetlog.events.filelog import FileLog\n"
            f"log = FileLog.open({str(tmp_path / 'log')!r}, readonly=True)\n"
            "print(log.head())\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True
        )
        assert proc.stdout.strip() == "1", proc.stderr


def test_segments_roll_and_reads_span_them(tmp_path: Path) -> None:
    with FileLog.open(tmp_path / "log", segment_bytes=2048) as log:
        _fill(log, sessions=4, per=50)
        everything = log.read_all(1, limit=10_000)
        assert [e.position for e in everything] == list(range(1, 201))
        assert len(_segments(tmp_path / "log")) > 5
        for seg in _segments(tmp_path / "log"):
            assert seg.stat().st_size <= 2048
        assert [e.seq for e in log.read_stream("s3", from_seq=40)] == list(range(40, 51))
    # Segment names are the first position they hold.
    names = [int(p.stem) for p in _segments(tmp_path / "log")]
    assert names[0] == 1 and names == sorted(names)
    with FileLog.open(tmp_path / "log", segment_bytes=2048) as log:
        assert log.read_all(1, limit=10_000) == everything
        assert log.read_all(117, limit=3)[0].position == 117
    assert verify_log(tmp_path / "log").ok


def test_torn_tail_is_truncated_and_reported_by_verify(tmp_path: Path) -> None:
    with FileLog.open(tmp_path / "log") as log:
        _fill(log)
        before = log.read_all(1)
    seg = _segments(tmp_path / "log")[-1]
    good_size = seg.stat().st_size
    frame = encode_frame("s0", 31, 11, 1, [])
    with open(seg, "ab") as f:
        f.write(frame[: len(frame) // 2])  # a crash mid-write
    report = verify_log(tmp_path / "log")
    assert report.ok and "incomplete final record" in report.notes[0]
    with FileLog.open(tmp_path / "log") as log:
        assert log.torn_bytes_truncated == len(frame) // 2
        assert log.read_all(1) == before
        assert seg.stat().st_size == good_size
        log.append("s0", [CancelRequested()], 10, epoch=1)
    assert verify_log(tmp_path / "log").ok


def test_damage_mid_file_refuses_open_and_verify_reports_it(tmp_path: Path) -> None:
    with FileLog.open(tmp_path / "log") as log:
        _fill(log)
        before = log.read_all(1)
    seg = _segments(tmp_path / "log")[-1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x5A
    seg.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError) as info:
        FileLog.open(tmp_path / "log")
    assert "run `fleetlog verify`" in str(info.value) or info.value.faults
    assert len(seg.read_bytes()) == len(data)  # nothing was cut
    report = verify_log(tmp_path / "log")
    assert not report.ok and report.faults[0].kind in {"corrupt_frame", "bad_header"}
    prefix = salvage_prefix(tmp_path / "log")
    assert prefix == before[: len(prefix)] and len(prefix) < len(before)


def test_unknown_event_types_are_reported_with_position(tmp_path: Path) -> None:
    class FutureEvent(msgspec.Struct, tag="FutureEvent", tag_field="type"):
        detail: str

    class FutureEnvelope(msgspec.Struct, array_like=True):
        position: int
        session_id: str
        seq: int
        epoch: int
        ts: float
        event_id: str
        event: FutureEvent

    with FileLog.open(tmp_path / "log") as log:
        log.append("s", [CancelRequested()], 0)
    newer = FutureEnvelope(2, "s", 2, 0, 1.7e9, "x", FutureEvent(detail="from v9"))
    with open(_segments(tmp_path / "log")[-1], "ab") as f:
        f.write(encode_frame("s", 2, 2, 0, [newer]))  # type: ignore[list-item]
    with FileLog.open(tmp_path / "log") as log:
        stored = log.read_all(1)
        assert isinstance(stored[1].event, UnknownEvent)
        assert stored[1].event.type_name == "FutureEvent" and stored[1].position == 2
        log.append("s", [CancelRequested()], 2)  # the log goes on
    report = verify_log(tmp_path / "log")
    assert [(f.kind, f.position) for f in report.faults] == [("unknown_event", 2)]


def test_readonly_reader_follows_writer(tmp_path: Path) -> None:
    with FileLog.open(tmp_path / "log", segment_bytes=1024) as log:
        log.append("s", [CancelRequested()], 0)
        reader = FileLog.open(tmp_path / "log", readonly=True)
        try:
            assert reader.head() == 1
            for i in range(1, 40):
                log.append("s", [CancelRequested(note=str(i))], i)
            assert reader.wait(1, timeout=5) == 40
            assert [e.seq for e in reader.read_stream("s")] == list(range(1, 41))
            assert reader.read_all(1, limit=1000) == log.read_all(1, limit=1000)
            with pytest.raises(LogClosedError):
                reader.append("s", [CancelRequested()], 40)
        finally:
            reader.close()


def test_write_failure_poisons_the_log(tmp_path: Path) -> None:
    log = FileLog.open(tmp_path / "log")
    log.append("s", [CancelRequested()], 0)
    os.close(log._write_fd)  # the disk goes away under the writer
    with pytest.raises(LogClosedError):
        log.append("s", [CancelRequested()], 1)
    with pytest.raises(LogClosedError) as info:
        log.append("s", [CancelRequested()], 1)
    assert "write failed" in str(info.value)
    log._write_fd = -1
    log.close()
    with FileLog.open(tmp_path / "log") as log:
        assert log.head() == 1


def test_blob_is_durable_and_deduplicated_on_disk(tmp_path: Path) -> None:
    big = "x" * 200_000
    with FileLog.open(tmp_path / "log") as log:
        for i in range(5):
            log.append("s", [ToolCallCompleted(call_id=f"c{i}", output=big)], i)
    blobs = [p for p in (tmp_path / "log" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1 and blobs[0].stat().st_size == 200_000
    seg_bytes = sum(p.stat().st_size for p in _segments(tmp_path / "log"))
    assert seg_bytes < 5_000  # the log holds references, not five copies
    blobs[0].write_bytes(b"y" * 200_000)
    report = verify_log(tmp_path / "log")
    assert {f.kind for f in report.faults} == {"blob"}
