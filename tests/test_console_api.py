"""The console's HTTP API, against a real uvicorn server on 127.0.0.1 (SPEC §4 ``serve``).

The fleet home is written event by event with FileLog (what a fleet writes, without
starting one); decisions made over HTTP are read back by folding the log.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from console_fixtures import EMAIL, SHELL, Server, build_home, fold_session, serving
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from fleetlog.events.errors import FleetlogError
from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import (
    ReviewDecided,
    ReviewRequested,
    SessionClaimed,
    SessionCreated,
    SessionFailed,
    ToolCallProposed,
    ToolCallStarted,
    ToolCallVetted,
)
from fleetlog.events.state import call_hash

TOKEN = "console-test-token-4d1f"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("console")
    home = build_home(root)
    with serving(home, token=TOKEN, config=root / "fleetlog.toml") as srv:
        yield srv


# --- reading -----------------------------------------------------------------------------


def test_overview_counts_budgets_and_series(server: Server) -> None:
    status, o = server.call("GET", "/api/overview")
    assert status == 200, o
    assert o["fleet"] == "offline"
    assert o["sessions"] == 5
    assert o["counts"] == {
        "pending": 0,
        "running": 1,
        "awaiting_review": 2,
        "completed": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert o["reviews_pending"] == 2
    assert o["steps"] == 2 + 1 + 1 + 1 + 1
    assert o["cost_usd"] == pytest.approx(0.002 * 2 + 0.004 + 0.002 + 0.002)
    assert o["cost_today"] == pytest.approx(o["cost_usd"])  # written moments ago
    # Every model call was made in the last minute: 5 answered steps of the task.
    assert o["steps_per_s"] > 0
    acme = next(t for t in o["tenants"] if t["tenant"] == "acme")
    assert acme["max_cost_usd"] == 0.01 and acme["max_tokens"] == 100000
    assert acme["cost_share"] == pytest.approx((0.004 + 0.002) / 0.01, abs=1e-4)
    globex = next(t for t in o["tenants"] if t["tenant"] == "globex")
    assert globex["max_cost_usd"] is None and globex["cost_share"] is None
    assert sum(p["calls"] for p in o["cost_series"]) == 6  # 5 answered, 1 in flight
    assert sum(p["cost_usd"] for p in o["cost_series"]) == pytest.approx(o["cost_usd"])
    assert sum(p["ended"] for p in o["completion_series"]) == 2
    assert sum(p["completed"] for p in o["completion_series"]) == 1
    # A window in the future holds nothing; a bad one is a one-line 400.
    status, empty = server.call("GET", "/api/overview?window=2999-01-01")
    assert status == 200 and empty["sessions"] == 0 and empty["cost_series"] == []
    status, error = server.call("GET", "/api/overview?window=soon")
    assert status == 400 and error["error"].startswith("window 'soon': give 'all', a duration")


def test_sessions_and_timeline(server: Server) -> None:
    status, rows = server.call("GET", "/api/sessions")
    assert status == 200
    assert {r["id"] for r in rows} == {"s-done", "s-limit", "s-mail", "s-push", "s-busy"}
    status, failed = server.call("GET", "/api/sessions?status=failed")
    assert [r["id"] for r in failed] == ["s-limit"]
    assert failed[0]["error"].startswith("MAX_STEPS_EXCEEDED")
    status, done = server.call("GET", "/api/sessions/s-done")
    assert status == 200
    kinds = [(e["type"], e["kind"]) for e in done["events"]]
    assert ("ModelResponded", "model") in kinds
    assert ("ToolCallVetted", "tool") in kinds
    assert ("ContextCompacted", "compaction") in kinds
    assert done["session"]["status"] == "completed"
    assert done["tool_calls"][0]["verdict"] == "allow"
    compaction = next(e for e in done["events"] if e["type"] == "ContextCompacted")
    assert "9,000" in compaction["summary"] and "2,000" in compaction["summary"]
    # A task id is accepted for its session's id, as in the CLI.
    status, limit = server.call("GET", "/api/sessions/limit")
    assert status == 200 and limit["session"]["id"] == "s-limit"
    breach = next(e for e in limit["events"] if e["type"] == "LimitExceeded")
    assert breach["kind"] == "limit" and breach["summary"].startswith("MAX_STEPS_EXCEEDED")


def test_reviews_oldest_first_with_everything_a_decision_needs(server: Server) -> None:
    status, reviews = server.call("GET", "/api/reviews")
    assert status == 200
    mail = next(r for r in reviews if r["session_id"] == "s-mail")
    assert mail["tool"] == "send_email" and mail["risk"] == "external"
    assert mail["input"] == EMAIL and mail["call_hash"] == call_hash("send_email", EMAIL)
    assert "requires review" in mail["reason"]
    times = [r["requested_at"] for r in reviews]
    assert times == sorted(times)


def test_sql_reads_and_refuses_writes_files_and_nonsense(server: Server) -> None:
    status, result = server.call(
        "POST",
        "/api/sql",
        {"query": "SELECT status, count(*) AS n FROM agent_executions GROUP BY 1 ORDER BY 1"},
    )
    assert status == 200, result
    assert result["columns"] == ["status", "n"]
    assert dict(map(tuple, result["rows"]))["awaiting_review"] == 2
    status, limited = server.call(
        "POST", "/api/sql", {"query": "SELECT * FROM range(50)", "limit": 10}
    )
    assert status == 200 and len(limited["rows"]) == 10 and limited["truncated"]
    assert limited["row_count"] == 50
    refused = {
        "DELETE FROM events": "read-only",
        "CREATE TABLE x (a INT)": "read-only",
        "SELECT 1; DELETE FROM events": "exactly one",
        "SELEC 1": "Parser Error",
        "SELECT * FROM nope": "Catalog Error",
        "SELECT * FROM read_text('/etc/hostname')": "read_text",
        "SELECT * FROM 'secrets.csv'": "not a table",
    }
    for query, words in refused.items():
        status, error = server.call("POST", "/api/sql", {"query": query})
        assert status == 400, (query, error)
        assert words in error["error"] and "\n" not in error["error"], (query, error)
    status, rows = server.call("POST", "/api/sql", {"query": "SELECT count(*) AS n FROM events"})
    assert status == 200 and rows["rows"][0][0] > 0  # nothing was deleted
    status, odd = server.call(
        "POST", "/api/sql", {"query": "SELECT 'nan'::DOUBLE AS x, INTERVAL 3 DAY AS i"}
    )
    assert status == 200 and odd["rows"] == [["nan", "3 days 00:00:00"]]


def test_metrics(server: Server) -> None:
    status, m = server.call("GET", "/api/metrics")
    assert status == 200
    assert "completion_rate" in m["columns"]
    assert {r["agent_type"] for r in m["rows"]} == {"coder", "researcher", "ops"}
    status, one = server.call("GET", "/api/metrics?agent_type=ops")
    assert [r["agent_type"] for r in one["rows"]] == ["ops"]


# --- deciding ----------------------------------------------------------------------------


def test_approve_over_http_is_in_the_log(server: Server) -> None:
    digest = call_hash("send_email", EMAIL)
    path = "/api/reviews/s-mail/toolu_mail1/approve"
    status, error = server.call("POST", path, {"reviewer": "alice", "call_hash": "0" * 16})
    assert status == 409 and "not the one you saw" in error["error"]
    status, result = server.call(
        "POST", path, {"reviewer": "alice", "note": "fine to send", "call_hash": digest}
    )
    assert status == 200, result
    assert result == {
        "session_id": "s-mail",
        "call_id": "toolu_mail1",
        "decision": "approve",
        "reviewer": "alice",
        "recorded_via": "log",
        "edited": False,
    }
    state, stream = fold_session(server.home, "s-mail")
    decided = [e.event for e in stream if isinstance(e.event, ReviewDecided)]
    assert len(decided) == 1
    assert decided[0].approved and decided[0].reviewer == "alice"
    assert decided[0].note == "fine to send" and decided[0].call_hash == digest
    assert state.tool_calls["toolu_mail1"].decision == "approve"
    assert state.status == "running"  # it resumes when a fleet runs it
    # Gone from the queue; the same decision again records nothing; another one conflicts.
    status, reviews = server.call("GET", "/api/reviews")
    assert all(r["call_id"] != "toolu_mail1" for r in reviews)
    status, again = server.call("POST", path, {"reviewer": "alice"})
    assert status == 200 and again["recorded_via"] == "already"
    status, error = server.call("POST", "/api/reviews/s-mail/toolu_mail1/deny", {"reviewer": "bob"})
    assert status == 409 and "not awaiting review" in error["error"]
    status, timeline = server.call("GET", "/api/sessions/s-mail")
    event = next(e for e in timeline["events"] if e["type"] == "ReviewDecided")
    assert event["kind"] == "review" and "approved by alice" in event["summary"]


def _decisions(home: Path, session_id: str) -> list[ReviewDecided]:
    _, stream = fold_session(home, session_id)
    return [e.event for e in stream if isinstance(e.event, ReviewDecided)]


def test_edit_then_approve_over_http(tmp_path: Path) -> None:
    """``input`` on an approval: the call runs with it (the log's ReviewDecided holds it).
    What cannot be an edit (not an object, on a denial, of a call in doubt) is a one-line
    4xx and records nothing. A denial takes no ``input`` at all: 422, an unknown field."""
    home = build_home(tmp_path)
    with FileLog.open(home / "log" / "p0") as log:  # a call that may have run before a crash
        doubt = [
            SessionCreated(task_id="doubt", prompt="p", agent_type="ops", tenant="acme"),
            SessionClaimed(owner="host-0@test", node="test", epoch=1),
            ToolCallProposed(step=1, call_id="toolu_doubt1", tool="send_email", input=EMAIL),
            ToolCallVetted(call_id="toolu_doubt1", verdict="ask", risk="external"),
            ToolCallStarted(call_id="toolu_doubt1", idempotency_key="s-doubt:toolu_doubt1"),
            ReviewRequested(call_id="toolu_doubt1", reason="in doubt", in_doubt=True),
        ]
        for seq, event in enumerate(doubt):
            log.append("s-doubt", [event], seq, 0 if seq == 0 else 1)
    path = "/api/reviews/s-mail/toolu_mail1/approve"
    with serving(home, token=TOKEN, config=tmp_path / "fleetlog.toml") as srv:
        refused: list[tuple[str, dict[str, Any] | None, bytes | None, int, str]] = [
            (path, {"reviewer": "a", "input": ["to", "x@y.example"]}, None, 422, "input"),
            (path, {"reviewer": "a", "input": '{"to": "x@y.example"}'}, None, 422, "input"),
            (path, {"reviewer": "a", "input": 5}, None, 422, "input"),
            (path, None, b'{"reviewer": "a", "input": {"n": NaN}}', 422, "input"),
            (
                "/api/reviews/s-mail/toolu_mail1/deny",
                {"reviewer": "a", "input": {"to": "x@y.example"}},
                None,
                422,
                "input: Extra inputs are not permitted",
            ),
            (
                "/api/reviews/s-doubt/toolu_doubt1/approve",
                {"reviewer": "a", "input": {"to": "x@y.example"}},
                None,
                409,
                "may have run before a crash",
            ),
        ]
        for where, body, raw, expected, words in refused:
            status, error = srv.call("POST", where, body, raw=raw)
            assert status == expected, (body, raw, status, error)
            assert set(error) == {"error"} and "\n" not in error["error"], error
            assert words in error["error"], error
        assert _decisions(home, "s-mail") == [] and _decisions(home, "s-doubt") == []

        # An edit: recorded with the edited input, the model's hash and the reviewer.
        edit = {**json.loads(EMAIL), "to": "carol@acme.example.com"}
        digest = call_hash("send_email", EMAIL)
        body = {"reviewer": "alice", "call_hash": digest, "input": edit}
        status, result = srv.call("POST", path, body)
        assert status == 200, result
        assert result["edited"] is True and result["recorded_via"] == "log"
        [decided] = _decisions(home, "s-mail")
        assert decided.approved and decided.reviewer == "alice" and decided.call_hash == digest
        assert json.loads(decided.edited_input) == edit
        state, _ = fold_session(home, "s-mail")
        call = state.tool_calls["toolu_mail1"]
        assert call.edited_from == EMAIL and json.loads(str(call.input)) == edit
        # The same decision again (under either input's hash) records nothing more.
        edited_digest = call_hash("send_email", decided.edited_input)
        for again in (digest, edited_digest):
            status, result = srv.call("POST", path, {**body, "call_hash": again})
            assert status == 200 and result["recorded_via"] == "already", result
            assert result["edited"] is True
        assert len(_decisions(home, "s-mail")) == 1
        # The session's page: the timeline's decision carries the edited input, and the
        # call's input is the one that runs.
        status, detail = srv.call("GET", "/api/sessions/s-mail")
        assert status == 200
        event = next(e for e in detail["events"] if e["type"] == "ReviewDecided")
        assert event["data"]["edited_input"] == decided.edited_input
        assert "approved by alice" in event["summary"]
        [row] = [c for c in detail["tool_calls"] if c["call_id"] == "toolu_mail1"]
        assert json.loads(row["input"]) == edit and row["call_hash"] == edited_digest

        # An "edit" that changes nothing is a plain approval.
        status, result = srv.call(
            "POST",
            "/api/reviews/s-push/toolu_push1/approve",
            {"reviewer": "bob", "input": json.loads(SHELL)},
        )
        assert status == 200 and result["edited"] is False, result
        [plain] = _decisions(home, "s-push")
        assert plain.approved and plain.edited_input == ""


def test_deny_and_end_the_session(server: Server) -> None:
    status, result = server.call(
        "POST",
        "/api/reviews/push/toolu_push1/deny",  # by task id
        {"reviewer": "carol", "note": "not on main", "end_session": True},
    )
    assert status == 200, result
    assert result["session_id"] == "s-push" and result["decision"] == "deny"
    state, stream = fold_session(server.home, "s-push")
    assert state.status == "failed" and state.error == "DENIED_BY_REVIEWER: not on main"
    assert isinstance(stream[-1].event, SessionFailed)
    status, error = server.call("POST", "/api/sessions/s-push/cancel", {"reviewer": "carol"})
    assert status == 409 and "already failed" in error["error"]


def test_cancel(server: Server) -> None:
    status, result = server.call("POST", "/api/sessions/s-busy/cancel", {"reviewer": "dan"})
    assert status == 200 and result["decision"] == "cancel"
    state, _ = fold_session(server.home, "s-busy")
    assert state.cancel_requested


def test_bad_input_is_one_line_4xx(server: Server) -> None:
    cases = [
        ("GET", "/api/sessions/s-nope", None, 404),
        ("POST", "/api/reviews/s-nope/toolu_x/approve", {"reviewer": "a"}, 404),
        ("POST", "/api/reviews/s-done/toolu_nope/approve", {"reviewer": "a"}, 404),
        ("POST", "/api/reviews/s-done/toolu_read1/approve", {"reviewer": "a"}, 409),
        ("POST", "/api/reviews/s-done/toolu_read1/approve", {}, 422),  # no reviewer
        ("POST", "/api/reviews/s-done/toolu_read1/approve", {"reviewer": "   "}, 422),
        ("POST", "/api/reviews/s-done/toolu_read1/approve", {"reviewer": "a", "x": 1}, 422),
        ("POST", "/api/sql", {"query": ""}, 422),
        ("POST", "/api/sql", {"query": 5}, 422),
        ("GET", "/api/sessions?status=sleeping", None, 422),
        ("GET", "/api/metrics?since=yesterday-ish", None, 400),
        ("GET", "/api/nothing-here", None, 404),
        ("DELETE", "/api/sessions/s-done", None, 405),
    ]
    for method, path, body, expected in cases:
        status, error = server.call(method, path, body)
        assert status == expected, (method, path, body, status, error)
        assert isinstance(error, dict) and set(error) == {"error"}, (path, error)
        assert error["error"] and "\n" not in error["error"] and "Traceback" not in error["error"]
    for raw in (b"{not json", b"", b"[]", b'"reviewer"'):
        status, error = server.call("POST", "/api/sql", raw=raw)
        assert status in (400, 422) and set(error) == {"error"}, (raw, error)


# --- authentication and binding -----------------------------------------------------------


def test_every_api_route_needs_the_token(server: Server) -> None:
    routes = [
        ("GET", "/api/overview", None),
        ("GET", "/api/status", None),
        ("GET", "/api/sessions", None),
        ("GET", "/api/sessions/s-done", None),
        ("GET", "/api/reviews", None),
        ("GET", "/api/metrics", None),
        ("POST", "/api/sql", {"query": "SELECT 1"}),
        ("POST", "/api/reviews/s-done/toolu_read1/approve", {"reviewer": "eve"}),
        ("POST", "/api/reviews/s-done/toolu_read1/deny", {"reviewer": "eve"}),
        ("POST", "/api/sessions/s-done/cancel", {"reviewer": "eve"}),
    ]
    for method, path, body in routes:
        for token in (None, "wrong-token", TOKEN + "x"):
            status, error = server.call(method, path, body, token=token)
            assert status == 401, (method, path, token, error)
            assert "bearer token" in error["error"]
    # The schema, the pages and their script carry no fleet data: no token needed.
    for path in ("/openapi.json", "/", "/reviews", "/static/app.js", "/healthz"):
        status, _ = server.call("GET", path, token=None)
        assert status == 200, path


def test_loopback_only_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetlog.console import is_loopback, serve

    monkeypatch.delenv("FLEETLOG_CONSOLE_TOKEN", raising=False)
    home = build_home(tmp_path, config=False)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        args = argparse.Namespace(
            home=str(home), config=None, address=None, host=host, port=0, token=None
        )
        with pytest.raises(FleetlogError, match="without a token") as info:
            serve(args)
        assert "\n" not in str(info.value)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    # Served without a token, it answers to loopback names only (no DNS rebinding).
    with serving(home) as open_server:
        assert open_server.call("GET", "/api/status")[0] == 200
        status, error = open_server.call(
            "GET", "/api/status", headers={"Host": "attacker.example:80"}
        )
        assert status == 400 and "loopback" in error["error"]


def test_serve_runs_until_interrupted(tmp_path: Path) -> None:
    """``serve(args)`` as the CLI calls it: its line, the token from the environment,
    a clean stop on Ctrl-C; and a home without a log is refused in one line."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    home = build_home(tmp_path, config=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import argparse, sys; from fleetlog.console import serve; "
        "sys.exit(serve(argparse.Namespace(home=sys.argv[1], config=None, address=None, "
        "host='127.0.0.1', port=int(sys.argv[2]))))"
    )
    env = {**os.environ, "FLEETLOG_CONSOLE_TOKEN": "from-the-env"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(home), str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/status"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
            except urllib.error.HTTPError as e:
                assert e.code == 401  # up, and the token is required
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.1)
        request = urllib.request.Request(url, headers={"Authorization": "Bearer from-the-env"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    first = err.splitlines()[0]
    assert first.startswith(f"fleetlog console on http://127.0.0.1:{port}/")
    assert "bearer token required" in first and "Traceback" not in err

    from fleetlog.console import serve

    args = argparse.Namespace(
        home=str(tmp_path / "nowhere"), config=None, address=None, host="127.0.0.1", port=0
    )
    with pytest.raises(FleetlogError, match="no fleet home"):
        serve(args)


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    from fleetlog.console import bind

    first = bind("127.0.0.1", 0)
    try:
        with pytest.raises(FleetlogError, match=r"cannot listen on 127\.0\.0\.1"):
            bind("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()


# --- the schema, fuzzed --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Its own home: what the fuzzer decides must not change what the tests above read."""
    root = tmp_path_factory.mktemp("fuzz")
    with serving(build_home(root), token=TOKEN, config=root / "fleetlog.toml") as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> Any:
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


# schemathesis' own pytest integration (from_fixture) breaks on pytest 9's nodes, so the
# cases come from its documented Hypothesis strategy over every operation instead.
EXAMPLES = int(os.environ.get("FLEETLOG_FUZZ_EXAMPLES", "120"))


def _fuzz(strategy: Any, check: Any, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        check(case)

    run()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_no_server_errors(api_schema: Any, mode: str) -> None:
    """Whatever a token holder sends: a documented status and body, never a 500."""
    seen: set[str] = set()

    def check(case: Any) -> None:
        seen.add(f"{case.method} {case.path}")
        # The real token replaces a generated one; a negative case that leaves the header
        # out (to test that auth is required) is sent without it.
        sent = case.headers or {}
        auth = mode == "positive" or any(k.lower() == "authorization" for k in sent)
        case.call_and_validate(
            headers={"Authorization": f"Bearer {TOKEN}"} if auth else None,
            # A schema-valid query can still be bad SQL, and a valid id an unknown one:
            # 400 and 404 are the right answers there, not failures.
            excluded_checks=[positive_data_acceptance],
        )

    _fuzz(api_schema.as_strategy(generation_mode=GenerationMode(mode)), check, EXAMPLES)
    assert len(seen) >= 8, seen  # the cases reached (nearly) every operation


def test_fuzz_nothing_without_the_token(api_schema: Any) -> None:
    """No request without the token reads or writes anything: every one is a 401."""
    seen: set[str] = set()

    def check(case: Any) -> None:
        seen.add(case.method)
        response = case.call()
        assert response.status_code == 401, (case.method, case.path, response.text)

    strategy = api_schema.as_strategy(generation_mode=GenerationMode.POSITIVE)
    _fuzz(strategy, check, EXAMPLES // 2)
    assert seen == {"GET", "POST"}
