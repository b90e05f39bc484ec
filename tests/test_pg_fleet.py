"""The fleet on the shared PostgreSQL log: hosts, ledger, dispatcher, projector and CLI.

Everything that recovers a session reads through the ``EventLog`` protocol, so the
same fleet runs on ``[fleet] log = "postgresql://…"`` (or ``FLEETLOG_LOG``) with
nothing on the local disk that a session needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import ray
from conftest import wait_until
from pg_server import pg_database, postgres

from fleetlog.actors.fleet import Fleet
from fleetlog.actors.model import demo_tasks
from fleetlog.actors.runner import Command
from fleetlog.config import parse_config, parse_task, session_id_for
from fleetlog.events.errors import FleetlogError
from fleetlog.events.pglog import PostgresLog
from fleetlog.events.schema import ModelResponded, SessionClaimed
from fleetlog.events.source import PgSource
from fleetlog.events.state import fold
from fleetlog.events.verify import verify_events
from fleetlog.projections.projector import Projector

__all__ = ["pg_database", "postgres"]  # fixtures

pytestmark = pytest.mark.usefixtures("ray_session")


def _config(dsn: str, extra: str = "") -> object:
    return parse_config(f'[fleet]\nlog = "{dsn}"\n{extra}')


def _submit(fleet: Fleet, tasks: list[dict[str, object]]) -> set[str]:
    keyed = []
    for t in tasks:
        task = parse_task(t)
        assert task.id is not None
        keyed.append((task, session_id_for(task.id)))
    fleet.submit_many(keyed)
    return {sid for _, sid in keyed}


def _streams(dsn: str) -> dict[str, list]:
    with PostgresLog.open(dsn, pool_size=1) as log:
        return {sid: log.read_stream(sid, resolve_blobs=False) for sid in log.session_ids()}


def _table(projector: Projector, sql: str) -> list[tuple]:
    return sorted(map(tuple, projector.query(sql).to_pylist()), key=repr)


def test_fleet_runs_on_the_shared_log(pg_database: str, tmp_path: Path) -> None:
    dsn = pg_database
    home = tmp_path / "home"
    fleet = Fleet.start(home, _config(dsn), hosts=2)  # type: ignore[arg-type]
    try:
        ids = _submit(fleet, demo_tasks(30, seed=5))
        rows = fleet.wait_settled(ids, timeout=120)
        assert len(rows) == len(ids)
        waiting = [r for r in rows if r["status"] == "awaiting_review"]
        assert waiting, "the demo mix has emails that need approval"
        for row in waiting:
            for review in row["reviews"]:
                assert fleet.command(row["id"], Command(kind="approve", call_id=review["call_id"]))
        rows = fleet.wait_settled(ids, timeout=120)
        counts = Counter(r["status"] for r in rows)
        assert counts["completed"] > 15 and not counts["awaiting_review"]
    finally:
        fleet.shutdown()
    # Nothing of the log is on the local disk: it is all in the database.
    assert not (home / "log").exists()
    streams = _streams(dsn)
    assert ids <= set(streams)
    for sid in ids:
        assert fold(sid, streams[sid]).terminal
        answered = [e.event.request_id for e in streams[sid] if isinstance(e.event, ModelResponded)]
        assert len(answered) == len(set(answered)), f"{sid} repeated a completed model call"
    with PostgresLog.open(dsn, pool_size=1) as log:
        report = verify_events(log, "pg")
    assert report.ok, report.faults
    assert report.sessions == len(ids)
    # Projections from the shared log: a rebuild equals incremental catch-up.
    source = PgSource(dsn)
    try:
        with Projector.open(tmp_path / "a", source=source, rebuild_from=10**12) as inc:
            inc.catch_up(limit=97)  # many small rounds
            with Projector.open(tmp_path / "b", source=source) as full:
                full.rebuild()
                for table in ("agent_executions", "agent_tool_calls", "model_calls", "events"):
                    assert _table(inc, f"FROM {table}") == _table(full, f"FROM {table}"), table
                assert len(_table(full, "FROM agent_executions")) == len(ids)
    finally:
        source.close()


def test_a_killed_host_resumes_its_sessions_from_the_shared_log(
    pg_database: str, tmp_path: Path
) -> None:
    dsn = pg_database
    home = tmp_path / "home"
    # Through runtime_env: the test session's Ray workers were started before this test,
    # so an os.environ change here would never reach the hosts (nor a restarted one).
    fleet = Fleet.start(
        home,
        _config(dsn),  # type: ignore[arg-type]
        hosts=2,
        runtime_env={"env_vars": {"FLEETLOG_SCRIPTED_LATENCY_MS": "30"}},
    )
    try:
        tasks = [t for t in demo_tasks(60, seed=8) if "email" not in str(t["prompt"])][:24]
        ids = _submit(fleet, tasks)
        wait_until(lambda: sum(r["step_count"] for r in fleet.statuses()) >= 10, timeout=60)
        ray.kill(fleet.hosts[0], no_restart=False)  # Ray restarts it; it claims anew
        rows = fleet.wait_settled(ids, timeout=180)
        assert all(r["status"] in ("completed", "failed", "awaiting_review") for r in rows)
        assert len(rows) == len(ids)
    finally:
        fleet.shutdown()
    streams = _streams(dsn)
    reclaimed = [
        sid for sid in ids if sum(isinstance(e.event, SessionClaimed) for e in streams[sid]) > 1
    ]
    assert reclaimed, "no session was claimed again after its host was killed"
    for sid in ids:
        answered = [e.event.request_id for e in streams[sid] if isinstance(e.event, ModelResponded)]
        assert len(answered) == len(set(answered))
    with PostgresLog.open(dsn, pool_size=1) as log:
        assert verify_events(log, "pg").ok


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_cli_reads_and_decides_on_the_shared_log(pg_database: str, tmp_path: Path) -> None:
    dsn = pg_database
    home = tmp_path / "home"
    fleet = Fleet.start(home, _config(dsn), hosts=1)  # type: ignore[arg-type]
    try:
        ids = _submit(fleet, demo_tasks(12, seed=2))
        rows = fleet.wait_settled(ids, timeout=120)
    finally:
        fleet.shutdown()
    env = {"FLEETLOG_LOG": dsn, "FLEETLOG_HOME": str(home)}
    listed = _cli("sessions", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {r["id"] for r in json.loads(listed.stdout)} == ids
    verified = _cli("verify", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ok" in verified.stdout and "PostgreSQL log" in verified.stdout
    counted = _cli("sql", "SELECT count(*) AS n FROM agent_executions", env=env, cwd=tmp_path)
    assert counted.returncode == 0, counted.stderr
    assert str(len(ids)) in counted.stdout
    # An approval with no fleet running is appended to the shared log directly.
    waiting = [r for r in rows if r["status"] == "awaiting_review"]
    assert waiting
    row = waiting[0]
    call = row["reviews"][0]["call_id"]
    approved = _cli("approve", row["id"], call, env=env, cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    state = fold(row["id"], _streams(dsn)[row["id"]])
    assert state.tool_calls[call].status != "awaiting_review"
    again = _cli("approve", row["id"], call, env=env, cwd=tmp_path)
    assert again.returncode == 0 and "already recorded" in again.stdout


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://fleet:s3cretpw@127.0.0.1:1/fleetdb",  # nothing listens on port 1
        "postgresql://nobody_here:s3cretpw@127.0.0.1:{port}/postgres",  # no such role
    ],
)
def test_a_bad_dsn_is_one_line_before_any_actor_starts(
    dsn: str,
    postgres: str,
    tmp_path: Path,
) -> None:
    port = postgres.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    dsn = dsn.format(port=port)
    with pytest.raises(FleetlogError) as caught:
        Fleet.start(tmp_path / "home", _config(dsn), hosts=1)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and "s3cretpw" not in message
    assert "127.0.0.1" in message
    result = _cli("run", "--demo", "2", "--no-progress", env={"FLEETLOG_LOG": dsn}, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "s3cretpw" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_a_fleet_on_the_shared_log_is_found_by_name_from_anywhere(
    pg_database: str, tmp_path: Path
) -> None:
    """No fleet.json needed: RAY_ADDRESS and FLEETLOG_LOG find the fleet's named actors."""
    dsn = pg_database
    head = tmp_path / "head"
    up = _cli("up", "--home", str(head), "--hosts", "1", env={"FLEETLOG_LOG": dsn}, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    address = json.loads((head / "fleet.json").read_text())["address"]
    elsewhere = {"FLEETLOG_LOG": dsn, "FLEETLOG_HOME": str(tmp_path / "another-node")}
    try:
        submitted = _cli(
            "submit",
            "Write a short report about topic 3",
            "--id",
            "found",
            "--wait",
            env={**elsewhere, "RAY_ADDRESS": address},
            cwd=tmp_path,
        )
        assert submitted.returncode == 0, submitted.stderr
        assert "s-found" in submitted.stdout
        assert fold("s-found", _streams(dsn)["s-found"]).terminal
        nowhere = _cli("submit", "x", env=elsewhere, cwd=tmp_path)
        assert nowhere.returncode == 1
        assert "no fleet is up" in nowhere.stderr and "Traceback" not in nowhere.stderr
    finally:
        down = _cli("down", "--home", str(head), env={"FLEETLOG_LOG": dsn}, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
