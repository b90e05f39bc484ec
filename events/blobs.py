"""Content-addressed blob store beside the log, for large payloads.

A payload over the threshold is written once under its SHA-256 and the event
carries a :class:`BlobRef` instead, so a session that reads the same large file
ten times stores it once. Blobs are made durable (file and directory fsync)
before the event that references them is appended, so an acknowledged event
never points at a missing blob.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TypeVar

import msgspec

from .errors import BlobMissingError
from .schema import BlobRef, Envelope, EventBase, Payload

__all__ = ["BlobStore", "DEFAULT_BLOB_THRESHOLD"]

E = TypeVar("E", bound=EventBase)

DEFAULT_BLOB_THRESHOLD = 64 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path, threshold: int = DEFAULT_BLOB_THRESHOLD) -> None:
        self.root = root
        self.threshold = threshold

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write to a temp name and rename, so a crash never leaves a
            # half-written file under a valid digest.
            tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
            _fsync_dir(self.root)
        return BlobRef(sha256=digest, size=len(data))

    def get(self, ref: BlobRef) -> bytes:
        try:
            data = self._path(ref.sha256).read_bytes()
        except FileNotFoundError:
            raise BlobMissingError(ref.sha256, "missing from the blob store") from None
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobMissingError(ref.sha256, "content does not match its hash")
        return data

    def check(self, ref: BlobRef) -> str | None:
        """Why ``ref`` is unusable, or None when it is present and intact."""
        try:
            self.get(ref)
        except BlobMissingError as e:
            return e.reason
        return None

    def would_externalize(self, event: EventBase) -> bool:
        limit = self.threshold // 4  # UTF-8 needs at most 4 bytes a character
        for name in event.blob_fields:
            value = getattr(event, name)
            if value.__class__ is str and len(value) > limit:
                return True
        return False

    def externalize(self, event: E) -> E:
        """Move this event's large payload fields into the store (no-op for small ones)."""
        changes: dict[str, BlobRef] = {}
        for name in event.blob_fields:
            value = getattr(event, name)
            if isinstance(value, str) and len(value) > self.threshold // 4:
                data = value.encode()
                if len(data) > self.threshold:
                    changes[name] = self.put(data)
        return msgspec.structs.replace(event, **changes) if changes else event

    def resolve_event(self, event: E) -> E:
        """The same event with every BlobRef field replaced by its text."""
        changes: dict[str, Payload] = {}
        for name in event.blob_fields:
            value = getattr(event, name)
            if isinstance(value, BlobRef):
                changes[name] = self.get(value).decode()
        return msgspec.structs.replace(event, **changes) if changes else event

    def resolve(self, envelope: Envelope) -> Envelope:
        """The same envelope with every BlobRef field replaced by its text."""
        event = self.resolve_event(envelope.event)
        if event is envelope.event:
            return envelope
        return msgspec.structs.replace(envelope, event=event)
