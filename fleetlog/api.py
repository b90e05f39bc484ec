"""``fleetlog.Fleet``: the fleet from Python — a notebook, a service, a ``ray job submit`` job.

The same operations as the command line, through the same code, with the same errors
(every one a :class:`~fleetlog.FleetlogError` with the CLI's one-line message)::

    with Fleet.start(home=".fleetlog") as fleet:       # a fleet of this process
        sid = fleet.submit("Summarize notes.md", agent="coder")
        (session,) = fleet.wait([sid])

* :meth:`Fleet.start` starts a fleet owned by this process (on a local Ray, or the Ray
  that ``address``/``RAY_ADDRESS`` names) and stops it on :meth:`close`;
* :meth:`Fleet.connect` attaches to a fleet ``fleetlog up`` started (found by its home's
  ``fleet.json``, or by name in the Ray cluster ``address`` names) and leaves it running;
* :meth:`Fleet.open` reads the log alone, no Ray: sessions, reviews, decisions and SQL,
  as the CLI does when no fleet is up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

import msgspec

from fleetlog.config import (
    Config,
    Task,
    derived_task_id,
    new_task_id,
    parse_task,
    session_id_for,
)
from fleetlog.events.errors import FleetlogError, SessionNotFound, TaskFileError
from fleetlog.events.schema import BlobRef
from fleetlog.events.state import SETTLED, SessionState, SessionStatus, fold

if TYPE_CHECKING:
    import pyarrow

# fleetlog.cli is imported where used: `import fleetlog` (which imports this module) must
# not import it, or `python -m fleetlog.cli` finds it imported already (a RuntimeWarning).

__all__ = ["Fleet", "Review", "Session", "WaitTimeout"]


class WaitTimeout(FleetlogError, TimeoutError):
    """:meth:`Fleet.wait` ran out of time; ``sessions`` is where each stood then."""

    def __init__(self, message: str, sessions: list[Session]) -> None:
        super().__init__(message)
        self.sessions = sessions


class Session(msgspec.Struct, frozen=True, kw_only=True):
    """One session as the log records it (the columns of ``fleetlog sessions``)."""

    id: str
    task_id: str
    status: str
    agent_type: str
    tenant: str
    step_count: int
    token_count: int
    cost_usd: float
    error: str
    restarts: int
    #: The agent's final answer once ``completed``; "" before.
    result: str = ""

    @property
    def settled(self) -> bool:
        """Terminal, or waiting for a human: nothing happens until someone acts."""
        return self.status in SETTLED


class Review(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call waiting for a human decision (a row of ``fleetlog reviews``)."""

    session_id: str
    call_id: str
    tool: str
    input: str
    risk: str
    reason: str
    #: The call may have run before a crash: approving runs it again.
    in_doubt: bool
    #: What ``approve``/``deny`` may be bound to: the tool and its exact input.
    call_hash: str
    requested_at: float


def _session(state: SessionState, result: str = "") -> Session:
    row = state.row()
    return Session(
        id=state.session_id,
        task_id=state.task_id,
        status=state.status,
        agent_type=state.agent_type,
        tenant=state.tenant,
        step_count=state.step,
        token_count=state.token_count,
        cost_usd=float(row["cost_usd"]),  # type: ignore[arg-type]
        error=state.error,
        restarts=state.restarts,
        result=result,
    )


class Fleet:
    """A fleet of agents: submit tasks, wait for them, decide reviews, ask SQL.

    Make one with :meth:`start`, :meth:`connect` or :meth:`open`; use it as a context
    manager, or call :meth:`close`. Not safe to share between threads.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        config: Config,
        handle: Any = None,
        *,
        owned: bool = False,
        ray_started: bool = False,
    ) -> None:
        from fleetlog import cli

        self._args = args
        self.config = config
        self.home = cli._home(args).resolve()
        self._handle = handle  # fleetlog.actors.fleet.Fleet, or None: the log alone
        self._owned = owned
        self._ray_started = ray_started
        self._closed = False

    # --- making one ----------------------------------------------------------------------

    @staticmethod
    def _namespace(
        home: str | os.PathLike[str] | None,
        config: str | os.PathLike[str] | None,
        address: str | None,
    ) -> argparse.Namespace:
        return argparse.Namespace(
            home=None if home is None else str(home),
            config=None if config is None else str(config),
            address=address,
        )

    @classmethod
    def start(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        hosts: int | None = None,
        address: str | None = None,
        model: str | None = None,
    ) -> Fleet:
        """Start a fleet owned by this process; :meth:`close` stops it.

        ``home`` defaults as the CLI's ``--home`` does (``$FLEETLOG_HOME``, else
        ``./.fleetlog``); ``config`` as ``--config``. Ray: the cluster at ``address``
        (or ``$RAY_ADDRESS``, as in a ``ray job submit`` job), else a local one; a Ray
        this process already initialized is used as it is. Sessions already in the
        home's log that are unfinished resume. ``model`` puts every session it creates
        on one model, as ``fleetlog run --model`` does (``"scripted"``: the free offline
        model, whatever ``ANTHROPIC_API_KEY`` says).
        """
        from fleetlog import cli

        args = cls._namespace(home, config, address)
        conf = cli._config(args)
        if model is not None:
            if not model.strip():
                raise FleetlogError("model needs a model id (or scripted)")
            conf = conf.with_model(model)
        count = conf.fleet.hosts if hosts is None else hosts
        if count < 1:
            raise FleetlogError(f"hosts must be at least 1, got {count}")
        home_path = cli._home(args).resolve()
        cli._check_log(home_path, conf)  # a bad DSN: one line, before Ray starts
        cli._ray_auth(home_path)
        ray_started = _ray_init(address)
        try:
            from fleetlog.actors.fleet import Fleet as _Fleet

            handle = _Fleet.start(home_path, conf, hosts=count)
        except BaseException:
            if ray_started:
                _ray_shutdown()
            raise
        return cls(args, conf, handle, owned=True, ray_started=ray_started)

    @classmethod
    def connect(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
        address: str | None = None,
    ) -> Fleet:
        """Attach to the fleet ``fleetlog up`` started for ``home``; :meth:`close` leaves
        it running. Found by ``HOME/fleet.json``, or by name in the Ray cluster at
        ``address`` (or ``$RAY_ADDRESS``)."""
        from fleetlog import cli

        args = cls._namespace(home, config, address)
        conf = cli._config(args)
        info = cli._fleet_info(args)  # "no fleet is up for …", as the CLI says it
        home_path = cli._home(args).resolve()
        cli._ray_auth(home_path)
        ray_started = _ray_init(info["address"])
        try:
            from fleetlog.actors.fleet import Fleet as _Fleet

            handle = _Fleet.join(home_path, conf)
        except BaseException:
            if ray_started:
                _ray_shutdown()
            raise
        return cls(args, conf, handle, ray_started=ray_started)

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        config: str | os.PathLike[str] | None = None,
    ) -> Fleet:
        """The fleet's log alone, no Ray: sessions, reviews, approve/deny/cancel (recorded
        in the log, picked up when the sessions run) and SQL. Submitting needs a fleet."""
        from fleetlog import cli

        args = cls._namespace(home, config, None)
        conf = cli._config(args)
        cli._existing_home(args)  # "no fleet home at …"
        return cls(args, conf)

    def close(self) -> None:
        """Stop the fleet if this object started it; disconnect from Ray. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._owned and self._handle is not None:
                self._handle.shutdown()
        finally:
            if self._ray_started:
                _ray_shutdown()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "log only" if self._handle is None else "started" if self._owned else "connected"
        return f"<fleetlog.Fleet {self.home} ({mode}{', closed' if self._closed else ''})>"

    # --- tasks ---------------------------------------------------------------------------

    def _running(self, what: str) -> Any:
        if self._closed:
            raise FleetlogError(f"{what}: this Fleet is closed")
        if self._handle is None:
            raise FleetlogError(
                f"{what} needs a running fleet: Fleet.start() or Fleet.connect(), not Fleet.open()"
            )
        return self._handle

    def submit(
        self,
        prompt: str,
        *,
        id: str | None = None,
        agent: str = "default",
        tenant: str = "default",
        limits: Mapping[str, float] | None = None,
        workspace: str | None = None,
    ) -> str:
        """Submit one task; returns its session id. A task ``id`` maps to one session
        forever: submitting it again resumes that session, never starts a second."""
        raw: dict[str, object] = {"prompt": prompt, "agent": agent, "tenant": tenant}
        for key, value in (("id", id), ("limits", limits), ("workspace", workspace)):
            if value is not None:
                raw[key] = dict(value) if isinstance(value, Mapping) else value
        task = self._task(raw, "submit")
        session_id = session_id_for(task.id or new_task_id())
        self._running("submit").submit(task, session_id)
        return session_id

    def submit_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[str]:
        """Submit tasks in the tasks-file shape (SPEC §5), all checked before any is sent;
        returns their session ids in order. Tasks without an id get one derived from
        their content, as ``fleetlog run`` gives them: submitting the same list resumes."""
        fleet = self._running("submit_many")
        keyed: list[tuple[Task, str]] = []
        for ordinal, raw in enumerate(tasks, start=1):
            task = self._task(dict(raw), f"task {ordinal}")
            keyed.append((task, session_id_for(task.id or derived_task_id(task, ordinal))))
        if len({sid for _, sid in keyed}) != len(keyed):
            raise FleetlogError("two tasks map to the same session (duplicate ids)")
        if keyed:
            fleet.submit_many(keyed)
        return [sid for _, sid in keyed]

    def _task(self, raw: dict[str, object], source: str) -> Task:
        try:
            return parse_task(raw, source=source, config=self.config)
        except TaskFileError as e:  # as `fleetlog submit` says it; a list names the task
            raise FleetlogError(
                e.detail if source == "submit" else f"{source}: {e.detail}"
            ) from None

    def wait(
        self,
        session_ids: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        poll: float = 0.25,
    ) -> list[Session]:
        """Block until each session is settled (terminal or awaiting review); returns them
        in the order asked. ``None``: every session of the fleet. Raises
        :class:`WaitTimeout` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fleet = self._handle if not self._closed else None
        if session_ids is None:
            ids = [s.id for s in self.sessions()]
        else:
            ids = self._resolve_all(session_ids)
        wanted = set(ids)
        while True:
            if fleet is not None:
                # The owners' view (in memory, no log read) until all have settled.
                rows = [r for r in fleet.statuses(wanted) if r["id"] in wanted]
                done = len(rows) == len(wanted) and all(r["status"] in SETTLED for r in rows)
            else:
                done = all(s.settled for s in self._read(ids))
            if done:
                # What the log says, which is what `fleetlog sessions` shows.
                return self._read(ids)
            if deadline is not None and time.monotonic() >= deadline:
                now = self._read(ids)
                waiting = sum(1 for s in now if not s.settled)
                raise WaitTimeout(
                    f"{waiting} of {len(now)} session(s) still running after {timeout:g}s",
                    now,
                )
            time.sleep(poll)

    # --- reading -------------------------------------------------------------------------

    def sessions(self, status: str | None = None) -> list[Session]:
        """Every session in the log, oldest first; ``status`` keeps one status."""
        from fleetlog import cli

        statuses = get_args(SessionStatus)
        if status is not None and status not in statuses:
            raise FleetlogError(f"unknown status {status!r} (one of {', '.join(statuses)})")
        found: list[tuple[SessionState, str]] = []
        for reader in cli._open_logs(self._args):
            try:
                for sid in reader.session_ids():
                    state = fold(sid, reader.read_stream(sid, resolve_blobs=False))
                    if status is None or state.status == status:
                        found.append((state, _result(reader, state)))
            finally:
                reader.close()
        found.sort(key=lambda pair: (pair[0].created_at, pair[0].session_id))
        return [_session(state, result) for state, result in found]

    def session(self, session: str) -> Session:
        """One session, by session id, task id or an unambiguous prefix of either."""
        return self._read([self._resolve(session)])[0]

    def reviews(self) -> list[Review]:
        """Tool calls waiting for a human decision, oldest first."""
        from fleetlog import cli

        return [msgspec.convert(row, Review) for row in cli._reviews(self._args)]

    def _resolve(self, session: str) -> str:
        from fleetlog import cli

        # By the log's session ids alone: the stream itself is read once, by ``_read``.
        return cli._resolve_session(self._args, session)

    def _resolve_all(self, names: Sequence[str]) -> list[str]:
        """``_resolve`` for many: the log's ids listed once; names that are ids as they are."""
        from fleetlog import cli

        known = set(cli._session_ids(self._args))
        return [name if name in known else self._resolve(name) for name in names]

    def _read(self, session_ids: list[str]) -> list[Session]:
        """These sessions as the log has them now, in this order."""
        from fleetlog import cli

        found: dict[str, Session] = {}
        for reader in cli._open_logs(self._args):
            try:
                for sid in session_ids:
                    if sid not in found and reader.last_seq(sid) > 0:
                        state = fold(sid, reader.read_stream(sid, resolve_blobs=False))
                        found[sid] = _session(state, _result(reader, state))
            finally:
                reader.close()
        missing = [sid for sid in session_ids if sid not in found]
        if missing:
            raise SessionNotFound(missing[0])
        return [found[sid] for sid in session_ids]

    # --- decisions -----------------------------------------------------------------------

    def approve(
        self,
        session: str,
        call_id: str,
        *,
        note: str = "",
        call_hash: str = "",
        reviewer: str = "",
        input: Mapping[str, Any] | None = None,
    ) -> None:
        """Approve a call waiting for review; the session runs it and goes on. With
        ``call_hash`` (as :meth:`reviews` gives it), refused if the call is another one.
        ``reviewer`` defaults to ``$USER``. ``input``: run the call with these arguments
        instead of the model's (vetted again: a deny rule still refuses them)."""
        edited = "" if input is None else json.dumps(dict(input))
        self._decide(
            "approve", session, call_id, note, call_hash, reviewer, end=False, edited=edited
        )

    def deny(
        self,
        session: str,
        call_id: str,
        *,
        note: str = "",
        end: bool = False,
        call_hash: str = "",
        reviewer: str = "",
    ) -> None:
        """Deny a call: the model is told (``note`` says why); ``end`` also ends the
        session ``DENIED_BY_REVIEWER``."""
        self._decide("deny", session, call_id, note, call_hash, reviewer, end=end)

    def cancel(self, session: str, *, note: str = "", reviewer: str = "") -> None:
        """Cancel a session: it ends ``cancelled`` at its next step boundary."""
        self._decide("cancel", session, "", note, "", reviewer, end=False)

    def _decide(
        self,
        kind: str,
        session: str,
        call_id: str,
        note: str,
        call_hash: str,
        reviewer: str,
        *,
        end: bool,
        edited: str = "",
    ) -> None:
        """Durable in the log before it returns, like the CLI's approve/deny/cancel."""
        from fleetlog import cli

        if self._closed:
            raise FleetlogError(f"{kind}: this Fleet is closed")
        fields = {**vars(self._args), "session": session, "call_id": call_id}
        args = argparse.Namespace(**fields, note=note, end=end, hash=call_hash, input=edited)
        session_id, command = cli._command(args, kind, reviewer)
        # A refusal (not awaiting review, another hash, a bad edit) is the owner's one line,
        # raised by Fleet.command, or command_events' when appended offline.
        if self._handle is not None:
            if not self._handle.command(session_id, command):
                raise SessionNotFound(session_id)
            return
        cli._append_offline(self._args, session_id, command)

    # --- SQL -----------------------------------------------------------------------------

    @overload
    def sql(self, query: str, *, arrow: Literal[False] = False) -> list[dict[str, Any]]: ...

    @overload
    def sql(self, query: str, *, arrow: Literal[True]) -> pyarrow.Table: ...

    def sql(self, query: str, *, arrow: bool = False) -> list[dict[str, Any]] | pyarrow.Table:
        """One read-only DuckDB query over the projections (SPEC §7), brought up to date
        with the log first: rows as dicts, or a ``pyarrow.Table`` with ``arrow=True``."""
        table = self._projections("query", query)
        return table if arrow else table.to_pylist()

    def metrics(
        self, *, since: str | None = None, agent_type: str | None = None
    ) -> list[dict[str, Any]]:
        """``agent_health_metrics``, one row per agent type; ``since``: ``7d``, ``12h``,
        ``30m`` or a date, as ``fleetlog metrics --since`` takes it."""
        from fleetlog import cli

        when = cli.parse_since(since) if since else None
        table = self._projections("health", when, agent_type)
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows

    def _projections(self, method: str, *args: Any) -> Any:
        from fleetlog import cli

        if self._closed:
            raise FleetlogError(f"{method}: this Fleet is closed")
        if self._handle is not None and self._handle.projector is not None:
            import ray

            # The fleet's projector owns the file: ask it (as the CLI does).
            answer: dict[str, Any] = ray.get(getattr(self._handle.projector, method).remote(*args))
            return cli._answer(answer)
        return cli._answer(cli._projections(self._args, method, *args))


def _result(reader: Any, state: SessionState) -> str:
    result = state.result
    if isinstance(result, BlobRef):
        return reader.load_blob(result).decode("utf-8", "replace")  # type: ignore[no-any-return]
    return result


def _ray_init(address: str | None) -> bool:
    """Connect to Ray unless this process already is; True when this call connected."""
    import logging

    import ray

    if ray.is_initialized():
        current = str(ray.get_runtime_context().gcs_address or "")
        if address and ":" in address and current and _host_port(current) != _host_port(address):
            raise FleetlogError(
                f"this process is connected to the Ray cluster at {current}, not the fleet's "
                f"at {address}: ray.shutdown() first, or use a fresh process"
            )
        return False
    from fleetlog.actors.fleet import local_ray_options

    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # RAY_ADDRESS (a `ray job submit` job) is honoured by ray.init itself.
        ray.init(**local_ray_options(), **kwargs)
    return True


def _host_port(address: str) -> str:
    return address.removeprefix("ray://").removeprefix("http://").strip("/")


def _ray_shutdown() -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.shutdown()
