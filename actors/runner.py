"""The effect runner: performs what ``decide`` asks for and appends the events that record it.

One ``SessionRunner`` drives one session inside a host. It is the thin part of
the actor: load (fold the stream), decide, perform the effect, append. Every
"before" event is durable before its effect starts (``ModelCallRequested``,
``ToolCallStarted``), every "after" event records the outcome, so a crash at
any point resumes correctly from the log (see ``loop.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleetlog.actors.loop import (
    AgentState,
    CallModel,
    Emit,
    Finish,
    LoopConfig,
    RunTool,
    VetCall,
    Wait,
    decide,
    estimate_context_tokens,
    evolve_agent,
    fail,
    fold_agent,
)
from fleetlog.actors.model import ModelClient, ModelRequest, cost_usd
from fleetlog.actors.safety import Policy, redact, vet
from fleetlog.actors.tools import ToolContext, ToolSpec, run_tool, validate_input
from fleetlog.events.errors import FleetlogError, ModelError, ToolInputError
from fleetlog.events.log import AppendResult
from fleetlog.events.schema import (
    CancelRequested,
    Envelope,
    Event,
    ModelCallFailed,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionClaimed,
    SessionFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallRejected,
    ToolCallStarted,
    ToolCallVetted,
)
from fleetlog.events.state import SessionState

__all__ = ["LogPort", "BudgetPort", "Pricing", "RunnerDeps", "SessionRunner", "Command"]

#: Output tokens reserved against a tenant budget before a call (the reply's cap).
RESERVE_OUTPUT_TOKENS = 1024


class LogPort(Protocol):
    async def append(
        self, session_id: str, events: Sequence[Event], expected_seq: int, epoch: int | None
    ) -> AppendResult: ...

    async def read_stream(self, session_id: str) -> list[Envelope]: ...


class BudgetPort(Protocol):
    async def reserve(self, tenant: str, usd: float, tokens: int) -> tuple[bool, str]: ...

    async def settle(
        self, tenant: str, reserved_usd: float, reserved_tokens: int, usd: float, tokens: int
    ) -> None: ...


@dataclass(frozen=True)
class Pricing:
    context_window: int = 200_000
    input_usd_per_mtok: float = 3.0
    output_usd_per_mtok: float = 15.0


@dataclass
class RunnerDeps:
    """Everything a runner needs from its host: ports, not globals, so tests can pass fakes."""

    log: LogPort
    model_for: Callable[[str], ModelClient]
    pricing_for: Callable[[str], Pricing]
    tools: dict[str, ToolSpec]
    policy: Policy
    budget: BudgetPort | None
    home: Path
    owner: str
    node: str = ""
    compact_at: float = 0.8
    keep_recent_turns: int = 4
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Command:
    """An operator's decision routed to the owning host: approve, deny or cancel."""

    kind: str  # "approve" | "deny" | "cancel"
    call_id: str = ""
    note: str = ""
    reviewer: str = ""
    end_session: bool = False


@dataclass
class SessionRunner:
    session_id: str
    deps: RunnerDeps
    epoch: int = 0
    state: AgentState = field(init=False)
    durable: AgentState = field(init=False)  # the state as of the last flushed event
    pending: list[Event] = field(default_factory=list)
    inbox: list[Command] = field(default_factory=list)
    _tools_estimate: int = -1
    _workspace: Path | None = None

    # --- load and append -----------------------------------------------------------------

    async def load(self) -> AgentState:
        self.state = fold_agent(self.session_id, await self.deps.log.read_stream(self.session_id))
        self.durable = self.state
        self.pending = []
        return self.state

    async def claim(self) -> AgentState:
        """Load the stream and take ownership with an epoch newer than any before."""
        state = await self.load()
        if state.session.terminal:
            return state
        self.epoch = state.session.epoch + 1
        await self.commit(
            [SessionClaimed(owner=self.deps.owner, node=self.deps.node, epoch=self.epoch)]
        )
        self.workspace.mkdir(parents=True, exist_ok=True)
        return self.state

    def stage(self, events: Sequence[Event]) -> None:
        """Record pure decisions and effect outcomes; they reach the log with the next flush.

        Only what must be durable *before* an effect forces a flush (the
        request before a model call, the start before a tool call, anything
        before waiting or ending), so a step costs two appends, not five. What
        is staged and lost in a crash is recomputed, or the effect it records
        is bracketed by a durable "before" event and handled as in doubt.
        """
        state = self.state
        seq = state.session.seq
        now = self.deps.clock()
        for i, event in enumerate(events):
            state = evolve_agent(
                state, Envelope(0, self.session_id, seq + 1 + i, self.epoch, now, "", event)
            )
        self.state = state
        self.pending.extend(events)

    async def flush(self) -> AgentState:
        if not self.pending:
            return self.state
        events, self.pending = self.pending, []
        try:
            await self.deps.log.append(
                self.session_id, events, self.durable.session.seq, self.epoch
            )
        except BaseException:
            self.state = self.durable  # the caller reloads; nothing staged survives a failed append
            raise
        # The staged fold already holds these events. It differs from a replay
        # only in timestamps (staging time vs the log's), which no decision reads.
        self.durable = self.state
        return self.state

    async def commit(self, events: Sequence[Event]) -> AgentState:
        self.stage(events)
        return await self.flush()

    @property
    def workspace(self) -> Path:
        if self._workspace is None:
            configured = self.state.session.workspace
            if configured:
                path = Path(configured)
                path = path if path.is_absolute() else self.deps.home / path
            else:
                path = self.deps.home / "workspaces" / self.session_id
            self._workspace = path.resolve()
        return self._workspace

    @property
    def loop_config(self) -> LoopConfig:
        pricing = self.deps.pricing_for(self.state.session.model)
        return LoopConfig(
            context_window=pricing.context_window,
            compact_at=self.deps.compact_at,
            keep_recent_turns=self.deps.keep_recent_turns,
            idempotent_tools=frozenset(n for n, t in self.deps.tools.items() if t.idempotent),
        )

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> AgentState:
        """Step until the session is terminal or waits for a human."""
        while True:
            await self._apply_commands()
            decision = decide(self.state, self.deps.clock(), self.loop_config)
            match decision:
                case Finish() | Wait():
                    return await self.flush()
                case Emit():
                    await self.commit(decision.events)
                case CallModel():
                    await self._bounded(self._call_model(decision), "model call")
                case VetCall():
                    self.stage(self._vet(decision.call_id))
                case RunTool():
                    await self._bounded(self._run_tool(decision), "tool call", decision.call_id)

    async def _apply_commands(self) -> None:
        if self.inbox:
            await self.flush()
        while self.inbox:
            command = self.inbox.pop(0)
            try:
                events = command_events(self.state.session, command)
            except FleetlogError:
                continue  # already decided, ended, or never asked: commands are idempotent
            await self.commit(events)

    async def _bounded(self, effect: Any, what: str, call_id: str = "") -> None:
        """Run an effect under the step timeout, and under what is left of the total time."""
        limits = self.state.session.limits
        started_at = self.state.started_at or self.deps.clock()
        left = limits.total_timeout_s - (self.deps.clock() - started_at)
        step = limits.step_timeout_s
        try:
            await asyncio.wait_for(effect, timeout=max(min(step, left), 0.0))
        except TimeoutError:
            events: list[Event] = []
            if call_id:
                events.append(
                    ToolCallFailed(call_id=call_id, error=f"timed out after {min(step, left):g}s")
                )
            if left < step:
                spent = self.deps.clock() - started_at
                timeout = fail(
                    "TOTAL_TIMEOUT",
                    f"session ran {spent:.1f}s (limit {limits.total_timeout_s:g}s)",
                    limit=limits.total_timeout_s,
                    value=spent,
                )
            else:
                timeout = fail(
                    "STEP_TIMEOUT", f"{what} took longer than {step:g}s", limit=step, value=step
                )
            await self.commit(events + timeout.events)

    # --- effects ---------------------------------------------------------------------------

    async def _call_model(self, decision: CallModel) -> None:
        session = self.state.session
        pricing = self.deps.pricing_for(session.model)
        tools = [self.deps.tools[n].anthropic_tool() for n in session.tools if n in self.deps.tools]
        request = ModelRequest(
            model=session.model,
            system=session.system,
            messages=list(self.state.messages),
            tools=tools,
        )
        estimate = estimate_context_tokens(self.state) + self._tools_tokens(tools)
        reserve_usd = (
            estimate * pricing.input_usd_per_mtok
            + RESERVE_OUTPUT_TOKENS * pricing.output_usd_per_mtok
        ) / 1e6
        reserve_tokens = estimate + RESERVE_OUTPUT_TOKENS
        budget = self.deps.budget
        if budget is not None:
            ok, detail = await budget.reserve(session.tenant, reserve_usd, reserve_tokens)
            if not ok:
                await self.commit(fail("BUDGET_EXHAUSTED", detail).events)
                return
        if not decision.again:
            await self.commit(
                [
                    ModelCallRequested(
                        step=decision.step,
                        request_id=decision.request_id,
                        model=session.model,
                        input_tokens_estimate=estimate,
                    )
                ]
            )

        async def on_retry(attempt: int, status: int | None, error: str, delay_s: float) -> None:
            await self.commit(
                [
                    ModelCallRetried(
                        step=decision.step,
                        request_id=decision.request_id,
                        attempt=attempt,
                        error=error[:500],
                        status_code=status,
                        delay_ms=delay_s * 1000,
                    )
                ]
            )

        started = time.perf_counter()
        try:
            reply = await self.deps.model_for(session.model).complete(
                request, timeout_s=session.limits.step_timeout_s, on_retry=on_retry
            )
        except BaseException as e:
            # Cut off (step/total timeout, cancel) or failed: nothing was spent, so
            # release the reservation; otherwise the tenant's budget shrinks for good.
            if budget is not None:
                await asyncio.shield(
                    budget.settle(session.tenant, reserve_usd, reserve_tokens, 0.0, 0)
                )
            if not isinstance(e, ModelError):
                raise
            await self.commit(
                [
                    ModelCallFailed(
                        step=decision.step,
                        request_id=decision.request_id,
                        error=str(e)[:500],
                        status_code=e.status_code,
                        retryable=e.retryable,
                    ),
                    SessionFailed(error=f"MODEL_ERROR: {str(e)[:300]}"),
                ]
            )
            return
        usage = reply.usage
        spent_usd = cost_usd(usage, pricing.input_usd_per_mtok, pricing.output_usd_per_mtok)
        spent_tokens = usage.input_tokens + usage.output_tokens
        if budget is not None:
            await budget.settle(
                session.tenant, reserve_usd, reserve_tokens, spent_usd, spent_tokens
            )
        content = [self._redact_block(b) for b in reply.content]
        events: list[Event] = [
            ModelResponded(
                step=decision.step,
                request_id=decision.request_id,
                model=reply.model or session.model,
                content=json.dumps(content),
                stop_reason=reply.stop_reason,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                cost_usd=spent_usd,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
        ]
        for block in content:
            if block.get("type") == "tool_use":
                events.append(
                    ToolCallProposed(
                        step=decision.step,
                        call_id=block["id"],
                        tool=block["name"],
                        input=json.dumps(block.get("input", {}), sort_keys=True),
                    )
                )
        # Durable with the next flush: before the first tool runs, or before waiting.
        self.stage(events)

    def _tools_tokens(self, tools: list[dict[str, Any]]) -> int:
        if self._tools_estimate < 0:
            self._tools_estimate = len(json.dumps(tools)) // 4
        return self._tools_estimate

    @staticmethod
    def _redact_block(block: dict[str, Any]) -> dict[str, Any]:
        if block.get("type") == "tool_use":
            raw = json.dumps(block.get("input", {}))
            clean = redact(raw)
            if clean != raw:
                return {**block, "input": json.loads(clean)}
        elif block.get("type") == "text":
            return {**block, "text": redact(block.get("text", ""))}
        return block

    def _vet(self, call_id: str) -> list[Event]:
        session = self.state.session
        call = session.tool_calls[call_id]
        spec = self.deps.tools.get(call.tool)
        if spec is None or call.tool not in session.tools:
            return [ToolCallRejected(call_id=call_id, reason=f"unknown tool: {call.tool}")]
        try:
            raw = json.loads(call.input) if isinstance(call.input, str) else None
            kwargs = validate_input(spec, raw)
        except (ToolInputError, json.JSONDecodeError) as e:
            return [ToolCallRejected(call_id=call_id, reason=str(e))]
        vetting = vet(spec, kwargs, self.deps.policy, self.workspace)
        events: list[Event] = [
            ToolCallVetted(
                call_id=call_id,
                verdict=vetting.verdict,
                risk=vetting.risk,
                reason=vetting.reason,
                rule=vetting.rule,
            )
        ]
        if vetting.verdict == "deny":
            events.append(ToolCallRejected(call_id=call_id, reason=f"refused: {vetting.reason}"))
        elif vetting.verdict == "ask":
            events.append(ReviewRequested(call_id=call_id, reason=vetting.reason))
        return events

    async def _run_tool(self, decision: RunTool) -> None:
        call = self.state.session.tool_calls[decision.call_id]
        spec = self.deps.tools[call.tool]
        key = f"{self.session_id}:{decision.call_id}"
        await self.commit(
            [
                ToolCallStarted(
                    call_id=decision.call_id, idempotency_key=key, attempt=decision.attempt
                )
            ]
        )
        kwargs = validate_input(spec, json.loads(call.input) if isinstance(call.input, str) else {})
        context = ToolContext(
            session_id=self.session_id,
            call_id=decision.call_id,
            idempotency_key=key,
            workspace=self.workspace,
            home=self.deps.home,
        )
        started = time.perf_counter()
        outcome = await run_tool(
            spec, kwargs, context, timeout_s=self.state.session.limits.step_timeout_s
        )
        self.stage(
            [
                ToolCallCompleted(
                    call_id=decision.call_id,
                    output=redact(outcome.output),
                    is_error=outcome.is_error,
                    latency_ms=(time.perf_counter() - started) * 1000,
                )
            ]
        )
        if not spec.idempotent:
            # Record at once that it ran: a crash now must not leave it in doubt.
            await self.flush()


def command_events(state: SessionState, command: Command) -> list[Event]:
    """The events an operator's command records; a one-line FleetlogError if it cannot apply."""
    sid = state.session_id
    if state.terminal:
        raise FleetlogError(f"session {sid} is already {state.status}")
    if command.kind == "cancel":
        return [CancelRequested(by=command.reviewer, note=command.note)]
    call = state.tool_calls.get(command.call_id)
    if call is None:
        raise FleetlogError(f"session {sid} has no tool call {command.call_id}")
    if call.status != "awaiting_review":
        raise FleetlogError(f"tool call {command.call_id} is {call.status}, not awaiting review")
    approved = command.kind == "approve"
    ends = command.end_session and not approved
    events: list[Event] = [
        ReviewDecided(
            call_id=command.call_id,
            approved=approved,
            reviewer=command.reviewer,
            note=command.note,
            end_session=ends,
        )
    ]
    if ends:
        events.append(SessionFailed(error=denial_error(call.in_doubt, command.note or call.tool)))
    return events


def denial_error(in_doubt: bool, detail: str) -> str:
    """The failure a reviewer's "deny and end" records (SPEC §3)."""
    code = "TOOL_IN_DOUBT_REJECTED" if in_doubt else "DENIED_BY_REVIEWER"
    return f"{code}: {detail}"


def internal_error(error: BaseException) -> list[Event]:
    kind = type(error).__name__
    detail = str(error).splitlines()[0][:300] if str(error) else kind
    if isinstance(error, FleetlogError):
        return [SessionFailed(error=f"INTERNAL_ERROR: {detail}")]
    return [SessionFailed(error=f"INTERNAL_ERROR: {kind}: {detail}")]
