"""``fleetlog verify``: check a log end to end without modifying it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .blobs import BlobStore
from .codec import FrameMeta, decode_payload, parse_meta
from .errors import BlobMissingError, Fault
from .filelog import _OK, ScanResult, _iter_frames, _list_segments, _Segment, scan_log
from .log import EventLog
from .schema import BlobRef, Envelope, UnknownEvent

__all__ = ["VerifyReport", "verify_events", "verify_log", "salvage_prefix"]


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


def verify_events(log: EventLog, where: str, *, batch: int = 50_000) -> VerifyReport:
    """The same checks for a log read through the ``EventLog`` protocol (PostgreSQL).

    Positions contiguous from 1 to the head, per-session seqs contiguous from 1
    and matching ``last_seq``, epochs never going back within a session, known
    event types, and every referenced blob present and intact.
    """
    report = VerifyReport(where)
    head = log.head()
    expected = 1
    seqs: dict[str, int] = {}
    epochs: dict[str, int] = {}
    checked: set[str] = set()
    while events := log.read_all(expected, batch):
        for env in events:
            if env.position != expected:
                report.faults.append(
                    Fault(
                        "position_gap",
                        where,
                        0,
                        f"expected position {expected}, found {env.position}",
                        position=env.position,
                    )
                )
            expected = env.position + 1
            sid = env.session_id
            if env.seq != seqs.get(sid, 0) + 1:
                report.faults.append(
                    Fault(
                        "seq_gap",
                        where,
                        0,
                        f"expected seq {seqs.get(sid, 0) + 1}, found {env.seq}",
                        position=env.position,
                        session_id=sid,
                    )
                )
            seqs[sid] = env.seq
            if env.epoch < epochs.get(sid, 0):
                report.faults.append(
                    Fault(
                        "epoch_regression",
                        where,
                        0,
                        f"epoch {env.epoch} after {epochs[sid]}",
                        position=env.position,
                        session_id=sid,
                    )
                )
            epochs[sid] = max(epochs.get(sid, 0), env.epoch)
            if isinstance(env.event, UnknownEvent):
                report.faults.append(
                    Fault("unknown_event", where, 0, "unknown event type", position=env.position)
                )
            for ref in _blob_refs(env):
                if ref.sha256 in checked:
                    continue
                checked.add(ref.sha256)
                try:
                    log.load_blob(ref)
                except BlobMissingError as e:
                    report.faults.append(
                        Fault("missing_blob", where, 0, str(e), position=env.position)
                    )
        report.events += len(events)
    if expected - 1 != head:
        report.faults.append(
            Fault("position_gap", where, 0, f"read up to {expected - 1}, head says {head}")
        )
    for sid, seq in seqs.items():
        if log.last_seq(sid) != seq:
            report.faults.append(
                Fault(
                    "seq_mismatch",
                    where,
                    0,
                    f"last seq {seq} in the events, {log.last_seq(sid)} recorded",
                    session_id=sid,
                )
            )
    report.sessions = len(seqs)
    report.blobs_checked = len(checked)
    return report


def _blob_refs(env: Envelope) -> list[BlobRef]:
    event = env.event
    return [
        value
        for name in getattr(event, "blob_fields", ())
        if isinstance(value := getattr(event, name, None), BlobRef)
    ]
