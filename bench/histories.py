"""Session histories shaped like a real fleet's, for projection tests and benchmarks.

``session_history`` returns the appends one session makes, in order, as the
runner would make them: claims (with restarts), model calls (with retries and
failures), tool calls through vetting (allow / ask → review / deny), tool
failures, compactions, limit breaches, cancellations, and sessions left
running or awaiting a human. Everything is drawn from the ``random.Random``
given, so a seed is a history.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import (
    CancelRequested,
    ContextCompacted,
    Event,
    LimitExceeded,
    ModelCallFailed,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
    ReviewDecided,
    ReviewRequested,
    SessionCancelled,
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

__all__ = ["Append", "session_history", "write_histories", "AGENTS", "TENANTS"]

AGENTS = ("coder", "researcher", "support")
TENANTS = ("acme", "globex", "initech")
_TOOLS = (
    ("read_file", "read", '{"path": "src/app.py"}'),
    ("list_dir", "read", '{"path": "."}'),
    ("write_file", "write", '{"path": "notes.md", "content": "done"}'),
    ("run_shell", "exec", '{"command": "pytest -q"}'),
    ("send_email", "external", '{"to": "ops@example.com", "subject": "report", "body": "ok"}'),
)


@dataclass
class Append:
    """One append call: events for one session, written under ``epoch``."""

    session_id: str
    events: list[Event]
    epoch: int


@dataclass
class _Session:
    sid: str
    rng: random.Random
    epoch: int = 0
    appends: list[Append] = field(default_factory=list)

    staged: list[Event] = field(default_factory=list)

    def add(self, *events: Event) -> None:
        """Stage events, as the runner stages decisions and outcomes."""
        self.staged.extend(events)

    def flush(self, *events: Event) -> None:
        """One durable append: what is staged plus ``events`` (the next "before" event)."""
        self.staged.extend(events)
        if self.staged:
            self.appends.append(Append(self.sid, self.staged, self.epoch))
            self.staged = []

    def claim(self) -> None:
        self.flush()
        self.epoch += 1
        self.flush(SessionClaimed(owner=f"host-{self.rng.randrange(4)}@node", epoch=self.epoch))

    def done(self) -> list[Append]:
        self.flush()
        return self.appends


def session_history(
    rng: random.Random,
    session_id: str,
    *,
    max_steps: int = 8,
    content_bytes: int = 200,
    end_rate: float = 1.0,
) -> list[Append]:
    """Every append one session makes; its last state is any SPEC §3 status.

    ``end_rate`` scales the chance per step that something ends the session
    early (model failure, a limit, a cancellation): lower means longer sessions.
    """
    s = _Session(session_id, rng)
    agent = rng.choice(AGENTS)
    model = "claude-sonnet-4-6"
    s.flush(
        SessionCreated(
            task_id=session_id.removeprefix("s-"),
            prompt=f"task {session_id}: fix the failing test in src/app.py",
            agent_type=agent,
            tenant=rng.choice(TENANTS),
            model=model,
            tools=[t[0] for t in _TOOLS],
        )
    )
    if rng.random() < 0.03:
        return s.done()  # still pending: never claimed
    s.claim()
    steps = rng.randint(1, max_steps)
    for step in range(1, steps + 1):
        request = f"{session_id}-m{step}"
        s.flush(ModelCallRequested(step=step, request_id=request, model=model))
        for attempt in range(1, 1 + (rng.random() < 0.1) * rng.randint(1, 2)):
            s.add(
                ModelCallRetried(
                    step=step,
                    request_id=request,
                    attempt=attempt,
                    error="rate limited",
                    status_code=429,
                    delay_ms=500.0,
                )
            )
        if rng.random() < 0.04:  # host lost mid-call: a new owner asks again
            s.claim()
            s.flush(ModelCallRequested(step=step, request_id=request, model=model))
        if rng.random() < 0.02 * end_rate:
            s.add(
                ModelCallFailed(step=step, request_id=request, error="overloaded", status_code=529),
                SessionFailed(error="MODEL_ERROR: overloaded after 3 attempts"),
            )
            return s.done()
        last = step == steps
        calls = 0 if last else rng.choice((1, 1, 1, 2))
        tokens_in, tokens_out = rng.randint(500, 4000), rng.randint(20, 600)
        content = json.dumps([{"type": "text", "text": "x" * rng.randint(0, content_bytes)}])
        s.add(
            ModelResponded(
                step=step,
                request_id=request,
                model=model,
                content=content,
                stop_reason="tool_use" if calls else "end_turn",
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                cache_read_tokens=rng.choice((0, 0, 1024)),
                cost_usd=round(tokens_in * 3e-6 + tokens_out * 15e-6, 8),
                latency_ms=round(rng.uniform(200, 3000), 3),
            )
        )
        for k in range(calls):
            if _tool_call(s, step, f"toolu_{session_id}_{step}_{k}", end_rate) is not None:
                return s.done()
        if rng.random() < 0.05:
            s.add(
                ContextCompacted(
                    step=step,
                    tokens_before=160_000,
                    tokens_after=40_000,
                    dropped_messages=6,
                    summary="earlier turns: read files, ran tests",
                )
            )
        if rng.random() < 0.03 * end_rate:
            s.add(
                LimitExceeded(code="MAX_STEPS_EXCEEDED", limit=step, value=step + 1),
                SessionFailed(error=f"MAX_STEPS_EXCEEDED: {step + 1} > {step}"),
            )
            return s.done()
        if rng.random() < 0.02 * end_rate:
            s.flush(CancelRequested(by="operator"))
            s.add(SessionCancelled(note="by operator"))
            return s.done()
    if rng.random() < 0.9:
        s.add(SessionCompleted(result=f"done: {steps} steps"))
    return s.done()  # else: still running


def _tool_call(s: _Session, step: int, call_id: str, end_rate: float) -> bool | None:
    """One tool call; True if it ended the session, None if the session goes on.

    Returns False when the history stops here with the call awaiting a human.
    """
    rng = s.rng
    tool, risk, args = rng.choice(_TOOLS)
    s.add(ToolCallProposed(step=step, call_id=call_id, tool=tool, input=args))
    roll = rng.random()
    verdict: Literal["allow", "ask", "deny"] = (
        "ask" if tool == "send_email" else ("deny" if roll < 0.05 else "allow")
    )
    s.add(ToolCallVetted(call_id=call_id, verdict=verdict, risk=risk, reason=f"policy: {verdict}"))
    if verdict == "deny":
        s.add(ToolCallRejected(call_id=call_id, reason="denied by policy: run_shell(rm -rf *)"))
        return None
    if verdict == "ask":
        s.flush(ReviewRequested(call_id=call_id, reason="send_email needs approval"))
        decision = rng.random()
        if decision < 0.2 * end_rate:
            return False  # a human has not decided yet
        if decision < 0.35:
            end = rng.random() < 0.5 * end_rate
            s.flush(
                ReviewDecided(
                    call_id=call_id,
                    approved=False,
                    reviewer="alice",
                    note=rng.choice(("", "no")),
                    end_session=end,
                )
            )
            if end:
                s.add(SessionFailed(error="DENIED_BY_REVIEWER: no"))
                return True
            return None
        s.flush(ReviewDecided(call_id=call_id, approved=True, reviewer="alice"))
    s.flush(ToolCallStarted(call_id=call_id, idempotency_key=f"{s.sid}:{call_id}"))
    if rng.random() < 0.05:
        s.add(ToolCallFailed(call_id=call_id, error="timeout after 30s", latency_ms=30000.0))
    else:
        s.add(
            ToolCallCompleted(
                call_id=call_id,
                output="line\n" * rng.randint(1, 20),
                is_error=rng.random() < 0.05,
                latency_ms=round(rng.uniform(0.1, 50), 3),
            )
        )
    return None


def write_histories(
    partitions: Sequence[FileLog], histories: dict[str, list[Append]], rng: random.Random
) -> int:
    """Append the histories, sessions interleaved as a fleet would; the number of events."""
    cursors = dict.fromkeys(histories, 0)
    seqs = dict.fromkeys(histories, 0)
    home = {sid: i % len(partitions) for i, sid in enumerate(histories)}
    total = 0
    live = list(histories)
    while live:
        sid = rng.choice(live)
        append = histories[sid][cursors[sid]]
        log = partitions[home[sid]]
        log.append(sid, append.events, seqs[sid], append.epoch)
        seqs[sid] += len(append.events)
        total += len(append.events)
        cursors[sid] += 1
        if cursors[sid] == len(histories[sid]):
            live.remove(sid)
    return total


def open_partitions(log_root: Path, count: int) -> list[FileLog]:
    return [FileLog.open(log_root / f"p{i}") for i in range(count)]
