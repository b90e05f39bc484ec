"""``fleetlog run`` and friends as a user runs them: real processes, real Ray, real files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetlog.events.partitions import open_readers
from fleetlog.events.schema import ModelResponded, SessionCreated

ENV = dict(os.environ, RAY_AUTH_MODE="disabled")


def fleetlog(
    *args: str, env: dict[str, str] | None = None, timeout: int = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
    )


def _model_calls_answered_once(home: Path) -> int:
    total = 0
    for reader in open_readers(home / "log"):
        try:
            for sid in reader.session_ids():
                answered = [
                    e.event.request_id
                    for e in reader.read_stream(sid, resolve_blobs=False)
                    if isinstance(e.event, ModelResponded)
                ]
                assert len(answered) == len(set(answered)), f"{sid} repeated a completed model call"
                total += len(answered)
        finally:
            reader.close()
    return total


def _models(home: Path) -> set[str]:
    """The models the sessions were created with, read from the log."""
    models = set()
    for reader in open_readers(home / "log"):
        try:
            for sid in reader.session_ids():
                created = reader.read_stream(sid, resolve_blobs=False)[0].event
                assert isinstance(created, SessionCreated)
                models.add(created.model)
        finally:
            reader.close()
    return models


@pytest.mark.slow
def test_demo_run_then_operator_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # An API key in the shell must not switch the offline demo to the paid API (here a
    # closed port: any session sent there would fail with MODEL_ERROR).
    env = dict(ENV, ANTHROPIC_API_KEY="sk-ant-not-a-key", ANTHROPIC_BASE_URL="http://127.0.0.1:9")
    proc = fleetlog("run", "--demo", "30", "--home", str(home), "--no-progress", env=env)
    # The demo plans a few limit breaches: failed sessions, said last; as they are all
    # planned ones (the caps at work), the demo did its job and exits 0.
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "30 sessions in" in proc.stdout and "completed" in proc.stdout
    failed = proc.stdout.splitlines()[-1]
    assert re.fullmatch(r"\d+ of 30 sessions failed, all as the demo plans \(.*", failed)
    assert proc.stderr.startswith("agents: ") and "model scripted" in proc.stderr.splitlines()[0]
    assert "claude" not in proc.stderr.splitlines()[0] and "MODEL_ERROR" not in proc.stdout
    assert _models(home) == {"scripted"}
    sessions = json.loads(fleetlog("sessions", "--home", str(home), "--json").stdout)
    assert len(sessions) == 30
    for key in (
        "id",
        "status",
        "agent_type",
        "tenant",
        "step_count",
        "token_count",
        "cost_usd",
        "error",
    ):
        assert key in sessions[0]
    statuses = {s["status"] for s in sessions}
    assert "completed" in statuses and "failed" in statuses
    reviews = json.loads(fleetlog("reviews", "--home", str(home), "--json").stdout)
    assert reviews, "the demo has approvals"
    for key in ("session_id", "call_id", "tool", "input", "risk", "reason", "requested_at"):
        assert key in reviews[0]
    first = reviews[0]
    proc = fleetlog(
        "approve", first["session_id"], first["call_id"], "--home", str(home), "--note", "ok"
    )
    assert proc.returncode == 0, proc.stderr
    # The same decision again is a no-op (a retried command must not fail)...
    again = fleetlog("approve", first["session_id"], first["call_id"], "--home", str(home))
    assert again.returncode == 0 and "already recorded" in again.stdout, again.stderr
    # ...another one is refused in one line, as is a decision naming another call's hash.
    other = fleetlog("deny", first["session_id"], first["call_id"], "--home", str(home))
    assert other.returncode == 1 and "not awaiting review" in other.stderr
    assert other.stderr.count("\n") == 1
    # Re-running resumes: the approved email goes out, nothing is started twice.
    proc = fleetlog("run", "--demo", "30", "--home", str(home), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == failed
    assert "0 new, 30 resumed" in proc.stderr
    assert len(list((home / "outbox").glob("*.eml"))) == 1
    show = fleetlog("show", first["session_id"], "--home", str(home))
    assert "ReviewDecided" in show.stdout and "SessionCompleted" in show.stdout
    assert fleetlog("verify", "--home", str(home)).returncode == 0
    _model_calls_answered_once(home)


@pytest.mark.slow
def test_sigkill_of_the_whole_run_then_rerun_completes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(ENV, FLEETLOG_SCRIPTED_LATENCY_MS="120")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "\n".join(
            json.dumps({"id": f"t{i}", "prompt": f"Write a short report about topic {i}"})
            for i in range(24)
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetlog.cli",
            "run",
            str(tasks),
            "--home",
            str(home),
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # kill once sessions are mid-flight
            answered = 0
            if (home / "log").exists():
                for reader in open_readers(home / "log"):
                    answered += reader.head()
                    reader.close()
            if answered > 150:
                break
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    finally:
        proc.wait(timeout=60)
    before = _model_calls_answered_once(home)
    rerun = fleetlog("run", str(tasks), "--home", str(home), "--no-progress", env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "24 sessions in" in rerun.stdout and "24 completed" in rerun.stdout
    after = _model_calls_answered_once(home)
    assert after > before
    assert fleetlog("verify", "--home", str(home)).returncode == 0


def test_bad_tasks_file_is_one_line(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": "ok"}\n{"promt": "typo"}\n')
    proc = fleetlog("run", str(tasks), "--home", str(tmp_path / "h"), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert ":2:" in proc.stderr and "promt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "fleetlog.toml"
    config.write_text("[fleet]\nhostss = 3\n")
    proc = fleetlog(
        "run", "--demo", "2", "--home", str(tmp_path / "h"), "--config", str(config), timeout=60
    )
    assert proc.returncode == 1
    assert "hostss" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_run_needs_tasks(tmp_path: Path) -> None:
    proc = fleetlog("run", "--home", str(tmp_path / "h"), timeout=60)
    assert proc.returncode == 2 and "tasks file" in proc.stderr


@pytest.mark.slow
def test_run_names_its_agents_works_in_absolute_workspaces_and_fails_with_its_sessions(
    tmp_path: Path,
) -> None:
    roots = tmp_path / "repos"
    (roots / "app").mkdir(parents=True)
    config = tmp_path / "fleetlog.toml"
    config.write_text(
        f'[fleet]\nworkspace_roots = ["{roots}"]\n\n'
        '[agents.coder]\ntools = ["read_file", "write_file", "list_dir"]\n\n'
        # A budget: the ledger actor, whose handle the hosts once took as a constructor
        # argument (Ray then warned "actor restart will fail" on every such run).
        "[budgets.acme]\nmax_cost_usd = 50.0\n"
    )
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps(
            {
                "id": "report",
                "prompt": "Write a short report about topic 1",
                "agent": "coder",
                "tenant": "acme",
                "workspace": str(roots / "app"),
            }
        )
        + "\n"
        + json.dumps(
            {
                "id": "long",
                "prompt": "Do a long, thorough review of the auth docs, one part at a time.",
                "agent": "coder",
                "limits": {"max_steps": 2},
            }
        )
        + "\n"
    )
    env = {k: v for k, v in ENV.items() if not k.startswith("ANTHROPIC_")}
    home = tmp_path / "home"
    args = ("run", str(tasks), "--config", str(config), "--home", str(home), "--no-progress")
    proc = fleetlog(*args, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[0] == (
        "agents: coder (2 tasks; model scripted; tools read_file, write_file, list_dir)"
    )
    assert "core_worker" not in proc.stderr and "restart will fail" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert "2 sessions in" in proc.stdout and "1 completed, 1 failed" in proc.stdout
    assert lines[-1].startswith("1 of 2 sessions failed")
    # The session worked in the task's own directory, not under the home.
    assert sorted(p.name for p in (roots / "app").iterdir()), "nothing written in the workspace"
    assert not (home / "workspaces" / "s-report").exists()


def _kinds(home: Path, sid: str) -> list[str]:
    """The session's events, read from the log files (what is durable), not from the fleet."""
    for reader in open_readers(home / "log"):
        try:
            stream = reader.read_stream(sid, resolve_blobs=False)
        finally:
            reader.close()
        if stream:
            return [type(e.event).__name__ for e in stream]
    return []


@pytest.mark.slow
def test_up_submit_approve_down(tmp_path: Path) -> None:
    """A long-running fleet, with Ray's token auth on (a fresh token per fleet home)."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    try:
        up = fleetlog("up", "--home", str(home), "--hosts", "2", env=env)
        assert up.returncode == 0, up.stderr[-2000:]
        assert (home / "ray_auth_token").stat().st_mode & 0o777 == 0o600
        again = fleetlog("up", "--home", str(home), env=env, timeout=60)
        assert again.returncode == 1 and "already up" in again.stderr
        done = fleetlog("submit", "Write a short report", "--home", str(home), "--wait", env=env)
        assert done.returncode == 0, done.stderr
        assert "completed" in done.stderr
        sid = fleetlog(
            "submit",
            "Email the notes to ops@example.com",
            "--id",
            "e1",
            "--home",
            str(home),
            "--wait",
            env=env,
        )
        assert sid.stdout.strip() == "s-e1" and "awaiting_review" in sid.stderr
        review = json.loads(fleetlog("reviews", "--home", str(home), "--json", env=env).stdout)[0]
        approved = fleetlog("approve", "s-e1", review["call_id"], "--home", str(home), env=env)
        assert approved.returncode == 0, approved.stderr
        assert "recorded; the running fleet goes on" in approved.stdout
        # Acknowledged means durable: the decision is in the log when the command returns.
        assert "ReviewDecided" in _kinds(home, "s-e1")
        # Deny (ending the session) and cancel, online too.
        for task_id in ("e2", "e3"):
            fleetlog(
                "submit",
                "Email the notes to ops@example.com",
                "--id",
                task_id,
                "--home",
                str(home),
                "--wait",
                env=env,
            )
        calls = {
            r["session_id"]: r["call_id"]
            for r in json.loads(fleetlog("reviews", "--home", str(home), "--json", env=env).stdout)
        }
        denied = fleetlog(
            "deny", "s-e2", calls["s-e2"], "--end", "--note", "no", "--home", str(home), env=env
        )
        assert denied.returncode == 0, denied.stderr
        assert _kinds(home, "s-e2")[-2:] == ["ReviewDecided", "SessionFailed"]
        cancelled = fleetlog("cancel", "s-e3", "--home", str(home), env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "CancelRequested" in _kinds(home, "s-e3")
        refused = fleetlog("approve", "s-e2", calls["s-e2"], "--home", str(home), env=env)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        deadline = time.monotonic() + 60
        while not list((home / "outbox").glob("*.eml")):
            assert time.monotonic() < deadline, "the approved email never went out"
            time.sleep(0.1)
        # The fleet's projector owns projections.duckdb; the CLI asks it (through Ray,
        # token auth on) instead of opening the file.
        query = "SELECT id, status FROM agent_executions ORDER BY id"
        answer = fleetlog("sql", query, "--json", "--home", str(home), env=env)
        assert answer.returncode == 0, answer.stderr
        assert "s-e1" in {r["id"] for r in json.loads(answer.stdout)}
        rebuilt = fleetlog("project", "--rebuild", "--home", str(home), env=env)
        assert rebuilt.returncode == 0 and "rebuilt from" in rebuilt.stdout, rebuilt.stderr
        bad = fleetlog("sql", "DROP TABLE events", "--home", str(home), env=env)
        assert bad.returncode == 1 and "read-only" in bad.stderr
    finally:
        started = time.monotonic()
        down = fleetlog("down", "--home", str(home), env=env)
        took = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    assert not (home / "fleet.json").exists()
    # Ray's daemons stopped in Ray's order: ~3 s here, where SIGTERM to all at once left
    # the GCS hanging until the SIGKILL 10 s later (~12 s in all).
    assert took < 9, f"fleetlog down took {took:.1f}s"
