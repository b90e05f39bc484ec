"""Property: damage a log anywhere; recovery keeps exactly the valid prefix and reports the rest.

* an incomplete *final* record (the log cut anywhere inside its last segment) is
  truncated on open, and the log then holds exactly the frames before the cut;
* any other damage — a byte changed anywhere, a sealed segment cut short — makes
  the log refuse to open for writing, ``verify`` names the damaged frame, and the
  events before it are intact.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetlog.events.codec import HEADER, parse_meta
from fleetlog.events.errors import CorruptLogError
from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import CancelRequested, Envelope, Event, ToolCallCompleted
from fleetlog.events.verify import salvage_prefix, verify_log

SEGMENT_BYTES = 1500


@dataclass(frozen=True)
class Frame:
    segment: int  # index into the sorted segment list
    start: int
    end: int
    first_position: int
    count: int


@dataclass(frozen=True)
class Base:
    root: Path
    events: list[Envelope]
    frames: list[Frame]
    segment_paths: list[str]  # names, in order


@pytest.fixture(scope="module")
def base() -> Iterator[Base]:
    root = Path(tempfile.mkdtemp(prefix="fleetlog-prop-"))
    with FileLog.open(root / "log", segment_bytes=SEGMENT_BYTES) as log:
        seqs = {"a": 0, "b": 0, "c": 0}
        for i in range(40):
            sid = "abc"[i % 3]
            batch: list[Event] = [CancelRequested(note=f"{sid}{i}-{j}") for j in range(1 + i % 4)]
            if i % 13 == 5:
                batch.append(ToolCallCompleted(call_id=f"big{i}", output="z" * 70_000))
            log.append(sid, batch, seqs[sid], epoch=1)
            seqs[sid] += len(batch)
        events = log.read_all(1, limit=100_000)
    # The byte layout, read independently of FileLog's own index.
    paths = sorted((root / "log" / "segments").glob("*.seg"))
    frames: list[Frame] = []
    for number, seg_path in enumerate(paths):
        raw = seg_path.read_bytes()
        offset = 0
        while offset < len(raw):
            (length,) = struct.unpack_from("<I", raw, offset)
            meta = parse_meta(raw[offset + HEADER.size : offset + HEADER.size + length])
            end = offset + HEADER.size + length
            frames.append(Frame(number, offset, end, meta.first_position, meta.count))
            offset = end
    assert sum(f.count for f in frames) == len(events)
    assert len(paths) >= 3, "the base log should span several segments"
    yield Base(root, events, frames, [p.name for p in paths])
    shutil.rmtree(root)


def _copy(base: Base) -> Path:
    target = Path(tempfile.mkdtemp(prefix="fleetlog-case-")) / "log"
    shutil.copytree(base.root / "log", target)
    return target


def _segment(path: Path, base: Base, index: int) -> Path:
    return path / "segments" / base.segment_paths[index]


def _events_before(base: Base, frame: Frame) -> list[Envelope]:
    return base.events[: frame.first_position - 1]


def _frame_containing(base: Base, segment: int, offset: int) -> Frame:
    return next(f for f in base.frames if f.segment == segment and f.start <= offset < f.end)


PROPERTY = settings(
    max_examples=int(os.environ.get("FLEETLOG_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@PROPERTY
@given(data=st.data())
def test_cut_inside_last_segment_keeps_exactly_the_whole_frames(
    base: Base, data: st.DataObject
) -> None:
    last = len(base.segment_paths) - 1
    size = max(f.end for f in base.frames if f.segment == last)
    cut = data.draw(st.integers(min_value=0, max_value=size), label="cut")
    path = _copy(base)
    try:
        with open(_segment(path, base, last), "r+b") as f:
            f.truncate(cut)
        whole = [f for f in base.frames if f.segment < last or f.end <= cut]
        kept = base.events[: sum(f.count for f in whole)]
        with FileLog.open(path) as log:
            assert log.read_all(1, limit=100_000) == kept
            # The log goes on from exactly there.
            log.append("after", [CancelRequested()], 0)
            assert log.head() == len(kept) + 1
        assert verify_log(path).ok
    finally:
        shutil.rmtree(path.parent)


@PROPERTY
@given(data=st.data())
def test_changed_bytes_are_reported_never_dropped(base: Base, data: st.DataObject) -> None:
    segment = data.draw(st.integers(0, len(base.segment_paths) - 1), label="segment")
    size = max(f.end for f in base.frames if f.segment == segment)
    offset = data.draw(st.integers(0, size - 1), label="offset")
    width = data.draw(st.integers(1, min(4, size - offset)), label="width")
    flips = data.draw(st.binary(min_size=width, max_size=width).filter(any), label="xor")
    path = _copy(base)
    try:
        seg_path = _segment(path, base, segment)
        raw = bytearray(seg_path.read_bytes())
        for i, x in enumerate(flips):
            raw[offset + i] ^= x
        seg_path.write_bytes(bytes(raw))
        damaged = _frame_containing(base, segment, offset)
        with pytest.raises(CorruptLogError):
            FileLog.open(path)
        assert seg_path.stat().st_size == len(raw)  # nothing was cut
        report = verify_log(path)
        assert not report.ok
        first = report.faults[0]
        assert (first.segment, first.offset) == (base.segment_paths[segment], damaged.start)
        assert salvage_prefix(path) == _events_before(base, damaged)
    finally:
        shutil.rmtree(path.parent)


@PROPERTY
@given(data=st.data())
def test_cut_sealed_segment_is_reported(base: Base, data: st.DataObject) -> None:
    segment = data.draw(st.integers(0, len(base.segment_paths) - 2), label="segment")
    size = max(f.end for f in base.frames if f.segment == segment)
    cut = data.draw(st.integers(0, size - 1), label="cut")
    path = _copy(base)
    try:
        with open(_segment(path, base, segment), "r+b") as f:
            f.truncate(cut)
        with pytest.raises(CorruptLogError):
            FileLog.open(path)
        assert not verify_log(path).ok
        whole = [
            f for f in base.frames if f.segment < segment or (f.segment == segment and f.end <= cut)
        ]
        assert salvage_prefix(path) == base.events[: sum(f.count for f in whole)]
    finally:
        shutil.rmtree(path.parent)
