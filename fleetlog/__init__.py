"""fleetlog: a production runtime for fleets of LLM agents.

The public surface is what ``__all__`` names; everything else may change.
"""

from fleetlog.actors.tools import ToolContext, tool
from fleetlog.api import Fleet, Review, Session, WaitTimeout
from fleetlog.events.errors import (
    BlobMissingError,
    ConcurrencyError,
    CorruptLogError,
    FencedError,
    FleetlogError,
    LogClosedError,
    LogError,
    LogLockedError,
)
from fleetlog.events.filelog import FileLog
from fleetlog.events.log import AppendResult, EventLog, follow
from fleetlog.events.schema import Envelope, Event, Limits
from fleetlog.events.state import SessionState, evolve, fold
from fleetlog.events.verify import VerifyReport, verify_log

__all__ = [
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

__version__ = "0.1.0"
