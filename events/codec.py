"""Record framing and the one module-level encoder/decoder.

A segment file is a sequence of frames; one frame holds the events of one
``append`` call, so an append is atomic: its frame is either whole (both CRCs
match) or it is the torn tail of an interrupted write.

Frame layout (little endian)::

    u32 body_len | u32 body_crc | u32 head_crc | body
    body = u64 first_position | u64 first_seq | u32 count | u32 epoch
           | u16 sid_len | session_id (utf-8) | payload (msgpack array of Envelope)

``head_crc`` covers the first 8 bytes, so a damaged length is told apart from a
record cut short by a crash: only a frame whose header checks out and whose
body runs past the end of the file is an *incomplete final record*. The body
metadata repeats what the envelopes say, so opening a log reads headers and
never has to decode payloads.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

import google_crc32c
import msgspec

from .schema import Envelope, Event, UnknownEvent

__all__ = [
    "HEADER",
    "META",
    "MAX_FRAME_BODY",
    "crc32c",
    "encode_frame",
    "FrameMeta",
    "parse_meta",
    "decode_payload",
    "decode_rows",
    "EnvelopeRow",
]

HEADER: Final = struct.Struct("<III")
META: Final = struct.Struct("<QQIIH")
#: A length field above this is damage, not data (an append of this size is refused).
MAX_FRAME_BODY: Final = 256 * 1024 * 1024

crc32c = google_crc32c.value

_encoder: Final = msgspec.msgpack.Encoder()
_frame_decoder: Final = msgspec.msgpack.Decoder(list[Envelope])
_event_decoder: Final = msgspec.msgpack.Decoder(Event)


class _RawEnvelope(msgspec.Struct, array_like=True):
    position: int
    session_id: str
    seq: int
    epoch: int
    ts: float
    event_id: str
    event: msgspec.Raw


class _Tag(msgspec.Struct):
    type: str = "?"


_raw_frame_decoder: Final = msgspec.msgpack.Decoder(list[_RawEnvelope])
_tag_decoder: Final = msgspec.msgpack.Decoder(_Tag)


#: An envelope as a plain tuple, field for field: what bulk readers decode into,
#: because ``zip(*rows)`` turns a list of them into columns at C speed.
EnvelopeRow = tuple[int, str, int, int, float, str, Event]
_rows_decoder: Final = msgspec.msgpack.Decoder(list[EnvelopeRow])


def encode_frame(
    session_id: str,
    first_position: int,
    first_seq: int,
    epoch: int,
    envelopes: Sequence[Envelope | EnvelopeRow],
) -> bytes:
    sid = session_id.encode()
    body = (
        META.pack(first_position, first_seq, len(envelopes), epoch, len(sid))
        + sid
        + _encoder.encode(envelopes)
    )
    length = len(body)
    if length > MAX_FRAME_BODY:
        raise ValueError(f"append of {length} bytes exceeds the {MAX_FRAME_BODY}-byte frame limit")
    crc = crc32c(body)
    head = struct.pack("<II", length, crc)
    return head + struct.pack("<I", crc32c(head)) + body


class FrameMeta(msgspec.Struct, frozen=True):
    first_position: int
    first_seq: int
    count: int
    epoch: int
    session_id: str
    payload_offset: int  # within the body


def parse_meta(body: bytes | memoryview) -> FrameMeta:
    first_position, first_seq, count, epoch, sid_len = META.unpack_from(body, 0)
    sid_end = META.size + sid_len
    # "replace": a damaged frame (bad CRC) is parsed only to report it.
    session_id = bytes(body[META.size : sid_end]).decode(errors="replace")
    return FrameMeta(first_position, first_seq, count, epoch, session_id, sid_end)


def decode_payload(payload: bytes | memoryview) -> list[Envelope]:
    """Decode a frame's envelopes; event types this version does not know become UnknownEvent."""
    try:
        return _frame_decoder.decode(payload)
    except msgspec.ValidationError:
        # Slow path, only for frames written by a newer version.
        out = []
        for raw in _raw_frame_decoder.decode(payload):
            out.append(
                Envelope(
                    raw.position,
                    raw.session_id,
                    raw.seq,
                    raw.epoch,
                    raw.ts,
                    raw.event_id,
                    _decode_raw_event(raw.event),
                )
            )
        return out


def _decode_raw_event(raw: msgspec.Raw) -> Event:
    try:
        event: Event = _event_decoder.decode(raw)
    except msgspec.ValidationError:
        try:
            tag = _tag_decoder.decode(raw).type
        except msgspec.DecodeError:
            tag = "?"
        return UnknownEvent(type_name=tag, raw=bytes(raw))
    return event


def decode_rows(payload: bytes | memoryview) -> list[EnvelopeRow]:
    """Like ``decode_payload``, as tuples (the projector's bulk path)."""
    try:
        return _rows_decoder.decode(payload)
    except msgspec.ValidationError:
        return [
            (e.position, e.session_id, e.seq, e.epoch, e.ts, e.event_id, e.event)
            for e in decode_payload(payload)
        ]
