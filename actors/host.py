"""SessionHost: an async actor that owns many sessions, one asyncio task each.

The host is the single writer of its sessions. Placement is a pure function of
the session id and the number of hosts (``host_for``), so after a restart — on
the same node or another — a host finds its sessions in the log, claims each
with a newer epoch (fencing off any stale owner) and resumes it from its
stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from fleetlog.actors.model import AnthropicModel, ModelClient, ScriptedModel
from fleetlog.actors.outbox import outbox_for
from fleetlog.actors.runner import (
    BudgetPort,
    Command,
    Pricing,
    RunnerDeps,
    SessionRunner,
    internal_error,
)
from fleetlog.actors.safety import Policy, redact_event
from fleetlog.actors.sandbox import Sandbox, SandboxUnavailable
from fleetlog.actors.tools import BUILTIN_TOOLS, ToolSpec, load_tools_module
from fleetlog.config import Config
from fleetlog.events.errors import ConcurrencyError, FencedError, LogError
from fleetlog.events.faults import crash_point
from fleetlog.events.log import AppendResult, EventLog
from fleetlog.events.schema import BlobRef, Envelope, Event, SessionCreated
from fleetlog.events.source import LogSource, host_for, source_for
from fleetlog.events.state import TERMINAL
from fleetlog.projections.service import SessionsView

__all__ = ["host_for", "HostCore", "session_summary"]

log = logging.getLogger("fleetlog.host")


def session_summary(runner: SessionRunner) -> dict[str, Any]:
    # Durable state only: what is staged may still be lost in a crash (SPEC §9).
    s = runner.durable.session
    return {
        **s.row(),
        "refused_calls": sum(1 for c in s.tool_calls.values() if c.status == "denied"),
        "reviews": [
            {"call_id": c.call_id, "tool": c.tool, "reason": c.reason, "in_doubt": c.in_doubt}
            for c in s.awaiting_review()
        ],
    }


def tools_for(config: Config) -> dict[str, ToolSpec]:
    tools = dict(BUILTIN_TOOLS)
    if config.fleet.tools_module:
        tools.update(load_tools_module(config.fleet.tools_module))
    return tools


def sandbox_for(config: Config, home: Path) -> tuple[Sandbox | None, str]:
    """The sandbox exec tools run in, and its state for the record (see RunnerDeps)."""
    if config.tools.sandbox == "off":
        log.warning('[tools] sandbox = "off": run_shell and exec tools run unconfined')
        return None, "off"
    try:
        return Sandbox.find(home), "on"
    except SandboxUnavailable as e:
        log.error("run_shell and exec tools are disabled: the sandbox cannot start: %s", e)
        return None, f"unavailable: {e}"


def policy_for(config: Config) -> Policy:
    if config.policy is None:
        return Policy.default()
    return Policy(
        deny=list(config.policy.deny), ask=list(config.policy.ask), allow=list(config.policy.allow)
    )


class _PartitionPort:
    """The runners' LogPort: each session's appends go to the partition holding its stream."""

    def __init__(self, host: HostCore) -> None:
        self.host = host

    async def append(
        self, session_id: str, events: Sequence[Event], expected_seq: int, epoch: int
    ) -> AppendResult:
        return await self.host.log_for(session_id).append_async(
            session_id, events, expected_seq, epoch
        )

    async def read_stream(self, session_id: str) -> list[Envelope]:
        if self.host.source.shared:  # a database round trip: off the event loop
            return await asyncio.to_thread(self.host.partitions[0].read_stream, session_id)
        log = self.host.find(session_id)
        return log.read_stream(session_id) if log is not None else []

    async def put_blob(self, session_id: str, data: bytes) -> BlobRef:
        # Written and fsync'd off the event loop, like an event's large payload.
        return await asyncio.to_thread(self.host.log_for(session_id).blobs.put, data)


class HostCore:
    """The host's logic, testable without Ray: it owns log partitions and runs their sessions."""

    def __init__(
        self,
        index: int,
        hosts: int,
        home: Path,
        config: Config,
        budget: BudgetPort | None = None,
        *,
        lock_wait_s: float = 60.0,
        model_factory: Callable[[str], ModelClient] | None = None,
        sessions_view: Callable[[], Awaitable[SessionsView | None]] | None = None,
        source: LogSource | None = None,
    ) -> None:
        self.index = index
        self.hosts = hosts
        self.home = home
        self.config = config
        self.lock_wait_s = lock_wait_s
        #: Where the log lives: this machine's partitions, or the shared PostgreSQL log.
        self.source = source if source is not None else source_for(home, config.fleet.log)
        self.partitions: dict[int, EventLog] = {}
        self._models: dict[str, ModelClient] = {}
        self._model_factory = model_factory
        self._sessions_view = sessions_view
        self.deps = RunnerDeps(
            log=_PartitionPort(self),
            model_for=self._model_for,
            pricing_for=self._pricing_for,
            tools=tools_for(config),
            policy=policy_for(config),
            budget=budget if config.budgets else None,
            home=home,
            owner=f"host-{index}@{socket.gethostname()}:{os.getpid()}",
            node=socket.gethostname(),
            compact_at=config.context.compact_at,
            keep_recent_turns=config.context.keep_recent_turns,
            context={
                "compact_to": config.context.compact_to,
                "max_tool_result_share": config.context.max_tool_result_share,
                "max_compaction_failures": config.context.max_compaction_failures,
                "summary_max_tokens": config.context.summary_max_tokens,
            },
        )
        self.deps.sandbox, self.deps.sandbox_state = sandbox_for(config, home)
        self.deps.network_for = lambda agent: tuple(config.agent(agent).network)
        # Emails are delivered where every node sees them: the shared log's database.
        self.deps.outbox = outbox_for(self.source.spec, home)
        if config.fleet.workspaces:
            self.deps.workspaces = Path(config.fleet.workspaces).expanduser()
        self.runners: dict[str, SessionRunner] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.wakeups: dict[str, asyncio.Event] = {}
        self._started = False
        self._starting = asyncio.Lock()

    # --- partitions ------------------------------------------------------------------------

    def _open_partitions(self) -> None:
        opened = self.source.open_host(self.index, self.hosts, self.lock_wait_s)
        for p, log_ in opened.items():
            if p in self.partitions:
                log_.close()
            else:
                self.partitions[p] = log_

    def find(self, session_id: str) -> EventLog | None:
        for log in self.partitions.values():
            if log.last_seq(session_id) > 0:
                return log
        return None

    def log_for(self, session_id: str) -> EventLog:
        if self.source.shared:
            return self.partitions[0]  # one log: no lookup (an append must not cost a query)
        found = self.find(session_id)
        if found is not None:
            return found
        return self.partitions[host_for(session_id, self.hosts)]

    def close(self) -> None:
        """Stop the sessions and release the partitions (their locks). See ``aclose``."""
        for task in self.tasks.values():
            task.cancel()
        for log_ in self.partitions.values():
            log_.close()
        self.partitions.clear()
        self.source.close()

    async def aclose(self) -> None:
        """``close``, and the model clients' connections with it."""
        self.close()
        await asyncio.gather(*(m.aclose() for m in self._models.values()), return_exceptions=True)
        self._models.clear()

    # --- models ------------------------------------------------------------------------

    def _model_for(self, name: str) -> ModelClient:
        client = self._models.get(name)
        if client is None and self._model_factory is not None:
            client = self._models[name] = self._model_factory(name)
        if client is None:
            if name == "scripted":
                # A think time for the offline model, so that demos and failure
                # tests can catch sessions mid-flight (milliseconds per call).
                latency_ms = float(os.environ.get("FLEETLOG_SCRIPTED_LATENCY_MS", "0") or 0)
                client = ScriptedModel(latency_s=latency_ms / 1000)
            else:
                client = AnthropicModel()
            self._models[name] = client
        return client

    def _pricing_for(self, name: str) -> Pricing:
        m = self.config.model_config(name)
        return Pricing(m.context_window, m.input_usd_per_mtok, m.output_usd_per_mtok)

    # --- sessions ----------------------------------------------------------------------

    async def start(self) -> int:
        """Open this host's partitions and resume their unfinished sessions (idempotent).

        Every caller returns only once the sessions have been resumed: a restarted
        host starts itself, and a call arriving meanwhile waits for that start.
        """
        async with self._starting:
            if self._started:
                return 0
            self._open_partitions()
            view = await self._sessions_view() if self._sessions_view is not None else None
            started = 0
            for index, log in self.partitions.items():
                for session_id in self._unfinished(index, log, view):
                    # A shared log holds every host's sessions: this host runs its share.
                    if self.source.owner(session_id, index, self.hosts) != self.index:
                        continue
                    if session_id not in self.tasks:
                        self.open(session_id)
                        started += 1
            self._started = True
            return started

    @staticmethod
    def _unfinished(index: int, log: EventLog, view: SessionsView | None) -> list[str]:
        """Sessions of a partition that may still need running.

        From the projections (not terminal at their checkpoint) plus every session
        the log mentions after it: a restart reads the log's tail, not the whole
        log. Without projections, every session (a terminal one returns at once).
        """
        if view is None:
            found = set(log.session_ids())
        else:
            found = {
                sid
                for sid, partition, status, *_rest in view.sessions
                if partition == index and status not in TERMINAL
            }
            position = view.checkpoints.get(index, 0) + 1
            while batch := log.read_all(position, 50_000):
                found.update(env.session_id for env in batch)
                position = batch[-1].position + 1
        return sorted(found)

    def has(self, session_id: str) -> bool:
        return self.find(session_id) is not None

    async def create(self, session_id: str, event: SessionCreated) -> bool:
        """Record a new session in this host's partition and run it; False if it existed."""
        if self.find(session_id) is None:
            try:
                # Epoch 0, the lowest: any owner's claim fences this writer off.
                await self.log_for(session_id).append_async(session_id, [redact_event(event)], 0, 0)
            except ConcurrencyError:
                pass
            else:
                self.open(session_id)
                return True
        self.open(session_id)
        return False

    def open(self, session_id: str) -> None:
        task = self.tasks.get(session_id)
        if task is not None and not task.done():
            return
        self.wakeups.setdefault(session_id, asyncio.Event())
        self.tasks[session_id] = asyncio.get_running_loop().create_task(self._drive(session_id))

    def _runner(self, session_id: str) -> SessionRunner:
        runner = self.runners.get(session_id)
        if runner is None:
            runner = self.runners[session_id] = SessionRunner(session_id, self.deps)
        return runner

    async def _drive(self, session_id: str) -> None:
        runner = self._runner(session_id)
        backoff = 0.05
        while True:
            try:
                await runner.ensure_claimed()
                state = await runner.run()
                backoff = 0.05
                if state.session.terminal:
                    return
                # Waiting for a human: sleep until a command arrives.
                wake = self.wakeups[session_id]
                await wake.wait()
                wake.clear()
            except FencedError:
                log.info("session %s was claimed by a newer owner; letting go", session_id)
                return
            except ConcurrencyError:
                await runner.load()  # someone appended: re-read
            except LogError as e:
                log.warning("session %s: log unavailable (%s); retrying", session_id, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                self._heal(session_id)
                runner.epoch = 0  # re-read and re-claim: the append may or may not have landed
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("session %s failed", session_id)
                try:
                    await runner.commit(internal_error(e))
                except Exception:
                    log.exception("session %s: could not record the failure", session_id)
                return

    def _heal(self, session_id: str) -> None:
        """Reopen the partition of ``session_id`` if a failed write poisoned it.

        After a failed write or fsync a FileLog accepts nothing more (its page
        cache may not match the disk); reopening rescans the files, keeps what
        is durable and cuts a torn tail, so its sessions can go on.
        """
        for index, partition in list(self.partitions.items()):
            failed = getattr(partition, "failed", None)  # a FileLog's; PostgresLog retries
            if failed is None or partition.last_seq(session_id) == 0:
                continue
            if partition is not self.log_for(session_id):
                continue
            log.warning("partition %d: reopening after %s", index, failed)
            partition.close()
            try:
                self.partitions[index] = self.source.reopen(index, self.lock_wait_s)
            except LogError as e:
                log.warning("partition %d: cannot reopen yet (%s)", index, e)

    async def command(self, session_id: str, command: Command) -> bool:
        """Record an operator's decision durably, then wake the session; False if not here.

        Returns only once the decision is in the log (SPEC §4); a FleetlogError
        says in one line why it cannot apply (decided otherwise, ended, a
        different call). The same decision made twice is recorded once.
        """
        if self.find(session_id) is None:
            return False
        crash_point("after_command_received")
        runner = self._runner(session_id)
        await runner.ensure_claimed()
        await runner.record_command(command)
        crash_point("after_command_recorded")
        self.wakeups.setdefault(session_id, asyncio.Event()).set()
        self.open(session_id)
        return True

    def statuses(self) -> list[dict[str, Any]]:
        return [session_summary(r) for r in self.runners.values() if hasattr(r, "durable")]
