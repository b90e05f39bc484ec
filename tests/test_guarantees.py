"""The promises that must hold when effects are cut short: issue 11's findings, each pinned.

A started effect is never abandoned without a record (cancel, step timeout); a
reply is durable before the ledger is told; a tenant budget is a hard cap that
a restarted ledger still enforces; operator decisions are durable when
acknowledged and bound to the exact call; a duplicate tool_use id is refused,
never an overwrite. The process-killing side of these promises is the fault
suite's (``tests/faults``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic, validate_request
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runner import (
    CLAUDE,
    EMAIL_PROMPT,
    SCRIPTED_TOML,
    LedgerBudget,
    claude_toml,
    events_of,
    fake,
    kinds,
    one,
    read_stream,
    settle,
    start_host,
    stop_host,
    submit,
)

from fleetlog.actors.host import HostCore
from fleetlog.actors.ledger import Budget, Ledger
from fleetlog.actors.runner import Command
from fleetlog.actors.safety import Policy
from fleetlog.actors.tools import ToolContext, tool, tool_spec
from fleetlog.config import parse_config
from fleetlog.events.errors import FleetlogError
from fleetlog.events.faults import CRASH_EXIT_CODE, CRASH_POINTS, crash_point
from fleetlog.events.schema import (
    CancelRequested,
    Envelope,
    Limits,
    ModelCallRequested,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionCreated,
    SessionFailed,
    ToolCallCompleted,
    ToolCallProposed,
    ToolCallRejected,
)
from fleetlog.events.state import call_hash, fold

__all__ = ["fake"]  # the fixture, imported for the tests below

# --- a slow, non-idempotent sync tool: the kind a thread runs and nobody can kill -------------

_SLOW_S = 2.5


@tool(risk="write", idempotent=False)
def slow_send(ctx: ToolContext, to: str) -> str:
    """Deliver a message slowly (a file under HOME/sent), exactly once per call.

    Args:
        to: Recipient.
    """
    time.sleep(_SLOW_S)
    sent = ctx.home / "sent"
    sent.mkdir(exist_ok=True)
    target = sent / f"{ctx.session_id}-{ctx.call_id}"
    if target.exists():
        return "already sent"
    target.write_text(to)
    return f"sent to {to}"


SLOW_SPEC = tool_spec(slow_send)
assert SLOW_SPEC is not None


def tool_reply(name: str, call_id: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {
        "content": [
            {"type": "text", "text": "On it."},
            {"type": "tool_use", "id": call_id, "name": name, "input": tool_input},
        ]
    }


async def custom_host(home: Path, config_toml: str, **deps: Any) -> HostCore:
    host = await start_host(home, parse_config(config_toml, source="t"))
    host.deps.tools["slow_send"] = SLOW_SPEC
    host.deps.policy = Policy(allow=["slow_send", "run_shell", "list_dir", "read_file"])
    for name, value in deps.items():
        setattr(host.deps, name, value)
    return host


async def create(host: HostCore, sid: str, tools: list[str], **limits: Any) -> str:
    event = SessionCreated(
        task_id=sid, prompt="Deliver it.", model=CLAUDE, tools=tools, limits=Limits(**limits)
    )
    assert await host.create(sid, event)
    return sid


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {predicate}")
        await asyncio.sleep(0.005)


def started(home: Path, sid: str) -> bool:
    return "ToolCallStarted" in kinds(read_stream(home, sid))


# --- 2. a cancel or a step timeout never abandons a started effect ---------------------------


def test_cancel_waits_for_a_running_sync_tool_and_records_what_it_did(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    fake.script(tool_reply("slow_send", "toolu_send", {"to": "ops"}))

    async def scenario() -> list[str]:
        host = await custom_host(tmp_path, claude_toml())
        sid = await create(host, "s-send", ["slow_send"])
        await wait_for(lambda: started(tmp_path, sid))
        assert await host.command(sid, Command("cancel", note="stop", reviewer="op"))
        # Acknowledged means durable: the cancel is in the log before the tool returns.
        acked = kinds(read_stream(tmp_path, sid))
        await settle(host, sid, statuses=frozenset({"cancelled"}))
        await stop_host(host)
        return acked

    acked = asyncio.run(scenario())
    assert acked[-2:] == ["ToolCallStarted", "CancelRequested"]
    envs = read_stream(tmp_path, "s-send")
    assert kinds(envs)[-4:] == [
        "ToolCallStarted",
        "CancelRequested",
        "ToolCallCompleted",  # what the tool really did, not an abandoned "running" call
        "SessionCancelled",
    ]
    assert one(envs, ToolCallCompleted).output == "sent to ops"
    assert [p.name for p in (tmp_path / "sent").iterdir()] == ["s-send-toolu_send"]
    assert all(c.status != "running" for c in fold("s-send", envs).tool_calls.values())


def _running(marker: str) -> bool:
    """Whether any process on this machine has ``marker`` in its command line."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode():
                return True
        except OSError:
            continue
    return False


def test_cancel_stops_a_running_shell_and_records_the_kill(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    marker = "31.4159"  # a sleep no other process on the machine is taking
    fake.script(tool_reply("run_shell", "toolu_nap", {"command": f"sleep {marker}; echo no"}))

    async def scenario() -> None:
        host = await custom_host(tmp_path, claude_toml())
        sid = await create(host, "s-nap", ["run_shell"])
        await wait_for(lambda: _running(f"sleep {marker}"))
        assert await host.command(sid, Command("cancel"))
        await settle(host, sid, statuses=frozenset({"cancelled"}))
        # Killed, not waited out: the sleep (inside the sandbox) is gone.
        await wait_for(lambda: not _running(f"sleep {marker}"), timeout=10)
        await stop_host(host)

    asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-nap")
    assert kinds(envs)[-4:] == [
        "ToolCallStarted",
        "CancelRequested",
        "ToolCallFailed",
        "SessionCancelled",
    ]
    assert envs[-2].event.error == "cancelled; the call was stopped"  # type: ignore[union-attr]


@pytest.mark.parametrize("grace_s", [10.0, 0.05])
def test_a_step_timeout_waits_for_a_sync_tool_or_sends_the_call_to_review(
    tmp_path: Path, fake: FakeAnthropic, grace_s: float
) -> None:
    fake.script(tool_reply("slow_send", "toolu_send", {"to": "ops"}))

    async def scenario() -> dict[str, Any]:
        host = await custom_host(tmp_path, claude_toml(), effect_grace_s=grace_s)
        # A step of 1 s: ample for the model call through the SDK, not for the tool.
        sid = await create(host, "s-send", ["slow_send"], step_timeout_s=1.0)
        rows = await settle(host, sid)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-send")
    if grace_s > _SLOW_S:
        # Waited for: the real outcome is recorded, then the step fails.
        assert kinds(envs)[-4:] == [
            "ToolCallStarted",
            "ToolCallCompleted",
            "LimitExceeded",
            "SessionFailed",
        ]
        assert one(envs, ToolCallCompleted).output == "sent to ops"
        assert row["error"] == "STEP_TIMEOUT: tool call took longer than 1s"
    else:
        # Still running when given up on: in doubt, and a human decides, never a silent "failed".
        assert kinds(envs)[-2:] == ["ToolCallStarted", "ReviewRequested"]
        review = one(envs, ReviewRequested)
        assert review.in_doubt and review.reason.startswith("in doubt: slow_send timed out")
        assert row["status"] == "awaiting_review"


# --- 1. the reply is durable before the ledger is told; settling is outside the step -----------


class SlowLedger(LedgerBudget):
    """A ledger that takes longer to release than a whole step may take."""

    async def release(
        self, tenant: str, session_id: str, spent_usd: float, spent_tokens: int
    ) -> None:
        await asyncio.sleep(0.5)
        await super().release(tenant, session_id, spent_usd, spent_tokens)


def test_a_slow_ledger_never_turns_a_reply_into_a_step_timeout(tmp_path: Path) -> None:
    config = parse_config(SCRIPTED_TOML + "[budgets.acme]\nmax_cost_usd = 5.0\n", source="t")
    budget = SlowLedger(config)

    async def scenario() -> dict[str, Any]:
        host = await start_host(tmp_path, config, budget)
        sid = await submit(
            host, "calm", "Summarize the workspace.", tenant="acme", limits={"step_timeout_s": 0.3}
        )
        rows = await settle(host, sid, timeout=30)
        # The last release follows the session's end (it is told after the log).
        await wait_for(lambda: budget.ledger.snapshot()["acme"]["holders"] == 0)
        await stop_host(host)
        return rows[sid]

    row = asyncio.run(scenario())
    assert row["status"] == "completed", row
    envs = read_stream(tmp_path, "s-calm")
    snapshot = budget.ledger.snapshot()["acme"]
    assert snapshot["spent_usd"] == pytest.approx(
        sum(r.cost_usd for r in events_of(envs, ModelResponded))
    )
    assert snapshot["reserved_usd"] == 0 and snapshot["holders"] == 0


# --- 3. budgets: durable reservations, released on every path, a hard cap ---------------------


def env(sid: str, seq: int, event: Any) -> Envelope:
    return Envelope(seq, sid, seq, 1, 0.0, "", event)


def test_a_restarted_ledger_knows_every_reservation_in_flight_and_its_holder() -> None:
    budgets = {"acme": Budget(max_cost_usd=1.0)}
    created = SessionCreated(task_id="t", prompt="p", tenant="acme")
    asked = ModelCallRequested(
        step=1, request_id="s-1:step-1", model="m", reserved_usd=0.6, reserved_tokens=10
    )
    first = Ledger(budgets)
    assert first.reserve("acme", "s-1", 0.6, 10) == (True, "")
    # The ledger dies; its successor folds the log, where the request is durable.
    rebuilt = Ledger(budgets)
    rebuilt.fold([env("s-1", 1, created), env("s-1", 2, asked)])
    assert rebuilt.snapshot()["acme"]["reserved_usd"] == pytest.approx(0.6)
    ok, detail = rebuilt.reserve("acme", "s-2", 0.6, 10)
    assert not ok and "this call may cost up to $0.6000" in detail
    # The reply lands ($0.55 billed): the late release carries the session's cumulative
    # spend, so nothing is clamped, lost or counted twice, whichever ledger hears it.
    rebuilt.release("acme", "s-1", 0.55, 8)
    rebuilt.release("acme", "s-1", 0.55, 8)
    assert rebuilt.snapshot()["acme"] == {
        "spent_usd": pytest.approx(0.55),
        "spent_tokens": 8,
        "reserved_usd": 0.0,
        "reserved_tokens": 0,
        "holders": 0,
    }
    assert not rebuilt.reserve("acme", "s-2", 0.6, 10)[0]  # 0.55 + 0.6 > 1.0: never overspent
    # A session's end releases what it held, even if no release ever arrives.
    ended = Ledger(budgets)
    ended.fold(
        [env("s-1", 1, created), env("s-1", 2, asked), env("s-1", 3, SessionFailed(error="x"))]
    )
    assert ended.snapshot()["acme"]["reserved_usd"] == 0


def test_a_session_reserving_again_replaces_what_its_dead_host_held() -> None:
    ledger = Ledger({"acme": Budget(max_cost_usd=1.0)})
    assert ledger.reserve("acme", "s-1", 0.7, 0)[0]
    # Its host died after the reply was durable ($0.2) but before releasing: the restarted
    # host's next reserve carries the durable spend and replaces the stale reservation.
    assert ledger.reserve("acme", "s-1", 0.7, 0, spent_usd=0.2)[0]
    snapshot = ledger.snapshot()["acme"]
    assert snapshot["spent_usd"] == pytest.approx(0.2)
    assert snapshot["reserved_usd"] == pytest.approx(0.7)
    assert snapshot["holders"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # session
            st.sampled_from(["reserve", "release", "restart"]),
            st.floats(0.01, 0.5),  # worst case
            st.floats(0.0, 1.0),  # share of it billed
        ),
        max_size=60,
    )
)
def test_spend_never_exceeds_a_tenant_budget(ops: list[tuple[int, str, float, float]]) -> None:
    """Calls that cost at most their reservation never take the tenant past its budget,
    whatever the interleaving and however often the ledger restarts (rebuilt from the log)."""
    budget = 1.0
    budgets = {"acme": Budget(max_cost_usd=budget)}
    ledger = Ledger(budgets)
    log: list[Envelope] = []
    spent = dict.fromkeys(range(4), 0.0)
    holding: dict[int, float] = {}
    for s in range(4):
        log.append(env(f"s-{s}", 1, SessionCreated(task_id="t", prompt="p", tenant="acme")))
    ledger.fold(log)
    for session, op, worst, share in ops:
        sid = f"s-{session}"
        if op == "restart":
            ledger = Ledger(budgets)
            ledger.fold(log)
        elif op == "reserve" and session not in holding:
            # Durable first, as the runner does, then the ledger is asked.
            log.append(
                env(
                    sid,
                    0,
                    ModelCallRequested(step=1, request_id="r", model="m", reserved_usd=worst),
                )
            )
            ok, _ = ledger.reserve("acme", sid, worst, 0, spent[session], 0)
            if ok:
                holding[session] = worst
            else:
                log.append(env(sid, 0, SessionFailed(error="BUDGET_EXHAUSTED")))
        elif op == "release" and session in holding:
            cost = holding.pop(session) * share
            spent[session] += cost
            log.append(
                env(
                    sid,
                    0,
                    ModelResponded(
                        step=1,
                        request_id="r",
                        model="m",
                        content="[]",
                        stop_reason="end_turn",
                        cost_usd=cost,
                    ),
                )
            )
            ledger.release("acme", sid, spent[session], 0)
        assert sum(spent.values()) <= budget + 1e-9
        account = ledger.snapshot()["acme"]
        assert account["spent_usd"] + account["reserved_usd"] <= budget + 1e-9


# --- 4/5. operator decisions: durable when acknowledged, bound to the exact call --------------


def test_a_decision_is_bound_to_the_call_hash_and_made_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, list[str]]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "mail", EMAIL_PROMPT)
        call_id = (await settle(host, sid))[sid]["reviews"][0]["call_id"]
        state = fold(sid, read_stream(tmp_path, sid))
        digest = call_hash(state.tool_calls[call_id].tool, state.tool_calls[call_id].input)
        with pytest.raises(FleetlogError, match="not the one you saw") as refused:
            await host.command(sid, Command("approve", call_id, call_hash="0" * 16))
        assert "\n" not in str(refused.value)
        assert await host.command(sid, Command("approve", call_id, call_hash=digest))
        # Durable on return: the decision is in the log before the session acts on it.
        assert "ReviewDecided" in kinds(read_stream(tmp_path, sid))
        assert await host.command(sid, Command("approve", call_id, call_hash=digest))  # no-op
        with pytest.raises(FleetlogError, match="not awaiting review"):
            await host.command(sid, Command("deny", call_id))
        await settle(host, sid, statuses=frozenset({"completed"}))
        await stop_host(host)
        return sid, digest, kinds(read_stream(tmp_path, sid))

    sid, digest, stream = asyncio.run(scenario())
    assert stream.count("ReviewDecided") == 1
    decided = one(read_stream(tmp_path, sid), ReviewDecided)
    assert decided.call_hash == digest and decided.approved


def test_a_duplicate_tool_use_id_is_invalid_input_never_an_overwrite(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    fake.script(
        tool_reply("list_dir", "toolu_same", {"path": "."}),
        tool_reply("read_file", "toolu_same", {"path": "notes.md"}),
        {"content": "done"},
    )

    async def scenario() -> None:
        host = await custom_host(tmp_path, claude_toml())
        sid = await create(host, "s-dup", ["list_dir", "read_file"])
        await settle(host, sid, statuses=frozenset({"completed"}))
        await stop_host(host)

    asyncio.run(scenario())
    envs = read_stream(tmp_path, "s-dup")
    proposed = events_of(envs, ToolCallProposed)
    assert [p.call_id for p in proposed] == ["toolu_same", "toolu_same_dup_2_1"]
    state = fold("s-dup", envs)
    assert state.tool_calls["toolu_same"].tool == "list_dir"
    assert state.tool_calls["toolu_same"].status == "succeeded"  # its record kept
    rejected = one(envs, ToolCallRejected)
    assert rejected.call_id == "toolu_same_dup_2_1"
    assert "tool_use id toolu_same was already used" in rejected.reason
    # The model was told, in a request the API accepts (every tool_use answered once).
    assert all(validate_request(body) is None for body in fake.requests)
    told = fake.requests[-1]["messages"][-1]["content"]
    assert told[0]["tool_use_id"] == "toolu_same_dup_2_1" and told[0]["is_error"]


def fleetlog_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ANTHROPIC_API_KEY": ""},
    )


def test_offline_deny_and_cancel_are_durable_fenced_and_refuse_another_call(
    tmp_path: Path,
) -> None:
    async def until_review() -> str:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = await submit(host, "mail", EMAIL_PROMPT)
        await submit(host, "other", EMAIL_PROMPT + " Then stop.")
        call: str = (await settle(host, sid, "s-other"))[sid]["reviews"][0]["call_id"]
        await stop_host(host)
        return call

    call_id = asyncio.run(until_review())
    home = str(tmp_path)
    wrong = fleetlog_cli("deny", "s-mail", call_id, "--hash", "deadbeefdeadbeef", "--home", home)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "not the one you saw" in wrong.stderr
    denied = fleetlog_cli("deny", "s-mail", call_id, "--note", "no mail", "--end", "--home", home)
    assert denied.returncode == 0, denied.stderr
    cancelled = fleetlog_cli("cancel", "s-other", "--home", home)
    assert cancelled.returncode == 0, cancelled.stderr
    assert fleetlog_cli("cancel", "s-other", "--home", home).returncode == 0  # idempotent
    late = fleetlog_cli("cancel", "s-mail", "--home", home)
    assert late.returncode == 1 and "already failed" in late.stderr

    mail, other = read_stream(tmp_path, "s-mail"), read_stream(tmp_path, "s-other")
    assert kinds(mail)[-2:] == ["ReviewDecided", "SessionFailed"]
    assert one(mail, ReviewDecided).note == "no mail"
    assert kinds(other)[-1] == "CancelRequested"
    assert len(events_of(other, CancelRequested)) == 1
    # Written at the session's current epoch, never as an unfenced writer.
    assert mail[-1].epoch == mail[-3].epoch >= 1
    assert other[-1].epoch == other[-2].epoch >= 1

    async def resume() -> dict[str, Any]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        rows = await settle(host, "s-mail", "s-other")
        await stop_host(host)
        return rows

    rows = asyncio.run(resume())
    assert rows["s-mail"]["status"] == "failed"
    assert rows["s-other"]["status"] == "cancelled"
    assert not (tmp_path / "outbox").exists() or not any((tmp_path / "outbox").iterdir())


# --- crash points: inert unless the fault suite arms one --------------------------------------


def test_crash_points_are_inert_unless_armed(tmp_path: Path) -> None:
    for name in CRASH_POINTS:
        crash_point(name)  # nothing happens: this test process is still here
    record = tmp_path / "fired"
    script = (
        "from fleetlog.events.faults import crash_point\n"
        "crash_point('after_model_reply')\n"
        "crash_point('after_model_reply')\n"
        "print('survived')\n"
    )
    env_vars = {**os.environ, "FLEETLOG_CRASH_LOG": str(record)}
    armed = subprocess.run(
        [sys.executable, "-c", script],
        env={**env_vars, "FLEETLOG_CRASH_AT": "after_model_reply@2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert armed.returncode == CRASH_EXIT_CODE and "survived" not in armed.stdout
    assert record.read_text().split()[0] == "after_model_reply"
    other = subprocess.run(
        [sys.executable, "-c", script],
        env={**env_vars, "FLEETLOG_CRASH_AT": "in_settle"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.returncode == 0 and "survived" in other.stdout


def test_requests_carry_the_fleetlog_request_id(tmp_path: Path, fake: FakeAnthropic) -> None:
    async def scenario() -> None:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        sid = await submit(host, "ids", "Summarize the workspace.")
        await settle(host, sid)
        await stop_host(host)

    asyncio.run(scenario())
    asked = [e.request_id for e in events_of(read_stream(tmp_path, "s-ids"), ModelCallRequested)]
    assert [h["x-fleetlog-request"] for h in fake.headers] == asked
    assert [rid for rid, _usage in fake.billed] == asked
    json.dumps(fake.billed)  # plain data


# --- 7. liveness: a poisoned partition is reopened ---------------------------------------------


def test_a_poisoned_partition_is_reopened_and_its_sessions_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETLOG_SCRIPTED_LATENCY_MS", "100")

    async def scenario() -> tuple[dict[str, Any], bool]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        poisoned = host.partitions[0]
        sid = await submit(host, "sick", "Summarize the workspace.")
        await wait_for(lambda: poisoned.last_seq(sid) >= 3)
        # The disk refuses the next write (EBADF), as a failing device would: the log
        # poisons itself and must not be trusted again until reopened from its files.
        refuse = os.open("/dev/null", os.O_RDONLY)
        os.dup2(refuse, poisoned._write_fd)
        os.close(refuse)
        rows = await settle(host, sid, timeout=30)
        healed = host.partitions[0] is not poisoned and poisoned.failed is not None
        await stop_host(host)
        return rows[sid], healed

    row, healed = asyncio.run(scenario())
    assert healed
    assert row["status"] == "completed"
    envs = read_stream(tmp_path, "s-sick")
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))
    assert kinds(envs).count("SessionClaimed") == 2  # re-claimed after the reopen


def test_a_cancel_after_a_crash_records_the_call_left_running_as_in_doubt() -> None:
    from fleetlog.actors.loop import Emit, LoopConfig, decide, fold_agent
    from fleetlog.events.schema import (
        SessionCancelled,
        SessionClaimed,
        ToolCallFailed,
        ToolCallStarted,
        ToolCallVetted,
    )

    content = json.dumps([{"type": "tool_use", "id": "t1", "name": "run_shell", "input": {}}])
    events = [
        SessionCreated(task_id="t", prompt="p", tools=["run_shell"]),
        SessionClaimed(owner="h", epoch=1),
        ModelCallRequested(step=1, request_id="s:step-1", model="m"),
        ModelResponded(
            step=1, request_id="s:step-1", model="m", content=content, stop_reason="tool_use"
        ),
        ToolCallProposed(step=1, call_id="t1", tool="run_shell", input="{}"),
        ToolCallVetted(call_id="t1", verdict="allow", risk="exec"),
        ToolCallStarted(call_id="t1", idempotency_key="s:t1"),
        CancelRequested(),  # then the host died; its successor decides
    ]
    state = fold_agent("s", [env("s", i + 1, e) for i, e in enumerate(events)])
    decision = decide(state, 0.0, LoopConfig())
    assert isinstance(decision, Emit)
    failed, cancelled = decision.events
    assert isinstance(failed, ToolCallFailed) and failed.call_id == "t1"
    assert failed.error.startswith("in doubt: run_shell was started")
    assert isinstance(cancelled, SessionCancelled)
