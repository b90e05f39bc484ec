"""The effect runner: performs what ``decide`` asks for and appends the events that record it.

One ``SessionRunner`` drives one session inside a host. It is the thin part of
the actor: load (fold the stream), decide, perform the effect, append. Every
"before" event is durable before its effect starts (``ModelCallRequested``,
``ToolCallStarted``), every "after" event records the outcome, so a crash at
any point resumes correctly from the log (see ``loop.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from fleetlog.actors.context import (
    SUMMARY_SYSTEM,
    apply_summary,
    excerpt,
    message_tokens,
    overflow_tokens,
    render_transcript,
    text_tokens,
)
from fleetlog.actors.loop import (
    COMPACTION,
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
    offered_tools,
    output_room,
    raw_request_tokens,
    summary_budget,
)
from fleetlog.actors.model import ModelClient, ModelReply, ModelRequest, cost_usd
from fleetlog.actors.outbox import Outbox
from fleetlog.actors.safety import Policy, redact_event, vet
from fleetlog.actors.sandbox import Sandbox
from fleetlog.actors.tools import (
    DEFAULT_GRACE_S,
    ToolContext,
    ToolSpec,
    run_tool,
    validate_input,
)
from fleetlog.events.errors import FleetlogError, ModelError, ToolInputError
from fleetlog.events.faults import crash_point
from fleetlog.events.log import AppendResult
from fleetlog.events.schema import (
    BlobRef,
    CancelRequested,
    ContextCompacted,
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
from fleetlog.events.state import SessionState, ToolCallState, call_hash

log = logging.getLogger("fleetlog.runner")

__all__ = ["LogPort", "BudgetPort", "Pricing", "RunnerDeps", "SessionRunner", "Command"]


class LogPort(Protocol):
    async def append(
        self, session_id: str, events: Sequence[Event], expected_seq: int, epoch: int
    ) -> AppendResult: ...

    async def read_stream(self, session_id: str) -> list[Envelope]: ...

    async def put_blob(self, session_id: str, data: bytes) -> BlobRef:
        """Store ``data`` once, durably, where the session's events can refer to it."""
        ...


class BudgetPort(Protocol):
    """The fleet's ledger (see ``ledger.py``): keyed by session, so every call is idempotent.

    ``spent_*`` are always the session's cumulative, durable spending.
    """

    async def reserve(
        self,
        tenant: str,
        session_id: str,
        usd: float,
        tokens: int,
        spent_usd: float,
        spent_tokens: int,
    ) -> tuple[bool, str]: ...

    async def release(
        self, tenant: str, session_id: str, spent_usd: float, spent_tokens: int
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
    #: ``[context]``'s other settings (see ``LoopConfig``): None keeps LoopConfig's defaults.
    context: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    # After a timeout or a cancel, how long a tool that cannot be interrupted is waited for.
    effect_grace_s: float = DEFAULT_GRACE_S
    #: Where exec tools run confined (None: off, or unavailable; see ``sandbox_state``).
    sandbox: Sandbox | None = None
    #: "on", "off" (the operator's explicit choice) or "unavailable: <why>" (fail closed).
    sandbox_state: str = "off"
    #: The hosts an agent type's confined tools may reach (``[agents.*] network``).
    network_for: Callable[[str], tuple[str, ...]] = lambda _agent: ()
    #: Where send_email delivers (``outbox.py``); None: the file outbox in ``home``.
    outbox: Outbox | None = None
    #: Where session workspaces live (``[fleet] workspaces``); None: ``home / "workspaces"``.
    workspaces: Path | None = None


@dataclass(frozen=True)
class Command:
    """An operator's decision routed to the owning host: approve, deny or cancel.

    ``call_hash``, when given, must be the hash of the call waiting (``fleetlog
    reviews`` shows it): a decision never applies to a call other than the one seen.
    """

    kind: str  # "approve" | "deny" | "cancel"
    call_id: str = ""
    note: str = ""
    reviewer: str = ""
    end_session: bool = False
    call_hash: str = ""
    #: approve only: run the call with this input (a JSON object) instead of the model's
    edited_input: str = ""


@dataclass
class SessionRunner:
    session_id: str
    deps: RunnerDeps
    epoch: int = 0
    state: AgentState = field(init=False)
    durable: AgentState = field(init=False)  # the state as of the last flushed event
    pending: list[Event] = field(default_factory=list)
    #: Set by a cancel: the effect in flight is stopped (or waited for) and recorded.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tools_estimate: tuple[tuple[str, ...], int] = ((), -1)
    _workspace: Path | None = None
    #: Why the workspace cannot be trusted here ('' if it can): it held the effects of
    #: earlier tool calls and is not on this node. The next tool call goes to review.
    _workspace_lost: str = ""
    _holding: bool = False  # the ledger may hold a reservation for this session
    _release_after_flush: bool = False
    # One append at a time, whoever makes it (the loop, or an operator's command).
    _appending: asyncio.Lock = field(default_factory=asyncio.Lock)
    _claiming: asyncio.Lock = field(default_factory=asyncio.Lock)

    # --- load and append -----------------------------------------------------------------

    async def load(self) -> AgentState:
        self.state = fold_agent(self.session_id, await self.deps.log.read_stream(self.session_id))
        self.durable = self.state
        self.pending = []
        return self.state

    @property
    def loaded(self) -> bool:
        return hasattr(self, "state")

    async def claim(self) -> AgentState:
        """Load the stream and take ownership with an epoch newer than any before."""
        state = await self.load()
        if state.session.terminal:
            return state
        self.epoch = state.session.epoch + 1
        claim = SessionClaimed(
            owner=self.deps.owner,
            node=self.deps.node,
            epoch=self.epoch,
            sandbox=self.deps.sandbox_state,  # what its tools run under, on record
        )
        await self.commit([claim])
        self._workspace_lost = self._lost_workspace(state)
        if not self._workspace_lost:
            self.workspace.mkdir(parents=True, exist_ok=True)
        if self.deps.budget is not None and state.session.seq > 1:
            # A host before this one may have died holding a reservation for it.
            self._holding = True
            await self._release_budget()
        return self.state

    async def ensure_claimed(self) -> AgentState:
        """Claim once (the loop and an operator's command may both get here first)."""
        async with self._claiming:
            if self.epoch == 0 or not self.loaded:
                return await self.claim()
            return self.state

    def stage(self, events: Sequence[Event]) -> None:
        """Record pure decisions and effect outcomes; they reach the log with the next flush.

        Only what must be durable *before* an effect forces a flush (the
        request before a model call, the start before a tool call, anything
        before waiting or ending), so a step costs two appends, not five. The
        runner never awaits anything but that flush while events are staged
        (no effect starts, no ledger is asked), so a crash loses at most what
        the flush was writing. Text is redacted here, before the state sees it,
        so the state is exactly what a replay of the log gives.
        """
        state = self.state
        seq = state.session.seq
        now = self.deps.clock()
        events = [redact_event(e) for e in events]
        for i, event in enumerate(events):
            state = evolve_agent(
                state, Envelope(0, self.session_id, seq + 1 + i, self.epoch, now, "", event)
            )
        self.state = state
        self.pending.extend(events)

    async def flush(self) -> AgentState:
        async with self._appending:
            await self._flush_locked()
        if self._release_after_flush:
            # The reply is durable: only now may the ledger count it (point of no return).
            self._release_after_flush = False
            crash_point("after_model_recorded")
            await self._release_budget()
        return self.state

    async def _flush_locked(self) -> None:
        if not self.pending:
            return
        events, self.pending = self.pending, []
        try:
            await self.deps.log.append(
                self.session_id, events, self.durable.session.seq, self.epoch
            )
        except BaseException:
            self.state = self.durable  # the caller reloads; nothing staged survives a failed append
            self._release_after_flush = False
            raise
        # The staged fold already holds these events. It differs from a replay
        # only in timestamps (staging time vs the log's), which no decision reads.
        self.durable = self.state

    async def commit(self, events: Sequence[Event]) -> AgentState:
        self.stage(events)
        return await self.flush()

    async def record_command(self, command: Command) -> list[Event]:
        """Make an operator's decision durable, in this session's order of appends.

        Returns the events recorded (none if the same decision was already made);
        a FleetlogError says in one line why the command cannot apply.
        """
        async with self._appending:
            events = command_events(self.state.session, command)
            if events:
                self.stage(events)
                await self._flush_locked()
        if command.kind == "cancel":
            self.stop.set()  # stop the effect in flight, which is then recorded
        return events

    @property
    def workspace(self) -> Path:
        if self._workspace is None:
            root = self.deps.workspaces or self.deps.home / "workspaces"
            configured = self.state.session.workspace
            if configured:
                path = Path(configured)
                path = path if path.is_absolute() else root / path
            else:
                path = root / self.session_id
            self._workspace = path.resolve()
        return self._workspace

    def _lost_workspace(self, state: AgentState) -> str:
        """Why this node cannot continue in the session's workspace, or ''.

        A session whose tool calls succeeded before has its files in its workspace;
        restarted on a node where that directory does not exist (a node-local disk
        lost with its node, a shared filesystem not mounted here), running on would
        act on an empty directory as if it were the session's. Nothing is created
        here until a reviewer approves going on (the check holds across restarts).
        """
        if self.workspace.exists():
            return ""
        if not any(c.status == "succeeded" for c in state.session.tool_calls.values()):
            return ""
        return (
            f"workspace {self.workspace} is not on node {self.deps.node} (earlier tool "
            "calls' files may be lost with another node's disk); approve to go on in an "
            "empty workspace, deny to skip this call"
        )

    @property
    def loop_config(self) -> LoopConfig:
        pricing = self.deps.pricing_for(self.state.session.model)
        return LoopConfig(
            context_window=pricing.context_window,
            compact_at=self.deps.compact_at,
            keep_recent_turns=self.deps.keep_recent_turns,
            idempotent_tools=frozenset(n for n, t in self.deps.tools.items() if t.idempotent),
            tools_tokens=self._tools_tokens(),
            **self.deps.context,
        )

    def _tool_defs(self) -> list[dict[str, Any]]:
        return [
            self.deps.tools[n].anthropic_tool()
            for n in offered_tools(self.state)
            if n in self.deps.tools
        ]

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> AgentState:
        """Step until the session is terminal or waits for a human."""
        while True:
            if self.state.session.cancel_requested:
                self.stop.set()
            decision = decide(self.state, self.deps.clock(), self.loop_config)
            match decision:
                case Finish() | Wait():
                    await self.flush()
                    await self._release_budget()  # a session that ends holds nothing
                    return self.state
                case Emit():
                    await self.commit(decision.events)
                    if isinstance(decision.events[0], ContextCompacted):
                        crash_point("after_compaction")
                case CallModel():
                    await self._bounded(self._call_model(decision), "model call")
                case VetCall():
                    self.stage(self._vet(decision.call_id))
                case RunTool():
                    await self._run_tool(decision)

    def _time_left(self) -> tuple[float, float]:
        """(step timeout, what is left of the total time) for the next effect."""
        limits = self.state.session.limits
        started_at = self.state.started_at or self.deps.clock()
        left = limits.total_timeout_s - (self.deps.clock() - started_at)
        return limits.step_timeout_s, max(left, 0.0)

    def _timeout_failure(self, what: str, step: float, left: float) -> list[Event]:
        """The failure when an effect given ``min(step, left)`` seconds ran out of them."""
        limits = self.state.session.limits
        if left < step:
            started_at = self.state.started_at or self.deps.clock()
            spent = self.deps.clock() - started_at
            return fail(
                "TOTAL_TIMEOUT",
                f"session ran {spent:.1f}s (limit {limits.total_timeout_s:g}s)",
                limit=limits.total_timeout_s,
                value=spent,
            ).events
        return fail(
            "STEP_TIMEOUT", f"{what} took longer than {step:g}s", limit=step, value=step
        ).events

    async def _bounded(self, effect: Coroutine[Any, Any, None], what: str) -> None:
        """Run a model call under the step timeout, and under what is left of the total time.

        ``asyncio.timeout`` rather than ``wait_for``: no task is spawned, so nothing
        suspends between the decision and the effect's first durable event.
        """
        step, left = self._time_left()
        try:
            async with asyncio.timeout(min(step, left)):
                await effect
        except TimeoutError:
            events: list[Event] = []
            pending = self.state.session.pending_request
            if pending:
                events.append(
                    ModelCallFailed(
                        step=self.state.session.step,
                        request_id=pending,
                        error=f"timed out after {min(step, left):g}s",
                        retryable=True,
                    )
                )
            await self.commit(events + self._timeout_failure(what, step, left))

    # --- effects ---------------------------------------------------------------------------

    def _request(self, decision: CallModel, config: LoopConfig) -> ModelRequest:
        """The request ``decision`` asks for, from the state alone (the same after a crash)."""
        session = self.state.session
        ratio = self.state.calibration.get(session.model, 1.0)
        window = config.context_window
        if decision.purpose == COMPACTION:
            # The summary request itself must fit: the transcript is clipped to the room
            # left by the summary's output, with a margin for the estimate's error; each
            # failure in a row halves what a block may keep.
            out = summary_budget(config)
            room = int((window - out) * 0.8 / ratio) - text_tokens(SUMMARY_SYSTEM) - 16
            cap = max(2000 >> self.state.compaction_failures, 40)
            transcript = render_transcript(self.state.messages, decision.upto, room, cap)
            return ModelRequest(
                model=session.model,
                system=SUMMARY_SYSTEM,
                messages=[{"role": "user", "content": transcript}],
                tools=[],
                max_tokens=out,
                request_id=decision.request_id,
            )
        estimate = estimate_context_tokens(self.state, config)
        room = output_room(estimate, window)
        return ModelRequest(
            model=session.model,
            system=session.system,
            messages=list(self.state.messages),
            tools=self._tool_defs(),
            max_tokens=max(min(config.max_tokens, room), 1),
            request_id=decision.request_id,
        )

    async def _call_model(self, decision: CallModel) -> None:
        session = self.state.session
        pricing = self.deps.pricing_for(session.model)
        client = self.deps.model_for(session.model)
        config = self.loop_config
        request = self._request(decision, config)
        if decision.purpose == COMPACTION:
            basis = message_tokens(request.messages[0]) + text_tokens(request.system)
        else:
            basis = raw_request_tokens(self.state, config)
        estimate = math.ceil(basis * self.state.calibration.get(session.model, 1.0))
        budget = self.deps.budget
        reserve_usd, reserve_tokens = 0.0, 0
        if budget is not None:
            worst = client.max_usage(request)
            reserve_usd = cost_usd(worst, pricing.input_usd_per_mtok, pricing.output_usd_per_mtok)
            reserve_tokens = (
                worst.input_tokens
                + worst.cache_read_tokens
                + worst.cache_write_tokens
                + worst.output_tokens
            )
        if not decision.again:
            # Durable before the ledger is asked: a ledger rebuilt from the log then
            # knows this reservation, whenever it restarts.
            await self.commit(
                [
                    ModelCallRequested(
                        step=decision.step,
                        request_id=decision.request_id,
                        model=session.model,
                        input_tokens_estimate=estimate,
                        reserved_usd=reserve_usd,
                        reserved_tokens=reserve_tokens,
                        max_tokens=request.max_tokens,
                        purpose=decision.purpose,
                        estimate_basis=basis,
                        compact_upto=decision.upto,
                    )
                ]
            )
            crash_point("after_model_requested")
        try:
            if budget is not None:
                self._holding = True
                durable = self.durable.session
                ok, detail = await budget.reserve(
                    session.tenant,
                    self.session_id,
                    reserve_usd,
                    reserve_tokens,
                    durable.cost_usd,
                    durable.token_count,
                )
                if not ok:
                    self._holding = False  # a refused reserve holds nothing
                    await self.commit(
                        [
                            ModelCallFailed(
                                step=decision.step,
                                request_id=decision.request_id,
                                error=f"BUDGET_EXHAUSTED: {detail}",
                                purpose=decision.purpose,
                            ),
                            *fail("BUDGET_EXHAUSTED", detail).events,
                        ]
                    )
                    return
                crash_point("after_reserve")
            answer = await self._complete(client, request, decision)
        except BaseException as e:
            # Cut off (step/total timeout, cancel, a log error) or failed: release what
            # was reserved, or the tenant's budget shrinks for good.
            await self._release_budget()
            if not isinstance(e, ModelError):
                raise
            failed = ModelCallFailed(
                step=decision.step,
                request_id=decision.request_id,
                error=str(e)[:500],
                status_code=e.status_code,
                retryable=e.retryable,
                purpose=decision.purpose,
            )
            too_long = e.status_code == 400 and overflow_tokens(str(e)) is not None
            if decision.purpose == COMPACTION or too_long:
                # Not the end of the session: the failure counts towards the circuit
                # breaker, the API's own count calibrates the estimate, and the loop
                # compacts (again) before the next request.
                await self.commit([failed])
                return
            await self.commit([failed, SessionFailed(error=f"MODEL_ERROR: {str(e)[:300]}")])
            return
        if answer is None:  # stopped by a cancel: the loop records the cancellation next
            await self._release_budget()
            await self.commit(
                [
                    ModelCallFailed(
                        step=decision.step,
                        request_id=decision.request_id,
                        error="cancelled",
                        purpose=decision.purpose,
                    )
                ]
            )
            return
        crash_point("after_model_reply")
        reply, latency_ms = answer
        usage = reply.usage
        spent_usd = cost_usd(usage, pricing.input_usd_per_mtok, pricing.output_usd_per_mtok)
        events: list[Event] = [
            ModelResponded(
                step=decision.step,
                request_id=decision.request_id,
                model=reply.model or session.model,
                content=json.dumps(reply.content),
                stop_reason=reply.stop_reason,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                cost_usd=spent_usd,
                latency_ms=latency_ms,
                purpose=decision.purpose,
            )
        ]
        if decision.purpose == COMPACTION:
            events += self._compacted(reply, decision, config)
            self.stage(events)
            self._release_after_flush = budget is not None
            await self.flush()
            crash_point("after_compaction")
            return
        seen = set(self.state.session.tool_calls)
        rejected: list[Event] = []
        for n, block in enumerate(reply.content):
            if block.get("type") != "tool_use":
                continue
            call_id = str(block.get("id", ""))
            if call_id in seen:
                # Never an overwrite of the earlier call's record: the model is told instead.
                fresh = f"{call_id}_dup_{decision.step}_{n}"
                rejected.append(
                    ToolCallRejected(
                        call_id=fresh,
                        reason=f"invalid tool input: tool_use id {call_id} was already used; "
                        "every call needs an id of its own",
                    )
                )
                block["id"] = call_id = fresh
            seen.add(call_id)
            events.append(
                ToolCallProposed(
                    step=decision.step,
                    call_id=call_id,
                    tool=block["name"],
                    input=json.dumps(block.get("input", {}), sort_keys=True),
                )
            )
        if rejected:  # ids rewritten above: the recorded content must carry them
            first = events[0]
            assert isinstance(first, ModelResponded)
            events[0] = msgspec.structs.replace(first, content=json.dumps(reply.content))
        # Durable with the next flush, which is the next thing awaited: before the first
        # tool runs, before waiting, before the next call. The ledger is told after it.
        self.stage(events + rejected)
        self._release_after_flush = budget is not None

    async def _complete(
        self, client: ModelClient, request: ModelRequest, decision: CallModel
    ) -> tuple[ModelReply, float] | None:
        """The model's reply and its latency (ms), or None if a cancel stopped the call first."""

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
        call = asyncio.ensure_future(
            client.complete(
                request, timeout_s=self.state.session.limits.step_timeout_s, on_retry=on_retry
            )
        )
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            call.cancel()
            raise
        finally:
            stopped.cancel()
        if not call.done():
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            return None
        return call.result(), (time.perf_counter() - started) * 1000

    def _compacted(self, reply: ModelReply, decision: CallModel, config: LoopConfig) -> list[Event]:
        """The summary stage's record, from the reply to its summary request.

        No event when the reply holds no text: the reply's ModelResponded alone counts
        as a failed compaction (``loop.py``), and the loop tries again or gives up.
        """
        summary = "\n".join(
            str(b.get("text", "")) for b in reply.content if b.get("type") == "text"
        ).strip()
        if not summary:
            return []
        before = estimate_context_tokens(self.state, config)
        ratio = self.state.calibration.get(self.state.session.model, 1.0)
        kept = apply_summary(self.state.messages, decision.upto, summary)
        raw = sum(message_tokens(m) for m in kept) + self.state.system_tokens
        after = math.ceil((raw + config.tools_tokens) * ratio)
        return [
            ContextCompacted(
                stage="summarize",
                step=decision.step,
                tokens_before=before,
                tokens_after=max(after, 0),
                first_message=1,
                dropped_messages=decision.upto - 1,
                summary=summary,
                request_id=decision.request_id,
            )
        ]

    def _tools_tokens(self) -> int:
        """The raw estimate of the tool definitions offered now (cached per set of names)."""
        names = offered_tools(self.state)
        if self._tools_estimate[0] != names or self._tools_estimate[1] < 0:
            self._tools_estimate = (names, text_tokens(json.dumps(self._tool_defs())))
        return self._tools_estimate[1]

    def _result_chars(self) -> int:
        """How many characters of one tool result the model may see: its share of the window."""
        config = self.loop_config
        ratio = self.state.calibration.get(self.state.session.model, 1.0)
        return max(int(config.max_tool_result_share * config.context_window * 4 / ratio), 400)

    def _recorded_output(self, call_id: str) -> str | None:
        """An earlier call's whole output, as recorded (``read_output`` pages through it)."""
        call = self.state.session.tool_calls.get(call_id)
        if call is None or not isinstance(call.output, str) or not call.output:
            return None
        return call.output

    async def _keep_output(self, data: bytes) -> str:
        ref = await self.deps.log.put_blob(self.session_id, data)
        return f"blob sha256:{ref.sha256}"

    async def _release_budget(self) -> None:
        """Tell the ledger this session holds nothing now, with its durable spending."""
        budget = self.deps.budget
        if budget is None or not self._holding:
            return
        self._holding = False
        s = self.durable.session
        try:
            await asyncio.shield(
                budget.release(s.tenant, self.session_id, s.cost_usd, s.token_count)
            )
        except Exception as e:  # the ledger reconciles at the session's next reserve
            log.warning("session %s: could not release its reservation (%s)", self.session_id, e)

    def _vet(self, call_id: str) -> list[Event]:
        session = self.state.session
        call = session.tool_calls[call_id]
        spec = self.deps.tools.get(call.tool)
        if spec is None or call.tool not in offered_tools(self.state):
            return [ToolCallRejected(call_id=call_id, reason=f"unknown tool: {call.tool}")]
        try:
            raw = json.loads(call.input) if isinstance(call.input, str) else None
            kwargs = validate_input(spec, raw)
        except (ToolInputError, json.JSONDecodeError) as e:
            return [ToolCallRejected(call_id=call_id, reason=str(e))]
        if spec.risk == "exec" and self.deps.sandbox is None and self.deps.sandbox_state != "off":
            # Fail closed: what would run confined does not run at all.
            why = self.deps.sandbox_state.removeprefix("unavailable: ")
            return [
                ToolCallRejected(
                    call_id=call_id,
                    reason=f"refused: {call.tool} is disabled "
                    f"because the sandbox cannot start here: {why}",
                )
            ]
        # Code the text cannot be read for runs confined without a prompt when the
        # sandbox is on; with it off, it needs review.
        vetting = vet(
            spec, kwargs, self.deps.policy, self.workspace, sandboxed=self.deps.sandbox is not None
        )
        if self._workspace_lost and vetting.verdict == "allow":
            vetting = msgspec.structs.replace(vetting, verdict="ask", reason=self._workspace_lost)
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
        elif vetting.verdict == "ask" and not call.edited_from:
            # (An input a reviewer edited is what they approved: not asked about again.)
            events.append(
                ReviewRequested(
                    call_id=call_id,
                    reason=vetting.reason,
                    call_hash=call_hash(call.tool, call.input),
                )
            )
        return events

    async def _run_tool(self, decision: RunTool) -> None:
        call = self.state.session.tool_calls[decision.call_id]
        spec = self.deps.tools[call.tool]
        key = f"{self.session_id}:{decision.call_id}"
        step, left = self._time_left()
        await self.commit(
            [
                ToolCallStarted(
                    call_id=decision.call_id, idempotency_key=key, attempt=decision.attempt
                )
            ]
        )
        crash_point("after_tool_started")
        if self._workspace_lost:  # approved: go on in a new, empty workspace
            self.workspace.mkdir(parents=True, exist_ok=True)
            self._workspace_lost = ""
        kwargs = validate_input(spec, json.loads(call.input) if isinstance(call.input, str) else {})
        context = ToolContext(
            session_id=self.session_id,
            call_id=decision.call_id,
            idempotency_key=key,
            workspace=self.workspace,
            home=self.deps.home,
            sandbox=self.deps.sandbox,
            network=self.deps.network_for(self.state.session.agent_type),
            keep_output=self._keep_output,
            outbox=self.deps.outbox,
            recorded_output=self._recorded_output,
            page_chars=self._result_chars(),
        )
        started = time.perf_counter()
        # run_tool never abandons the call: on timeout or cancel it stops it, or waits
        # for it, and says when its outcome is unknown.
        outcome = await run_tool(
            spec,
            kwargs,
            context,
            timeout_s=max(min(step, left), 0.0),
            grace_s=self.deps.effect_grace_s,
            stop=self.stop,
        )
        if self.stop.is_set():
            crash_point("in_cancel")
        crash_point("after_tool_ran")
        latency_ms = (time.perf_counter() - started) * 1000
        events: list[Event]
        cancelled = self.state.session.cancel_requested
        if outcome.in_doubt and not spec.idempotent and not cancelled:
            events = [
                ReviewRequested(
                    call_id=decision.call_id,
                    reason=f"in doubt: {call.tool} {outcome.output}; approve to run it again, "
                    "deny to skip it",
                    in_doubt=True,
                    call_hash=call_hash(call.tool, call.input),
                )
            ]
        elif outcome.in_doubt:  # nobody reviews a cancelled session's call: say so instead
            events = [
                ToolCallFailed(
                    call_id=decision.call_id,
                    error=f"in doubt: {outcome.output}",
                    latency_ms=latency_ms,
                )
            ]
        elif outcome.timed_out and outcome.is_error:  # stopped, or failed late
            events = [
                ToolCallFailed(
                    call_id=decision.call_id, error=outcome.output, latency_ms=latency_ms
                )
            ]
        else:
            # Bounded at ingestion: the model sees head and tail of a result over its share
            # of the window; the event keeps the whole output (a blob when large) to page.
            shown = excerpt(outcome.output, self._result_chars(), decision.call_id)
            events = [
                ToolCallCompleted(
                    call_id=decision.call_id,
                    output=outcome.output,
                    is_error=outcome.is_error,
                    latency_ms=latency_ms,
                    excerpt=shown if shown is not outcome.output else "",
                )
            ]
        if outcome.timed_out and not outcome.in_doubt and not cancelled:
            events += self._timeout_failure("tool call", step, left)
        if outcome.timed_out or not spec.idempotent:
            # Record at once what happened: a crash now must not leave it in doubt.
            await self.commit(events)
        else:
            self.stage(events)


def command_events(state: SessionState, command: Command) -> list[Event]:
    """The events an operator's command records; a one-line FleetlogError if it cannot apply.

    Idempotent: a decision already recorded the same way records nothing, so a
    command retried after a lost answer (its host died) succeeds again.
    """
    sid = state.session_id
    if command.kind == "cancel":
        if state.cancel_requested or state.status == "cancelled":
            return []
        if state.terminal:
            raise FleetlogError(f"session {sid} is already {state.status}")
        return [CancelRequested(by=command.reviewer, note=command.note)]
    call = state.tool_calls.get(command.call_id)
    if call is None:
        raise FleetlogError(f"session {sid} has no tool call {command.call_id}")
    digest = call_hash(call.tool, call.input)
    # A call a reviewer edited is still the one the model asked for: a retried decision
    # may carry the hash of either input.
    seen = {digest, call_hash(call.tool, call.edited_from)} if call.edited_from else {digest}
    if command.call_hash and command.call_hash not in seen:
        raise FleetlogError(
            f"tool call {command.call_id} is {call.tool} with hash {digest}, "
            f"not {command.call_hash}: the call is not the one you saw; look again"
        )
    edited = _edited_input(command, call) if command.edited_input else ""
    if call.decision == command.kind:
        return []
    if state.terminal:
        raise FleetlogError(f"session {sid} is already {state.status}")
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
            call_hash=digest,
            edited_input=edited,
        )
    ]
    if ends:
        events.append(SessionFailed(error=denial_error(call.in_doubt, command.note or call.tool)))
    return events


def _edited_input(command: Command, call: ToolCallState) -> str:
    """The reviewer's input for the call as the log keeps it; "" when it is the model's own.

    A JSON object, or a one-line FleetlogError. Whether the tool accepts it and the
    policy allows it is checked when the call is vetted again, where the tools are.
    """
    if command.kind != "approve":
        raise FleetlogError("only an approval can change a call's input")
    if call.in_doubt:
        raise FleetlogError(
            f"tool call {command.call_id} may have run before a crash: approve it as it was "
            "or deny it (its input cannot be changed)"
        )
    try:
        value = json.loads(command.edited_input)
    except json.JSONDecodeError as e:
        raise FleetlogError(f"the edited input is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise FleetlogError("the edited input must be a JSON object (the tool's arguments)")
    original = json.loads(call.input) if isinstance(call.input, str) else None
    if value == original:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


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
