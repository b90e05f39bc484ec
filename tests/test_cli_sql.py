"""`fleetlog sql`, `metrics` and `project` as a user runs them (no fleet up: the CLI
opens the projections itself)."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Literal

import pytest
from test_cli import fleetlog
from test_projections import _write_random_fleet

from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import (
    CancelRequested,
    Event,
    ReviewDecided,
    ReviewRequested,
    SessionCancelled,
    SessionClaimed,
    SessionCreated,
    SessionFailed,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallProposed,
    ToolCallStarted,
    ToolCallVetted,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("sqlhome")
    _write_random_fleet(home, random.Random(4), 40, 2)
    return home


def test_sql_table_json_and_csv(home: Path) -> None:
    query = "SELECT status, count(*) AS n, sum(cost_usd) AS cost FROM agent_executions GROUP BY 1"
    table = fleetlog("sql", query, "--home", str(home))
    assert table.returncode == 0, table.stderr
    assert "status" in table.stdout and "cost" in table.stdout and "row" in table.stdout
    rows = json.loads(fleetlog("sql", query, "--json", "--home", str(home)).stdout)
    assert sum(r["n"] for r in rows) == 40
    assert all(isinstance(r["cost"], float) for r in rows)
    text = fleetlog("sql", query, "--csv", "--home", str(home)).stdout
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == ["status", "n", "cost"] and len(parsed) == len(rows) + 1
    times = json.loads(
        fleetlog("sql", "SELECT min(ts) AS t FROM events", "--json", "--home", str(home)).stdout
    )
    assert times[0]["t"].startswith("20")  # ISO 8601 text


def test_bad_sql_is_one_line_and_exit_1(home: Path) -> None:
    for query, words in (
        ("SELEC 1", "Parser Error"),
        ("SELECT * FROM nope", "Catalog Error"),
        ("DELETE FROM events", "read-only"),
        ("CREATE TABLE x (a INT)", "read-only"),
    ):
        proc = fleetlog("sql", query, "--home", str(home))
        assert proc.returncode == 1, query
        assert proc.stderr.startswith("fleetlog: ") and words in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    rows = json.loads(fleetlog("sql", "SELECT count(*) AS n FROM events", "--json",
                               "--home", str(home)).stdout)  # fmt: skip
    assert rows[0]["n"] > 0  # nothing was deleted


def test_metrics_window_and_agent_filter(home: Path) -> None:
    everything = json.loads(fleetlog("metrics", "--json", "--home", str(home)).stdout)
    assert {r["agent_type"] for r in everything} <= {"coder", "researcher", "support"}
    assert sum(r["sessions"] for r in everything) == 40
    recent = json.loads(fleetlog("metrics", "--since", "1h", "--json", "--home", str(home)).stdout)
    assert recent == everything
    future = fleetlog("metrics", "--since", "2999-01-01", "--json", "--home", str(home))
    assert json.loads(future.stdout) == []
    coder = json.loads(
        fleetlog("metrics", "--agent-type", "coder", "--json", "--home", str(home)).stdout
    )
    assert [r["agent_type"] for r in coder] == ["coder"]
    table = fleetlog("metrics", "--since", "7d", "--home", str(home))
    assert table.returncode == 0 and "completion_rate" in table.stdout.replace("\n", "")
    bad = fleetlog("metrics", "--since", "last tuesday", "--home", str(home))
    assert bad.returncode == 2 and "--since 'last tuesday'" in bad.stderr


def test_project_and_rebuild_give_the_same_rows(home: Path) -> None:
    caught = fleetlog("project", "--home", str(home))
    assert caught.returncode == 0 and "caught up with" in caught.stdout
    query = "SELECT * FROM agent_tool_calls ORDER BY execution_id, id"
    before = fleetlog("sql", query, "--json", "--home", str(home)).stdout
    rebuilt = fleetlog("project", "--rebuild", "--home", str(home))
    assert rebuilt.returncode == 0 and "rebuilt from" in rebuilt.stdout, rebuilt.stderr
    assert fleetlog("sql", query, "--json", "--home", str(home)).stdout == before


def test_no_log_is_one_line(tmp_path: Path) -> None:
    proc = fleetlog("sql", "SELECT 1", "--home", str(tmp_path / "nothing"))
    assert proc.returncode == 1 and "no fleet home at" in proc.stderr
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "empty").mkdir()
    proc = fleetlog("sql", "SELECT 1", "--home", str(tmp_path / "empty"))
    assert proc.returncode == 1 and "no event log under" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_sql_errors_keep_duckdbs_suggestion(home: Path) -> None:
    for query, words in (
        ("SELECT * FROM agent_executionz", 'Did you mean "agent_executions"?'),
        ("SELECT statuz FROM agent_executions", "Candidate bindings:"),
    ):
        proc = fleetlog("sql", query, "--home", str(home))
        assert proc.returncode == 1, query
        assert proc.stderr.startswith("fleetlog: ") and words in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _ended_with_open_calls() -> list[tuple[str, int, Event]]:
    """(session, epoch, event): sessions that end with a call not finished, then late
    events after some of the ends, interleaved."""

    def created(task: str) -> SessionCreated:
        return SessionCreated(task_id=task, prompt="p", agent_type="coder")

    def call(cid: str, verdict: Literal["allow", "ask"]) -> list[Event]:
        tool = "send_email" if verdict == "ask" else "list_dir"
        return [
            ToolCallProposed(step=1, call_id=cid, tool=tool, input="{}"),
            ToolCallVetted(call_id=cid, verdict=verdict, risk="read"),
        ]

    claim = SessionClaimed(owner="h0", epoch=1)
    streams: dict[str, list[Event]] = {
        # awaiting review, then cancelled
        "s-await": [created("await"), claim, *call("c1", "ask"),
                    ReviewRequested(call_id="c1", reason="asks"),
                    CancelRequested(note="stop"), SessionCancelled(note="stop")],
        # running when the session timed out; the tool reports late
        "s-run": [created("run"), claim, *call("c2", "allow"),
                  ToolCallStarted(call_id="c2", idempotency_key="k2"),
                  SessionFailed(error="TOTAL_TIMEOUT: 300s"),
                  ToolCallCompleted(call_id="c2", output="late but done")],
        # approved, never started
        "s-approved": [created("approved"), claim, *call("c3", "ask"),
                       ReviewRequested(call_id="c3", reason="asks"),
                       ReviewDecided(call_id="c3", approved=True, reviewer="bob"),
                       SessionFailed(error="MAX_COST_EXCEEDED: $1")],
        # allowed, cancelled, then a host starts it anyway (late)
        "s-late": [created("late"), claim, *call("c4", "allow"), SessionCancelled(),
                   ToolCallStarted(call_id="c4", idempotency_key="k4")],
        # failed, retried, running at the end, then done late: the real error stays
        "s-retry": [created("retry"), claim, *call("c6", "allow"),
                    ToolCallStarted(call_id="c6", idempotency_key="k6"),
                    ToolCallFailed(call_id="c6", error="boom"),
                    ToolCallStarted(call_id="c6", idempotency_key="k6", attempt=2),
                    SessionFailed(error="TOTAL_TIMEOUT: 300s"),
                    ToolCallCompleted(call_id="c6", output="done")],
        "s-retry2": [created("retry2"), claim, *call("c7", "allow"),
                     ToolCallStarted(call_id="c7", idempotency_key="k7"),
                     ToolCallFailed(call_id="c7", error="boom"),
                     ToolCallStarted(call_id="c7", idempotency_key="k7", attempt=2),
                     SessionFailed(error="TOTAL_TIMEOUT: 300s")],
        # still running: its calls stay open
        "s-open": [created("open"), claim, *call("c5", "ask"),
                   ReviewRequested(call_id="c5", reason="asks")],
    }  # fmt: skip
    order: list[tuple[str, int, Event]] = []
    cursors = dict.fromkeys(streams, 0)
    while any(cursors[s] < len(events) for s, events in streams.items()):
        for sid, events in streams.items():
            if cursors[sid] < len(events):
                event = events[cursors[sid]]
                order.append((sid, 0 if cursors[sid] == 0 else 1, event))
                cursors[sid] += 1
    return order


def test_calls_left_open_by_an_ended_session_are_closed_alike_in_any_batches(
    tmp_path: Path,
) -> None:
    """A call of an ended session is never `pending`, `awaiting_review` or `running` in
    agent_tool_calls: `denied` if it never started, `failed` if it was running. Catching
    up after every single event gives the same rows as a rebuild."""
    from fleetlog.projections.projector import Projector

    events = _ended_with_open_calls()
    query = "SELECT * FROM agent_tool_calls ORDER BY id"
    sessions = "SELECT id, status, awaiting_reviews FROM agent_executions ORDER BY id"
    with FileLog.open(tmp_path / "log" / "p0") as log, Projector.open(tmp_path) as projector:
        seqs: dict[str, int] = {}
        for sid, epoch, event in events:
            seq = seqs.get(sid, 0)
            log.append(sid, [event], seq, epoch)
            seqs[sid] = seq + 1
            projector.catch_up()
        incremental = (projector.query(query).to_pylist(), projector.query(sessions).to_pylist())
        projector.rebuild()
        rebuilt = (projector.query(query).to_pylist(), projector.query(sessions).to_pylist())
    assert incremental == rebuilt
    calls, executions = rebuilt
    assert {c["id"]: (c["status"], c["error"]) for c in calls} == {
        "c1": ("denied", "session cancelled before the call ran"),
        "c2": ("succeeded", None),  # its late result is what happened
        "c3": ("denied", "session failed before the call ran"),
        "c4": ("failed", "session cancelled while the call was running"),
        "c5": ("awaiting_review", None),
        "c6": ("succeeded", "boom"),
        "c7": ("failed", "boom"),
    }
    assert executions == [
        {"id": "s-approved", "status": "failed", "awaiting_reviews": 0},
        {"id": "s-await", "status": "cancelled", "awaiting_reviews": 0},
        {"id": "s-late", "status": "cancelled", "awaiting_reviews": 0},
        {"id": "s-open", "status": "awaiting_review", "awaiting_reviews": 1},
        {"id": "s-retry", "status": "failed", "awaiting_reviews": 0},
        {"id": "s-retry2", "status": "failed", "awaiting_reviews": 0},
        {"id": "s-run", "status": "failed", "awaiting_reviews": 0},
    ]
