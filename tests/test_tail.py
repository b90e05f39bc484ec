"""LogTail and read_segment: the projector's sequential readers of a partition."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bench.histories import session_history, write_histories
from fleetlog.events.errors import CorruptLogError
from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import SessionCreated, ToolCallCompleted
from fleetlog.events.tail import LogTail, read_segment, segment_bases


def _log(path: Path, segment_bytes: int = 4096, sessions: int = 40) -> list[tuple]:
    rng = random.Random(5)
    histories = {f"s-{i}": session_history(rng, f"s-{i}") for i in range(sessions)}
    log = FileLog.open(path, segment_bytes=segment_bytes)
    try:
        write_histories([log], histories, rng)
        return [
            (e.position, e.session_id, e.seq, e.epoch, e.ts, e.event_id, e.event)
            for e in log.read_all(1, 10**9)
        ]
    finally:
        log.close()


def test_reads_from_any_position_across_segments_in_any_chunk_size(tmp_path: Path) -> None:
    rows = _log(tmp_path)
    assert len(segment_bases(tmp_path)) > 5
    tail = LogTail(tmp_path)
    assert tail.head() == len(rows)
    rng = random.Random(1)
    for start in [1, 2, 3, len(rows) // 2, len(rows) - 1, len(rows), len(rows) + 1]:
        got: list[tuple] = []
        position = start
        while batch := tail.read(position, rng.randint(1, 300), rows=True):
            got.extend(batch)
            position = batch[-1][0] + 1
        assert got == rows[start - 1 :]
    # Envelopes too, and a whole segment at a time.
    envs = tail.read(1, 10**9)
    assert [(e.position, e.event) for e in envs] == [(r[0], r[6]) for r in rows]
    whole = [r for _b, seg in segment_bases(tmp_path) for r in read_segment(tmp_path, seg)]
    assert whole == rows
    assert read_segment(tmp_path, segment_bases(tmp_path)[0][1], upto=3) == rows[:3]


def test_follows_a_log_that_another_writer_appends_to(tmp_path: Path) -> None:
    log = FileLog.open(tmp_path, segment_bytes=1024)
    tail = LogTail(tmp_path)
    assert tail.read(1) == [] and tail.head() == 0
    seen = []
    for i in range(1, 60):
        log.append(f"s-{i}", [SessionCreated(task_id=str(i), prompt="x" * 50)], 0)
        seen.extend(tail.read(len(seen) + 1))
        assert [e.position for e in seen] == list(range(1, i + 1))
    log.close()


def test_a_frame_being_written_is_not_read_yet_and_damage_is_reported(tmp_path: Path) -> None:
    log = FileLog.open(tmp_path)
    log.append("s-1", [SessionCreated(task_id="1", prompt="p")], 0)
    log.append("s-1", [ToolCallCompleted(call_id="c", output="o" * 100)], 1)
    log.close()
    seg = segment_bases(tmp_path)[-1][1]
    size = seg.stat().st_size
    # An append in flight: a frame cut short at the end of the newest segment.
    with open(seg, "r+b") as f:
        f.truncate(size - 10)
    assert [e.position for e in LogTail(tmp_path).read(1)] == [1]
    assert LogTail(tmp_path).head() == 1
    # A flipped byte inside a whole frame is damage, never silently skipped.
    with open(seg, "r+b") as f:
        f.truncate(size)
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())
    with pytest.raises(CorruptLogError, match="checksum"):
        LogTail(tmp_path).read(1)


@pytest.mark.parametrize("zeros", [1, 12, 5000])
def test_a_zero_filled_tail_of_the_newest_segment_is_not_yet_written(
    tmp_path: Path, zeros: int
) -> None:
    """After a power loss a file can have grown with zeros its writer never wrote out."""
    rows = _log(tmp_path)
    newest = segment_bases(tmp_path)[-1][1]
    with open(newest, "ab") as f:
        f.write(b"\0" * zeros)
    tail = LogTail(tmp_path)
    assert [r[0] for r in tail.read(1, 10**9, rows=True)] == [r[0] for r in rows]
    assert tail.read(len(rows) + 1, 10) == []
    # Zeros followed by data are damage, not a tail.
    with open(newest, "ab") as f:
        f.write(b"x" * 20)
    with pytest.raises(CorruptLogError):
        LogTail(tmp_path).read(1, 10**9)
