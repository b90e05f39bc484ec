"""Golden logs: a log written by an earlier version must always decode and fold the same.

Each ``tests/golden/vN`` was written once by ``make_golden.py`` at that version
and is never regenerated. If this test fails, a change broke the stored
format or the meaning of old events: make the change compatible instead
(new fields get defaults; nothing is renamed, removed, reordered or retyped).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import BlobRef, Envelope, ToolCallCompleted
from fleetlog.events.state import SessionState, fold
from fleetlog.events.verify import verify_log

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = sorted(p for p in GOLDEN.iterdir() if p.is_dir() and (p / "log").is_dir())


def test_there_is_a_golden_log() -> None:
    assert [p.name for p in VERSIONS][:1] == ["v1"]


def _as_then(now: object, then: object) -> object:
    """``now`` restricted to the keys ``then`` has, at every level."""
    if isinstance(now, dict) and isinstance(then, dict):
        return {k: _as_then(now[k], then[k]) if k in now else None for k in then}
    return now


@pytest.mark.parametrize("version", VERSIONS, ids=lambda p: p.name)
def test_golden_log_decodes_and_folds(version: Path) -> None:
    expected_events = msgspec.json.decode(
        (version / "expected_events.json").read_bytes(), type=list[Envelope]
    )
    expected_states = msgspec.json.decode((version / "expected_states.json").read_bytes())
    log = FileLog.open(version / "log", readonly=True)
    try:
        assert log.read_all(1, limit=100_000) == expected_events
        for sid, state in expected_states.items():
            folded = msgspec.json.decode(
                msgspec.json.encode(fold(sid, log.read_stream(sid, resolve_blobs=False)))
            )
            # Every field the state had then folds to the same value; a field added to
            # the state since (derived from the same events) is not in the golden file.
            assert _as_then(folded, state) == state
            msgspec.convert(state, SessionState)  # and the old state still decodes
        # Blob references still resolve to their text.
        resolved = [
            e.event for e in log.read_stream("sess-a") if isinstance(e.event, ToolCallCompleted)
        ]
        raw = [e.event for e in expected_events if isinstance(e.event, ToolCallCompleted)]
        assert any(isinstance(ev.output, BlobRef) for ev in raw)
        assert all(isinstance(ev.output, str) for ev in resolved)
    finally:
        log.close()
    assert verify_log(version / "log").ok
