"""A session's events as the console shows them: a kind, a one-line summary, the data.

Pure functions of the envelopes (no I/O): the same stream always reads the same.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from fleetlog.events.schema import (
    BlobRef,
    CancelRequested,
    ContextCompacted,
    ContextRepaired,
    Envelope,
    LimitExceeded,
    ModelCallFailed,
    ModelCallRequested,
    ModelCallRetried,
    ModelResponded,
    Payload,
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
    UnknownEvent,
)
from fleetlog.events.state import SessionState

__all__ = ["timeline", "tool_calls", "session_info", "short"]

#: The longest text a timeline carries in one field; the rest is cut with a note.
MAX_FIELD = 4000


def short(text: str, n: int = 160) -> str:
    """``text`` on one line, at most ``n`` characters."""
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1] + "…"


def _payload(value: Payload) -> str:
    if isinstance(value, BlobRef):
        return f"<blob {value.sha256[:12]}…, {value.size:,} bytes>"
    return value


def _clip(value: Any) -> Any:
    """Event data for JSON: long strings cut, blobs named."""
    if isinstance(value, str):
        if len(value) > MAX_FIELD:
            return value[:MAX_FIELD] + f"… ({len(value) - MAX_FIELD:,} more characters)"
        return value
    if isinstance(value, dict):
        if set(value) == {"sha256", "size"}:
            return f"<blob {str(value['sha256'])[:12]}…, {value['size']} bytes>"
        return {k: _clip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _reply_text(content: Payload) -> str:
    """What a model reply said, in short: its text, then the tools it asked for."""
    text = _payload(content)
    try:
        blocks = json.loads(text)
    except ValueError:
        return short(text)
    if not isinstance(blocks, list):
        return short(text)
    said = [
        str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    ]
    asked = [
        str(b.get("name", "?"))
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "tool_use"
    ]
    parts = [short(" ".join(said), 200)] if any(s.strip() for s in said) else []
    if asked:
        parts.append("→ " + ", ".join(asked))
    return " ".join(parts)


def _summary(env: Envelope, tools: dict[str, str]) -> tuple[str, str, list[str]]:
    """(kind, summary, extra lines) of one event."""
    from fleetlog.cli import _compaction_lines

    e = env.event
    match e:
        case SessionCreated():
            return (
                "session",
                f"created from task {e.task_id}: agent {e.agent_type}, tenant {e.tenant}, "
                f"model {e.model}",
                [short(_payload(e.prompt), 400)],
            )
        case SessionClaimed():
            sandbox = f", sandbox {e.sandbox}" if e.sandbox else ""
            return "session", f"claimed by {e.owner} (epoch {e.epoch}){sandbox}", []
        case CancelRequested():
            by = f" by {e.by}" if e.by else ""
            return "session", f"cancel requested{by}" + (f": {e.note}" if e.note else ""), []
        case SessionCompleted():
            return "session", "completed", [short(_payload(e.result), 400)] if e.result else []
        case SessionFailed():
            return "session", f"failed: {e.error}", []
        case SessionCancelled():
            return "session", "cancelled" + (f": {e.note}" if e.note else ""), []
        case SnapshotTaken():
            return "session", f"snapshot up to seq {e.upto_seq}", []
        case ModelCallRequested():
            what = "compaction summary" if e.purpose == "compaction" else f"step {e.step}"
            return (
                "model",
                f"{what}: model call to {e.model} (~{e.input_tokens_estimate:,} tokens in)",
                [],
            )
        case ModelCallRetried():
            return "model", f"step {e.step}: attempt {e.attempt} failed, retried: {e.error}", []
        case ModelResponded():
            return (
                "model",
                f"step {e.step}: {e.stop_reason}, {e.input_tokens:,} in + {e.output_tokens:,} "
                f"out tokens, ${e.cost_usd:.4f}, {e.latency_ms:.0f} ms",
                [_reply_text(e.content)],
            )
        case ModelCallFailed():
            return "model", f"step {e.step}: model call failed: {e.error}", []
        case ToolCallProposed():
            return "tool", f"{e.tool}({short(_payload(e.input), 200)})", [f"call {e.call_id}"]
        case ToolCallVetted():
            rule = f" [rule {e.rule}]" if e.rule else ""
            return (
                "tool",
                f"{tools.get(e.call_id, '?')}: verdict {e.verdict} ({e.risk}){rule}",
                [e.reason] if e.reason else [],
            )
        case ToolCallRejected():
            return "tool", f"{tools.get(e.call_id, '?')}: refused: {e.reason}", []
        case ReviewRequested():
            doubt = " (in doubt after a crash)" if e.in_doubt else ""
            return "review", f"{tools.get(e.call_id, '?')}: review requested{doubt}", [e.reason]
        case ReviewDecided():
            verb = "approved" if e.approved else "denied"
            by = f" by {e.reviewer}" if e.reviewer else ""
            ends = "; the session ends" if e.end_session else ""
            lines = [f"note: {e.note}"] if e.note else []
            return "review", f"{tools.get(e.call_id, '?')}: {verb}{by}{ends}", lines
        case ToolCallStarted():
            again = f" (attempt {e.attempt})" if e.attempt > 1 else ""
            return "tool", f"{tools.get(e.call_id, '?')}: started{again}", []
        case ToolCallCompleted():
            state = "returned an error" if e.is_error else "succeeded"
            return (
                "tool",
                f"{tools.get(e.call_id, '?')}: {state} in {e.latency_ms:.0f} ms",
                [short(_payload(e.output), 300)],
            )
        case ToolCallFailed():
            return "tool", f"{tools.get(e.call_id, '?')}: failed: {e.error}", []
        case ContextCompacted():
            lines = _compaction_lines(e)
            return "compaction", lines[0], lines[1:]
        case ContextRepaired():
            return "compaction", f"context repaired before step {e.step}", list(e.problems)
        case LimitExceeded():
            detail = f": {e.detail}" if e.detail else ""
            return "limit", f"{e.code}: {e.value:g} over the limit {e.limit:g}{detail}", []
        case UnknownEvent():
            return "session", f"an event this version does not know: {e.type_name}", []


def timeline(stream: list[Envelope]) -> list[dict[str, Any]]:
    """Every event of a session, oldest first, ready for JSON."""
    tools: dict[str, str] = {}
    out = []
    for env in stream:
        if isinstance(env.event, ToolCallProposed):
            tools[env.event.call_id] = env.event.tool
        kind, summary, lines = _summary(env, tools)
        data = msgspec.to_builtins(env.event)
        data.pop("type", None)
        out.append(
            {
                "seq": env.seq,
                "ts": env.ts,
                "epoch": env.epoch,
                "type": type(env.event).__name__,
                "kind": kind,
                "summary": summary,
                "lines": [line for line in lines if line],
                "data": _clip(data),
            }
        )
    return out


def tool_calls(state: SessionState) -> list[dict[str, Any]]:
    """The session's tool calls in the order the model asked for them."""
    from fleetlog.events.state import call_hash

    return [
        {
            "call_id": c.call_id,
            "tool": c.tool,
            "step": c.step,
            "status": c.status,
            "verdict": c.verdict,
            "risk": c.risk,
            "reason": c.reason,
            "in_doubt": c.in_doubt,
            "decision": c.decision,
            "error": c.error,
            "input": _clip(_payload(c.input)),
            "call_hash": call_hash(c.tool, c.input),
        }
        for c in state.tool_calls.values()
    ]


def session_info(state: SessionState) -> dict[str, Any]:
    """What the session page's header shows, besides its row."""
    return {
        "model": state.model,
        "prompt": _clip(_payload(state.prompt)),
        "result": _clip(_payload(state.result)),
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "completed_at": state.completed_at,
        "compactions": state.compactions,
        "owner": state.owner,
        "cancel_requested": state.cancel_requested,
        "limits": msgspec.to_builtins(state.limits),
    }
