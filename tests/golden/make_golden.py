"""Write a golden log: ``python tests/golden/make_golden.py tests/golden/v1``.

Run once per format version and check the output in. Never regenerate an
existing version: its bytes are the promise that logs written by that version
decode and fold the same way forever (tests/test_golden.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import (
    CancelRequested,
    ContextCompacted,
    LimitExceeded,
    Limits,
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
    SnapshotTaken,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallRejected,
    ToolCallStarted,
    ToolCallVetted,
)
from fleetlog.events.state import fold


def write(root: Path) -> None:
    log = FileLog.open(root / "log", segment_bytes=4096, blob_threshold=1024)
    a = [
        SessionCreated(
            task_id="t-001",
            prompt="Read notes.txt and email a summary to ops@example.com",
            agent_type="coder",
            tenant="acme",
            model="claude-sonnet-4-5",
            system="You are a careful coding agent.",
            tools=["read_file", "send_email"],
            limits=Limits(max_steps=10, max_cost_usd=0.5),
            workspace="workspaces/t-001",
        ),
        SessionClaimed(owner="host-0", node="node-a", epoch=1),
        ModelCallRequested(step=1, request_id="req-1", model="claude-sonnet-4-5"),
        ModelCallRetried(
            step=1,
            request_id="req-1",
            attempt=1,
            error="overloaded",
            status_code=529,
            delay_ms=500.0,
        ),
        ModelResponded(
            step=1,
            request_id="req-1",
            model="claude-sonnet-4-5",
            content='[{"type":"tool_use","id":"toolu_01","name":"read_file","input":{"path":"notes.txt"}}]',
            stop_reason="tool_use",
            input_tokens=812,
            output_tokens=64,
            cost_usd=0.003396,
            latency_ms=840.5,
        ),
        ToolCallProposed(
            step=1, call_id="toolu_01", tool="read_file", input='{"path":"notes.txt"}'
        ),
        ToolCallVetted(call_id="toolu_01", verdict="allow", risk="read", rule="read_file"),
        ToolCallStarted(call_id="toolu_01", idempotency_key="sess-a:toolu_01"),
        ToolCallCompleted(
            call_id="toolu_01", output="notes: " + "lorem ipsum " * 300, latency_ms=0.8
        ),
    ]
    log.append("sess-a", a[:2], 0, epoch=1)
    log.append("sess-a", a[2:], 2, epoch=1)
    # The host died; another claimed the session with a newer epoch and went on.
    b = [
        SessionClaimed(owner="host-1", node="node-b", epoch=2),
        ModelCallRequested(step=2, request_id="req-2", model="claude-sonnet-4-5"),
        ModelResponded(
            step=2,
            request_id="req-2",
            model="claude-sonnet-4-5",
            content='[{"type":"tool_use","id":"toolu_02","name":"send_email","input":{}}]',
            stop_reason="tool_use",
            input_tokens=1400,
            output_tokens=80,
            cost_usd=0.0054,
            latency_ms=910.0,
        ),
        ToolCallProposed(
            step=2, call_id="toolu_02", tool="send_email", input='{"to":"ops@example.com"}'
        ),
        ToolCallVetted(
            call_id="toolu_02",
            verdict="ask",
            risk="external",
            reason="irreversible",
            rule="send_email",
        ),
        ReviewRequested(call_id="toolu_02", reason="policy: ask send_email"),
    ]
    log.append("sess-a", b, len(a), epoch=2)
    log.append(
        "sess-a",
        [ReviewDecided(call_id="toolu_02", approved=True, reviewer="ana", note="fine")],
        len(a) + len(b),
    )
    c = [
        ToolCallStarted(call_id="toolu_02", idempotency_key="sess-a:toolu_02"),
        ToolCallCompleted(
            call_id="toolu_02", output="queued outbox/sess-a-toolu_02.eml", latency_ms=2.0
        ),
        ContextCompacted(
            step=3,
            tokens_before=160000,
            tokens_after=42000,
            dropped_messages=6,
            summary="Read notes; emailed ops.",
        ),
        SnapshotTaken(upto_seq=19, state='{"step":3}'),
        SessionCompleted(result="Summary emailed to ops@example.com."),
    ]
    log.append("sess-a", c, len(a) + len(b) + 1, epoch=2)

    log.append(
        "sess-b",
        [
            SessionCreated(task_id="t-002", prompt="Loop forever", tenant="globex"),
            SessionClaimed(owner="host-0", epoch=1),
            ModelCallRequested(step=1, request_id="req-b1", model="scripted"),
            ModelCallFailed(
                step=1,
                request_id="req-b1",
                error="APIStatusError 500",
                status_code=500,
                retryable=True,
            ),
            ModelCallRequested(step=1, request_id="req-b2", model="scripted"),
            ModelResponded(
                step=1, request_id="req-b2", model="scripted", content="[]", stop_reason="tool_use"
            ),
            ToolCallProposed(step=1, call_id="toolu_b1", tool="rm_rf", input="{}"),
            ToolCallRejected(call_id="toolu_b1", reason="unknown tool: rm_rf"),
            ToolCallProposed(
                step=1, call_id="toolu_b2", tool="run_shell", input='{"command":"false"}'
            ),
            ToolCallStarted(call_id="toolu_b2", idempotency_key="sess-b:toolu_b2"),
            ToolCallFailed(call_id="toolu_b2", error="exit status 1", latency_ms=3.0),
            LimitExceeded(code="LOOP_DETECTED", limit=3, value=3, detail="run_shell x3"),
            SessionFailed(error="LOOP_DETECTED: run_shell called 3 times with the same input"),
        ],
        0,
        epoch=1,
    )
    log.append(
        "sess-c",
        [
            SessionCreated(task_id="t-003", prompt="Wait for me"),
            CancelRequested(by="cli", note="not needed"),
            SessionCancelled(note="not needed"),
        ],
        0,
    )
    envelopes = log.read_all(1)
    states = {
        sid: fold(sid, log.read_stream(sid, resolve_blobs=False))
        for sid in sorted(log.session_ids())
    }
    log.close()
    (root / "LOCK").unlink(missing_ok=True)
    (root / "log" / "LOCK").unlink(missing_ok=True)
    (root / "expected_events.json").write_bytes(msgspec.json.format(msgspec.json.encode(envelopes)))
    (root / "expected_states.json").write_bytes(msgspec.json.format(msgspec.json.encode(states)))


if __name__ == "__main__":
    write(Path(sys.argv[1]))
