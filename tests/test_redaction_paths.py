"""Redaction end to end: secrets sent in through every path never reach the log's bytes.

``test_redaction.py`` checks ``redact_event`` on every field of every event type;
this test checks that every way text enters the log goes through it: the task
prompt and the system prompt (a session's creation), model error strings (a
retried 529 and a final 400, through the real SDK), model output, reviewer notes
(online through the host and offline through the CLI), and a cancel note. Then
every byte the log wrote (segments and blobs) is searched for every secret of the
format table.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fake_anthropic import FakeAnthropic, scripted_responder
from test_redaction import SECRETS
from test_runner import CLAUDE, claude_toml, fake, kinds, read_stream, settle, start_host, stop_host

from fleetlog.actors.runner import Command
from fleetlog.config import parse_config
from fleetlog.events.schema import SessionCreated

__all__ = ["fake"]

ALL = "\n".join(text for _name, text, _secret in SECRETS)
CUT = "\n--- context follows ---\n"


def plays_the_task_only(request: dict[str, Any]) -> Any:
    """The scripted agent, deciding on the task above CUT: whether the secrets after it
    were redacted (or, in a broken build, not) must not change what the agent does."""
    first = request["messages"][0]
    if isinstance(first["content"], str):
        task = first["content"].split(CUT)[0]
        request = {**request, "messages": [{**first, "content": task}, *request["messages"][1:]]}
    return scripted_responder(request)


def test_no_secret_reaches_the_log_through_any_path(tmp_path: Path, fake: FakeAnthropic) -> None:
    fake.responder = plays_the_task_only
    # 1. a retried 529 and then a 400 whose messages carry secrets (the "fail" session).
    fake.fail_next(529, message=f"overloaded for {ALL}")
    fake.fail_next(400, message=f"bad request: {ALL}")

    async def scenario() -> None:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        for sid, prompt in [
            ("s-fail", f"Summarize the workspace.{CUT}{ALL}"),
            ("s-mail", f"Summarize the workspace and email it to bob@example.com.{CUT}{ALL}"),
            ("s-deny", f"Summarize the workspace and email it to eve@example.com.{CUT}{ALL}"),
            ("s-stop", f"Summarize the workspace and email it to joe@example.com.{CUT}{ALL}"),
        ]:
            created = SessionCreated(
                task_id=sid,
                prompt=prompt,
                model=CLAUDE,
                system=f"You are careful. Keys: {ALL}",
                tools=["read_file", "list_dir", "write_file", "send_email"],
            )
            assert await host.create(sid, created)
            if sid == "s-fail":  # alone, so that the failures injected above reach it
                await settle(host, sid)
        rows = await settle(host, "s-mail", "s-deny", "s-stop")
        call = rows["s-mail"]["reviews"][0]["call_id"]
        # 2. a reviewer's note and a cancel note, online (through the owning host).
        assert await host.command("s-mail", Command("approve", call, note=f"ok {ALL}"))
        assert await host.command("s-stop", Command("cancel", note=f"stop {ALL}"))
        await settle(host, "s-mail", "s-stop", statuses=frozenset({"completed", "cancelled"}))
        await stop_host(host)

    asyncio.run(scenario())
    assert kinds(read_stream(tmp_path, "s-fail"))[-1] == "SessionFailed"
    # 3. a reviewer's note offline (the CLI appends to the log).
    call = next(
        e.event.call_id
        for e in read_stream(tmp_path, "s-deny")
        if type(e.event).__name__ == "ReviewRequested"
    )
    denied = subprocess.run(
        [
            *(sys.executable, "-m", "fleetlog.cli", "deny", "s-deny", call),
            *("--note", f"no {ALL}", "--home", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "ANTHROPIC_API_KEY": ""},
    )
    assert denied.returncode == 0, denied.stderr

    async def resume() -> None:
        host = await start_host(tmp_path, parse_config(claude_toml(), source="t"))
        await settle(host, "s-deny")
        await stop_host(host)

    asyncio.run(resume())
    wrote = b"".join(p.read_bytes() for p in (tmp_path / "log").rglob("*") if p.is_file())
    for sid in ("s-mail", "s-deny", "s-stop"):  # every path was taken
        assert {"ReviewDecided", "CancelRequested"} & set(kinds(read_stream(tmp_path, sid)))
    assert {"ModelCallRetried", "ModelCallFailed"} <= set(kinds(read_stream(tmp_path, "s-fail")))
    leaked = [name for name, _text, secret in SECRETS if secret.encode() in wrote]
    assert leaked == []
    # What the model was sent: redacted too (the log is what the conversation is built from).
    sent = str(fake.requests[-1])
    assert [name for name, _t, secret in SECRETS if secret in sent] == []
