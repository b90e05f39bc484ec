"""DuckDB projections (SPEC §8): every column against a history computed by hand,
incremental catch-up versus rebuild under crashes, metrics on a known fleet."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.histories import session_history, write_histories
from fleetlog.events.errors import BlobMissingError, FleetlogError, ProjectionError, QueryError
from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import (
    Event,
    Limits,
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
from fleetlog.events.state import fold
from fleetlog.projections.projector import (
    _APPLY,
    _FIELDS,
    _FOLDED,
    SCHEMA_VERSION,
    Projector,
    _SimulatedCrash,
    _with_fields,
    rows_to_arrow,
)

TABLES = (
    "events",
    "agent_executions",
    "agent_tool_calls",
    "model_calls",
    "agent_steps",
    "budget_counters",
    "agent_health_metrics",
    "_checkpoints",
)


def snapshot(projector: Projector) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table and view, in a stable order."""
    out = {}
    with projector.cursor() as cur:
        for name in TABLES:
            rows = cur.execute(f"SELECT * FROM {name}").fetchall()
            out[name] = sorted(rows, key=repr)
    return out


def ts(seconds: float) -> dt.datetime:
    """What a log time becomes in DuckDB: UTC, microseconds, rounded half away from zero."""
    micros = math.floor(seconds * 1e6 + 0.5)
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)


# --- a history written by hand, and every column expected by hand -----------------------------

A: list[tuple[int, Event]] = [  # (epoch, event) of session s-a, partition 0
    (0, SessionCreated(task_id="a", prompt="fix it", agent_type="coder", tenant="acme",
                       model="m1", tools=["read_file", "send_email"], limits=Limits(max_steps=5))),
    (1, SessionClaimed(owner="h0", epoch=1)),
    (1, ModelCallRequested(step=1, request_id="a-1", model="m1")),
    (1, ModelCallRetried(step=1, request_id="a-1", attempt=1, error="rate limited",
                         status_code=429, delay_ms=100.0)),
    (1, ModelResponded(step=1, request_id="a-1", model="m1", content="[]", stop_reason="tool_use",
                       input_tokens=100, output_tokens=10, cache_read_tokens=5,
                       cache_write_tokens=1, cost_usd=0.00045, latency_ms=200.0)),
    (1, ToolCallProposed(step=1, call_id="c1", tool="read_file", input='{"path": "a.py"}')),
    (1, ToolCallVetted(call_id="c1", verdict="allow", risk="read", rule="read_file")),
    (1, ToolCallStarted(call_id="c1", idempotency_key="a:c1")),
    (1, ToolCallCompleted(call_id="c1", output="print(1)", latency_ms=3.0)),
    (1, ModelCallRequested(step=2, request_id="a-2", model="m1")),
    (1, ModelResponded(step=2, request_id="a-2", model="m1", content="[]", stop_reason="tool_use",
                       input_tokens=200, output_tokens=20, cost_usd=0.0009, latency_ms=300.0)),
    (1, ToolCallProposed(step=2, call_id="c2", tool="send_email", input='{"to": "x@y"}')),
    (1, ToolCallVetted(call_id="c2", verdict="ask", risk="external", reason="policy ask",
                       rule="send_email")),
    (1, ReviewRequested(call_id="c2", reason="send_email needs approval")),
    (1, ReviewDecided(call_id="c2", approved=True, reviewer="alice", note="ok")),
    (2, SessionClaimed(owner="h1", epoch=2)),
    (2, ToolCallStarted(call_id="c2", idempotency_key="a:c2")),
    (2, ToolCallCompleted(call_id="c2", output="sent", latency_ms=7.0)),
    (2, ModelCallRequested(step=3, request_id="a-3", model="m1")),
    (2, ModelResponded(step=3, request_id="a-3", model="m1", content="[]", stop_reason="end_turn",
                       input_tokens=300, output_tokens=30, cost_usd=0.00135, latency_ms=100.0)),
    (2, SessionCompleted(result="done")),
]  # fmt: skip
B: list[tuple[int, Event]] = [  # s-b, partition 1: a denied call, then the model fails
    (0, SessionCreated(task_id="b", prompt="clean up", agent_type="coder", tenant="globex",
                       model="m1")),
    (1, SessionClaimed(owner="h1", epoch=1)),
    (1, ModelCallRequested(step=1, request_id="b-1", model="m1")),
    (1, ModelResponded(step=1, request_id="b-1", model="m1", content="[]", stop_reason="tool_use",
                       input_tokens=50, output_tokens=5, cost_usd=0.000225, latency_ms=50.0)),
    (1, ToolCallProposed(step=1, call_id="c3", tool="run_shell", input='{"command": "rm -rf /"}')),
    (1, ToolCallVetted(call_id="c3", verdict="deny", risk="exec", reason="destructive",
                       rule="run_shell(rm -rf *)")),
    (1, ToolCallRejected(call_id="c3", reason="denied by policy")),
    (1, ModelCallRequested(step=2, request_id="b-2", model="m1")),
    (1, ModelCallFailed(step=2, request_id="b-2", error="overloaded", status_code=529)),
    (1, SessionFailed(error="MODEL_ERROR: overloaded")),
]  # fmt: skip
C: list[tuple[int, Event]] = [  # s-c, partition 1: waiting for a human
    (0, SessionCreated(task_id="c", prompt="mail", agent_type="support", tenant="acme")),
    (1, SessionClaimed(owner="h1", epoch=1)),
    (1, ModelCallRequested(step=1, request_id="c-1", model="scripted")),
    (1, ModelResponded(step=1, request_id="c-1", model="scripted", content="[]",
                       stop_reason="tool_use", input_tokens=10, output_tokens=1,
                       cost_usd=0.000045, latency_ms=20.0)),
    (1, ToolCallProposed(step=1, call_id="c4", tool="send_email", input="{}")),
    (1, ToolCallVetted(call_id="c4", verdict="ask", risk="external", reason="needs approval")),
    (1, ReviewRequested(call_id="c4", reason="needs approval")),
]  # fmt: skip


@pytest.fixture()
def hand_fleet(tmp_path: Path) -> tuple[Path, dict[str, list[float]]]:
    """The three sessions above, interleaved; returns (home, {session: [ts by seq]})."""
    logs = [FileLog.open(tmp_path / "log" / f"p{i}") for i in range(2)]
    streams = {"s-a": (logs[0], A), "s-b": (logs[1], B), "s-c": (logs[1], C)}
    cursor = dict.fromkeys(streams, 0)
    order = ["s-a", "s-b", "s-c"] * 21
    for sid in order:
        log, events = streams[sid]
        i = cursor[sid]
        if i < len(events):
            epoch, event = events[i]
            log.append(sid, [event], i, epoch)
            cursor[sid] = i + 1
    times = {}
    for log in logs:
        for env in log.read_all(1, 1000):
            times.setdefault(env.session_id, []).append(env.ts)
        log.close()
    return tmp_path, times


def test_every_column_matches_the_hand_computed_history(
    hand_fleet: tuple[Path, dict[str, list[float]]],
) -> None:
    home, times = hand_fleet
    a, b, c = (lambda seq, s=s: ts(times[s][seq - 1]) for s in ("s-a", "s-b", "s-c"))
    with Projector.open(home) as projector:
        assert projector.catch_up() == len(A) + len(B) + len(C)
        q = projector.query

        executions = {r["id"]: r for r in q("SELECT * FROM agent_executions").to_pylist()}
        limits_a = json.loads(msgspec.json.encode(Limits(max_steps=5)))
        limits_default = json.loads(msgspec.json.encode(Limits()))
        expected_a = {
            "id": "s-a", "tenant": "acme", "agent_type": "coder", "status": "completed",
            "input_data": "fix it", "result": "done", "error": None,
            "step_count": 3, "token_count": 660, "input_tokens": 600, "output_tokens": 60,
            "cost_usd": Decimal("0.0027"), "restarts": 1,
            "created_at": a(1), "updated_at": a(21), "completed_at": a(21),
            "task_id": "a", "model": "m1", "partition": 0, "owner": "h1", "epoch": 2,
            "seq": 21, "claims": 2, "ended_status": "completed", "pending_request": "",
            "model_retries": 1, "compactions": 0, "cancel_requested": False,
            "unknown_events": 0, "events": 21, "workspace": "", "awaiting_reviews": 0,
            "last_position": 21,  # alone in p0
        }  # fmt: skip
        expected_b = {
            "id": "s-b", "tenant": "globex", "agent_type": "coder", "status": "failed",
            "input_data": "clean up", "result": None, "error": "MODEL_ERROR: overloaded",
            "step_count": 2, "token_count": 55, "input_tokens": 50, "output_tokens": 5,
            "cost_usd": Decimal("0.000225"), "restarts": 0,
            "created_at": b(1), "updated_at": b(10), "completed_at": b(10),
            "task_id": "b", "model": "m1", "partition": 1, "owner": "h1", "epoch": 1,
            "seq": 10, "claims": 1, "ended_status": "failed", "pending_request": "",
            "model_retries": 0, "compactions": 0, "cancel_requested": False,
            "unknown_events": 0, "events": 10, "workspace": "", "awaiting_reviews": 0,
            "last_position": 17,  # b c b c ... in p1 until c's 7 events are in, then b's last 3
        }  # fmt: skip
        expected_c = {
            "id": "s-c", "tenant": "acme", "agent_type": "support", "status": "awaiting_review",
            "input_data": "mail", "result": None, "error": None,
            "step_count": 1, "token_count": 11, "input_tokens": 10, "output_tokens": 1,
            "cost_usd": Decimal("0.000045"), "restarts": 0,
            "created_at": c(1), "updated_at": c(7), "completed_at": None,
            "task_id": "c", "model": "scripted", "partition": 1, "owner": "h1", "epoch": 1,
            "seq": 7, "claims": 1, "ended_status": None, "pending_request": "",
            "model_retries": 0, "compactions": 0, "cancel_requested": False,
            "unknown_events": 0, "events": 7, "workspace": "", "awaiting_reviews": 1,
            "last_position": 14,
        }  # fmt: skip
        for expected, limits, tools in (
            (expected_a, limits_a, ["read_file", "send_email"]),
            (expected_b, limits_default, []),
            (expected_c, limits_default, []),
        ):
            row = dict(executions[expected["id"]])
            assert json.loads(row.pop("limits")) == limits
            assert json.loads(row.pop("tools")) == tools
            state = json.loads(row.pop("state"))
            assert state == {
                "task_id": expected["task_id"], "model": expected["model"],
                "owner": expected["owner"], "epoch": expected["epoch"], "seq": expected["seq"],
                "pending_request": "", "cancel_requested": False,
                "model_retries": expected["model_retries"], "compactions": 0,
                "limits": limits, "tools": tools, "workspace": "",
            }  # fmt: skip
            assert row == expected

        calls = {r["id"]: r for r in q("SELECT * FROM agent_tool_calls").to_pylist()}
        none_review = {"review_requested_at": None, "reviewed_at": None, "reviewer": None,
                       "review_note": None, "reviews": 0}  # fmt: skip
        assert calls == {
            "c1": {
                "id": "c1", "execution_id": "s-a", "step_number": 1, "tool_name": "read_file",
                "tool_input": '{"path": "a.py"}', "tool_output": "print(1)",
                "status": "succeeded", "risk": "read", "verdict": "allow", "latency_ms": 3.0,
                "error": None, "called_at": a(6), "reason": "", "rule": "read_file",
                "in_doubt": False, **none_review, "attempts": 1, "idempotency_key": "a:c1",
                "finished_at": a(9),
            },
            "c2": {
                "id": "c2", "execution_id": "s-a", "step_number": 2, "tool_name": "send_email",
                "tool_input": '{"to": "x@y"}', "tool_output": "sent", "status": "succeeded",
                "risk": "external", "verdict": "ask", "latency_ms": 7.0, "error": None,
                "called_at": a(12), "reason": "send_email needs approval", "rule": "send_email",
                "in_doubt": False, "reviews": 1, "review_requested_at": a(14),
                "reviewed_at": a(15), "reviewer": "alice", "review_note": "ok", "attempts": 1,
                "idempotency_key": "a:c2", "finished_at": a(18),
            },
            "c3": {
                "id": "c3", "execution_id": "s-b", "step_number": 1, "tool_name": "run_shell",
                "tool_input": '{"command": "rm -rf /"}', "tool_output": None, "status": "denied",
                "risk": "exec", "verdict": "deny", "latency_ms": None,
                "error": "denied by policy", "called_at": b(5), "reason": "destructive",
                "rule": "run_shell(rm -rf *)", "in_doubt": False, **none_review, "attempts": 0,
                "idempotency_key": None, "finished_at": b(7),
            },
            "c4": {
                "id": "c4", "execution_id": "s-c", "step_number": 1, "tool_name": "send_email",
                "tool_input": "{}", "tool_output": None, "status": "awaiting_review",
                "risk": "external", "verdict": "ask", "latency_ms": None, "error": None,
                "called_at": c(5), "reason": "needs approval", "rule": "", "in_doubt": False,
                "reviews": 1, "review_requested_at": c(7), "reviewed_at": None, "reviewer": None,
                "review_note": None, "attempts": 0, "idempotency_key": None, "finished_at": None,
            },
        }  # fmt: skip

        models = {r["request_id"]: r for r in q("SELECT * FROM model_calls").to_pylist()}

        def responded(sid: str, step: int, model: str, tin: int, tout: int, cost: str,
                      lat: float, stop: str, at: Any, resp: Any, *, cache: int = 0,
                      cache_w: int = 0, retries: int = 0) -> dict[str, Any]:  # fmt: skip
            return {
                "execution_id": sid, "step_number": step, "model": model, "input_tokens": tin,
                "output_tokens": tout, "cache_read_tokens": cache, "cost_usd": Decimal(cost),
                "latency_ms": lat, "stop_reason": stop, "called_at": at,
                "request_id": f"{sid[2:]}-{step}", "status": "responded",
                "cache_write_tokens": cache_w, "retries": retries, "error": None,
                "status_code": None, "responded_at": resp, "purpose": "",
            }  # fmt: skip

        assert models == {
            "a-1": responded("s-a", 1, "m1", 100, 10, "0.00045", 200.0, "tool_use", a(3), a(5),
                             cache=5, cache_w=1, retries=1),
            "a-2": responded("s-a", 2, "m1", 200, 20, "0.0009", 300.0, "tool_use", a(10), a(11)),
            "a-3": responded("s-a", 3, "m1", 300, 30, "0.00135", 100.0, "end_turn", a(19), a(20)),
            "b-1": responded("s-b", 1, "m1", 50, 5, "0.000225", 50.0, "tool_use", b(3), b(4)),
            "b-2": {
                "execution_id": "s-b", "step_number": 2, "model": "m1", "input_tokens": None,
                "output_tokens": None, "cache_read_tokens": None, "cost_usd": None,
                "latency_ms": None, "stop_reason": None, "called_at": b(8), "request_id": "b-2",
                "status": "failed", "cache_write_tokens": None, "retries": 0,
                "error": "overloaded", "status_code": 529, "responded_at": None, "purpose": "",
            },
            "c-1": responded("s-c", 1, "scripted", 10, 1, "0.000045", 20.0, "tool_use", c(3),
                             c(4)),
        }  # fmt: skip

        budgets = q("SELECT * FROM budget_counters ORDER BY tenant, agent_type").to_pylist()
        assert budgets == [
            {"tenant": "acme", "agent_type": "coder", "sessions": 1, "steps": 3, "tokens": 660,
             "cost_usd": Decimal("0.0027")},
            {"tenant": "acme", "agent_type": "support", "sessions": 1, "steps": 1, "tokens": 11,
             "cost_usd": Decimal("0.000045")},
            {"tenant": "globex", "agent_type": "coder", "sessions": 1, "steps": 2, "tokens": 55,
             "cost_usd": Decimal("0.000225")},
        ]  # fmt: skip

        steps = q("SELECT * FROM agent_steps ORDER BY execution_id, step_number").to_pylist()
        d = Decimal
        assert [tuple(r.values()) for r in steps] == [
            ("s-a", 1, d("200"), d("3"), d("203")),
            ("s-a", 2, d("300"), d("7"), d("307")),
            ("s-a", 3, d("100"), None, d("100")),
            ("s-b", 1, d("50"), None, d("50")),  # b-2 failed: no work recorded
            ("s-c", 1, d("20"), None, d("20")),
        ]
        # Step latencies, by hand: coder 203 (200+3), 307 (300+7), 100, 50; support 20.
        assert q("SELECT * FROM agent_health_metrics").to_pylist() == [
            {"agent_type": "coder", "sessions": 2, "completion_rate": 0.5, "avg_steps": 2.5,
             "tool_success_rate": 1.0, "human_review_rate": 0.3333,
             "token_cost_per_completion": 0.002925, "p50_step_latency_ms": 151.5,
             "p95_step_latency_ms": 291.4},
            {"agent_type": "support", "sessions": 1, "completion_rate": None, "avg_steps": 1.0,
             "tool_success_rate": None, "human_review_rate": 1.0,
             "token_cost_per_completion": None, "p50_step_latency_ms": 20.0,
             "p95_step_latency_ms": 20.0},
        ]  # fmt: skip

        events = q("SELECT * FROM events ORDER BY partition, position").to_pylist()
        assert len(events) == len(A) + len(B) + len(C)
        written = {"s-a": A, "s-b": B, "s-c": C}
        for row in events:
            epoch, event = written[row["session_id"]][row["seq"] - 1]
            assert row["type"] == type(event).__name__
            assert row["epoch"] == epoch
            assert row["ts"] == ts(times[row["session_id"]][row["seq"] - 1])
            assert json.loads(row["data"]) == json.loads(msgspec.json.encode(event))
        assert [r["position"] for r in events if r["partition"] == 0] == list(range(1, 22))
        assert [r["position"] for r in events if r["partition"] == 1] == list(range(1, 18))
        assert projector.checkpoints() == {0: 21, 1: 17}


def test_each_statement_parses_exactly_the_fields_it_reads() -> None:
    """``_fields(x)`` becomes a parse of the ``f.<name>`` its statement reads, and only those."""
    parsed = 0
    for statement in _APPLY:
        assert "_fields(" not in statement.query
        structs = re.findall(r"json_transform\((.*?), '(\{[^']*\})'\)", statement.query, re.S)
        read = set(re.findall(r"\bf\.(\w+)", statement.query))
        for _argument, struct in structs:
            assert json.loads(struct) == {name: _FIELDS[name] for name in sorted(read)}
        parsed += len(structs)
    assert parsed == 3  # model calls, tool calls, sessions
    # Nested parentheses in the argument are kept whole; a field nobody declared fails at once.
    [one] = _with_fields("SELECT _fields(CASE WHEN (a) THEN (b) END).step AS f, f.step FROM t")
    assert one.query.startswith('SELECT json_transform(CASE WHEN (a) THEN (b) END, \'{"step"')
    with pytest.raises(KeyError, match="no_such_field"):
        _with_fields("SELECT _fields(d) AS f, f.no_such_field FROM t")


def test_rows_to_arrow_gives_each_event_its_own_json_line_whatever_its_text() -> None:
    """The data column is one event's JSON per row, any text intact (it is cut from one buffer)."""
    texts = ["plain", "héllo 日本 🚀", "two\nlines\r\n", 'quotes " and \\ ', "\u2028\u2029", ""]
    events = [SessionCompleted(result=text) for text in texts]
    rows = [(i + 1, "s-1", i + 1, 0, 1.5 + i, f"e{i}", ev) for i, ev in enumerate(events)]
    table = rows_to_arrow(rows, 3, None)
    table.validate(full=True)  # offsets and UTF-8 checked here, not on the way in
    assert table.column("data").to_pylist() == [msgspec.json.encode(ev).decode() for ev in events]
    assert [msgspec.json.decode(d)["result"] for d in table.column("data").to_pylist()] == texts
    assert table.column("position").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert set(table.column("partition").to_pylist()) == {3}


def test_a_time_window_and_an_agent_filter(
    hand_fleet: tuple[Path, dict[str, list[float]]],
) -> None:
    home, times = hand_fleet
    with Projector.open(home) as projector:
        projector.catch_up()
        only_support = projector.health(agent_type="support").to_pylist()
        assert [r["agent_type"] for r in only_support] == ["support"]
        # s-b and s-c were created after s-a: a window starting between them drops s-a.
        after_a = ts(times["s-a"][0]) + dt.timedelta(microseconds=1)
        rows = {r["agent_type"]: r for r in projector.health(since=after_a).to_pylist()}
        assert rows["coder"]["sessions"] == 1  # s-b only
        assert rows["coder"]["completion_rate"] == 0.0
        assert rows["coder"]["p50_step_latency_ms"] == 50.0
        assert projector.health(since=dt.datetime(2999, 1, 1)).num_rows == 0


# --- incremental versus rebuild, with crashes -------------------------------------------------


def _write_random_fleet(home: Path, rng: random.Random, sessions: int, parts: int) -> int:
    histories = {
        f"s-{i:03d}": session_history(rng, f"s-{i:03d}", max_steps=rng.randint(1, 6))
        for i in range(sessions)
    }
    logs = [
        FileLog.open(home / "log" / f"p{i}", segment_bytes=rng.choice((2048, 64 * 1024)))
        for i in range(parts)
    ]
    try:
        return write_histories(logs, histories, rng)
    finally:
        for log in logs:
            log.close()


def _append_late_events(home: Path, rng: random.Random) -> int:
    """Events after the end of about half the ended sessions; how many.

    A tool that reports after the session was cancelled, a retry logged late, a
    host claiming a finished session: their rows move back out of ``_ended``.
    """
    count = 0
    for path in sorted((home / "log").iterdir()):
        with FileLog.open(path) as log:
            for sid in sorted(log.session_ids()):
                stream = list(log.read_stream(sid))
                state = fold(sid, stream)
                if not state.terminal or rng.random() < 0.5:
                    continue
                step = max(state.step, 1)
                events: list[Event] = [
                    ModelCallRetried(
                        step=step,
                        request_id=f"{sid}-m{step}",
                        attempt=9,
                        error="late",
                        status_code=500,
                        delay_ms=1.0,
                    ),
                    SessionClaimed(owner="late@node", epoch=state.epoch + 1),
                ]
                if state.tool_calls:
                    call = rng.choice(sorted(state.tool_calls))
                    events.insert(
                        0,
                        ToolCallFailed(
                            call_id=call, error="finished after the end", latency_ms=1.5
                        ),
                    )
                log.append(sid, events, len(stream), state.epoch + 1)
                count += len(events)
    return count


def _assert_sessions_placed(projector: Projector) -> None:
    """Every session's rows are all in the ``_open`` tables or all in ``_ended``."""
    with projector.cursor() as cur:
        for kind, other in (("open", "ended"), ("ended", "open")):
            for name, column in _FOLDED.items():
                split = cur.execute(
                    f"SELECT count(*) FROM _{name}_{kind} r "
                    f"WHERE r.{column} NOT IN (SELECT id FROM _agent_executions_{kind}) "
                    f"OR r.{column} IN (SELECT id FROM _agent_executions_{other})"
                ).fetchone()
                assert split == (0,), (name, kind)


def _assert_ended_placed(projector: Projector) -> None:
    """After a rebuild, no ended session is left in the ``_open`` tables (rounds join them)."""
    with projector.cursor() as cur:
        left = cur.execute(
            "SELECT count(*) FROM _agent_executions_open WHERE ended_status IS NOT NULL"
        ).fetchone()
    assert left == (0,)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    sessions=st.integers(1, 12),
    parts=st.integers(1, 3),
    plan=st.lists(st.tuples(st.integers(1, 80), st.booleans(), st.booleans()), max_size=25),
    fold_every=st.integers(1, 200),
    late=st.booleans(),
    push_at=st.integers(1, 4),
    quiet_after_s=st.sampled_from([0.0, 0.001, 3600.0]),
)
def test_incremental_with_crashes_equals_rebuild(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    sessions: int,
    parts: int,
    plan: list[tuple[int, bool, bool]],
    fold_every: int,
    late: bool,
    push_at: int,
    quiet_after_s: float,
) -> None:
    home = tmp_path_factory.mktemp("fleet")
    rng = random.Random(seed)
    total = _write_random_fleet(home, rng, sessions, parts)
    projector = Projector.open(home)
    # Sessions move between the _open and _ended tables every few rounds.
    projector.push_at, projector.quiet_after_s = push_at, quiet_after_s
    try:
        # Random chunk sizes; some rounds crash before their commit, some close and reopen.
        for size, crash, reopen in plan:
            before = projector.checkpoints()
            if crash:
                with contextlib.suppress(_SimulatedCrash):  # (nothing left: no round at all)
                    projector.step(size, commit=False)
                assert projector.checkpoints() == before  # nothing of it stayed
            else:
                projector.step(size)
            if reopen:
                projector.close()
                projector = Projector.open(home)
                projector.push_at, projector.quiet_after_s = push_at, quiet_after_s
        projector.catch_up()
        if late:  # events after the end of sessions already projected as ended
            total += _append_late_events(home, rng)
            projector.step(rng.randint(1, 20))
            projector.catch_up()
        incremental = snapshot(projector)
        assert len(incremental["events"]) == total
        _assert_sessions_placed(projector)
        projector.rebuild(workers=1)
        assert snapshot(projector) == incremental
        # A rebuild folding a few segments at a time (merging into what it folded).
        projector.rebuild(workers=1, fold_every=fold_every)
        assert snapshot(projector) == incremental
        _assert_sessions_placed(projector)
        _assert_ended_placed(projector)
        if late:
            _append_late_events(home, rng)  # into a rebuild's _ended tables
            projector.catch_up()
            _assert_sessions_placed(projector)
            after = snapshot(projector)
            projector.rebuild(workers=1)
            assert snapshot(projector) == after
        # And the projection agrees with the pure fold of every stream.
        rows = {r["id"]: r for r in projector.query("FROM agent_executions").to_pylist()}
        calls = {
            (r["execution_id"], r["id"]): r
            for r in projector.query("FROM agent_tool_calls").to_pylist()
        }
    finally:
        projector.close()
    for path in sorted((home / "log").iterdir()):
        with FileLog.open(path, readonly=True) as log:
            for sid in log.session_ids():
                state = fold(sid, log.read_stream(sid))
                row = rows[sid]
                assert row["status"] == state.status
                assert row["step_count"] == state.step
                assert row["input_tokens"] == state.input_tokens
                assert row["output_tokens"] == state.output_tokens
                assert float(row["cost_usd"]) == pytest.approx(state.cost_usd, abs=1e-9)
                assert row["restarts"] == state.restarts
                assert (row["error"] or "") == state.error
                assert (row["result"] or "") == state.result
                assert row["owner"] == (state.owner or None)
                assert row["epoch"] == state.epoch
                assert row["seq"] == state.seq
                assert row["pending_request"] == state.pending_request
                assert row["model_retries"] == state.model_retries
                assert row["compactions"] == state.compactions
                assert row["cancel_requested"] == state.cancel_requested
                assert row["created_at"] == ts(state.created_at)
                assert row["updated_at"] == ts(state.updated_at)
                if state.completed_at is None:
                    assert row["completed_at"] is None
                else:
                    assert row["completed_at"] == ts(state.completed_at)
                for call in state.tool_calls.values():
                    got = calls[(sid, call.call_id)]
                    assert got["status"] == call.status
                    assert (got["verdict"] or "") == call.verdict
                    assert (got["risk"] or "") == call.risk
                    assert (got["reason"] or "") == call.reason
                    assert (got["error"] or "") == call.error
                    assert (got["tool_output"] or "") == call.output
                    assert got["attempts"] == call.attempts
                    assert got["in_doubt"] == call.in_doubt
                    assert (got["idempotency_key"] or "") == call.idempotency_key


@pytest.mark.parametrize(
    ("seed", "workers", "fold_every", "quiet_after_s", "late"),
    [
        (3, 2, 1_000_000, 60.0, False),  # one fold per worker and partition
        (11, 2, 37, 0.0, True),  # every session quiet: all placed in _ended
        (12, 3, 5, 3600.0, True),  # a fold per segment, nothing quiet
        (13, 4, 200, 0.001, False),
    ],
)
def test_a_parallel_rebuild_gives_the_rows_of_incremental_rounds(
    tmp_path: Path, seed: int, workers: int, fold_every: int, quiet_after_s: float, late: bool
) -> None:
    # Decoded and folded by `workers` processes, each folding its sessions by hash,
    # placed per partition: the same rows as rounds that moved sessions between
    # the twins as they went (the rebuild itself moves none).
    rng = random.Random(seed)
    total = _write_random_fleet(tmp_path, rng, 60, rng.randint(1, 3))
    with Projector.open(tmp_path) as projector:
        projector.push_at, projector.quiet_after_s = 2, quiet_after_s
        for _ in range(6):
            projector.step(rng.randint(1, 300))
        projector.catch_up()
        if late:
            total += _append_late_events(tmp_path, rng)
            projector.catch_up()
        incremental = snapshot(projector)
        assert projector.rebuild(workers=workers, pool_from=0, fold_every=fold_every) == total
        assert snapshot(projector) == incremental
        _assert_sessions_placed(projector)
        _assert_ended_placed(projector)
        if late:  # late events for sessions the rebuild placed in _ended
            _append_late_events(tmp_path, rng)
            projector.catch_up()
            after = snapshot(projector)
            projector.rebuild(workers=workers, pool_from=0, fold_every=fold_every)
            assert snapshot(projector) == after


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command (state, ppid, ...); [] if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()


def _spawned_children(parent: int) -> list[int]:
    """The processes ``parent`` started by multiprocessing's spawn, oldest first."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = _stat(int(entry.name))
            spawned = fields and int(fields[1]) == parent
            if spawned and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append((int(fields[19]), int(entry.name)))  # (start time, pid)
    return [pid for _start, pid in sorted(found)]


_REBUILD = """
import sys
from pathlib import Path
from fleetlog.events.errors import ProjectionError
from fleetlog.projections.projector import Projector

if __name__ == "__main__":
    with Projector.open(Path(sys.argv[1])) as projector:
        try:
            projector.rebuild(workers=2, pool_from=0)
        except ProjectionError as e:
            print(e)
            sys.exit(3)
"""


def test_a_rebuild_whose_worker_dies_fails_in_one_line_and_keeps_the_projections(
    tmp_path: Path,
) -> None:
    _write_random_fleet(tmp_path, random.Random(8), 200, 2)
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        before = snapshot(projector)
    # In a process of its own, so that a rebuild that hangs can be killed.
    rebuild = subprocess.Popen(
        [sys.executable, "-c", _REBUILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # The workers live until the rebuild's end.
        deadline = time.monotonic() + 30
        while not (children := _spawned_children(rebuild.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert children, "no worker started"
        os.kill(children[0], signal.SIGKILL)
        try:
            out, _ = rebuild.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the rebuild hangs on a dead worker")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rebuild.pid, signal.SIGKILL)
        rebuild.wait()
    assert (rebuild.returncode, out) == (3, "rebuild: a worker died (exit code -9)\n")
    with Projector.open(tmp_path) as projector:
        assert snapshot(projector) == before  # the live file is untouched
        projector.rebuild(workers=2, pool_from=0)  # and the next rebuild works
        assert snapshot(projector) == before


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left for an init that does not reap is not running)."""
    return _stat(pid)[:1] not in ([], ["Z"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_rebuild_of_a_log_missing_a_blob_fails_in_one_line_and_keeps_the_projections(
    tmp_path: Path, workers: int
) -> None:
    # Payloads over 64 bytes go to the blob store: tool inputs and outputs, prompts.
    rng = random.Random(10)
    histories = {f"s-{i:03d}": session_history(rng, f"s-{i:03d}", max_steps=4) for i in range(40)}
    with FileLog.open(tmp_path / "log" / "p0", segment_bytes=4096, blob_threshold=64) as log:
        write_histories([log], histories, rng)
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        before = snapshot(projector)
        blobs = sorted(p for p in (tmp_path / "log" / "p0" / "blobs").rglob("*") if p.is_file())
        assert blobs, "no event went to the blob store"
        blobs[len(blobs) // 2].unlink()
        with pytest.raises(FleetlogError) as failed:
            projector.rebuild(workers=workers, pool_from=0)
        message = str(failed.value)
        assert "\n" not in message
        # Decoded in this process, the log's own error; in a worker, the same, named.
        assert re.fullmatch(
            r"(rebuild: a worker failed: BlobMissingError: )?"
            r"blob [0-9a-f]{64}: missing from the blob store",
            message,
        ), message
        assert isinstance(failed.value, BlobMissingError if workers == 1 else ProjectionError)
        assert snapshot(projector) == before  # the live file is untouched


# A rebuild that stops when it has the first partition's rows back, with its
# workers started and waiting on it, as a rebuild killed at that moment would.
_STALLED_REBUILD = """
import sys, time
from pathlib import Path
from fleetlog.projections import projector

def stall(*args, **kwargs):
    print("stalled", flush=True)
    time.sleep(3600)

if __name__ == "__main__":
    projector._place_files = stall
    with projector.Projector.open(Path(sys.argv[1])) as p:
        p.rebuild(workers=2, pool_from=0)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_rebuild_killed_outright_leaves_no_worker_behind(
    tmp_path: Path, sig: signal.Signals
) -> None:
    _write_random_fleet(tmp_path, random.Random(9), 100, 2)
    rebuild = subprocess.Popen(
        [sys.executable, "-c", _STALLED_REBUILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert rebuild.stdout is not None and rebuild.stdout.readline() == "stalled\n"
        children = _spawned_children(rebuild.pid)
        assert len(children) == 2  # the two workers, each decoding and folding
        os.kill(rebuild.pid, sig)  # SIGTERM too: Python runs no clean-up on it
        rebuild.wait(timeout=30)
        deadline = time.monotonic() + 10
        while alive := [pid for pid in children if _alive(pid)]:
            assert time.monotonic() < deadline, f"workers left running: {alive}"
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rebuild.pid, signal.SIGKILL)
        rebuild.communicate()  # and closes its stdout


@pytest.mark.usefixtures("ray_session")
def test_a_rebuild_with_a_process_pool_inside_a_ray_worker(tmp_path: Path) -> None:
    # The fleet's projector is a Ray actor: a rebuild there spawns its decoding
    # pool from a Ray worker process (whose __main__ is Ray's, not ours).
    import ray

    _write_random_fleet(tmp_path, random.Random(5), 30, 2)
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        expected = snapshot(projector)
    (tmp_path / "projections.duckdb").unlink()

    def in_a_worker(home: str, tables: tuple[str, ...]) -> tuple[str, dict[str, list[Any]]]:
        from fleetlog.projections.projector import Projector as InWorker

        with InWorker.open(Path(home), rebuild_from=1) as projector:  # rebuilt on open
            reason = projector.rebuilt_on_open
            projector.rebuild(workers=2, pool_from=0)  # and by a process pool
            with projector.cursor() as cur:
                rows = {t: sorted(cur.execute(f"FROM {t}").fetchall(), key=repr) for t in tables}
        return reason, rows

    reason, rows = ray.get(ray.remote(in_a_worker).remote(str(tmp_path), TABLES), timeout=120)
    assert "events behind the log" in reason
    assert rows == expected


# --- metrics on a known fleet ------------------------------------------------------------------


def test_metrics_on_a_generated_fleet_equal_values_computed_from_the_folds(
    tmp_path: Path,
) -> None:
    rng = random.Random(2026)
    _write_random_fleet(tmp_path, rng, 60, 2)
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        got = {r["agent_type"]: r for r in projector.query("FROM agent_health_metrics").to_pylist()}
    states = []
    work: dict[tuple[str, int], float] = {}  # (session, step) -> model + tool latency
    for path in sorted((tmp_path / "log").iterdir()):
        with FileLog.open(path, readonly=True) as log:
            for sid in log.session_ids():
                stream = log.read_stream(sid)
                state = fold(sid, stream)
                states.append(state)
                for env in stream:
                    ev = env.event
                    if isinstance(ev, ModelResponded):
                        step = ev.step
                    elif isinstance(ev, ToolCallCompleted | ToolCallFailed):
                        step = state.tool_calls[ev.call_id].step
                    else:
                        continue
                    work[(sid, step)] = work.get((sid, step), 0.0) + ev.latency_ms
    for agent in {s.agent_type for s in states}:
        mine = [s for s in states if s.agent_type == agent]
        ended = [s for s in mine if s.terminal]
        completed = [s for s in mine if s.status == "completed"]
        all_calls = [c for s in mine for c in s.tool_calls.values()]
        ran = [c for c in all_calls if c.status in ("succeeded", "failed")]
        ids = {s.session_id for s in mine}
        lat = sorted(v for (sid, _step), v in work.items() if sid in ids)
        row = got[agent]
        assert row["sessions"] == len(mine)
        assert row["completion_rate"] == pytest.approx(
            round(len(completed) / len(ended), 4) if ended else None
        )
        assert row["avg_steps"] == pytest.approx(round(sum(s.step for s in mine) / len(mine), 2))
        assert row["tool_success_rate"] == pytest.approx(
            round(sum(c.status == "succeeded" for c in ran) / len(ran), 4) if ran else None
        )
        # The generated fleet sends exactly the `ask` verdicts to a human.
        reviewed = sum(1 for c in all_calls if c.verdict == "ask")
        assert row["human_review_rate"] == pytest.approx(
            round(reviewed / len(all_calls), 4) if all_calls else None
        )
        cost = sum(s.cost_usd for s in mine)
        assert row["token_cost_per_completion"] == pytest.approx(
            round(cost / len(completed), 6) if completed else None, abs=1e-6
        )
        assert row["p50_step_latency_ms"] == pytest.approx(round(_quantile(lat, 0.5), 2), abs=0.01)
        assert row["p95_step_latency_ms"] == pytest.approx(round(_quantile(lat, 0.95), 2), abs=0.01)


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (DuckDB's quantile_cont)."""
    position = (len(values) - 1) * q
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


# --- opening, locking, refusing ----------------------------------------------------------------


def test_a_second_owner_is_refused_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    with (
        Projector.open(tmp_path),
        pytest.raises(ProjectionError, match="open in another process"),
    ):
        Projector.open(tmp_path, wait_s=0.2)


def test_user_sql_is_read_only_and_errors_are_one_line(
    hand_fleet: tuple[Path, dict[str, list[float]]],
) -> None:
    home, _ = hand_fleet
    with Projector.open(home) as projector:
        projector.catch_up()
        for sql, message in (
            ("DELETE FROM events", "only SELECT is allowed (got DELETE)"),
            ("DROP TABLE events", "only SELECT is allowed (got DROP)"),
            ("COPY events TO '/tmp/x.csv'", "only SELECT is allowed (got COPY)"),
            ("SELECT 1; DELETE FROM events", "exactly one SQL statement"),
            ("SELEC 1", "Parser Error"),
            ("SELECT nope FROM events", "Binder Error"),
        ):
            with pytest.raises(QueryError, match=re.escape(message)) as info:
                projector.query(sql)
            assert "\n" not in str(info.value)
        assert projector.query("SELECT count(*) AS n FROM events").to_pylist() == [{"n": 38}]
        assert projector.query("EXPLAIN SELECT * FROM events").num_rows >= 1


def test_a_file_from_another_version_or_unreadable_is_rebuilt(
    hand_fleet: tuple[Path, dict[str, list[float]]],
) -> None:
    home, _ = hand_fleet
    with Projector.open(home) as projector:
        projector.catch_up()
        before = snapshot(projector)
        projector.con.execute("UPDATE _meta SET value = 'old' WHERE key = 'schema_version'")
    with Projector.open(home) as projector:
        assert "schema version old" in projector.rebuilt_on_open
        assert snapshot(projector) == before
        assert projector.query("SELECT value FROM _meta").to_pylist() == [{"value": SCHEMA_VERSION}]
    (home / "projections.duckdb").write_bytes(b"this is not a database" * 100)
    with Projector.open(home) as projector:
        assert "unreadable" in projector.rebuilt_on_open
        assert snapshot(projector) == before


def test_projections_ahead_of_the_log_are_rebuilt(tmp_path: Path) -> None:
    # E.g. a home restored from a backup older than its projections file.
    log = FileLog.open(tmp_path / "log" / "p0")
    log.append("s-x", [SessionCreated(task_id="x", prompt="p")], 0)
    log.append("s-x", [SessionClaimed(owner="h", epoch=1)], 1, 1)
    log.close()
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        projector.con.execute("UPDATE _checkpoints SET position = 5")
    with Projector.open(tmp_path) as projector:
        assert "ahead of the log (p0 at 5, log at 2)" in projector.rebuilt_on_open
        assert projector.checkpoints() == {0: 2}
        rows = projector.query("SELECT id, status FROM agent_executions").to_pylist()
        assert rows == [{"id": "s-x", "status": "running"}]


def test_a_file_far_behind_a_big_log_is_rebuilt_instead_of_caught_up(tmp_path: Path) -> None:
    total = _write_random_fleet(tmp_path, random.Random(11), 20, 2)
    with Projector.open(tmp_path) as projector:  # the default bar is far above this log
        assert projector.rebuilt_on_open == ""
        projector.catch_up()
        caught_up = snapshot(projector)
    (tmp_path / "projections.duckdb").unlink()
    with Projector.open(tmp_path, rebuild_from=total) as projector:
        assert projector.rebuilt_on_open == (
            f"{total:,} events behind the log (a rebuild is faster than catching up)"
        )
        assert snapshot(projector) == caught_up
    # Less than half of the log behind: caught up as usual, however big the lag.
    (tmp_path / "projections.duckdb").unlink()
    with Projector.open(tmp_path) as projector:
        while sum(projector.checkpoints().values()) <= total / 2:
            projector.step(10)
    with Projector.open(tmp_path, rebuild_from=1) as projector:
        assert projector.rebuilt_on_open == ""
        assert 0 < sum(projector.lag().values()) < total / 2
        projector.catch_up()
        assert snapshot(projector) == caught_up


def test_a_round_with_nothing_new_checkpoints_the_wal_and_busy_rounds_leave_it(
    tmp_path: Path,
) -> None:
    # A checkpoint stalls the round that takes it: busy rounds leave the WAL to
    # DuckDB's threshold, a round with nothing to do checkpoints it.
    _write_random_fleet(tmp_path, random.Random(5), 20, 2)
    with Projector.open(tmp_path) as projector:
        while projector.step(10):
            pass
        caught_up = snapshot(projector)
        held = projector.wal_bytes()
        assert held > 0  # every round committed into the WAL, none checkpointed
        assert projector.step() == 0  # idle, but the WAL is under the default 4 MiB
        assert projector.wal_bytes() == held
        projector.idle_checkpoint_bytes = held
        assert projector.step() == 0
        assert projector.wal_bytes() == 0
        assert snapshot(projector) == caught_up
    with Projector.open(tmp_path) as projector:  # what the checkpoint wrote is the file
        assert projector.rebuilt_on_open == ""
        assert snapshot(projector) == caught_up


def _largest_row_group(projector: Projector, table: str) -> int:
    with projector.cursor() as cur:
        # One column's segments (not its validity mask's) add up to each row group's rows.
        [(rows,)] = cur.execute(
            "SELECT max(n) FROM (SELECT row_group_id, sum(count) AS n "
            f"FROM pragma_storage_info('{table}') WHERE column_path = '[0]' GROUP BY ALL)"
        ).fetchall()
    return int(rows)


_SHOW_PROGRESS_BAR = """
import sys
from pathlib import Path
from fleetlog.projections.projector import Projector

def bar(con):
    return con.execute("SELECT current_setting('enable_progress_bar')").fetchall()[0][0]

with Projector.open(Path(sys.argv[1])) as projector:
    seen = [bar(projector.con)]
    projector.rebuild(workers=1)  # a new connection to the new file
    seen.append(bar(projector.con))
    with projector.cursor() as cur:
        seen.append(bar(cur))
print(seen)
"""


def test_the_projector_draws_no_progress_bar(tmp_path: Path) -> None:
    # DuckDB draws one on stdout (a pipe too) for a statement over 2 s, on by
    # default on a connection in a plain process (not under pytest, hence the
    # child): a long round or rebuild would write it into the output of
    # `fleetlog project` or of a fleet.
    proc = subprocess.run(
        [sys.executable, "-c", _SHOW_PROGRESS_BAR, str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[False, False, False]"


def test_rounds_append_small_row_groups_and_a_rebuild_writes_full_ones(tmp_path: Path) -> None:
    # A checkpoint rewrites a table's last, partly filled row group: rounds keep
    # them small (16,384 rows), so that checkpoints stay short; a rebuild writes
    # DuckDB's full ones (122,880), which compress and scan better.
    log = FileLog.open(tmp_path / "log" / "p0")
    try:
        for i in range(40):
            sid = f"s-{i:02d}"
            log.append(sid, [SessionCreated(task_id=sid, prompt="p" * 50)], 0)
            claims = [SessionClaimed(owner="h", epoch=1)] * 999
            log.append(sid, claims, 1, 1)
    finally:
        log.close()
    with Projector.open(tmp_path) as projector:
        assert projector.catch_up() == 40_000
        assert _largest_row_group(projector, "events") == 16_384
        caught_up = snapshot(projector)
        projector.rebuild(workers=1)
        assert _largest_row_group(projector, "events") == 40_000
        assert snapshot(projector) == caught_up
