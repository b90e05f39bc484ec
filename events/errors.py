"""The one error tree of fleetlog.

Every error fleetlog raises on purpose derives from :class:`FleetlogError`, carries
structured attributes (never only a message to parse), and renders as one line:
the CLI prints ``str(error)`` and nothing else.
"""

from __future__ import annotations

__all__ = [
    "FleetlogError",
    "LogError",
    "ConcurrencyError",
    "FencedError",
    "LogLockedError",
    "CorruptLogError",
    "LogClosedError",
    "BlobMissingError",
    "Fault",
    "ConfigError",
    "TaskFileError",
    "ToolError",
    "ToolInputError",
    "ToolRefused",
    "ModelError",
    "SessionNotFound",
    "ProjectionError",
    "QueryError",
]

from dataclasses import dataclass


class FleetlogError(Exception):
    """Root of every error fleetlog raises deliberately."""


class LogError(FleetlogError):
    """A problem with the event log itself."""


class ConcurrencyError(LogError):
    """``expected_seq`` did not match the stream's last sequence number.

    Another writer appended first (or the caller's state is stale); the caller
    must reload the stream before deciding again.
    """

    def __init__(self, session_id: str, expected_seq: int, actual_seq: int) -> None:
        self.session_id = session_id
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq
        super().__init__(
            f"session {session_id}: expected last seq {expected_seq}, "
            f"but the log is at {actual_seq}"
        )


class FencedError(LogError):
    """An owner with an older epoch tried to append after a newer owner claimed the session."""

    def __init__(self, session_id: str, epoch: int, current_epoch: int) -> None:
        self.session_id = session_id
        self.epoch = epoch
        self.current_epoch = current_epoch
        super().__init__(
            f"session {session_id}: owner epoch {epoch} is fenced off "
            f"(the session was claimed with epoch {current_epoch})"
        )


class LogLockedError(LogError):
    """The log directory is already open for writing by another process."""

    def __init__(self, path: str, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"log {path} is locked by another process ({holder})")


@dataclass(frozen=True, slots=True)
class Fault:
    """One thing wrong with a log: where it is and what it is."""

    kind: str  # "corrupt_frame", "bad_header", "seq_gap", "position_gap", "unknown_event", ...
    segment: str
    offset: int
    detail: str
    position: int | None = None
    session_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.segment}@{self.offset}"
        if self.position is not None:
            where += f" position {self.position}"
        if self.session_id is not None:
            where += f" session {self.session_id}"
        return f"{self.kind} at {where}: {self.detail}"


class CorruptLogError(LogError):
    """The log holds damage other than an incomplete final record.

    Such damage is never repaired silently: the log refuses to open for writing
    and ``fleetlog verify`` lists every fault.
    """

    def __init__(self, path: str, faults: list[Fault]) -> None:
        self.path = path
        self.faults = faults
        first = str(faults[0]) if faults else "unknown fault"
        more = f" (and {len(faults) - 1} more; run `fleetlog verify`)" if len(faults) > 1 else ""
        super().__init__(f"log {path} is corrupt: {first}{more}")


class LogClosedError(LogError):
    """The log was closed, or stopped accepting writes after an I/O failure."""

    def __init__(self, path: str, reason: str = "closed") -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"log {path} is not accepting writes: {reason}")


class BlobMissingError(LogError):
    """An event references a blob that is missing or does not match its hash."""

    def __init__(self, digest: str, reason: str) -> None:
        self.digest = digest
        self.reason = reason
        super().__init__(f"blob {digest}: {reason}")


class ConfigError(FleetlogError):
    """``fleetlog.toml`` is malformed or names something unknown."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"config {path}: {detail}")


class TaskFileError(FleetlogError):
    """A tasks file line is malformed; ``line`` is 1-based."""

    def __init__(self, path: str, line: int, detail: str) -> None:
        self.path = path
        self.line = line
        self.detail = detail
        super().__init__(f"{path}:{line}: {detail}")


class ToolError(FleetlogError):
    """A tool call cannot run; the model receives ``str(error)`` as an is_error tool_result."""


class ToolInputError(ToolError):
    """The model's input does not match the tool's schema (or names an unknown tool)."""

    def __init__(self, tool: str, detail: str) -> None:
        self.tool = tool
        self.detail = detail
        super().__init__(f"invalid input for {tool}: {detail}")


class ToolRefused(ToolError):
    """A safety check refused the call (path outside the workspace, credential file, ...)."""

    def __init__(self, tool: str, reason: str) -> None:
        self.tool = tool
        self.reason = reason
        super().__init__(f"{tool} refused: {reason}")


class ModelError(FleetlogError):
    """A model call failed; ``retryable`` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(message)


class SessionNotFound(FleetlogError):
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"no session {session_id!r}")


class ProjectionError(FleetlogError):
    """The DuckDB projections could not be opened, caught up or rebuilt."""


class QueryError(ProjectionError):
    """A user's SQL was refused (not read-only) or failed; ``str()`` is DuckDB's first line."""
