"""Where the console's answers come from: the CLI's own helpers, so both always agree.

Sessions, reviews and timelines are folded from the log (read-only: this works
next to a running fleet). Projections (SQL, metrics, the overview's numbers) are
asked of the running fleet's projector when a fleet is up, else opened here for
the length of one question. Decisions go to the fleet when it runs, else they
are appended to the log; either way they are durable before an answer is sent.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import threading
import time
from pathlib import Path
from typing import Any

from fleetlog import cli
from fleetlog.config import Config, session_id_for
from fleetlog.events.errors import FleetlogError, SessionNotFound
from fleetlog.events.schema import Envelope
from fleetlog.events.state import SessionState, fold

from ._bridge import Bridge, fields_of

__all__ = ["Backend", "Conflict", "NotFound", "Unavailable"]


class NotFound(FleetlogError):
    """No such session or tool call (HTTP 404)."""


class Conflict(FleetlogError):
    """The request cannot apply to the session as it is now (HTTP 409)."""


class Unavailable(FleetlogError):
    """The projections or the fleet could not answer now (HTTP 503)."""


class Backend:
    def __init__(self, home: Path, config_path: str | None, address: str | None) -> None:
        self.home = home.resolve()
        self.fields = fields_of(self.home, config_path, address)
        self.ns = argparse.Namespace(**self.fields)
        # One local opening of the projections at a time: the file lock is per open file,
        # so two threads of this process would otherwise wait for each other.
        self._local = threading.Lock()
        self.bridge = Bridge()

    def close(self) -> None:
        self.bridge.close()

    # --- configuration and the fleet --------------------------------------------------

    def config(self) -> Config:
        return cli._config(self.ns)

    def fleet(self) -> dict[str, Any] | None:
        """Where the running fleet is (``HOME/fleet.json`` or ``--address``), or None.

        ``reachable`` is False when nothing listens at its Ray address (a fleet killed
        without ``fleetlog down`` leaves its ``fleet.json``): then the console works as
        offline instead of waiting a minute for Ray on every question.
        """
        info = cli._fleet_location(self.ns)
        if info is None:
            return None
        return {**info, "reachable": _listening(str(info.get("address") or ""))}

    def fleet_text(self) -> str:
        info = self.fleet()
        if info is None:
            return "offline"
        address = info.get("address", "?")
        if not info["reachable"]:
            return f"offline (nothing answers at {address}: a stale fleet.json?)"
        return f"running at {address}"

    # --- the log ---------------------------------------------------------------------

    def states(self) -> list[SessionState]:
        return cli._states(self.ns)

    def sessions(self) -> list[dict[str, Any]]:
        return [cli._row(s) for s in self.states()]

    def reviews(self) -> list[dict[str, Any]]:
        return cli._reviews(self.ns)

    def stream(self, session: str) -> tuple[str, list[Envelope]]:
        """``(session id, envelopes)``; a task id is accepted for its session's id."""
        candidates = [session]
        mapped = session_id_for(session)
        if mapped != session:
            candidates.append(mapped)
        error: FleetlogError = SessionNotFound(session)
        for name in candidates:
            try:
                stream = cli._find_stream(self.ns, name)
            except SessionNotFound as e:
                error = error if name != session else e
                continue
            except FleetlogError as e:  # ambiguous: a prefix of several sessions
                raise NotFound(str(e)) from None
            if stream:
                return stream[0].session_id, stream
        raise NotFound(str(error))

    # --- projections -----------------------------------------------------------------

    def projections(self, method: str, *args: Any) -> Any:
        """The projector's answer (an Arrow table for ``query``/``health``)."""
        info = self.fleet()
        try:
            if info is not None and info["reachable"]:
                # The fleet's projector owns the file: ask it, as `fleetlog sql` does.
                reply = self.bridge.call("projections", self.fields, method, args)
            else:
                reply = self._local_projections(method, *args)
        except FleetlogError as e:
            raise Unavailable(str(e)) from None
        if "error" in reply:
            raise FleetlogError(str(reply["error"]))
        return reply.get("table", reply)

    def _local_projections(self, method: str, *args: Any) -> dict[str, Any]:
        """The projections opened here for one question (no fleet owns them).

        What ``cli._projections`` does once it finds no fleet; it is not called itself
        because it would first try a stale fleet's Ray address, in this process.
        """
        from fleetlog.events.source import source_for
        from fleetlog.projections.projector import Projector
        from fleetlog.projections.service import answer

        source = source_for(self.home, self.config().fleet.log)
        if not source.exists():
            raise FleetlogError(f"no event log under {self.home} (looked in {self.home / 'log'})")
        with self._local, Projector.open(self.home, wait_s=5.0, source=source) as projector:
            return answer(projector, method, *args)

    # --- decisions -------------------------------------------------------------------

    def decide(
        self,
        session: str,
        kind: str,
        *,
        reviewer: str,
        call_id: str = "",
        note: str = "",
        end: bool = False,
        call_hash: str = "",
        edited_input: str = "",
    ) -> dict[str, Any]:
        """Record approve / deny / cancel durably; what was done and how.

        ``edited_input`` (approve only; a JSON object as text): run the call with it
        instead of the model's input. ``edited`` in the answer: the call was approved
        with an edited input (an edit equal to the model's input is a plain approval).
        """
        from fleetlog.actors.runner import Command, command_events
        from fleetlog.events.schema import ReviewDecided

        sid, stream = self.stream(session)
        state = fold(sid, stream)
        if kind != "cancel" and call_id not in state.tool_calls:
            raise NotFound(f"session {sid} has no tool call {call_id!r}")
        command = Command(
            kind=kind,
            call_id=call_id,
            note=note,
            reviewer=reviewer,
            end_session=end,
            call_hash=call_hash,
            edited_input=edited_input,
        )
        try:
            # Refused here, before any fleet is asked, exactly as the owner would refuse it
            # (an edit that is not a JSON object, on a denial, or of a call in doubt).
            events = command_events(state, command)
        except FleetlogError as e:
            raise Conflict(str(e)) from None
        if events:
            edited = any(isinstance(e, ReviewDecided) and e.edited_input for e in events)
        else:  # decided before: say how it was decided
            call = state.tool_calls.get(call_id)
            edited = kind == "approve" and call is not None and bool(call.edited_from)
        via = ""
        info = self.fleet()
        if info is not None and info["reachable"]:
            try:
                if self.bridge.call("route", self.fields, sid, command):
                    via = "fleet"
            except SessionNotFound:
                raise NotFound(f"no session {sid!r}") from None
            except FleetlogError as e:
                raise Conflict(str(e)) from None
        if not via:
            try:
                via = "log" if cli._append_offline(self.ns, sid, command) else "already"
            except SessionNotFound:
                raise NotFound(f"no session {sid!r}") from None
            except FleetlogError as e:
                text = str(e)
                if "did not answer" in text:
                    raise Unavailable(text) from None
                raise Conflict(text) from None
        return {
            "session_id": sid,
            "call_id": call_id,
            "decision": kind,
            "reviewer": reviewer,
            "recorded_via": via,
            "edited": edited,
        }


def _listening(address: str) -> bool:
    """Whether something accepts connections at ``host:port`` (True if it cannot tell)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in host:
        return True  # "auto", "ray://…": let Ray find it
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def today_start_utc(now: float | None = None) -> datetime.datetime:
    """Local midnight, as the naive UTC timestamp the projections store."""
    now = time.time() if now is None else now
    local = datetime.datetime.fromtimestamp(now).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(datetime.UTC).replace(tzinfo=None)
