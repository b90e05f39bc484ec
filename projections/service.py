"""The projections of a running fleet: one owner process that tails the log and answers.

DuckDB lets one process open ``projections.duckdb`` read-write, so while a
fleet runs its projector actor is that process: a thread keeps the tables a
fraction of a second behind the log, and everything else (CLI queries,
metrics, the budget ledger, restarting hosts, the dispatcher) asks it. Every
answer is plain data (Arrow tables, dicts): errors come back as values, so
that the CLI can print DuckDB's one line instead of a remote traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from fleetlog.events.errors import FleetlogError
from fleetlog.events.source import LogSource

if TYPE_CHECKING:
    # DuckDB and Arrow load only in the process that projects (the projector actor, the
    # CLI): hosts, dispatcher and ledger use this module's SessionsView alone.
    from .projector import Projector

__all__ = ["ProjectionService", "SessionsView", "sessions_view", "answer"]

log = logging.getLogger("fleetlog.projections")


class SessionsView(msgspec.Struct, frozen=True):
    """What the projections knew at ``checkpoints``: every session's partition and status.

    Readers add what the log holds beyond the checkpoints (the tail) themselves.
    """

    checkpoints: dict[int, int]
    sessions: list[tuple[str, int, str, str, float, int]]  # id, partition, status, tenant,
    # cost_usd, token_count
    #: Budget reservations in flight at the checkpoints: (session id, usd, tokens) of every
    #: session that has not ended and whose last model call is unanswered.
    reservations: list[tuple[str, float, int]] = []


def sessions_view(projector: Projector) -> SessionsView:
    """A consistent snapshot: checkpoints and rows read in one transaction."""
    with projector.cursor() as cur:
        cur.execute("BEGIN TRANSACTION READ ONLY")
        checkpoints = {int(p): int(pos) for p, pos in cur.execute("FROM _checkpoints").fetchall()}
        rows = cur.execute(
            'SELECT id, "partition", status, tenant, cost_usd::DOUBLE, token_count '
            "FROM agent_executions"
        ).fetchall()
        held = cur.execute(
            "SELECT e.session_id, coalesce((e.data->>'reserved_usd')::DOUBLE, 0), "
            "       coalesce((e.data->>'reserved_tokens')::BIGINT, 0) "
            "FROM agent_executions x JOIN events e ON e.session_id = x.id "
            "WHERE x.status NOT IN ('completed', 'failed', 'cancelled') "
            "  AND x.pending_request <> '' AND e.type = 'ModelCallRequested' "
            "  AND e.data->>'request_id' = x.pending_request"
        ).fetchall()
        cur.execute("ROLLBACK")
    return SessionsView(checkpoints, [tuple(r) for r in rows], [tuple(r) for r in held])


def answer(projector: Projector, method: str, *args: Any) -> dict[str, Any]:
    """A CLI request (``query``, ``health`` or ``project``) answered with plain data.

    Each catches up first; ``project`` with a true argument rebuilds instead.
    """
    try:
        started = time.perf_counter()
        n = projector.rebuild() if method == "project" and args[0] else projector.catch_up()
        if method == "query":
            return {"table": projector.query(*args)}
        if method == "health":
            return {"table": projector.health(*args)}
        return {
            "events": n,
            "seconds": time.perf_counter() - started,
            "checkpoints": projector.checkpoints(),
        }
    except FleetlogError as e:
        return {"error": str(e)}


class ProjectionService:
    """Owns the projector; a daemon thread tails the log until ``close``."""

    def __init__(
        self,
        home: Path,
        *,
        idle_s: float = 0.05,
        source: LogSource | None = None,
        nice: int = 0,
    ) -> None:
        self.home = home
        self.source = source
        self.idle_s = idle_s
        self.nice = nice
        self.projector: Projector | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self.error = ""

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="projector", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        if self.nice:
            # Tailing is background work: on a machine the sessions keep busy, their
            # steps come first and the projections catch up when there is room (a
            # query catches up before it answers). Linux's nice is per thread, and
            # DuckDB's threads, started below by this one, inherit it.
            with contextlib.suppress(OSError):
                os.nice(self.nice)
        while not self._stop.is_set():
            try:
                if self.projector is None:
                    from .projector import Projector

                    self.projector = Projector.open(self.home, wait_s=60.0, source=self.source)
                    self._opened.set()
                if not self.projector.step():
                    self._stop.wait(self.idle_s)
                self.error = ""
            except FleetlogError as e:
                # A log being repaired, a lock not yet released: say so, try again.
                if str(e) != self.error:
                    log.warning("projections: %s", e)
                self.error = str(e)
                self._stop.wait(1.0)
            except Exception as e:  # never let the tailer die silently
                log.exception("projections: tailing failed")
                self.error = f"{type(e).__name__}: {e}"
                self._stop.wait(1.0)

    def _ready(self, timeout: float = 60.0) -> Projector:
        self.start()
        if not self._opened.wait(timeout) or self.projector is None:
            raise FleetlogError(f"projections are not open yet: {self.error or 'still opening'}")
        return self.projector

    # --- answers (plain data) ----------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> dict[str, Any]:
        try:
            projector = self._ready()
        except FleetlogError as e:
            return {"error": str(e)}
        return answer(projector, method, *args)

    def query(self, sql: str) -> dict[str, Any]:
        return self._call("query", sql)

    def health(self, since: datetime | None, agent_type: str | None) -> dict[str, Any]:
        return self._call("health", since, agent_type)

    def project(self, rebuild: bool) -> dict[str, Any]:
        return self._call("project", rebuild)

    def sessions(self, wait_s: float = 4.0) -> SessionsView | None:
        """The snapshot restarting hosts and the ledger start from; None while not open.

        Waits up to ``wait_s`` for the file to open (a fleet's hosts ask as the projector
        starts; they give up after 5 s and read the log alone, which costs far more).
        """
        self._opened.wait(wait_s)
        if self.projector is None:
            return None
        try:
            return sessions_view(self.projector)
        except Exception:
            log.exception("projections: could not read sessions")
            return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.projector is not None:
            self.projector.close()
            self.projector = None
