"""``fleetlog verify``: check a log end to end without modifying it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .blobs import BlobStore
from .codec import FrameMeta, decode_payload, parse_meta
from .errors import Fault
from .filelog import _OK, ScanResult, _iter_frames, _list_segments, _Segment, scan_log
from .schema import BlobRef, Envelope, UnknownEvent

__all__ = ["VerifyReport", "verify_log", "salvage_prefix"]


@dataclass
class VerifyReport:
    path: str
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: int = 0
    frames: int = 0
    events: int = 0
    sessions: int = 0
    blobs_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.faults


def verify_log(path: str | Path) -> VerifyReport:
    """Checksums, framing, contiguous positions and per-session seqs, envelope/header
    agreement, known event types, and every referenced blob present and intact."""
    root = Path(path)
    report = VerifyReport(str(root))
    if not (root / "segments").is_dir():
        report.faults.append(Fault("missing_log", str(root), 0, "no segments/ directory here"))
        return report
    blobs = BlobStore(root / "blobs")
    checked_blobs: dict[str, str | None] = {}

    def check_body(seg: _Segment, off: int, meta: FrameMeta, body: bytes) -> None:
        name = seg.path.name
        try:
            envelopes = decode_payload(memoryview(body)[meta.payload_offset :])
        except Exception as e:  # a payload that passed its CRC but does not decode
            report.faults.append(
                Fault("undecodable_frame", name, off, str(e), position=meta.first_position)
            )
            return
        if len(envelopes) != meta.count:
            report.faults.append(
                Fault(
                    "header_mismatch",
                    name,
                    off,
                    f"header says {meta.count} events, payload holds {len(envelopes)}",
                    position=meta.first_position,
                )
            )
        for i, env in enumerate(envelopes):
            expected = (meta.first_position + i, meta.first_seq + i, meta.session_id, meta.epoch)
            actual = (env.position, env.seq, env.session_id, env.epoch)
            if actual != expected:
                report.faults.append(
                    Fault(
                        "header_mismatch",
                        name,
                        off,
                        f"envelope {actual} disagrees with its frame header {expected}",
                        position=env.position,
                        session_id=env.session_id,
                    )
                )
            event = env.event
            if isinstance(event, UnknownEvent):
                report.faults.append(
                    Fault(
                        "unknown_event",
                        name,
                        off,
                        f"event type {event.type_name!r} is unknown to this version "
                        "(written by a newer fleetlog?)",
                        position=env.position,
                        session_id=env.session_id,
                    )
                )
                continue
            for field_name in event.blob_fields:
                ref = getattr(event, field_name)
                if isinstance(ref, BlobRef):
                    if ref.sha256 not in checked_blobs:
                        checked_blobs[ref.sha256] = blobs.check(ref)
                    problem = checked_blobs[ref.sha256]
                    if problem is not None:
                        report.faults.append(
                            Fault(
                                "blob",
                                name,
                                off,
                                f"{field_name} -> blob {ref.sha256[:16]}…: {problem}",
                                position=env.position,
                                session_id=env.session_id,
                            )
                        )

    scan: ScanResult = scan_log(root, on_body=check_body)
    try:
        report.faults[:0] = scan.faults
        if scan.torn_tail is not None:
            seg, off = scan.torn_tail
            size = seg.path.stat().st_size
            report.notes.append(
                f"incomplete final record at {seg.path.name}@{off} ({size - off} bytes): "
                "it was never acknowledged and is cut when the log is next opened for writing"
            )
        report.segments = len(scan.segments)
        report.frames = scan.frames
        report.events = scan.events
        report.sessions = len(scan.streams)
        report.blobs_checked = len(checked_blobs)
    finally:
        for seg in scan.segments:
            seg.close()
    return report


def salvage_prefix(path: str | Path) -> list[Envelope]:
    """Every event of a damaged log up to its first damaged or missing frame.

    Read-only: for exporting what is certainly intact before a repair.
    """
    out: list[Envelope] = []
    next_position = 1
    segments = _list_segments(Path(path) / "segments")
    try:
        for seg in segments:
            size = seg.path.stat().st_size
            for status, _off, body, _crc in _iter_frames(seg.fd(), 0, size):
                if status != _OK:
                    return out
                meta = parse_meta(body)
                if meta.first_position != next_position:
                    return out
                out.extend(decode_payload(memoryview(body)[meta.payload_offset :]))
                next_position += meta.count
    finally:
        for seg in segments:
            seg.close()
    return out
