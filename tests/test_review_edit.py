"""Edit-then-approve: a reviewer approves a call with an input of their own.

The call is vetted again with the new input (a deny rule still refuses it, an ask rule is
answered by the approval itself), runs with it exactly once, and the model is told what
ran. What the reviewer may not do is refused in one line before anything is recorded.
Runs through the real SDK against the loopback Messages-API server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import build_home, fold_session
from fake_anthropic import FakeAnthropic
from test_runner import (
    EMAIL_PROMPT,
    HEAD,
    REVIEW,
    STEP,
    TOOL,
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

from fleetlog import Fleet
from fleetlog.actors.loop import fold_agent
from fleetlog.actors.runner import Command, command_events
from fleetlog.config import parse_config
from fleetlog.events.errors import FleetlogError
from fleetlog.events.schema import (
    ReviewDecided,
    ReviewRequested,
    SessionCompleted,
    ToolCallCompleted,
    ToolCallProposed,
    ToolCallRejected,
    ToolCallVetted,
)
from fleetlog.events.source import source_for
from fleetlog.events.state import call_hash, fold
from fleetlog.projections.projector import Projector

__all__ = ["fake"]  # the loopback Messages-API server fixture, shared with test_runner


def _run(home: Path, toml: str, edit: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The email session up to its review, approved with ``edit`` applied to the input."""

    async def scenario() -> tuple[str, dict[str, Any], dict[str, Any]]:
        host = await start_host(home, parse_config(toml, source="t"))
        sid = await submit(host, "mail", EMAIL_PROMPT)
        waiting = (await settle(host, sid))[sid]
        review = waiting["reviews"][0]
        [proposed] = [
            e
            for e in events_of(read_stream(home, sid), ToolCallProposed)
            if e.call_id == review["call_id"]
        ]
        assert isinstance(proposed.input, str)
        original = json.loads(proposed.input)
        edited = json.dumps({**original, **edit})
        approve = Command(
            "approve",
            review["call_id"],
            reviewer="alice",
            call_hash=call_hash("send_email", proposed.input),
            edited_input=edited,
        )
        assert await host.command(sid, approve)
        assert await host.command(sid, approve)  # a double click records nothing more
        done = (await settle(host, sid, statuses=frozenset({"completed", "failed"})))[sid]
        await stop_host(host)
        return review["call_id"], original, done

    return asyncio.run(scenario())


def test_an_approved_edit_runs_the_edited_input_once_and_the_model_is_told(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    call_id, original, done = _run(tmp_path, claude_toml(), {"to": "carol@example.com"})
    assert done["status"] == "completed", done
    envs = read_stream(tmp_path, "s-mail")
    # Vetted again with the new input, not asked about again: the approval answers the ask.
    assert kinds(envs) == (
        HEAD
        + (STEP + TOOL) * 2
        + STEP
        + REVIEW
        + ["ReviewDecided", "ToolCallVetted", "ToolCallStarted", "ToolCallCompleted"]
        + STEP
        + ["SessionCompleted"]
    )
    decided = one(envs, ReviewDecided)
    assert decided.approved and decided.reviewer == "alice"
    assert json.loads(decided.edited_input) == {**original, "to": "carol@example.com"}
    # The hash binds the decision to the call the reviewer saw (the model's input).
    assert decided.call_hash == one(envs, ReviewRequested).call_hash
    vetted = [v for v in events_of(envs, ToolCallVetted) if v.call_id == call_id]
    assert [v.verdict for v in vetted] == ["ask", "ask"]
    outbox = sorted((tmp_path / "outbox").iterdir())
    assert len(outbox) == 1 and "To: carol@example.com" in outbox[0].read_text()
    assert "bob@example.com" not in outbox[0].read_text().split("\n\n", 1)[0]
    [completed] = [e for e in events_of(envs, ToolCallCompleted) if e.call_id == call_id]
    assert str(completed.output).startswith("delivered to carol@example.com")
    # The model is told its call ran with another input, and which.
    told = fake.requests[-1]["messages"][-1]["content"][0]
    assert told["tool_use_id"] == call_id
    assert told["content"].startswith("[a reviewer changed this call's input before it ran;")
    assert "carol@example.com" in told["content"]
    # Folded state: the call holds what ran, and remembers what the model asked for.
    state = fold("s-mail", envs)
    call = state.tool_calls[call_id]
    assert json.loads(str(call.input))["to"] == "carol@example.com"
    assert json.loads(str(call.edited_from)) == original
    assert fold_agent("s-mail", envs).session == state
    assert isinstance(envs[-1].event, SessionCompleted)
    # SQL shows what ran, and who approved it.
    with Projector.open(tmp_path, wait_s=5.0, source=source_for(tmp_path, "file")) as projector:
        projector.catch_up()
        [row] = projector.query(
            f"SELECT tool_input, status, reviewer FROM agent_tool_calls WHERE id = '{call_id}'"
        ).to_pylist()
    assert json.loads(row["tool_input"])["to"] == "carol@example.com"
    assert (row["status"], row["reviewer"]) == ("succeeded", "alice")


def test_an_edit_that_a_deny_rule_refuses_never_runs(tmp_path: Path, fake: FakeAnthropic) -> None:
    toml = claude_toml(extra='\n[policy]\ndeny = ["send_email(*@evil.example.com)"]\n')
    call_id, _, done = _run(tmp_path, toml, {"to": "mallory@evil.example.com"})
    assert done["status"] == "completed", done  # the model hears of it and goes on
    envs = read_stream(tmp_path, "s-mail")
    [rejected] = [e for e in events_of(envs, ToolCallRejected) if e.call_id == call_id]
    assert "send_email(*@evil.example.com)" in rejected.reason
    assert not (tmp_path / "outbox").exists()
    told = fake.requests[-1]["messages"][-1]["content"][0]
    assert told["is_error"] and "mallory@evil.example.com" in told["content"]


def test_an_edit_the_tool_does_not_accept_is_refused_at_vetting(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    call_id, _, done = _run(tmp_path, claude_toml(), {"to": 42})
    assert done["status"] == "completed", done
    envs = read_stream(tmp_path, "s-mail")
    [rejected] = [e for e in events_of(envs, ToolCallRejected) if e.call_id == call_id]
    assert "to" in rejected.reason
    assert not (tmp_path / "outbox").exists()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (Command("approve", "c1", edited_input="{not json"), "not JSON"),
        (Command("approve", "c1", edited_input='["a list"]'), "must be a JSON object"),
        (Command("deny", "c1", edited_input='{"to": "x@y.z"}'), "only an approval"),
    ],
)
def test_what_a_reviewer_may_not_edit_is_one_line_and_records_nothing(
    command: Command, message: str
) -> None:
    state = _awaiting("c1", in_doubt=False)
    with pytest.raises(FleetlogError, match=message) as refused:
        command_events(state, command)
    assert "\n" not in str(refused.value)


def test_an_in_doubt_call_cannot_be_edited_and_an_unchanged_edit_is_a_plain_approval() -> None:
    with pytest.raises(FleetlogError, match="may have run before a crash"):
        command_events(
            _awaiting("c1", in_doubt=True), Command("approve", "c1", edited_input='{"to": "x"}')
        )
    same = command_events(
        _awaiting("c1", in_doubt=False),
        Command("approve", "c1", edited_input='{ "to" : "bob@example.com" }'),
    )
    assert isinstance(same[0], ReviewDecided) and same[0].edited_input == ""


def _awaiting(call_id: str, *, in_doubt: bool) -> Any:
    from fleetlog.events.schema import Envelope, Limits, SessionCreated

    events = [
        SessionCreated(task_id="t", prompt="p", limits=Limits()),
        ToolCallProposed(
            step=1, call_id=call_id, tool="send_email", input='{"to": "bob@example.com"}'
        ),
        ToolCallVetted(call_id=call_id, verdict="ask", risk="external"),
        ReviewRequested(call_id=call_id, reason="review", in_doubt=in_doubt),
    ]
    envs = [
        Envelope(position=i + 1, session_id="s", seq=i + 1, epoch=1, ts=0.0, event_id="", event=e)
        for i, e in enumerate(events)
    ]
    return fold("s", envs)


# --- the command line and the Python API, on the log alone -----------------------------------


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "FLEETLOG_"))}
    return subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", *args, "--home", str(home)],
        cwd=home.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _decided(home: Path, session_id: str) -> list[ReviewDecided]:
    _, stream = fold_session(home, session_id)
    return [e.event for e in stream if isinstance(e.event, ReviewDecided)]


def test_approve_input_on_the_command_line_and_in_the_python_api(tmp_path: Path) -> None:
    home = build_home(tmp_path, config=False)
    refused = _cli(home, "approve", "push", "toolu_push1", "--input", "[1]")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "must be a JSON object" in refused.stderr and _decided(home, "s-push") == []
    done = _cli(home, "approve", "push", "toolu_push1", "--input", '{"command": "git status"}')
    assert done.returncode == 0, done.stderr
    [decided] = _decided(home, "s-push")
    assert decided.approved and json.loads(decided.edited_input) == {"command": "git status"}
    with Fleet.open(home) as fleet:
        fleet.approve("mail", "toolu_mail1", input={"to": "carol@acme.example.com"})
    [decided] = _decided(home, "s-mail")
    assert json.loads(decided.edited_input)["to"] == "carol@acme.example.com"
    state, _ = fold_session(home, "s-mail")
    original = json.loads(str(state.tool_calls["toolu_mail1"].edited_from))
    assert original["to"] == "bob@acme.example.com"
