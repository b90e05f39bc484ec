"""Helpers for the console's tests: a fleet home written event by event, a real server.

The home is written with FileLog, as a fleet would write it (no Ray: ~0.1 s); the
server is uvicorn on 127.0.0.1 and a free port, in a thread of the test process.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import (
    ContextCompacted,
    Event,
    LimitExceeded,
    Limits,
    ModelCallRequested,
    ModelResponded,
    ReviewRequested,
    SessionClaimed,
    SessionCompleted,
    SessionCreated,
    SessionFailed,
    ToolCallCompleted,
    ToolCallProposed,
    ToolCallStarted,
    ToolCallVetted,
)
from fleetlog.events.state import SessionState, call_hash, fold

CONFIG = """\
[budgets.acme]
max_cost_usd = 0.01
max_tokens = 100000
"""

EMAIL = '{"to": "bob@acme.example.com", "subject": "weekly notes", "body": "<b>hi</b>"}'
SHELL = '{"command": "git push origin main"}'


def _created(task: str, tenant: str, agent: str = "coder") -> SessionCreated:
    return SessionCreated(
        task_id=task,
        prompt=f"task {task}: tidy the notes",
        agent_type=agent,
        tenant=tenant,
        model="scripted",
        tools=["read_file", "send_email", "run_shell"],
        limits=Limits(max_steps=5),
    )


def _step(sid: str, step: int, *, cost: float = 0.002, stop: str = "tool_use") -> list[Event]:
    rid = f"{sid}:step-{step}"
    return [
        ModelCallRequested(step=step, request_id=rid, model="scripted", input_tokens_estimate=400),
        ModelResponded(
            step=step,
            request_id=rid,
            model="scripted",
            content='[{"type": "text", "text": "Looking at the notes."}]',
            stop_reason=stop,
            input_tokens=400,
            output_tokens=40,
            cost_usd=cost,
            latency_ms=12.0,
        ),
    ]


def _call(step: int, call_id: str, tool: str, tool_input: str, verdict: str) -> list[Event]:
    events: list[Event] = [
        ToolCallProposed(step=step, call_id=call_id, tool=tool, input=tool_input),
        ToolCallVetted(
            call_id=call_id,
            verdict=verdict,  # type: ignore[arg-type]
            risk={"read_file": "read", "send_email": "external"}.get(tool, "exec"),
            reason=f"policy rule '{tool}'" + (" requires review" if verdict == "ask" else ""),
            rule=tool,
        ),
    ]
    if verdict == "ask":
        events.append(
            ReviewRequested(
                call_id=call_id,
                reason=f"policy rule '{tool}' requires review",
                call_hash=call_hash(tool, tool_input),
            )
        )
    return events


def histories() -> dict[str, list[Event]]:
    """Five sessions: completed (with a compaction), failed on a limit, two awaiting review,
    and one running."""
    claim = SessionClaimed(owner="host-0@test", node="test", epoch=1, sandbox="on")
    return {
        "s-done": [
            _created("done", "acme"),
            claim,
            *_step("s-done", 1),
            *_call(1, "toolu_read1", "read_file", '{"path": "notes.md"}', "allow"),
            ToolCallStarted(call_id="toolu_read1", idempotency_key="s-done:toolu_read1"),
            ToolCallCompleted(call_id="toolu_read1", output="# notes", latency_ms=1.5),
            ContextCompacted(
                step=2,
                tokens_before=9000,
                tokens_after=2000,
                dropped_messages=4,
                summary="The notes were read.",
                stage="summarize",
                first_message=1,
            ),
            *_step("s-done", 2, stop="end_turn"),
            SessionCompleted(result="tidied"),
        ],
        "s-limit": [
            _created("limit", "globex", "researcher"),
            claim,
            *_step("s-limit", 1, cost=0.004),
            LimitExceeded(code="MAX_STEPS_EXCEEDED", limit=1, value=2, detail="2 steps"),
            SessionFailed(error="MAX_STEPS_EXCEEDED: 2 steps taken (limit 1)"),
        ],
        "s-mail": [
            _created("mail", "acme", "ops"),
            claim,
            *_step("s-mail", 1),
            *_call(1, "toolu_mail1", "send_email", EMAIL, "ask"),
        ],
        "s-push": [
            _created("push", "globex"),
            claim,
            *_step("s-push", 1),
            *_call(1, "toolu_push1", "run_shell", SHELL, "ask"),
        ],
        "s-busy": [
            _created("busy", "initech"),
            claim,
            ModelCallRequested(step=1, request_id="s-busy:step-1", model="scripted"),
        ],
    }


def build_home(root: Path, *, config: bool = True) -> Path:
    """A fleet home under ``root``: two partitions, as two hosts would write them."""
    home = root / "home"
    logs = [FileLog.open(home / "log" / f"p{i}") for i in range(2)]
    try:
        for index, (sid, events) in enumerate(histories().items()):
            log = logs[index % 2]
            for seq, event in enumerate(events):
                epoch = 0 if isinstance(event, SessionCreated) else 1
                log.append(sid, [event], seq, epoch)
    finally:
        for log in logs:
            log.close()
    if config:
        (root / "fleetlog.toml").write_text(CONFIG)
    return home


def fold_session(home: Path, session_id: str) -> tuple[SessionState, list[Any]]:
    """A session's state and envelopes, read from the log as anyone would."""
    for part in sorted((home / "log").iterdir()):
        with FileLog.open(part, readonly=True) as log:
            if log.last_seq(session_id):
                stream = list(log.read_stream(session_id))
                return fold(session_id, stream), stream
    raise AssertionError(f"no session {session_id}")


# --- a real server -------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    token: str | None
    home: Path

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | bool | None = True,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or text). ``token=True``: the server's; False/None: none."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, method=method, data=data)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        bearer = self.token if token is True else token or None
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


@contextmanager
def serving(
    home: Path, *, token: str | None = None, config: Path | None = None
) -> Iterator[Server]:
    """The console over ``home`` on 127.0.0.1 and a free port, until the block ends."""
    import uvicorn

    from fleetlog.console import bind, create_app

    app = create_app(home, str(config) if config else None, token)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="console", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the console server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", token, home)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


# --- the browser ---------------------------------------------------------------------------

CHROMIUM = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
CHROMEDRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def chromium_paths() -> tuple[str, str]:
    """Debian's chromium and chromium-driver; the test fails (never skips) without them."""
    browser = next((p for p in CHROMIUM if Path(p).exists()), None) or shutil.which("chromium")
    driver = next((p for p in CHROMEDRIVER if Path(p).exists()), None) or shutil.which(
        "chromedriver"
    )
    if not browser or not driver:
        pytest.fail(
            "the console's browser tests need Debian's chromium and chromium-driver: "
            "run `bash scripts/setup` as root, or `apt-get install -y chromium chromium-driver`"
        )
    return browser, driver
