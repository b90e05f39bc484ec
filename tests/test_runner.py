"""The effect runner end to end, through ``HostCore`` (no Ray), asserted on the log it writes.

Sessions run on a real host over real ``FileLog`` partitions and real tools; the
model is either the offline ``ScriptedModel`` or the real ``anthropic`` SDK talking
to ``FakeAnthropic`` over loopback (which answers 400 to any request that splits
a tool_use from its tool_result, so a session completed through it proves the
pairing held). Every test reads the log back and checks the exact events.

Crashes are simulated the way a dead host leaves them: the events it had made
durable, and nothing after. Those are appended with ``FileLog`` directly, then a
fresh ``HostCore`` on the same home picks the sessions up.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import wait_until
from fake_anthropic import FakeAnthropic, scripted_responder, validate_request

from fleetlog.actors.context import SUMMARY_SYSTEM
from fleetlog.actors.fleet import session_event
from fleetlog.actors.host import HostCore
from fleetlog.actors.ledger import Ledger, LocalBudget, budgets_of
from fleetlog.actors.runner import Command, LogPort
from fleetlog.actors.tools import BUILTIN_TOOLS, ToolContext
from fleetlog.config import Config, parse_config, parse_task, session_id_for
from fleetlog.events.filelog import FileLog
from fleetlog.events.log import AppendResult
from fleetlog.events.schema import (
    BlobRef,
    CancelRequested,
    ContextCompacted,
    Envelope,
    Event,
    LimitExceeded,
    ModelCallFailed,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionClaimed,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallRejected,
    ToolCallStarted,
    ToolCallVetted,
)
from fleetlog.events.state import call_hash, fold

E = TypeVar("E")

SETTLED = frozenset({"completed", "failed", "cancelled", "awaiting_review"})
CLAUDE = "claude-sonnet-4-6"
SCRIPTED_TOML = '[fleet]\nmodel = "scripted"\n'
EMAIL_PROMPT = "Summarize the workspace and email it to bob@example.com."
SECRET = "sk-ant-api03-" + "Zx9" * 12 + "-AbCdEfGh"

# Event-type runs that recur in the expected streams.
HEAD = ["SessionCreated", "SessionClaimed"]
STEP = ["ModelCallRequested", "ModelResponded"]
PROPOSED = ["ToolCallProposed"]
TOOL = ["ToolCallProposed", "ToolCallVetted", "ToolCallStarted", "ToolCallCompleted"]
REVIEW = ["ToolCallProposed", "ToolCallVetted", "ReviewRequested"]
FAIL = ["LimitExceeded", "SessionFailed"]


# --- helpers ---------------------------------------------------------------------------------


def claude_toml(*, context_window: int = 200_000, extra: str = "") -> str:
    """Sessions on a Claude id (so the real SDK is used), priced at $2 / $10 per MTok."""
    return (
        f'[fleet]\nmodel = "{CLAUDE}"\n\n'
        f'[models."{CLAUDE}"]\ncontext_window = {context_window}\n'
        "input_usd_per_mtok = 2.0\noutput_usd_per_mtok = 10.0\n" + extra
    )


class LedgerBudget(LocalBudget):
    """The BudgetPort the fleet's ledger actor provides, minus Ray: a real Ledger in-process."""

    def __init__(self, config: Config) -> None:
        super().__init__(Ledger(budgets_of(config)))


async def start_host(home: Path, config: Config, budget: LedgerBudget | None = None) -> HostCore:
    host = HostCore(0, 1, home, config, budget, lock_wait_s=5.0)
    await host.start()
    return host


async def stop_host(host: HostCore) -> None:
    """Close the host the way a dying one stops: tasks cancelled, partitions closed."""
    tasks = list(host.tasks.values())
    await host.aclose()
    await asyncio.gather(*tasks, return_exceptions=True)


async def submit(host: HostCore, task_id: str, prompt: str, **fields: Any) -> str:
    task = parse_task({"id": task_id, "prompt": prompt, **fields})
    sid = session_id_for(task_id)
    assert await host.create(sid, session_event(host.config, task, sid))
    return sid


async def settle(
    host: HostCore, *sids: str, timeout: float = 15.0, statuses: frozenset[str] = SETTLED
) -> dict[str, dict[str, Any]]:
    """Poll until every session is in ``statuses``, per the host and per its durable log.

    Its summary rows by id. The log is asked too, so a host reporting a state that is not
    durable yet would fail here (test_statuses_report_only_durable_state pins that).
    """
    deadline = time.monotonic() + timeout
    log = FileLog.open(host.home / "log" / "p0", readonly=True)
    try:
        while True:
            rows = {r["id"]: r for r in host.statuses()}
            if all(
                sid in rows
                and rows[sid]["status"] in statuses
                and fold(sid, log.read_stream(sid)).status == rows[sid]["status"]
                for sid in sids
            ):
                return rows
            if time.monotonic() > deadline:
                pytest.fail(f"sessions not settled within {timeout}s: {rows}")
            await asyncio.sleep(0.005)
    finally:
        log.close()


def read_stream(home: Path, sid: str) -> list[Envelope]:
    log = FileLog.open(home / "log" / "p0", readonly=True)
    try:
        return log.read_stream(sid)
    finally:
        log.close()


def kinds(envelopes: list[Envelope]) -> list[str]:
    return [type(e.event).__name__ for e in envelopes]


def events_of(envelopes: list[Envelope], cls: type[E]) -> list[E]:
    return [e.event for e in envelopes if isinstance(e.event, cls)]


def one(envelopes: list[Envelope], cls: type[E]) -> E:
    found = events_of(envelopes, cls)
    assert len(found) == 1, f"expected one {cls.__name__}, got {found}"
    return found[0]


def for_call(envelopes: list[Envelope], call_id: str) -> list[str]:
    return [kinds([e])[0] for e in envelopes if getattr(e.event, "call_id", None) == call_id]


def append_as_crashed_host(home: Path, sid: str, events: list[tuple[int | None, Event]]) -> None:
    """Append ``(epoch, event)`` pairs after the session's last event, as its owner would have."""
    log = FileLog.open(home / "log" / "p0")
    try:
        seq = log.last_seq(sid)
        for epoch, group in itertools.groupby(events, key=lambda pair: pair[0]):
            batch = [event for _, event in group]
            log.append(sid, batch, seq, epoch)
            seq += len(batch)
    finally:
        log.close()


def copy_prefix(home: Path, sid: str, envelopes: list[Envelope]) -> None:
    """Write a stream's first events into a fresh home: the log a host crash left behind."""
    append_as_crashed_host(home, sid, [(e.epoch, e.event) for e in envelopes])


def assert_limit(envelopes: list[Envelope], code: str) -> tuple[LimitExceeded, SessionFailed]:
    """The stream ends in LimitExceeded(code) + SessionFailed whose error carries the same code."""
    assert kinds(envelopes)[-2:] == FAIL
    limit = envelopes[-2].event
    failed = envelopes[-1].event
    assert isinstance(limit, LimitExceeded)
    assert isinstance(failed, SessionFailed)
    assert limit.code == code
    assert failed.error == f"{code}: {limit.detail}"
    return limit, failed


def assert_contiguous(envelopes: list[Envelope]) -> None:
    assert [e.seq for e in envelopes] == list(range(1, len(envelopes) + 1))
    epochs = [e.epoch for e in envelopes]
    assert epochs == sorted(epochs)


def all_accepted(fake: FakeAnthropic) -> bool:
    """Every request the fake got was one the Messages API accepts (pairing included)."""
    return all(validate_request(body) is None for body in fake.requests)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """FakeAnthropic playing the scripted agent, reached through the environment as users do."""
    with FakeAnthropic(responder=scripted_responder) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", server.api_key)
        yield server
    assert server.server_errors == []


# --- 1. every failure code the runner can reach ------------------------------------------------


def test_max_steps_exceeded(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(
            host, "long", "Do a long review, one part at a time.", limits={"max_steps": 3}
        )
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-long")
    assert kinds(envs) == HEAD + (STEP + TOOL) * 3 + FAIL
    limit, _ = assert_limit(envs, "MAX_STEPS_EXCEEDED")
    assert (limit.limit, limit.value) == (3, 3)
    assert row["status"] == "failed"
    assert row["error"] == "MAX_STEPS_EXCEEDED: 3 steps taken (limit 3)"
    assert row["step_count"] == 3
    assert_contiguous(envs)


def test_max_tokens_exceeded(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "big", "Run an expensive deep analysis of the codebase.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-big")
    # The breach is caught right after the reply that caused it: its tool call never runs.
    assert kinds(envs) == HEAD + STEP + PROPOSED + FAIL
    reply = one(envs, ModelResponded)
    used = reply.input_tokens + reply.output_tokens
    limit, _ = assert_limit(envs, "MAX_TOKENS_EXCEEDED")
    assert (limit.limit, limit.value) == (50_000, used)
    assert row["error"] == f"MAX_TOKENS_EXCEEDED: {used} tokens used (limit 50000)"
    assert row["status"] == "failed"
    assert row["token_count"] == used


def test_max_cost_exceeded(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(
            host,
            "pricey",
            "Run an expensive deep analysis of the codebase.",
            limits={"max_tokens": 10_000_000, "max_cost_usd": 0.5},
        )
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-pricey")
    assert kinds(envs) == HEAD + STEP + PROPOSED + FAIL
    reply = one(envs, ModelResponded)
    # The scripted model is priced at the defaults: $3 in, $15 out per MTok.
    assert reply.cost_usd == pytest.approx(
        (reply.input_tokens * 3.0 + reply.output_tokens * 15.0) / 1e6
    )
    limit, _ = assert_limit(envs, "MAX_COST_EXCEEDED")
    assert limit.limit == 0.5
    assert limit.value == pytest.approx(reply.cost_usd)
    assert row["error"] == f"MAX_COST_EXCEEDED: ${reply.cost_usd:.4f} spent (limit $0.5)"


class SteppedClock:
    """The runner's clock, moved by the test: wall time plus the seconds it was told to add.

    Timing tests then assert what a limit does, not how fast this machine is.
    """

    def __init__(self) -> None:
        self.added = 0.0

    def __call__(self) -> float:
        return time.time() + self.added


def test_total_timeout(tmp_path: Path, fake: FakeAnthropic) -> None:
    clock = SteppedClock()

    def slow_model(request: dict[str, Any]) -> Any:
        clock.added += 10.0  # the reply takes 10 s of the session's clock
        return scripted_responder(request)

    fake.responder = slow_model

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        host.deps.clock = clock
        sid = await submit(host, "slow", "Summarize the workspace.", limits={"total_timeout_s": 5})
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-slow")
    # Caught after the slow reply, before its tool call starts.
    assert kinds(envs) == HEAD + STEP + PROPOSED + FAIL
    limit, _ = assert_limit(envs, "TOTAL_TIMEOUT")
    assert limit.limit == 5
    assert limit.value >= 10  # measured from SessionCreated, on the session's clock
    assert row["status"] == "failed"
    assert row["error"].endswith("s (limit 5s)")
    assert len(fake.requests) == 1


def test_total_timeout_cuts_off_a_call_in_flight(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.delay_next(30.0)

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(
            host, "slow", "Summarize the workspace.", limits={"total_timeout_s": 2.0}
        )
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-slow")
    assert row["error"].startswith("TOTAL_TIMEOUT: ")
    assert kinds(envs) == [*HEAD, "ModelCallRequested", "ModelCallFailed", *FAIL]
    # Cut off in flight, when the 2 s were up, not after the 30 s reply.
    error = one(envs, ModelCallFailed).error
    assert error.startswith("timed out after ") and float(error[16:].rstrip("s")) <= 2.0


def test_step_timeout_on_a_slow_model_call(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.delay_next(3.0)

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(
            host, "stuck", "Summarize the workspace.", limits={"step_timeout_s": 0.4}
        )
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-stuck")
    assert kinds(envs) == [*HEAD, "ModelCallRequested", "ModelCallFailed", *FAIL]
    limit, _ = assert_limit(envs, "STEP_TIMEOUT")
    assert (limit.limit, limit.value) == (0.4, 0.4)
    assert row["error"] == "STEP_TIMEOUT: model call took longer than 0.4s"
    assert row["status"] == "failed"


def test_step_timeout_on_a_slow_tool_call(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.script(
        {
            "content": [
                {"type": "text", "text": "Waiting for the build."},
                {
                    "type": "tool_use",
                    "id": "toolu_sleep",
                    "name": "run_shell",
                    "input": {"command": "sleep 5"},
                },
            ]
        }
    )

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "nap", "Wait for the build.", limits={"step_timeout_s": 0.5})
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-nap")
    assert one(envs, ToolCallFailed).latency_ms < 5000  # the sleep was cut off, not waited out
    assert kinds(envs) == [
        *HEAD,
        *STEP,
        "ToolCallProposed",
        "ToolCallVetted",
        "ToolCallStarted",
        "ToolCallFailed",
        *FAIL,
    ]
    assert one(envs, ToolCallFailed).error == "timed out after 0.5s; the call was stopped"
    assert one(envs, ToolCallFailed).call_id == "toolu_sleep"
    assert_limit(envs, "STEP_TIMEOUT")
    assert row["error"] == "STEP_TIMEOUT: tool call took longer than 0.5s"


def test_loop_detected(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "poll", "Poll the workspace in a loop until the report shows up.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-poll")
    # Two identical list_dir calls run; the third identical proposal ends the session.
    assert kinds(envs) == HEAD + (STEP + TOOL) * 2 + STEP + PROPOSED + FAIL
    proposed = events_of(envs, ToolCallProposed)
    assert {(p.tool, p.input) for p in proposed} == {("list_dir", '{"path": "."}')}
    limit, _ = assert_limit(envs, "LOOP_DETECTED")
    assert (limit.limit, limit.value) == (3, 3)
    assert row["error"] == "LOOP_DETECTED: list_dir called 3 times in a row with the same input"


def test_budget_exhausted_is_fleet_wide_per_tenant(tmp_path: Path) -> None:
    config = parse_config(SCRIPTED_TOML + "\n[budgets.acme]\nmax_cost_usd = 1.0\n", source="t")
    budget = LedgerBudget(config)
    roomy = {"max_tokens": 10_000_000, "max_cost_usd": 100.0}

    async def scenario() -> dict[str, dict[str, Any]]:
        host = await start_host(tmp_path, config, budget)
        # One expensive call may cost ~$1.4 at worst, more than acme's whole $1 budget:
        # it is refused before it is made (a hard cap, not a limit checked afterwards)...
        spender = await submit(
            host, "a1", "Run an expensive deep analysis.", tenant="acme", limits=roomy
        )
        await settle(host, spender)
        # ...and the refusal holds nothing back: acme's cheap session runs, as does
        # another tenant's.
        late = await submit(host, "a2", "Summarize the workspace.", tenant="acme")
        other = await submit(host, "g1", "Summarize the workspace.", tenant="globex")
        rows = await settle(host, spender, late, other)
        await stop_host(host)
        return rows

    rows = asyncio.run(scenario())
    a1, a2, g1 = (read_stream(tmp_path, s) for s in ("s-a1", "s-a2", "s-g1"))
    assert kinds(a1) == [*HEAD, "ModelCallRequested", "ModelCallFailed", *FAIL]
    requested = one(a1, ModelCallRequested)
    assert requested.reserved_usd > 1.0  # the worst case: a bound above what it would bill
    assert requested.max_tokens == 4096
    assert_limit(a1, "BUDGET_EXHAUSTED")
    assert rows["s-a1"]["status"] == "failed"
    assert rows["s-a1"]["error"].startswith("BUDGET_EXHAUSTED: tenant acme has $0.0000 ")
    done = HEAD + (STEP + TOOL) * 3 + STEP + ["SessionCompleted"]
    assert kinds(a2) == done
    assert kinds(g1) == done
    for env in a2 + g1:  # a reservation always covers what the call cost
        if isinstance(env.event, ModelCallRequested):
            reply = next(
                e.event
                for e in a2 + g1
                if isinstance(e.event, ModelResponded)
                and e.event.request_id == env.event.request_id
            )
            assert env.event.reserved_usd >= reply.cost_usd
    assert rows["s-a2"]["status"] == rows["s-g1"]["status"] == "completed"
    # Every reservation was released: what is left is exactly what was spent.
    snapshot = budget.ledger.snapshot()
    assert snapshot["acme"]["spent_usd"] == pytest.approx(
        sum(r.cost_usd for r in events_of(a2, ModelResponded))
    )
    assert snapshot["acme"]["spent_usd"] <= 1.0
    assert snapshot["acme"]["reserved_usd"] == 0
    assert snapshot["acme"]["reserved_tokens"] == 0
    assert snapshot["globex"]["spent_usd"] == pytest.approx(
        sum(r.cost_usd for r in events_of(g1, ModelResponded))
    )
    assert snapshot["globex"]["reserved_usd"] == 0


@pytest.mark.parametrize("cut_off_by", ["step_timeout", "cancel"])
def test_a_model_call_cut_off_releases_its_budget_reservation(
    tmp_path: Path, fake: FakeAnthropic, cut_off_by: str
) -> None:
    config = parse_config(claude_toml(extra="\n[budgets.acme]\nmax_cost_usd = 10.0\n"), source="t")
    budget = LedgerBudget(config)
    fake.delay_next(3.0)

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, config, budget)
        limits = {"step_timeout_s": 0.3} if cut_off_by == "step_timeout" else {}
        sid = await submit(host, "cut", "Summarize the workspace.", tenant="acme", limits=limits)
        if cut_off_by == "cancel":
            deadline = time.monotonic() + 5
            while not fake.requests:  # the call is in flight at the server
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            assert await host.command(sid, Command("cancel"))
        rows = await settle(host, sid, statuses=frozenset({"failed", "cancelled"}))
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    assert row["status"] == ("failed" if cut_off_by == "step_timeout" else "cancelled")
    account = budget.ledger.snapshot()["acme"]
    assert (account["spent_usd"], account["spent_tokens"]) == (0, 0)
    assert (account["reserved_usd"], account["reserved_tokens"]) == (0, 0)


def test_context_exhausted(tmp_path: Path, fake: FakeAnthropic) -> None:
    prompt = "Summarize every file in the workspace, carefully. " * 8

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(context_window=50), source="t"))
        sid = await submit(host, "huge", prompt)
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-huge")
    # The task alone is over the window and nothing can be compacted: no call is made.
    assert kinds(envs) == HEAD + FAIL
    limit, _ = assert_limit(envs, "CONTEXT_EXHAUSTED")
    assert limit.limit == 50
    assert limit.value > 40
    assert row["error"] == (
        f"CONTEXT_EXHAUSTED: ~{int(limit.value)} tokens cannot be brought under the "
        "50-token window (the task and the last 4 turns are kept whole)"
    )
    assert fake.requests == []


def test_model_error_on_a_400_is_not_retried(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.fail_next(400, message="tools.0: something the API dislikes")

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "bad", "Summarize the workspace.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-bad")
    assert kinds(envs) == [*HEAD, "ModelCallRequested", "ModelCallFailed", "SessionFailed"]
    failed = one(envs, ModelCallFailed)
    assert (failed.step, failed.request_id) == (1, "s-bad:step-1")
    assert (failed.status_code, failed.retryable) == (400, False)
    assert row["error"] == (
        "MODEL_ERROR: model call failed: 400 invalid_request_error: "
        "tools.0: something the API dislikes"
    )
    assert len(fake.requests) == 1


def test_model_error_after_retries_run_out(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.fail_next(500, times=20)

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "down", "Summarize the workspace.")
        rows = await settle(host, sid, timeout=20)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-down")
    assert kinds(envs) == [
        *HEAD,
        "ModelCallRequested",
        *["ModelCallRetried"] * 4,
        "ModelCallFailed",
        "SessionFailed",
    ]
    retries = events_of(envs, ModelCallRetried)
    assert [(r.attempt, r.status_code) for r in retries] == [(n, 500) for n in range(1, 5)]
    failed = one(envs, ModelCallFailed)
    assert (failed.status_code, failed.retryable) == (500, True)
    assert row["error"] == (
        "MODEL_ERROR: model call failed (after 5 attempts): 500 api_error: Internal server error"
    )
    assert len(fake.requests) == 5


def test_denied_by_reviewer_ends_the_session(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "mail", EMAIL_PROMPT)
        waiting = (await settle(host, sid))[sid]
        before = kinds(read_stream(tmp_path, sid))
        call_id = waiting["reviews"][0]["call_id"]
        command = Command(
            kind="deny",
            call_id=call_id,
            note="not to customers",
            reviewer="carol",
            end_session=True,
        )
        assert await host.command(sid, command)
        done = (await settle(host, sid, statuses=frozenset({"failed"})))[sid]
        await stop_host(host)
        return waiting, done, before

    waiting, done, before = asyncio.run(scenario())
    assert waiting["status"] == "awaiting_review"
    [review] = waiting["reviews"]
    assert (review["tool"], review["in_doubt"]) == ("send_email", False)
    assert before == HEAD + (STEP + TOOL) * 2 + STEP + REVIEW
    envs = read_stream(tmp_path, "s-mail")
    assert kinds(envs) == [*before, "ReviewDecided", "SessionFailed"]
    decided = one(envs, ReviewDecided)
    assert decided == ReviewDecided(
        call_id=review["call_id"],
        approved=False,
        reviewer="carol",
        note="not to customers",
        end_session=True,
        call_hash=one(envs, ReviewRequested).call_hash,
    )
    assert done["status"] == "failed"
    assert done["error"] == "DENIED_BY_REVIEWER: not to customers"
    assert "ToolCallStarted" not in for_call(envs, review["call_id"])
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())


# --- 2. retries are events; usage and cost per call ----------------------------------------------


def test_retries_are_logged_then_usage_and_cost_recorded(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    fake.fail_next(429, retry_after=0.6)
    fake.fail_next(529)
    fake.script(
        {
            "content": "All done.",
            "usage": {
                "input_tokens": 1000,
                "output_tokens": 200,
                "cache_read_input_tokens": 500,
                "cache_creation_input_tokens": 100,
            },
        }
    )

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "busy", "Say hello.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-busy")
    assert kinds(envs) == [
        *HEAD,
        "ModelCallRequested",
        "ModelCallRetried",
        "ModelCallRetried",
        "ModelResponded",
        "SessionCompleted",
    ]
    first, second = events_of(envs, ModelCallRetried)
    assert (first.attempt, first.status_code, first.request_id) == (1, 429, "s-busy:step-1")
    assert first.error.startswith("429 rate_limit_error: ")
    assert first.delay_ms == pytest.approx(600)  # retry-after beats the shorter back-off
    assert (second.attempt, second.status_code) == (2, 529)
    assert second.error == "529 overloaded_error: Overloaded"
    assert 500 <= second.delay_ms <= 1000
    reply = one(envs, ModelResponded)
    assert (reply.step, reply.request_id, reply.model) == (1, "s-busy:step-1", CLAUDE)
    assert (reply.input_tokens, reply.output_tokens) == (1000, 200)
    assert (reply.cache_read_tokens, reply.cache_write_tokens) == (500, 100)
    assert json.loads(str(reply.content)) == [{"type": "text", "text": "All done."}]
    # [models."claude-sonnet-4-6"]: $2 in, $10 out; cache reads 0.1x and writes 1.25x input.
    expected = (1000 * 2.0 + 500 * 0.1 * 2.0 + 100 * 1.25 * 2.0 + 200 * 10.0) / 1e6
    assert reply.cost_usd == pytest.approx(expected)
    assert one(envs, SessionCompleted).result == "All done."
    assert row["status"] == "completed"
    assert row["cost_usd"] == pytest.approx(expected)
    assert row["token_count"] == 1200
    assert len(fake.requests) == 3


def test_usage_and_cost_are_recorded_for_every_call(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "acct", "Summarize the workspace.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-acct")
    replies = events_of(envs, ModelResponded)
    assert [r.step for r in replies] == [1, 2, 3, 4]
    assert [r.request_id for r in replies] == [f"s-acct:step-{n}" for n in range(1, 5)]
    # The fake reports usage as the real API does; each call is priced on its own.
    for reply, body in zip(replies, fake.requests, strict=True):
        assert reply.input_tokens > 0
        assert reply.output_tokens > 0
        assert reply.cost_usd == pytest.approx(
            (reply.input_tokens * 2.0 + reply.output_tokens * 10.0) / 1e6
        )
        assert body["model"] == CLAUDE
    assert row["cost_usd"] == pytest.approx(sum(r.cost_usd for r in replies), abs=1e-6)
    assert row["token_count"] == sum(r.input_tokens + r.output_tokens for r in replies)
    assert row["status"] == "completed"
    assert all_accepted(fake)


# --- 3. tool handling ----------------------------------------------------------------------------


def test_unknown_invalid_and_denied_calls_get_error_results_and_never_run(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    toml = claude_toml(
        extra='\n[policy]\ndeny = ["read_file(private/**)"]\nallow = ["read_file", "list_dir"]\n'
    )
    workspace = tmp_path / "workspaces" / "s-tools"
    workspace.mkdir(parents=True)
    (workspace / ".env").write_text("PLAIN_MARKER_THAT_MUST_NOT_LEAK\n")
    (workspace / "private").mkdir()
    (workspace / "private" / "plan.txt").write_text("ANOTHER_MARKER_THAT_MUST_NOT_LEAK\n")
    calls = [
        ("toolu_unknown", "fly_to_moon", {"speed": "fast"}),
        ("toolu_unlisted", "http_get", {"url": "http://127.0.0.1:9/"}),
        ("toolu_invalid", "read_file", {"file": 3}),
        ("toolu_env", "read_file", {"path": ".env"}),
        ("toolu_private", "read_file", {"path": "private/plan.txt"}),
        ("toolu_ok", "list_dir", {"path": "."}),
    ]
    fake.script(
        {
            "content": [
                {"type": "text", "text": "Let me try a few things at once."},
                *({"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls),
            ]
        },
        {"content": "Done with what I was allowed to do."},
    )

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(toml, source="t"))
        sid = await submit(host, "tools", "Inspect the workspace.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-tools")
    assert row["status"] == "completed"
    assert one(envs, SessionCompleted).result == "Done with what I was allowed to do."
    assert for_call(envs, "toolu_unknown") == ["ToolCallProposed", "ToolCallRejected"]
    assert for_call(envs, "toolu_unlisted") == ["ToolCallProposed", "ToolCallRejected"]
    assert for_call(envs, "toolu_invalid") == ["ToolCallProposed", "ToolCallRejected"]
    denied = ["ToolCallProposed", "ToolCallVetted", "ToolCallRejected"]
    assert for_call(envs, "toolu_env") == denied
    assert for_call(envs, "toolu_private") == denied
    assert for_call(envs, "toolu_ok") == TOOL
    rejected = {r.call_id: r.reason for r in events_of(envs, ToolCallRejected)}
    assert rejected["toolu_unknown"] == "unknown tool: fly_to_moon"
    assert rejected["toolu_unlisted"] == "unknown tool: http_get"
    assert rejected["toolu_invalid"] == (
        "invalid input for read_file: Object contains unknown field `file`"
    )
    vetted = {v.call_id: v for v in events_of(envs, ToolCallVetted)}
    # A credential file is refused by the built-in check, before any policy rule...
    assert (vetted["toolu_env"].verdict, vetted["toolu_env"].rule) == (
        "deny",
        "builtin:credentials",
    )
    assert rejected["toolu_env"] == "refused: '.env' is a credential file"
    # ...and a policy deny rule wins over the allow rule that also matches.
    assert (vetted["toolu_private"].verdict, vetted["toolu_private"].rule) == (
        "deny",
        "read_file(private/**)",
    )
    assert rejected["toolu_private"] == ("refused: denied by policy rule 'read_file(private/**)'")
    assert vetted["toolu_ok"].verdict == "allow"
    assert [e.call_id for e in events_of(envs, ToolCallStarted)] == ["toolu_ok"]
    logged = json.dumps([str(e) for e in envs])
    assert "MARKER_THAT_MUST_NOT_LEAK" not in logged

    # The model got one tool_result per tool_use, in order, in the next user message;
    # the fake would have answered 400 to anything else.
    assert len(fake.requests) == 2
    assert all_accepted(fake)
    results = fake.requests[1]["messages"][-1]["content"]
    assert [b["tool_use_id"] for b in results] == [c[0] for c in calls]
    assert [b.get("is_error", False) for b in results] == [True] * 5 + [False]
    by_id = {b["tool_use_id"]: b["content"] for b in results}
    for call_id, reason in rejected.items():
        assert by_id[call_id] == reason
    assert ".env" in by_id["toolu_ok"]


def test_bad_input_then_recovery_completes_through_the_api(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "oops", "Summarize the config; expect bad input handling.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-oops")
    assert kinds(envs) == (
        HEAD + STEP + ["ToolCallProposed", "ToolCallRejected"] + (STEP + TOOL) * 3 + STEP
    ) + ["SessionCompleted"]
    assert row["status"] == "completed"
    assert all_accepted(fake)


# --- context management ------------------------------------------------------------------------

COMPACT_PROMPT = 'Review the "notes" files, one by one.\nBe brief — très bref.'


def _notes_responder(
    turns: int, say: str = "Reading the next note."
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """An agent that reads n0.txt .. n{turns-1}.txt, one call a turn, then answers.

    It counts its own replies (not the conversation, which compaction shrinks); a
    summary request (the compaction's, no tools) gets a short summary.
    """
    made = [0]

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("system") == SUMMARY_SYSTEM:
            assert "tools" not in body  # a summary request offers no tools
            return {"content": f"Read notes n0 to n{made[0] - 2}; each was lorem ipsum."}
        n = made[0]
        made[0] += 1
        if n >= turns:
            return {"content": "Read them all."}
        return {
            "content": [
                {"type": "text", "text": say},
                {
                    "type": "tool_use",
                    "id": f"toolu_r{n}",
                    "name": "read_file",
                    "input": {"path": f"n{n}.txt"},
                },
            ]
        }

    return respond


def _compaction_run(
    home: Path, fake: FakeAnthropic, window: int, *, note_words: int = 60, say: str = "Next."
) -> tuple[dict[str, Any], list[Envelope]]:
    """Six read_file turns under a small window, keeping one recent turn."""
    workspace = home / "workspaces" / "s-notes"
    workspace.mkdir(parents=True)
    for n in range(6):
        (workspace / f"n{n}.txt").write_text(f"note {n}: " + "lorem ipsum " * note_words)
    fake.responder = _notes_responder(6, say)
    toml = claude_toml(context_window=window, extra="\n[context]\nkeep_recent_turns = 1\n")

    async def scenario() -> dict[str, Any]:
        host = await start_host(home, parse_config(toml, source="t"))
        sid = await submit(host, "notes", COMPACT_PROMPT)
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    return row, read_stream(home, "s-notes")


def _assert_task_first_and_pairs_whole(fake: FakeAnthropic) -> None:
    """Every request the fake got was valid (pairing included) and opens with the task."""
    assert all_accepted(fake)
    for body in fake.requests:
        if body.get("system") == SUMMARY_SYSTEM:
            continue
        head = body["messages"][0]["content"]
        text = head if isinstance(head, str) else head[0]["text"]
        assert text == COMPACT_PROMPT


def test_compaction_clears_the_oldest_tool_results_first(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    row, envs = _compaction_run(tmp_path, fake, window=2400, note_words=100)
    assert row["status"] == "completed"
    compactions = events_of(envs, ContextCompacted)
    assert compactions and {c.stage for c in compactions} == {"clear_tool_results"}
    first = compactions[0]
    # The oldest first, all but the kept recent turn's (the target, half the window, is
    # out of reach with one turn kept: it stops under compact_at instead).
    assert first.cleared == ["toolu_r0", "toolu_r1", "toolu_r2", "toolu_r3"]
    assert first.tokens_before > 0.8 * 2400 > first.tokens_after
    _assert_task_first_and_pairs_whole(fake)
    # The cleared result is still there, answering its tool_use, with a placeholder that
    # names what it was and how to read it again; read_output is offered from then on.
    last = fake.requests[-1]
    results = {
        b["tool_use_id"]: b["content"]
        for m in last["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    }
    assert results["toolu_r0"].startswith("[cleared to save context] read_file(")
    assert 'read_output(call_id="toolu_r0")' in results["toolu_r0"]
    assert "lorem ipsum" in results["toolu_r5"]  # the recent turn is kept whole
    assert "read_output" in {t["name"] for t in last["tools"]}


def test_compaction_summarizes_older_turns_with_a_model_call(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    # Small results (nothing worth clearing) and long replies: only a summary helps.
    chatter = "I will now read the next note and compare it with the ones before. " * 6
    row, envs = _compaction_run(tmp_path, fake, window=1600, note_words=2, say=chatter)
    assert row["status"] == "completed"
    summaries = [c for c in events_of(envs, ContextCompacted) if c.stage == "summarize"]
    assert summaries
    first = summaries[0]
    assert first.first_message == 1 and first.dropped_messages % 2 == 0
    assert first.tokens_before > 0.8 * 1600 > first.tokens_after
    assert str(first.summary).startswith("Read notes n0 to")
    # The summary call is on record as a model call: its tokens and cost count.
    calls = [r for r in events_of(envs, ModelResponded) if r.purpose == "compaction"]
    assert [c.request_id for c in calls] == [c.request_id for c in summaries]
    assert all(c.input_tokens > 0 and c.cost_usd > 0 for c in calls)
    spent = sum(r.input_tokens + r.output_tokens for r in events_of(envs, ModelResponded))
    assert row["token_count"] == spent
    summary_requests = [b for b in fake.requests if b.get("system") == SUMMARY_SYSTEM]
    assert len(summary_requests) == len(summaries)
    assert COMPACT_PROMPT.splitlines()[0] in summary_requests[0]["messages"][0]["content"]
    _assert_task_first_and_pairs_whole(fake)
    after = [b for b in fake.requests if b.get("system") != SUMMARY_SYSTEM][-1]
    head = after["messages"][0]["content"]
    assert head[1]["text"].startswith("[Earlier steps, compacted]\nRead notes n0 to")
    assert after["messages"][1]["role"] == "assistant"


# --- 4. the approval flow ------------------------------------------------------------------------


def test_approved_email_is_delivered_exactly_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], int]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "mail", EMAIL_PROMPT)
        waiting = (await settle(host, sid))[sid]
        call_id = waiting["reviews"][0]["call_id"]
        # A double click: the second approval finds nothing awaiting review and is a no-op.
        assert await host.command(sid, Command("approve", call_id, note="ok", reviewer="alice"))
        assert await host.command(sid, Command("approve", call_id, reviewer="alice"))
        done = (await settle(host, sid, statuses=frozenset({"completed"})))[sid]
        count = len(read_stream(tmp_path, sid))
        # And one after the session has ended changes nothing either.
        assert await host.command(sid, Command("approve", call_id, reviewer="alice"))
        await settle(host, sid)
        await stop_host(host)
        return waiting, done, count

    waiting, done, count = asyncio.run(scenario())
    assert waiting["status"] == "awaiting_review"
    call_id = waiting["reviews"][0]["call_id"]
    envs = read_stream(tmp_path, "s-mail")
    assert len(envs) == count
    assert kinds(envs) == (
        HEAD
        + (STEP + TOOL) * 2
        + STEP
        + REVIEW
        + ["ReviewDecided", "ToolCallStarted", "ToolCallCompleted"]
        + STEP
        + ["SessionCompleted"]
    )
    [vetted] = [v for v in events_of(envs, ToolCallVetted) if v.call_id == call_id]
    assert (vetted.verdict, vetted.risk, vetted.rule) == ("ask", "external", "send_email")
    [proposed] = [p for p in events_of(envs, ToolCallProposed) if p.call_id == call_id]
    digest = call_hash(proposed.tool, proposed.input)
    assert one(envs, ReviewRequested) == ReviewRequested(
        call_id=call_id, reason=vetted.reason, in_doubt=False, call_hash=digest
    )
    assert one(envs, ReviewDecided) == ReviewDecided(
        call_id=call_id, approved=True, reviewer="alice", note="ok", call_hash=digest
    )
    started = [e for e in events_of(envs, ToolCallStarted) if e.call_id == call_id]
    assert [(s.attempt, s.idempotency_key) for s in started] == [(1, f"s-mail:{call_id}")]
    completed = [e for e in events_of(envs, ToolCallCompleted) if e.call_id == call_id]
    assert len(completed) == 1
    assert str(completed[0].output).startswith("delivered to bob@example.com (")
    outbox = sorted((tmp_path / "outbox").iterdir())
    assert [p.name for p in outbox] == [f"s-mail-{call_id}.eml"]
    assert "To: bob@example.com" in outbox[0].read_text()
    assert done["status"] == "completed"
    assert done["reviews"] == []
    assert "I emailed the summary to bob@example.com" in str(one(envs, SessionCompleted).result)


def test_denied_email_is_reported_to_the_model_and_the_session_goes_on(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "mail", EMAIL_PROMPT)
        waiting = (await settle(host, sid))[sid]
        call_id = waiting["reviews"][0]["call_id"]
        deny = Command("deny", call_id, note="no external mail", reviewer="bob")
        assert await host.command(sid, deny)
        done = (await settle(host, sid, statuses=frozenset({"completed", "failed"})))[sid]
        await stop_host(host)
        return call_id, done

    call_id, done = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-mail")
    assert kinds(envs) == (
        HEAD + (STEP + TOOL) * 2 + STEP + REVIEW + ["ReviewDecided"] + STEP + ["SessionCompleted"]
    )
    assert one(envs, ReviewDecided) == ReviewDecided(
        call_id=call_id,
        approved=False,
        reviewer="bob",
        note="no external mail",
        call_hash=one(envs, ReviewRequested).call_hash,
    )
    assert for_call(envs, call_id) == [*REVIEW, "ReviewDecided"]
    told = fake.requests[-1]["messages"][-1]["content"]
    assert told == [
        {
            "type": "tool_result",
            "tool_use_id": call_id,
            "content": "denied by reviewer bob: no external mail",
            "is_error": True,
        }
    ]
    assert done["status"] == "completed"
    assert done["error"] == ""
    assert one(envs, SessionCompleted).result == (
        "I did not send the email: denied by reviewer bob: no external mail"
    )
    assert not (tmp_path / "outbox").exists()
    assert all_accepted(fake)


def test_cancel_while_awaiting_review(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "mail", EMAIL_PROMPT)
        waiting = (await settle(host, sid))[sid]
        assert await host.command(sid, Command("cancel", note="changed my mind", reviewer="dan"))
        done = (await settle(host, sid, statuses=frozenset({"cancelled"})))[sid]
        await stop_host(host)
        return waiting["reviews"][0]["call_id"], done

    call_id, done = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-mail")
    assert kinds(envs) == (
        HEAD
        + (STEP + TOOL) * 2
        + STEP
        + REVIEW
        + ["CancelRequested", "ToolCallRejected", "SessionCancelled"]
    )
    assert one(envs, CancelRequested) == CancelRequested(by="dan", note="changed my mind")
    # The call waiting for review never runs, and says so: nothing is left pending.
    assert one(envs, ToolCallRejected).reason == "not run: the session was cancelled"
    assert fold("s-mail", envs).tool_calls[call_id].status == "denied"
    assert done["status"] == "cancelled"
    assert done["error"] == ""
    assert done["reviews"] == []  # nobody can decide a call of an ended session
    assert "ToolCallStarted" not in for_call(envs, call_id)
    assert not (tmp_path / "outbox").exists()


# --- 5. crash recovery, without Ray ------------------------------------------------------------


def _email_left_in_doubt(home: Path, *, delivered: bool) -> str:
    """An email session whose owner approved ``send_email``, started it, and died; its call id.

    Whether the email went out before the crash is exactly what the log cannot tell;
    ``delivered`` decides it, by running the real tool as the dead host would have.
    """
    config = parse_config(SCRIPTED_TOML, source="t")

    async def until_review() -> str:
        host = await start_host(home, config)
        sid = await submit(host, "mail", EMAIL_PROMPT)
        call_id: str = (await settle(host, sid))[sid]["reviews"][0]["call_id"]
        await stop_host(host)
        return call_id

    call_id = asyncio.run(until_review())
    key = f"s-mail:{call_id}"
    append_as_crashed_host(
        home,
        "s-mail",
        [
            (1, ReviewDecided(call_id=call_id, approved=True, reviewer="alice")),
            (1, ToolCallStarted(call_id=call_id, idempotency_key=key, attempt=1)),
        ],
    )
    if delivered:
        [proposed] = [
            p
            for p in events_of(read_stream(home, "s-mail"), ToolCallProposed)
            if p.call_id == call_id
        ]
        context = ToolContext("s-mail", call_id, key, home / "workspaces" / "s-mail", home)
        BUILTIN_TOOLS["send_email"].fn(context, **json.loads(str(proposed.input)))
    return call_id


def _decide_after_restart(home: Path, command: Command) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start a fresh host on ``home``; once s-mail awaits review, send ``command``."""

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        host = await start_host(home, parse_config(SCRIPTED_TOML, source="t"))
        waiting = (await settle(host, "s-mail"))["s-mail"]
        assert await host.command("s-mail", command)
        done = await settle(host, "s-mail", statuses=frozenset({"completed", "failed"}))
        await stop_host(host)
        return waiting, done["s-mail"]

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("decision", "delivered_before_crash"),
    [("approve", False), ("approve", True), ("deny", False)],
)
def test_in_doubt_email_goes_to_a_human_and_runs_at_most_once(
    tmp_path: Path, decision: str, delivered_before_crash: bool
) -> None:
    call_id = _email_left_in_doubt(tmp_path, delivered=delivered_before_crash)
    key = f"s-mail:{call_id}"
    before = len(read_stream(tmp_path, "s-mail"))

    waiting, done = _decide_after_restart(tmp_path, Command(decision, call_id, reviewer="erin"))
    assert waiting["status"] == "awaiting_review"
    assert waiting["reviews"] == [
        {
            "call_id": call_id,
            "tool": "send_email",
            "reason": "in doubt: send_email was started but not confirmed before a restart; "
            "approve to run it again, deny to skip it",
            "in_doubt": True,
        }
    ]
    envs = read_stream(tmp_path, "s-mail")
    tail = envs[before:]
    claimed = tail[0].event
    assert isinstance(claimed, SessionClaimed)
    assert claimed.epoch == 2
    asked = tail[1].event
    assert isinstance(asked, ReviewRequested)
    assert asked.in_doubt
    outbox = list((tmp_path / "outbox").glob("*.eml")) if (tmp_path / "outbox").exists() else []
    if decision == "approve":
        assert kinds(tail) == [
            "SessionClaimed",
            "ReviewRequested",
            "ReviewDecided",
            "ToolCallStarted",
            "ToolCallCompleted",
            *STEP,
            "SessionCompleted",
        ]
        started = [e for e in events_of(envs, ToolCallStarted) if e.call_id == call_id]
        assert [(s.attempt, s.idempotency_key) for s in started] == [(1, key), (2, key)]
        output = str(one(tail, ToolCallCompleted).output)
        expected = "already delivered: " if delivered_before_crash else "delivered to "
        assert output.startswith(expected)
        assert [p.name for p in outbox] == [f"s-mail-{call_id}.eml"]
    else:
        assert kinds(tail) == [
            "SessionClaimed",
            "ReviewRequested",
            "ReviewDecided",
            *STEP,
            "SessionCompleted",
        ]
        assert outbox == []
        assert "I did not send the email: denied by reviewer erin" in str(
            one(tail, SessionCompleted).result
        )
    assert done["status"] == "completed"
    assert done["restarts"] == 1
    assert_contiguous(envs)


def test_rejecting_an_in_doubt_call_and_ending_fails_with_tool_in_doubt_rejected(
    tmp_path: Path,
) -> None:
    call_id = _email_left_in_doubt(tmp_path, delivered=False)
    deny = Command("deny", call_id, note="cannot tell", reviewer="erin", end_session=True)
    _, done = _decide_after_restart(tmp_path, deny)
    envs = read_stream(tmp_path, "s-mail")
    assert kinds(envs)[-2:] == ["ReviewDecided", "SessionFailed"]
    assert done["status"] == "failed"
    assert done["error"].startswith("TOOL_IN_DOUBT_REJECTED: ")


def _reference_run(home: Path, prompt: str, files: dict[str, str]) -> list[Envelope]:
    """A whole run of a scripted session ``s-job``, to cut a "crashed" prefix from."""
    workspace = home / "workspaces" / "s-job"
    workspace.mkdir(parents=True)
    for name, text in files.items():
        (workspace / name).write_text(text)

    async def scenario() -> None:
        host = await start_host(home, parse_config(SCRIPTED_TOML, source="t"))
        await submit(host, "job", prompt)
        await settle(host, "s-job", statuses=frozenset({"completed"}))
        await stop_host(host)

    asyncio.run(scenario())
    return read_stream(home, "s-job")


def _resume(home: Path, files: dict[str, str]) -> dict[str, Any]:
    workspace = home / "workspaces" / "s-job"
    workspace.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (workspace / name).write_text(text)

    async def scenario() -> dict[str, Any]:
        host = await start_host(home, parse_config(SCRIPTED_TOML, source="t"))
        rows = await settle(host, "s-job", statuses=frozenset({"completed", "failed"}))
        await stop_host(host)
        return rows["s-job"]

    return asyncio.run(scenario())


def test_idempotent_tool_left_started_is_run_again_with_the_same_key(tmp_path: Path) -> None:
    files = {"readme.txt": "hello from the readme\n"}
    reference = _reference_run(tmp_path / "a", "Summarize the workspace.", files)
    read = next(p for p in events_of(reference, ToolCallProposed) if p.tool == "read_file")
    cut = next(
        i
        for i, e in enumerate(reference)
        if isinstance(e.event, ToolCallStarted) and e.event.call_id == read.call_id
    )
    home = tmp_path / "b"
    copy_prefix(home, "s-job", reference[: cut + 1])

    row = _resume(home, files)
    envs = read_stream(home, "s-job")
    assert row["status"] == "completed"
    assert kinds(envs) == [
        *kinds(reference[: cut + 1]),
        "SessionClaimed",
        "ToolCallStarted",
        *kinds(reference[cut + 1 :]),
    ]
    started = [e for e in events_of(envs, ToolCallStarted) if e.call_id == read.call_id]
    key = f"s-job:{read.call_id}"
    assert [(s.attempt, s.idempotency_key) for s in started] == [(1, key), (2, key)]
    completed = [e for e in events_of(envs, ToolCallCompleted) if e.call_id == read.call_id]
    assert [c.output for c in completed] == ["hello from the readme\n"]
    assert one(envs, SessionCompleted).result == one(reference, SessionCompleted).result
    assert [c.epoch for c in events_of(envs, SessionClaimed)] == [1, 2]
    assert_contiguous(envs)


def test_model_call_without_a_response_is_made_again_once(tmp_path: Path) -> None:
    reference = _reference_run(tmp_path / "a", "Summarize the workspace.", {})
    cut = next(
        i
        for i, e in enumerate(reference)
        if isinstance(e.event, ModelCallRequested) and e.event.step == 2
    )
    home = tmp_path / "b"
    copy_prefix(home, "s-job", reference[: cut + 1])

    row = _resume(home, {})
    envs = read_stream(home, "s-job")
    assert row["status"] == "completed"
    # The call is made again under the same request id: no second ModelCallRequested.
    assert kinds(envs) == [
        *kinds(reference[: cut + 1]),
        "SessionClaimed",
        *kinds(reference[cut + 1 :]),
    ]
    requested = [(r.step, r.request_id) for r in events_of(envs, ModelCallRequested)]
    responded = [(r.step, r.request_id) for r in events_of(envs, ModelResponded)]
    assert requested == responded == [(n, f"s-job:step-{n}") for n in range(1, 5)]
    again = next(e for e in envs if isinstance(e.event, ModelResponded) and e.event.step == 2)
    assert again.epoch == 2
    assert one(envs, SessionCompleted).result == one(reference, SessionCompleted).result
    assert_contiguous(envs)


# --- 6. restart continuity ---------------------------------------------------------------------


def test_a_host_closed_mid_run_is_resumed_by_a_fresh_one(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    config = parse_config(claude_toml(), source="t")
    fake.delay_next(0.15, times=1000)  # every call is slow: sessions are caught mid-call
    prompts = {f"w{n}": f"Summarize the workspace for team {n}." for n in range(4)}
    prompts["mail"] = EMAIL_PROMPT
    sids = [f"s-{t}" for t in prompts]
    workers = sids[:4]

    async def first_host() -> None:
        host = await start_host(tmp_path, config)
        for task_id, prompt in prompts.items():
            await submit(host, task_id, prompt)

        log = FileLog.open(tmp_path / "log" / "p0", readonly=True)

        def answer_pending(sid: str) -> bool:
            """The server has this session's current request; its answer has not come back."""
            runner = host.runners.get(sid)
            if runner is None or not hasattr(runner, "state"):
                return False
            s = runner.state.session
            prompt = prompts[sid.removeprefix("s-")]
            received = [r for r in fake.requests if r["messages"][0]["content"] == prompt]
            return s.step >= 2 and bool(s.pending_request) and len(received) == s.step

        def quiet(sid: str) -> bool:
            """Nothing of this session is half-way to the server or the disk."""
            return answer_pending(sid) or (
                sid == "s-mail" and fold(sid, log.read_stream(sid)).status == "awaiting_review"
            )

        deadline = time.monotonic() + 10
        while not all(answer_pending(s) for s in workers) or not quiet("s-mail"):
            assert time.monotonic() < deadline, host.statuses()
            await asyncio.sleep(0.001)
        # No await between the check and the close: those answers are lost with the host.
        await stop_host(host)
        log.close()

    async def second_host() -> dict[str, dict[str, Any]]:
        host = await start_host(tmp_path, config)
        rows = await settle(host, *sids)
        assert rows["s-mail"]["status"] == "awaiting_review"
        call_id = rows["s-mail"]["reviews"][0]["call_id"]
        assert await host.command("s-mail", Command("approve", call_id))
        rows = await settle(host, *sids, statuses=frozenset({"completed"}))
        await stop_host(host)
        return rows

    asyncio.run(first_host())
    rows = asyncio.run(second_host())
    for sid in sids:
        envs = read_stream(tmp_path, sid)
        assert rows[sid]["status"] == "completed", sid
        assert rows[sid]["restarts"] == 1
        assert [c.epoch for c in events_of(envs, SessionClaimed)] == [1, 2]
        assert_contiguous(envs)
        responded = [r.request_id for r in events_of(envs, ModelResponded)]
        assert len(responded) == len(set(responded)), f"{sid}: a request answered twice"
        requested = [r.request_id for r in events_of(envs, ModelCallRequested)]
        assert requested == responded, sid
        steps = [r.step for r in events_of(envs, ModelResponded)]
        assert steps == list(range(1, len(steps) + 1))
        for proposal in events_of(envs, ToolCallProposed):
            done = [k for k in for_call(envs, proposal.call_id) if k == "ToolCallCompleted"]
            assert len(done) == 1, (sid, proposal.tool)
        assert len(events_of(envs, ReviewRequested)) == (1 if sid == "s-mail" else 0)
    # The call each worker had at the server when its host went away was made again by
    # the new owner: requested under epoch 1, answered under epoch 2, the same request.
    for sid in workers:
        envs = read_stream(tmp_path, sid)
        requests = {
            e.event.request_id: e.epoch for e in envs if isinstance(e.event, ModelCallRequested)
        }
        answers = {e.event.request_id: e.epoch for e in envs if isinstance(e.event, ModelResponded)}
        again = [r for r in requests if requests[r] == 1 and answers[r] == 2]
        assert len(again) == 1, sid
        prompt = prompts[sid.removeprefix("s-")]
        bodies = [
            json.dumps(r, sort_keys=True)
            for r in fake.requests
            if r["messages"][0]["content"] == prompt
        ]
        assert len(bodies) == len(answers) + 1
        assert len(set(bodies)) == len(answers)  # the one repeat is byte-for-byte the same
    assert all_accepted(fake)
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


class HeldLog:
    """The host's log port, with appends that end a session held back until released.

    A fake port (RunnerDeps takes ports so tests can pass them): the disk is slow, for
    as long as the test likes.
    """

    def __init__(self, inner: LogPort) -> None:
        self.inner = inner
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def append(
        self, session_id: str, events: Sequence[Event], expected_seq: int, epoch: int | None
    ) -> AppendResult:
        if any(isinstance(e, SessionCompleted) for e in events):
            self.holding.set()
            await self.release.wait()
        return await self.inner.append(session_id, events, expected_seq, epoch)

    async def read_stream(self, session_id: str) -> list[Envelope]:
        return await self.inner.read_stream(session_id)

    async def put_blob(self, session_id: str, data: bytes) -> BlobRef:
        return await self.inner.put_blob(session_id, data)


def test_statuses_report_only_durable_state(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        held = HeldLog(host.deps.log)
        host.deps.log = held
        sid = await submit(host, "slowdisk", "Summarize the workspace.")
        await asyncio.wait_for(held.holding.wait(), timeout=10)
        reported = {r["id"]: r["status"] for r in host.statuses()}[sid]
        on_disk = fold(sid, read_stream(tmp_path, sid)).status
        held.release.set()
        await settle(host, sid)
        await stop_host(host)
        return reported, on_disk

    reported, on_disk = asyncio.run(scenario())
    assert on_disk == "running"
    assert reported == on_disk


def test_closing_a_host_closes_its_model_clients(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario() -> None:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "one", "Say hello.")
        await settle(host, sid)
        tasks = list(host.tasks.values())
        await host.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_total_time_survives_a_restart(tmp_path: Path) -> None:
    config = parse_config(SCRIPTED_TOML, source="t")
    task = parse_task({"id": "old", "prompt": "Summarize.", "limits": {"total_timeout_s": 0.3}})
    append_as_crashed_host(
        tmp_path,
        "s-old",
        [
            (None, session_event(config, task, "s-old")),
            (1, SessionClaimed(owner="host-0@gone", epoch=1)),
        ],
    )
    created = read_stream(tmp_path, "s-old")[0].ts
    # The limit is wall time since SessionCreated, so wall time must pass while no host runs.
    wait_until(lambda: time.time() - created > 0.35, timeout=5)

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, config)
        rows = await settle(host, "s-old")
        await stop_host(host)
        return rows["s-old"]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-old")
    assert kinds(envs) == [*HEAD, "SessionClaimed", *FAIL]
    assert_limit(envs, "TOTAL_TIMEOUT")
    assert row["error"].startswith("TOTAL_TIMEOUT: ")
    assert isinstance(envs[0].event, SessionCreated)


# --- 7. secret redaction -----------------------------------------------------------------------


def test_a_secret_in_tool_output_is_redacted_before_it_is_logged(tmp_path: Path) -> None:
    workspace = tmp_path / "workspaces" / "s-leak"
    workspace.mkdir(parents=True)
    (workspace / "config.txt").write_text(f"ANTHROPIC key {SECRET} for prod\n")

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "leak", "Summarize the workspace.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-leak")
    assert row["status"] == "completed"
    read = next(p for p in events_of(envs, ToolCallProposed) if p.tool == "read_file")
    output = next(c.output for c in events_of(envs, ToolCallCompleted) if c.call_id == read.call_id)
    assert output == "ANTHROPIC key [REDACTED] for prod\n"
    # Not in any event, and not anywhere in the log's files (segments, blobs, index).
    assert SECRET not in json.dumps([str(e) for e in envs])
    for path in (tmp_path / "log").rglob("*"):
        if path.is_file():
            assert b"sk-ant-api03" not in path.read_bytes(), path


def test_a_secret_in_model_output_is_redacted_before_it_is_logged(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    fake.script(
        {
            "content": [
                {"type": "text", "text": f"I will store {SECRET} for later."},
                {
                    "type": "tool_use",
                    "id": "toolu_keep",
                    "name": "write_file",
                    "input": {"path": "key.txt", "content": f"token={SECRET}"},
                },
            ]
        },
        {"content": f"Saved. The key was {SECRET}."},
    )

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "keep", "Store the key.")
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-keep")
    assert row["status"] == "completed"
    assert kinds(envs) == HEAD + STEP + TOOL + STEP + ["SessionCompleted"]
    assert one(envs, SessionCompleted).result == "Saved. The key was [REDACTED]."
    assert "[REDACTED]" in str(one(envs, ToolCallProposed).input)
    for path in (tmp_path / "log").rglob("*"):
        if path.is_file():
            assert b"sk-ant-api03" not in path.read_bytes(), path
    assert all_accepted(fake)
