"""Sequential readers of a FileLog partition for projections: no index, no lock.

``FileLog.open`` scans every frame header to build per-session indexes, which a
projector never needs: it reads the log front to back from a checkpoint. A
:class:`LogTail` keeps a cursor (segment, byte offset) and reads on from it, so
following a busy log costs only the new bytes, and starting from a checkpoint
in a log of millions of events costs one segment's headers.
``read_segment`` reads one whole segment file (the unit of parallel rebuilds).

Reading is the projector's hot loop, so frames are not decoded one by one:
the payloads of a run of frames (each a msgpack array of envelopes) are
stripped of their array headers, joined under one array header and decoded by
one msgspec call. Every frame's checksums are still verified.

Both read what another process is writing: a frame cut short at the end of the
newest segment is an append in flight (or a torn tail that the writer
truncates when it next opens the log) and is not read yet; damage anywhere else
raises :class:`CorruptLogError`, as ``FileLog`` does.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .codec import HEADER, MAX_FRAME_BODY, META, EnvelopeRow, crc32c, decode_payload, decode_rows
from .errors import CorruptLogError, Fault
from .filelog import segment_files, zeros_to_end

__all__ = ["LogTail", "read_segment", "segment_bases"]

_CHUNK: Final = 8 << 20  # bytes read per system call
_ARRAY32: Final = struct.Struct(">BI")


def segment_bases(log_path: Path) -> list[tuple[int, Path]]:
    """``(first position, path)`` of every segment file, oldest first."""
    return [(int(p.stem), p) for p in segment_files(log_path / "segments")]


@dataclass
class _Run:
    """What one pass over a segment found."""

    envelopes: list[Any]  # Envelope, or EnvelopeRow when read with ``rows=True``
    offset: int  # where the next unread frame starts
    next_position: int  # the first position after the frames read (0: none read)
    at_end: bool  # the segment has nothing more now
    first_offset: int  # where the first frame read starts (``offset`` if none)


def _read_run(
    path: Path,
    offset: int,
    from_position: int,
    limit: int,
    upto: int | None,
    newest: bool,
    rows: bool = False,
) -> _Run:
    """Whole frames of ``path`` from byte ``offset`` holding positions ``>= from_position``.

    Stops after about ``limit`` events, before a frame starting above ``upto``,
    or at the end of the file.
    """
    parts: list[memoryview] = []
    total = 0
    first = 0
    first_offset = -1
    next_position = 0
    at_end = False

    def corrupt(at: int, what: str) -> CorruptLogError:
        return CorruptLogError(
            str(path.parent.parent), [Fault("corrupt_frame", path.name, at, what)]
        )

    unpack_header, unpack_meta, meta_size = HEADER.unpack_from, META.unpack_from, META.size
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        want = _CHUNK
        while total < limit:
            if offset >= size:
                at_end = True
                break
            data = os.pread(fd, min(want, size - offset), offset)
            view = memoryview(data)
            n = len(data)
            rel = 0
            stop = False
            need = 0
            while rel + HEADER.size <= n:
                length, body_crc, head_crc = unpack_header(data, rel)
                start = rel + HEADER.size
                end = start + length
                damage = ""
                if not META.size <= length <= MAX_FRAME_BODY:
                    damage = "damaged frame header on read"
                elif end > n:
                    # Past what was read: a long frame, or one cut short at the end of
                    # the file, but only if its header is intact; else it is damage.
                    if crc32c(data[rel : rel + 8]) == head_crc:
                        need = HEADER.size + length
                        break
                    damage = "damaged frame header on read"
                # The body's CRC also catches a damaged length (its header CRC is
                # what tells a torn tail from damage, and that is the writer's job).
                elif crc32c(data[start:end]) != body_crc:
                    damage = "checksum mismatch on read"
                if damage:
                    if newest and zeros_to_end(fd, offset + rel, size):
                        # Zeros to the end of the newest segment: a tail that grew but was
                        # never written out (power loss), never acknowledged: not yet there.
                        stop = at_end = True
                        break
                    raise corrupt(offset + rel, damage)
                first_position, _seq, count, _epoch, sid_len = unpack_meta(data, start)
                if upto is not None and first_position > upto:
                    stop = True
                    break
                if first_position + count > from_position:
                    tag = data[start + meta_size + sid_len]
                    # Drop the payload's array header: fixarray, array16 or array32.
                    skip = 1 if tag < 0xDC else (3 if tag == 0xDC else 5)
                    if not (0x90 <= tag <= 0x9F or tag in (0xDC, 0xDD)):
                        raise corrupt(offset + rel, "frame payload is not an array")
                    parts.append(view[start + meta_size + sid_len + skip : end])
                    if not first:
                        first, first_offset = first_position, offset + rel
                    total += count
                next_position = first_position + count
                rel = end
                if total >= limit:
                    break
            offset += rel
            if stop:
                break
            if rel == 0:
                # Not even one whole frame in what was read: read more, or it is cut short.
                need = max(need, HEADER.size)
                if offset + need > size:
                    if not newest:
                        raise corrupt(offset, "frame cut short inside an older segment")
                    at_end = True
                    break
                want = max(need, _CHUNK)
            else:
                want = _CHUNK
    finally:
        os.close(fd)
    if not parts:
        return _Run([], offset, next_position, at_end, offset)
    payload = _ARRAY32.pack(0xDD, total) + b"".join(parts)
    envelopes: list[Any] = decode_rows(payload) if rows else decode_payload(payload)
    if first < from_position:
        envelopes = envelopes[from_position - first :]
    if upto is not None and envelopes and first + len(envelopes) - 1 > upto:
        envelopes = envelopes[: max(upto - max(first, from_position) + 1, 0)]
    return _Run(envelopes, offset, next_position, at_end, first_offset)


def read_segment(log_path: Path, segment: Path, upto: int | None = None) -> list[EnvelopeRow]:
    """Every event of one segment file up to position ``upto``, as rows (blobs unresolved)."""
    bases = segment_bases(log_path)
    newest = bool(bases) and bases[-1][1] == segment
    return _read_run(segment, 0, 1, 1 << 62, upto, newest, rows=True).envelopes


class LogTail:
    """Reads one partition forward from any position; calling again reads only what is new."""

    def __init__(self, log_path: Path) -> None:
        self.path = log_path
        self._segment: Path | None = None
        self._offset = 0  # byte offset of the next unread frame in ``_segment``
        self._expect = -1  # the position a caller continuing from here asks for

    def _seek(self, position: int) -> None:
        """Put the cursor on the frame that holds ``position`` (reading one segment's headers)."""
        self._segment, self._offset, self._expect = None, 0, -1
        bases = segment_bases(self.path)
        chosen = [(b, p) for b, p in bases if b <= position]
        if not chosen:
            return
        _base, path = chosen[-1]
        self._segment = path
        run = _read_run(path, 0, position, 1, None, path == bases[-1][1])
        self._offset = run.first_offset

    def read(self, from_position: int, limit: int = 50_000, *, rows: bool = False) -> list[Any]:
        """Events from ``from_position`` on, in position order: whole frames, about ``limit``.

        Envelopes, or ``EnvelopeRow`` tuples with ``rows=True``.
        """
        from_position = max(from_position, 1)
        if self._segment is None or from_position != self._expect:
            self._seek(from_position)
            if self._segment is None:
                return []
        out: list[Any] = []
        while len(out) < limit:
            assert self._segment is not None
            bases = segment_bases(self.path)
            newest = bases[-1][1] == self._segment
            run = _read_run(
                self._segment, self._offset, from_position, limit - len(out), None, newest, rows
            )
            out.extend(run.envelopes)
            self._offset = run.offset
            if run.next_position:
                from_position = max(from_position, run.next_position)
            if not run.at_end:
                continue
            # This segment is read out: go on only if a newer one starts right here.
            following = [p for b, p in bases if b == from_position and p != self._segment]
            if not following:
                break
            self._segment, self._offset = following[0], 0
        self._expect = from_position
        return out

    def head(self) -> int:
        """The last position whose frame is whole on disk now (0 for an empty log)."""
        bases = segment_bases(self.path)
        if not bases:
            return 0
        base, path = bases[-1]
        run = _read_run(path, 0, 1 << 62, 1 << 62, None, True)
        return (run.next_position or base) - 1
