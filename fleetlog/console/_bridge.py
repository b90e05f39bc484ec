"""Talking to a running fleet from a child process, so that Ray never enters the console's.

A Ray driver whose cluster goes away may hang in ``ray.get`` or exit the whole
process once the GCS stays unreachable; a web console must outlive any fleet
it watched. So every call that may reach Ray (projections while a fleet owns
them, decisions routed to the session's owner) runs here, through the CLI's own
helpers, in one long-lived child; a call that takes too long kills the child
and the next call starts a new one.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fleetlog.events.errors import FleetlogError, SessionNotFound

__all__ = ["Bridge", "FleetUnavailable"]


class FleetUnavailable(FleetlogError):
    """The fleet (or the child that talks to it) did not answer in time."""


def _namespace(fields: dict[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(**fields)


def _op_projections(fields: dict[str, Any], method: str, args: tuple[Any, ...]) -> Any:
    from fleetlog import cli

    ns = _namespace(fields)
    cli._ray_auth(cli._home(ns).resolve())
    return cli._projections(ns, method, *args)


def _op_route(fields: dict[str, Any], session_id: str, command: Any) -> bool:
    """The decision sent to the running fleet (True), or False: no fleet answered."""
    from fleetlog import cli

    ns = _namespace({**fields, "session": session_id})
    home = cli._home(ns).resolve()
    cli._ray_auth(home)
    info = cli._fleet_location(ns)
    if info is None:
        return False
    return bool(cli._route_to_fleet(home, info, ns, command))


_OPS: dict[str, Any] = {"projections": _op_projections, "route": _op_route}


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the child process
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, Any] = ("ok", _OPS[op](*args))
        except SessionNotFound as e:
            reply = ("not_found", e.session_id)
        except FleetlogError as e:
            reply = ("error", str(e))
        except Exception as e:
            reply = ("error", f"internal error: {type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


class Bridge:
    """One child process at a time; calls are serialized (Ray's driver state is global).

    The child is ``python -m fleetlog.console._bridge FD``, talking over a socket pair:
    a plain subprocess, so it never re-imports whatever script started the console.
    """

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        if self._proc is not None and self._proc.poll() is None and self._conn is not None:
            return self._conn
        self._stop()
        parent, child = multiprocessing.Pipe()
        fd = child.fileno()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleetlog.console._bridge", str(fd)],
                pass_fds=[fd],
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self._proc, self._conn = proc, parent
        return parent

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def call(self, op: str, *args: Any) -> Any:
        # Questions queue behind a slow one for as long as one may take, no longer.
        if not self._lock.acquire(timeout=self.timeout_s):
            raise FleetUnavailable("the fleet is busy with earlier questions; try again")
        try:
            conn = self._start()
            try:
                conn.send((op, args))
                if not conn.poll(self.timeout_s):
                    self._stop()
                    raise FleetUnavailable(
                        f"the fleet did not answer within {self.timeout_s:.0f}s; try again"
                    )
                kind, value = conn.recv()
            except (EOFError, OSError):
                self._stop()
                raise FleetUnavailable("the connection to the fleet broke; try again") from None
        finally:
            self._lock.release()
        if kind == "ok":
            return value
        if kind == "not_found":
            raise SessionNotFound(str(value))
        raise FleetlogError(str(value))

    def close(self) -> None:
        with self._lock:
            self._stop()


def fields_of(home: Path, config: str | None, address: str | None) -> dict[str, Any]:
    """The Namespace fields the CLI's helpers read, as plain data for the child."""
    return {"home": str(home), "config": config, "address": address}


if __name__ == "__main__":  # pragma: no cover - the child process
    _serve(Connection(int(sys.argv[1])))
