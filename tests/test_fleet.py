"""The fleet on real Ray: hosts own sessions, restart and resume; operators decide."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import ray
from conftest import wait_until

from fleetlog.actors.fleet import Fleet
from fleetlog.actors.model import demo_tasks
from fleetlog.actors.runner import Command
from fleetlog.config import Config, parse_config, parse_task, session_id_for
from fleetlog.events.partitions import open_readers
from fleetlog.events.schema import ModelResponded, SessionClaimed
from fleetlog.events.state import fold
from fleetlog.events.tail import LogTail
from fleetlog.events.verify import verify_log

pytestmark = pytest.mark.usefixtures("ray_session")


def _submit(fleet: Fleet, tasks: list[dict[str, object]]) -> set[str]:
    keyed = []
    for t in tasks:
        task = parse_task(t)
        assert task.id is not None
        keyed.append((task, session_id_for(task.id)))
    fleet.submit_many(keyed)
    return {sid for _, sid in keyed}


def _streams(home: Path) -> dict[str, list]:
    out = {}
    for reader in open_readers(home / "log"):
        try:
            for sid in reader.session_ids():
                out[sid] = reader.read_stream(sid, resolve_blobs=False)
        finally:
            reader.close()
    return out


def _all_ended(home: Path, ids: set[str]) -> bool:
    states = {sid: fold(sid, stream) for sid, stream in _streams(home).items()}
    return all(sid in states and states[sid].terminal for sid in ids)


def _no_repeated_model_calls(home: Path) -> None:
    for sid, stream in _streams(home).items():
        answered = [e.event.request_id for e in stream if isinstance(e.event, ModelResponded)]
        assert len(answered) == len(set(answered)), f"{sid} repeated a completed model call"


def test_demo_fleet_with_approvals(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fleet = Fleet.start(home, Config(), hosts=2)
    try:
        ids = _submit(fleet, demo_tasks(40, seed=3))
        rows = fleet.wait_settled(ids, timeout=120)
        counts = Counter(r["status"] for r in rows)
        assert counts["completed"] > 20
        codes = Counter(r["error"].split(":")[0] for r in rows if r["error"])
        assert codes["LOOP_DETECTED"] >= 1
        waiting = [r for r in rows if r["status"] == "awaiting_review"]
        assert waiting, "the demo mix has emails that need approval"
        for row in waiting:
            for review in row["reviews"]:
                assert fleet.command(row["id"], Command(kind="approve", call_id=review["call_id"]))
        rows = fleet.wait_settled(ids, timeout=120)
        assert not [r for r in rows if r["status"] == "awaiting_review"]
        outbox = list((home / "outbox").glob("*.eml"))
        assert len(outbox) == len(waiting)
    finally:
        fleet.shutdown()
    _no_repeated_model_calls(home)
    for path in (home / "log").iterdir():
        assert verify_log(path).ok


def test_killed_host_restarts_and_every_session_completes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fleet = Fleet.start(
        home,
        Config(),
        hosts=2,
        runtime_env={"env_vars": {"FLEETLOG_SCRIPTED_LATENCY_MS": "150"}},
    )
    try:
        tasks = [
            {"id": f"k{i}", "prompt": f"Write a short report about topic {i}"} for i in range(16)
        ]
        ids = _submit(fleet, tasks)
        deadline = time.monotonic() + 60
        while sum(r["step_count"] for r in fleet.statuses()) < 8:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ray.kill(fleet.hosts[0], no_restart=False)  # Ray restarts it; it must resume
        # On its own: nothing calls the host (no status polling) until the log shows every
        # session ended, so a host that resumed only when called would fail here.
        wait_until(lambda: _all_ended(home, ids), timeout=120, interval=0.1)
        rows = fleet.wait_settled(ids, timeout=120)
        assert Counter(r["status"] for r in rows) == {"completed": 16}
    finally:
        fleet.shutdown()
    streams = _streams(home)
    restarted = [
        sid
        for sid, stream in streams.items()
        if sum(isinstance(e.event, SessionClaimed) for e in stream) > 1
    ]
    assert restarted, "the killed host owned sessions that had to be claimed again"
    _no_repeated_model_calls(home)


def test_tenant_budget_is_fleet_wide(tmp_path: Path) -> None:
    config = parse_config("[budgets.acme]\nmax_cost_usd = 0.02\n", source="test")
    home = tmp_path / "home"
    fleet = Fleet.start(home, config, hosts=2)
    try:
        tasks = [
            {"id": f"b{i}", "prompt": f"Write notes on item {i}", "tenant": "acme"}
            for i in range(12)
        ] + [{"id": "other", "prompt": "Write notes", "tenant": "globex"}]
        ids = _submit(fleet, tasks)
        rows = {r["id"]: r for r in fleet.wait_settled(ids, timeout=120)}
    finally:
        fleet.shutdown()
    acme = [r for sid, r in rows.items() if sid != session_id_for("other")]
    exhausted = [r for r in acme if r["error"].startswith("BUDGET_EXHAUSTED")]
    assert exhausted, "a $0.02 budget cannot cover twelve sessions"
    assert sum(r["cost_usd"] for r in acme) <= 0.02 + 1e-9
    assert rows[session_id_for("other")]["status"] == "completed"  # another tenant is untouched


def test_projections_follow_the_fleet_and_a_restart_starts_from_them(tmp_path: Path) -> None:
    config = parse_config("[budgets.acme]\nmax_cost_usd = 100.0\n", source="test")
    home = tmp_path / "home"
    tasks = [{**t, "tenant": "acme"} for t in demo_tasks(24, seed=5)]
    fleet = Fleet.start(home, config, hosts=2)
    try:
        ids = _submit(fleet, tasks)
        rows = {r["id"]: r for r in fleet.wait_settled(ids, timeout=120)}
        waiting = {sid for sid, r in rows.items() if r["status"] == "awaiting_review"}
        assert waiting, "the demo mix has emails that need approval"
        heads = {int(p.name[1:]): LogTail(p).head() for p in (home / "log").iterdir()}

        # The projector tails the log on its own: no catch-up asked for.
        def caught_up() -> bool:
            view = ray.get(fleet.projector.sessions.remote())
            return view is not None and view.checkpoints == heads

        wait_until(caught_up, timeout=30)
        answer = ray.get(
            fleet.projector.query.remote("SELECT id, status, step_count FROM agent_executions")
        )
        projected = {r["id"]: r for r in answer["table"].to_pylist()}
        assert {sid: (r["status"], r["step_count"]) for sid, r in projected.items()} == {
            sid: (r["status"], r["step_count"]) for sid, r in rows.items()
        }
        bad = ray.get(fleet.projector.query.remote("DELETE FROM events"))
        assert bad == {"error": "projections are read-only: only SELECT is allowed (got DELETE)"}
        spent = ray.get(fleet.ledger.snapshot.remote())["acme"]["spent_usd"]
        total = ray.get(
            fleet.projector.query.remote("SELECT sum(cost_usd) AS c FROM agent_executions")
        )
        assert spent == pytest.approx(float(total["table"].to_pylist()[0]["c"]), abs=1e-9)
    finally:
        fleet.shutdown()

    # A new fleet on the same home: hosts resume only what is unfinished, the
    # ledger starts from budget_counters, the dispatcher routes from its directory.
    fleet = Fleet.start(home, config, hosts=2)
    try:
        assert {r["id"] for r in fleet.statuses()} == waiting
        assert ray.get(fleet.ledger.snapshot.remote())["acme"]["spent_usd"] == pytest.approx(
            spent, abs=1e-9
        )
        sid = sorted(waiting)[0]
        call = next(r for r in fleet.statuses() if r["id"] == sid)["reviews"][0]["call_id"]
        assert fleet.command(sid, Command(kind="approve", call_id=call))
        rows = {r["id"]: r for r in fleet.wait_settled({sid}, timeout=60)}
        assert rows[sid]["status"] == "completed"
    finally:
        fleet.shutdown()
