"""The fleet on Ray: actors, and the driver-side handle the CLI uses.

    SessionHost  (N, async, max_restarts=-1)  each owns log partitions and their sessions;
                                              restarts anywhere and resumes them
    BudgetLedger (1, async, max_restarts=-1)  tenant budgets, rebuilt from the log
    Dispatcher   (1)                          routes submit/approve/deny/cancel to owners

Actors are named in a namespace derived from the fleet home, so CLI commands in
other processes find a running fleet through ``HOME/fleet.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import ray

from fleetlog.actors.host import HostCore, host_for
from fleetlog.actors.ledger import Budget, Ledger
from fleetlog.actors.runner import Command
from fleetlog.config import Config, Task
from fleetlog.events.partitions import open_readers
from fleetlog.events.schema import SessionCreated

__all__ = ["Fleet", "namespace_for", "FLEET_FILE", "session_event"]

FLEET_FILE = "fleet.json"
SETTLED = frozenset({"completed", "failed", "cancelled", "awaiting_review"})


def namespace_for(home: Path) -> str:
    return "fleetlog-" + hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:12]


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


class _LedgerActor:
    """Fleet-wide budgets. Rebuilt by folding every partition, read-only, on first use."""

    def __init__(self, budgets: dict[str, Budget], log_root: str) -> None:
        self.ledger = Ledger(budgets)
        self.log_root = Path(log_root)
        self._built = False

    def _build(self) -> None:
        if self._built:
            return
        for reader in open_readers(self.log_root):
            try:
                position = 1
                while batch := reader.read_all(position, 50_000):
                    self.ledger.fold(batch)
                    position = batch[-1].position + 1
            finally:
                reader.close()
        self._built = True

    async def reserve(self, tenant: str, usd: float, tokens: int) -> tuple[bool, str]:
        self._build()
        return self.ledger.reserve(tenant, usd, tokens)

    async def settle(
        self, tenant: str, reserved_usd: float, reserved_tokens: int, usd: float, tokens: int
    ) -> None:
        self._build()
        self.ledger.settle(tenant, reserved_usd, reserved_tokens, usd, tokens)

    async def snapshot(self) -> dict[str, dict[str, float]]:
        self._build()
        return self.ledger.snapshot()


class _LedgerPort:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def reserve(self, tenant: str, usd: float, tokens: int) -> tuple[bool, str]:
        result: tuple[bool, str] = await self.actor.reserve.remote(tenant, usd, tokens)
        return result

    async def settle(
        self, tenant: str, reserved_usd: float, reserved_tokens: int, usd: float, tokens: int
    ) -> None:
        await self.actor.settle.remote(tenant, reserved_usd, reserved_tokens, usd, tokens)


class _HostActor:
    """Thin: every call first makes sure a (re)started host owns its partitions and resumed."""

    def __init__(self, index: int, hosts: int, home: str, config: Config, ledger: Any) -> None:
        budget = _LedgerPort(ledger) if ledger is not None else None
        self.core = HostCore(index, hosts, Path(home), config, budget)

    async def ping(self) -> int:
        await self.core.start()
        return self.core.index

    async def node_id(self) -> str:
        """The Ray node this host runs on (placement checks, operations)."""
        node: str = ray.get_runtime_context().get_node_id()
        return node

    async def has(self, session_id: str) -> bool:
        await self.core.start()
        return self.core.has(session_id)

    async def create(self, session_id: str, event: SessionCreated) -> bool:
        await self.core.start()
        return await self.core.create(session_id, event)

    async def command(self, session_id: str, command: Command) -> bool:
        await self.core.start()
        return await self.core.command(session_id, command)

    async def statuses(self) -> list[dict[str, Any]]:
        await self.core.start()
        return self.core.statuses()

    async def close(self) -> None:
        await self.core.aclose()


class _Dispatcher:
    def __init__(self, namespace: str, hosts: int) -> None:
        # Looked up by name rather than passed in: handles as constructor
        # arguments would live in the object store and could be lost on restart.
        self.hosts = [
            ray.get_actor(f"fleetlog-host-{i}", namespace=namespace) for i in range(hosts)
        ]

    async def _owner(self, session_id: str) -> Any | None:
        found: list[bool] = await asyncio.gather(*(h.has.remote(session_id) for h in self.hosts))
        for host, has in zip(self.hosts, found, strict=True):
            if has:
                return host
        return None

    async def submit(self, session_id: str, event: SessionCreated) -> bool:
        """Create the session (True) or, if it exists, make sure it runs (False)."""
        owner = await self._owner(session_id)
        if owner is None:
            owner = self.hosts[host_for(session_id, len(self.hosts))]
        created: bool = await owner.create.remote(session_id, event)
        return created

    async def command(self, session_id: str, command: Command) -> bool:
        owner = await self._owner(session_id)
        if owner is None:
            return False
        result: bool = await owner.command.remote(session_id, command)
        return result

    async def statuses(self) -> list[dict[str, Any]]:
        calls = (h.statuses.remote() for h in self.hosts)
        parts: list[list[dict[str, Any]]] = await asyncio.gather(*calls)
        return [row for part in parts for row in part]


class Fleet:
    """Driver-side handle: start (or join) a fleet, submit tasks, watch, decide, stop."""

    def __init__(self, home: Path, config: Config, namespace: str, actors: dict[str, Any]) -> None:
        self.home = home
        self.config = config
        self.namespace = namespace
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
        (home / "log").mkdir(parents=True, exist_ok=True)
        namespace = namespace_for(home)
        lifetime = "detached" if detached else None
        budgets = {t: Budget(b.max_cost_usd, b.max_tokens) for t, b in config.budgets.items()}

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

        ledger: Any = (
            actor(_LedgerActor, "fleetlog-ledger").remote(budgets, str(home / "log"))
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
            ).remote(i, hosts, str(home), config, ledger)
            for i in range(hosts)
        ]
        dispatcher: Any = actor(_Dispatcher, "fleetlog-dispatcher", max_concurrency=1000).remote(
            namespace, hosts
        )
        ray.get([h.ping.remote() for h in host_handles])
        return cls(
            home,
            config,
            namespace,
            {"ledger": ledger, "hosts": host_handles, "dispatcher": dispatcher},
        )

    @classmethod
    def join(cls, home: Path, config: Config) -> Fleet:
        """Handles to a fleet started by another process (``fleetlog up``)."""
        home = home.resolve()
        namespace = namespace_for(home)
        info = json.loads((home / FLEET_FILE).read_text())
        hosts = [
            ray.get_actor(f"fleetlog-host-{i}", namespace=namespace) for i in range(info["hosts"])
        ]
        dispatcher = ray.get_actor("fleetlog-dispatcher", namespace=namespace)
        return cls(
            home, config, namespace, {"ledger": None, "hosts": hosts, "dispatcher": dispatcher}
        )

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
        refs = [
            self.dispatcher.submit.remote(sid, session_event(self.config, task, sid))
            for task, sid in tasks
        ]
        return sum(1 for created in ray.get(refs) if created)

    def command(self, session_id: str, command: Command) -> bool:
        result: bool = ray.get(self.dispatcher.command.remote(session_id, command))
        return result

    def statuses(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = ray.get(self.dispatcher.statuses.remote())
        return result

    def wait_settled(
        self, session_ids: set[str], timeout: float | None = None, poll: float = 0.25
    ) -> list[dict[str, Any]]:
        """Poll until every session is terminal or awaiting review (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = [r for r in self.statuses() if r["id"] in session_ids]
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
        for handle in [self.dispatcher, *self.hosts, self.ledger]:
            if handle is not None:
                ray.kill(handle, no_restart=True)
        (self.home / FLEET_FILE).unlink(missing_ok=True)
