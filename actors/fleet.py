"""The fleet on Ray: actors, and the driver-side handle the CLI uses.

    Projector    (1, async, max_restarts=-1)  owns HOME/projections.duckdb, tails the log,
                                              answers SQL, metrics and recovery questions
    SessionHost  (N, async, max_restarts=-1)  each owns log partitions and their sessions;
                                              restarts anywhere and resumes the unfinished
                                              ones (projections + the log's tail)
    BudgetLedger (1, async, max_restarts=-1)  tenant budgets, rebuilt from the projections
                                              plus the log's tail
    Dispatcher   (1)                          routes submit/approve/deny/cancel to owners
                                              through a session directory built the same way

Actors are named in a namespace derived from the fleet's log (its home, or its
database: ``namespace_for``), so a process anywhere in the Ray cluster finds a
running fleet by name; ``HOME/fleet.json`` only remembers, on the machine that
ran ``fleetlog up``, which Ray to connect to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import ray

from fleetlog.actors.host import HostCore, host_for
from fleetlog.actors.ledger import Budget, Ledger, budgets_of
from fleetlog.actors.runner import Command
from fleetlog.config import Config, Task
from fleetlog.events.errors import FleetlogError
from fleetlog.events.pglog import _where
from fleetlog.events.schema import Envelope, SessionCreated
from fleetlog.events.source import LogSource, iter_tail, log_spec, source_of
from fleetlog.events.state import SETTLED
from fleetlog.projections.service import ProjectionService, SessionsView

__all__ = [
    "Fleet",
    "FleetNotRunning",
    "namespace_for",
    "FLEET_FILE",
    "LOCAL_RAY_SYSTEM_CONFIG",
    "local_ray_options",
    "seed_ledger",
    "session_event",
]

FLEET_FILE = "fleet.json"
#: A local Ray that fleetlog starts (``run``, ``up``, ``Fleet.start``) runs its workers at
#: niceness 0. Ray's default, 15, puts every worker under Ray's own daemons and any other
#: process: here the workers are the fleet, and its hosts' steps are the work (~+30%
#: steps/s on two cores). What is background runs lower on its own (the projector's
#: tailing, ``_PROJECTOR_NICE``). A cluster someone else started keeps its own setting.
LOCAL_RAY_SYSTEM_CONFIG: dict[str, Any] = {"worker_niceness": 0}


def local_ray_options() -> dict[str, Any]:
    """``ray.init`` keywords for a Ray this process starts; {} when it joins one."""
    if os.environ.get("RAY_ADDRESS"):
        return {}  # ray.init() joins that cluster: it takes no system config
    return {"include_dashboard": False, "_system_config": dict(LOCAL_RAY_SYSTEM_CONFIG)}


#: Sessions per ``submit_many`` call to the dispatcher (a bounded message each).
_SUBMIT_CHUNK = 500


class FleetNotRunning(FleetlogError):
    """Ray answers, but no fleet of this home (or database) runs in it."""


def namespace_for(home: Path, log: str = "file") -> str:
    """The Ray namespace a fleet's named actors live in: how any process finds the fleet.

    A fleet on files is this machine's home; a fleet on the shared log is its
    database (host:port/db), so a CLI on any node, or a ``ray job submit`` job,
    finds it from the same ``FLEETLOG_LOG`` alone.
    """
    key = str(home.resolve()) if log == "file" else "pg:" + _where(log)
    return "fleetlog-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def session_event(config: Config, task: Task, session_id: str) -> SessionCreated:
    agent = config.agent(task.agent)
    return SessionCreated(
        task_id=task.id or session_id,
        prompt=task.prompt,
        agent_type=task.agent,
        tenant=task.tenant,
        model=agent.model or config.model_for(task.agent),
        system=agent.system,
        tools=list(agent.tools),
        limits=config.limits_for(task.agent, task.limits),
        workspace=task.workspace or "",
    )


def _tail(source: LogSource, view: SessionsView | None) -> Iterator[tuple[int, list[Envelope]]]:
    """``(partition, batch)`` of every event the view does not cover yet (or of all)."""
    return iter_tail(source, view.checkpoints if view is not None else None)


async def _sessions_view(projector: Any) -> SessionsView | None:
    """The projector's snapshot, or None (no projector, or not answering: fold the log)."""
    if projector is None:
        return None
    try:
        # Short: a projector lost with its node is rebuilding elsewhere, and a host
        # waiting for it keeps its sessions stopped; the log alone is enough to go on.
        view: SessionsView | None = await asyncio.wait_for(projector.sessions.remote(), 5)
    except Exception:
        return None
    return view


#: The projector's tailing runs at this niceness: under contention it gets ~1/10 of
#: what a host's process gets (CFS weights 110 against 1024), and all of what is idle.
_PROJECTOR_NICE = 10


class _ProjectorActor:
    """Thin: the ProjectionService does the work, in threads (DuckDB releases the GIL)."""

    def __init__(self, home: str, log: str) -> None:
        # The DuckDB file is disposable (rebuilt from the log): with a shared log it goes
        # on the disk of whichever node runs the projector now.
        local = os.environ.get("FLEETLOG_NODE_HOME") if log != "file" else None
        self.service = ProjectionService(
            Path(local or home), source=source_of(Path(home), log), nice=_PROJECTOR_NICE
        )
        self.service.start()

    async def ping(self) -> bool:
        return True

    async def query(self, sql: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.service.query, sql)

    async def health(self, since: datetime | None, agent_type: str | None) -> dict[str, Any]:
        return await asyncio.to_thread(self.service.health, since, agent_type)

    async def project(self, rebuild: bool) -> dict[str, Any]:
        return await asyncio.to_thread(self.service.project, rebuild)

    async def sessions(self) -> SessionsView | None:
        return await asyncio.to_thread(self.service.sessions)

    async def close(self) -> None:
        await asyncio.to_thread(self.service.close)


class _LedgerActor:
    """Fleet-wide budgets: rebuilt from the projections plus the log's tail, on first use."""

    def __init__(self, budgets: dict[str, Budget], home: str, namespace: str, log: str) -> None:
        self.ledger = Ledger(budgets)
        self.source = source_of(Path(home), log)
        self.namespace = namespace
        self._built = False
        self._building = asyncio.Lock()

    async def _build(self) -> None:
        # Calls interleave at every await of an async actor: build exactly once.
        async with self._building:
            if not self._built:
                view = await _sessions_view(_projector_handle(self.namespace))
                if view is not None:
                    seed_ledger(self.ledger, view)
                for _partition, batch in _tail(self.source, view):
                    self.ledger.fold(batch)
                self._built = True

    async def reserve(
        self,
        tenant: str,
        session_id: str,
        usd: float,
        tokens: int,
        spent_usd: float,
        spent_tokens: int,
    ) -> tuple[bool, str]:
        await self._build()
        return self.ledger.reserve(tenant, session_id, usd, tokens, spent_usd, spent_tokens)

    async def release(
        self, tenant: str, session_id: str, spent_usd: float, spent_tokens: int
    ) -> None:
        await self._build()
        self.ledger.release(tenant, session_id, spent_usd, spent_tokens)

    async def snapshot(self) -> dict[str, dict[str, float]]:
        await self._build()
        return self.ledger.snapshot()


def _projector_handle(namespace: str) -> Any | None:
    try:
        return ray.get_actor("fleetlog-projector", namespace=namespace)
    except ValueError:
        return None


def seed_ledger(ledger: Ledger, view: SessionsView) -> None:
    """A ledger's start from the projections: spending and the reservations in flight."""
    held = {sid: (usd, tokens) for sid, usd, tokens in view.reservations}
    for sid, _partition, _status, tenant, cost, tokens in view.sessions:
        reserved_usd, reserved_tokens = held.get(sid, (0.0, 0))
        ledger.seed(
            sid, tenant, cost, tokens, reserved_usd=reserved_usd, reserved_tokens=reserved_tokens
        )


class _LedgerPort:
    """The ledger, found by name on first use.

    By name, not as a handle passed to the host's constructor: an actor handle among
    constructor arguments is kept in the object store, and Ray warns (core_worker.cc,
    ray-project/ray#53727) that a restart fails once the owner that put it there is
    gone, which for a detached fleet is the ``fleetlog up`` process, gone at once.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._actor: Any = None

    @property
    def actor(self) -> Any:
        if self._actor is None:
            self._actor = ray.get_actor("fleetlog-ledger", namespace=self.namespace)
        return self._actor

    async def reserve(
        self,
        tenant: str,
        session_id: str,
        usd: float,
        tokens: int,
        spent_usd: float,
        spent_tokens: int,
    ) -> tuple[bool, str]:
        result: tuple[bool, str] = await self.actor.reserve.remote(
            tenant, session_id, usd, tokens, spent_usd, spent_tokens
        )
        return result

    async def release(
        self, tenant: str, session_id: str, spent_usd: float, spent_tokens: int
    ) -> None:
        await self.actor.release.remote(tenant, session_id, spent_usd, spent_tokens)


class _HostActor:
    """Thin: every call first makes sure a (re)started host owns its partitions and resumed."""

    def __init__(
        self,
        index: int,
        hosts: int,
        home: str,
        config: Config,
        has_ledger: bool,
        namespace: str,
        log: str,
    ) -> None:
        budget = _LedgerPort(namespace) if has_ledger else None

        async def view() -> SessionsView | None:
            return await _sessions_view(_projector_handle(namespace))

        # With a shared log a host may run on any node: what it keeps on disk (workspaces
        # unless [fleet] workspaces, sandbox scratch) goes to that node's own directory.
        local = Path((log != "file" and os.environ.get("FLEETLOG_NODE_HOME")) or home)
        self.core = HostCore(
            index,
            hosts,
            local,
            config,
            budget,
            sessions_view=view,
            source=source_of(Path(home), log),
        )
        # Started, or restarted by Ray after a crash: resume this host's sessions now,
        # not when some call happens to reach it. Asked of itself, as a queued call.
        self._ping_self()

    @staticmethod
    def _ping_self() -> None:
        with contextlib.suppress(Exception):
            ray.get_runtime_context().current_actor.ping.remote()

    async def ping(self) -> int:
        try:
            await self.core.start()
        except Exception:
            # Nothing else may call a restarted host for a long time (its sessions only
            # wait): if its start fails (the log unreachable a moment), try again soon.
            asyncio.get_running_loop().call_later(1.0, self._ping_self)
            raise
        return self.core.index

    async def pid(self) -> int:
        """This host's process id (operations; the chaos suite kills it)."""
        return os.getpid()

    async def node_id(self) -> str:
        """The Ray node this host runs on (placement checks, operations)."""
        node: str = ray.get_runtime_context().get_node_id()
        return node

    async def has(self, session_id: str) -> bool:
        await self.core.start()
        return self.core.has(session_id)

    async def has_many(self, session_ids: list[str]) -> list[bool]:
        await self.core.start()
        return [self.core.has(sid) for sid in session_ids]

    async def create_many(self, items: list[tuple[str, SessionCreated]]) -> list[bool]:
        """``create`` for many sessions at once: their appends are group-committed."""
        await self.core.start()
        created: list[bool] = await asyncio.gather(
            *(self.core.create(sid, event) for sid, event in items)
        )
        return created

    async def command(self, session_id: str, command: Command) -> tuple[bool, str]:
        """(found, error): a refusal comes back as its one line, not as a remote traceback."""
        await self.core.start()
        try:
            return await self.core.command(session_id, command), ""
        except FleetlogError as e:
            return True, str(e)

    async def statuses(self) -> list[dict[str, Any]]:
        await self.core.start()
        return self.core.statuses()

    async def close(self) -> None:
        await self.core.aclose()


class _Dispatcher:
    """Routes commands to the host owning the session, through a session directory.

    The directory (session -> partition; partition p belongs to host p % hosts)
    is rebuilt on start from the projections plus the log's tail, then kept up
    to date by submissions. A session it does not know, or a host that denies
    having it, falls back to asking every host.
    """

    def __init__(self, namespace: str, hosts: int, home: str, log: str) -> None:
        # Looked up by name rather than passed in: handles as constructor
        # arguments would live in the object store and could be lost on restart.
        self.hosts = [
            ray.get_actor(f"fleetlog-host-{i}", namespace=namespace) for i in range(hosts)
        ]
        self.namespace = namespace
        self.source = source_of(Path(home), log)
        self.directory: dict[str, int] | None = None
        self._building = asyncio.Lock()

    async def _directory(self) -> dict[str, int]:
        async with self._building:  # one build, however many calls arrive meanwhile
            if self.directory is None:
                view = await _sessions_view(_projector_handle(self.namespace))
                found = {row[0]: row[1] for row in view.sessions} if view is not None else {}
                for index, batch in _tail(self.source, view):
                    for env in batch:
                        found.setdefault(env.session_id, index)
                # session -> the host that runs it (its partition's, or its hash's)
                hosts = len(self.hosts)
                self.directory = {sid: self.source.owner(sid, p, hosts) for sid, p in found.items()}
            return self.directory

    async def _owner(self, session_id: str) -> Any | None:
        index = (await self._directory()).get(session_id)
        if index is not None and index < len(self.hosts):
            candidate: Any = self.hosts[index]
            owns: bool = await candidate.has.remote(session_id)
            if owns:
                return candidate
        found: list[bool] = await asyncio.gather(*(h.has.remote(session_id) for h in self.hosts))
        for index, (host, has) in enumerate(zip(self.hosts, found, strict=True)):
            if has:
                # Not necessarily its partition number, but it routes to this host.
                (await self._directory())[session_id] = index
                return host
        return None

    async def submit_many(self, items: list[tuple[str, SessionCreated]]) -> list[bool]:
        """Create each session (True) or, if it exists, make sure it runs (False): one call
        per host to find who has them, one per host to create or resume its share (not
        three Ray calls per session)."""
        directory = await self._directory()
        hosts = len(self.hosts)
        ids = [sid for sid, _ in items]
        # Every host is asked which it holds (as `_owner` asks about one session): a
        # session goes to the host that has it, whatever the directory says.
        found: list[list[bool]] = await asyncio.gather(
            *(h.has_many.remote(ids) for h in self.hosts)
        )
        for column, sid in enumerate(ids):
            index = next((i for i, has in enumerate(found) if has[column]), None)
            if index is not None:
                directory[sid] = index
            elif directory.get(sid, hosts) >= hosts:
                # Held nowhere, known nowhere: its partition's host, or its hash's.
                directory[sid] = host_for(sid, hosts)
        by_host: dict[int, list[int]] = {}
        for position, (sid, _event) in enumerate(items):
            by_host.setdefault(directory[sid], []).append(position)
        answers: list[list[bool]] = await asyncio.gather(
            *(
                self.hosts[index].create_many.remote([items[p] for p in positions])
                for index, positions in by_host.items()
            )
        )
        created = [False] * len(items)
        for positions, answer in zip(by_host.values(), answers, strict=True):
            for position, was_created in zip(positions, answer, strict=True):
                created[position] = was_created
        return created

    async def command(self, session_id: str, command: Command) -> tuple[bool, str]:
        owner = await self._owner(session_id)
        if owner is None:
            return False, ""
        result: tuple[bool, str] = await owner.command.remote(session_id, command)
        return result

    async def host_count(self) -> int:
        """How many hosts this fleet has: what ``Fleet.join`` needs to find them by name."""
        return len(self.hosts)

    async def statuses(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Every session the hosts hold; with ``ids``, also those of them that ended
        before their host (re)started (a restarted host loads only what is unfinished)."""
        calls = (h.statuses.remote() for h in self.hosts)
        parts: list[list[dict[str, Any]]] = await asyncio.gather(*calls)
        rows = [row for part in parts for row in part]
        if ids:
            held = {row["id"] for row in rows}
            missing = [sid for sid in ids if sid not in held]
            if missing:
                rows.extend(await self._ended(missing))
        return rows

    async def _ended(self, ids: list[str]) -> list[dict[str, Any]]:
        """Rows of ended sessions from the projections (a moment behind the log at most)."""
        projector = _projector_handle(self.namespace)
        if projector is None:
            return []
        quoted = ", ".join("'" + sid.replace("'", "''") + "'" for sid in ids)
        reply: dict[str, Any] = await projector.query.remote(
            "SELECT id, task_id, status, agent_type, tenant, step_count, token_count, "
            f"round(cost_usd, 6)::DOUBLE AS cost_usd, error, restarts FROM agent_executions "
            f"WHERE id IN ({quoted}) AND status IN ('completed', 'failed', 'cancelled')"
        )
        if "table" not in reply:
            return []
        rows: list[dict[str, Any]] = reply["table"].to_pylist()
        for row in rows:
            row.update(error=row["error"] or "", refused_calls=0, reviews=[])
        return rows


class Fleet:
    """Driver-side handle: start (or join) a fleet, submit tasks, watch, decide, stop."""

    def __init__(self, home: Path, config: Config, namespace: str, actors: dict[str, Any]) -> None:
        self.home = home
        self.config = config
        self.namespace = namespace
        self.projector = actors["projector"]
        self.ledger = actors["ledger"]
        self.hosts: list[Any] = actors["hosts"]
        self.dispatcher = actors["dispatcher"]

    @classmethod
    def start(
        cls,
        home: Path,
        config: Config,
        *,
        hosts: int,
        detached: bool = False,
        runtime_env: dict[str, Any] | None = None,
        host_scheduling: Any = None,
    ) -> Fleet:
        home = home.resolve()
        log = log_spec(config.fleet.log)
        namespace = namespace_for(home, log)
        if log == "file":
            (home / "log").mkdir(parents=True, exist_ok=True)
        else:
            # Here, before any actor starts: a wrong DSN is one line now, not a host
            # restarting forever on a node. Creates the schema on first use.
            checked = source_of(home, log)
            try:
                checked.readers()[0][1].head()
            finally:
                checked.close()
            home.mkdir(parents=True, exist_ok=True)
        lifetime = "detached" if detached else None
        budgets = budgets_of(config)

        def actor(cls: type, name: str, **options: Any) -> Any:
            # Every fleet actor: named in the home's namespace, restarted by Ray
            # forever, calls retried across restarts, no CPU reserved.
            return ray.remote(cls).options(
                name=name,
                namespace=namespace,
                lifetime=lifetime,
                max_restarts=-1,
                max_task_retries=-1,
                num_cpus=0,
                **options,
            )

        # First: hosts, ledger and dispatcher ask it where to start from.
        projector: Any = actor(_ProjectorActor, "fleetlog-projector", max_concurrency=64).remote(
            str(home), log
        )
        ray.get(projector.ping.remote())
        ledger: Any = (
            actor(_LedgerActor, "fleetlog-ledger").remote(budgets, str(home), namespace, log)
            if budgets
            else None
        )
        host_handles: list[Any] = [
            actor(
                _HostActor,
                f"fleetlog-host-{i}",
                max_concurrency=100_000,
                runtime_env=runtime_env,
                scheduling_strategy=host_scheduling,
            ).remote(i, hosts, str(home), config, ledger is not None, namespace, log)
            for i in range(hosts)
        ]
        dispatcher: Any = actor(_Dispatcher, "fleetlog-dispatcher", max_concurrency=1000).remote(
            namespace, hosts, str(home), log
        )
        ray.get([h.ping.remote() for h in host_handles])
        return cls(
            home,
            config,
            namespace,
            {
                "projector": projector,
                "ledger": ledger,
                "hosts": host_handles,
                "dispatcher": dispatcher,
            },
        )

    @classmethod
    def join(cls, home: Path, config: Config) -> Fleet:
        """Handles to a fleet started by another process (``fleetlog up``)."""
        home = home.resolve()
        namespace = namespace_for(home, log_spec(config.fleet.log))
        try:
            dispatcher: Any = ray.get_actor("fleetlog-dispatcher", namespace=namespace)
        except ValueError:
            raise FleetNotRunning(f"no fleet is running in this Ray cluster for {home}") from None
        count: int = ray.get(dispatcher.host_count.remote(), timeout=60)
        hosts = [ray.get_actor(f"fleetlog-host-{i}", namespace=namespace) for i in range(count)]
        actors = {
            "projector": _projector_handle(namespace),
            "ledger": None,
            "hosts": hosts,
            "dispatcher": dispatcher,
        }
        return cls(home, config, namespace, actors)

    def write_fleet_file(self, address: str, *, started_ray: bool = False) -> None:
        info = {
            "address": address,
            "namespace": self.namespace,
            "pid": os.getpid(),
            "hosts": len(self.hosts),
            "started_ray": started_ray,
        }
        (self.home / FLEET_FILE).write_text(json.dumps(info))

    # --- tasks ---------------------------------------------------------------------------

    def submit(self, task: Task, session_id: str) -> bool:
        """Create (True) or resume (False) one session."""
        return self.submit_many([(task, session_id)]) == 1

    def submit_many(self, tasks: list[tuple[Task, str]]) -> int:
        """Create (or resume) sessions; how many were new. A few Ray calls per chunk of
        them, not a few per session."""
        items = [(sid, session_event(self.config, task, sid)) for task, sid in tasks]
        refs = [
            self.dispatcher.submit_many.remote(items[i : i + _SUBMIT_CHUNK])
            for i in range(0, len(items), _SUBMIT_CHUNK)
        ]
        return sum(1 for answer in ray.get(refs) for created in answer if created)

    def command(self, session_id: str, command: Command) -> bool:
        """Record a decision durably (False: no such session); FleetlogError if refused."""
        found, error = ray.get(self.dispatcher.command.remote(session_id, command))
        if error:
            raise FleetlogError(error)
        return bool(found)

    def statuses(self, ids: set[str] | None = None) -> list[dict[str, Any]]:
        """Sessions' rows: every one the hosts hold, and those of ``ids`` that have ended."""
        wanted = sorted(ids) if ids else None
        result: list[dict[str, Any]] = ray.get(self.dispatcher.statuses.remote(wanted))
        return result

    def wait_settled(
        self, session_ids: set[str], timeout: float | None = None, poll: float = 0.25
    ) -> list[dict[str, Any]]:
        """Poll until every session is terminal or awaiting review (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = [r for r in self.statuses(session_ids) if r["id"] in session_ids]
            if len(rows) == len(session_ids) and all(r["status"] in SETTLED for r in rows):
                return rows
            if deadline is not None and time.monotonic() > deadline:
                return rows
            time.sleep(poll)

    def shutdown(self) -> None:
        """Stop the actors; hosts close their partitions (releasing the locks) first."""
        # A host that cannot answer is killed below all the same.
        with contextlib.suppress(Exception):
            ray.get([h.close.remote() for h in self.hosts], timeout=30)
        if self.projector is not None:
            with contextlib.suppress(Exception):
                ray.get(self.projector.close.remote(), timeout=30)
        for handle in [self.dispatcher, *self.hosts, self.ledger, self.projector]:
            if handle is not None:
                ray.kill(handle, no_restart=True)
        (self.home / FLEET_FILE).unlink(missing_ok=True)
