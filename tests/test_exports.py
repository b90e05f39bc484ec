"""The public API is what ``fleetlog.__all__`` names: pin it, so a change is deliberate."""

from __future__ import annotations

import fleetlog


def test_public_names_are_pinned() -> None:
    assert sorted(fleetlog.__all__) == [
        "AppendResult",
        "BlobMissingError",
        "ConcurrencyError",
        "CorruptLogError",
        "Envelope",
        "Event",
        "EventLog",
        "FencedError",
        "FileLog",
        "Fleet",
        "FleetlogError",
        "Limits",
        "LogClosedError",
        "LogError",
        "LogLockedError",
        "Review",
        "Session",
        "SessionState",
        "ToolContext",
        "VerifyReport",
        "WaitTimeout",
        "evolve",
        "fold",
        "follow",
        "tool",
        "verify_log",
    ]
    for name in fleetlog.__all__:
        assert getattr(fleetlog, name) is not None


def test_every_error_is_a_fleetlog_error() -> None:
    for name in fleetlog.__all__:
        obj = getattr(fleetlog, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fleetlog.FleetlogError), name
