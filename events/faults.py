"""Named crash points: where a promise could break if the process died right there.

Each ``crash_point("name")`` marks an await between an effect and its record
(a model reply not yet durable, a tool started, an outbox file half written, an
operator's decision received...). They are inert unless the environment
variable ``FLEETLOG_CRASH_AT`` names one, which only the fault-injection suite
(``tests/faults/``) sets:

    FLEETLOG_CRASH_AT=after_model_reply        die at the first hit
    FLEETLOG_CRASH_AT=after_model_reply@3      die at the third hit

When it fires, the point appends its name to ``FLEETLOG_CRASH_LOG`` (if set,
fsync'd, so the suite can tell that it fired) and ends the process with
``os._exit``: no ``finally``, no flush, no atexit, as a kill -9 would.
"""

from __future__ import annotations

import os

__all__ = ["CRASH_POINTS", "CONTEXT_CRASH_POINTS", "CRASH_EXIT_CODE", "crash_point"]

#: Every point the code marks; the suite kills a process at each in turn.
CRASH_POINTS: tuple[str, ...] = (
    # runner: model calls
    "after_reserve",  # the ledger holds a reservation; ModelCallRequested not yet durable
    "after_model_requested",  # ModelCallRequested durable, the call not yet made
    "after_model_reply",  # the server answered; ModelResponded not yet durable
    "after_model_recorded",  # ModelResponded durable; the ledger not yet settled
    # ledger
    "in_reserve",
    "in_settle",
    # runner: tool calls
    "after_tool_started",  # ToolCallStarted durable, the tool not yet run
    "in_outbox_write",  # the message is durable under its temporary name, not yet published
    "after_outbox_write",  # published in the outbox; the tool has not returned
    "after_tool_ran",  # the tool returned; its outcome not yet durable
    "in_cancel",  # a cancel waits for the tool in flight
    # operator commands
    "after_command_received",  # a host has the decision; not yet durable
    "after_command_recorded",  # the decision is durable; the operator not yet answered
)

#: Points the context tests kill a session at (``tests/test_context_runner.py``): the
#: fault suite's scenario never compacts.
CONTEXT_CRASH_POINTS: tuple[str, ...] = (
    "after_compaction",  # a ContextCompacted is durable; the next request not yet made
)

CRASH_EXIT_CODE = 86

_TARGET = os.environ.get("FLEETLOG_CRASH_AT", "")
_NAME, _, _NTH = _TARGET.partition("@")
_WANT = int(_NTH) if _NTH else 1
_hits = 0


def crash_point(name: str) -> None:
    """End the process here if the fault suite asked for ``name`` (a no-op otherwise)."""
    if name != _NAME:  # the only work done outside the fault suite: one comparison
        return
    global _hits
    _hits += 1
    if _hits < _WANT:
        return
    record = os.environ.get("FLEETLOG_CRASH_LOG")
    if record:
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{name} {os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    os._exit(CRASH_EXIT_CODE)
