"""``fleetlog.Fleet``, the Python API: a real fleet on Ray, the log alone, and the CLI's errors.

* a fleet this process starts: submit, wait, reviews, approve by prefix and hash, deny,
  SQL as rows and as Arrow, metrics; errors word for word as the CLI prints them;
* the log alone (``Fleet.open``) over a home written event by event: decisions recorded
  in the log, WaitTimeout for a session nothing runs, submit refused;
* ``Fleet.connect`` from a fresh process to the fleet ``fleetlog up`` started;
* the README's example, run as written in a fresh process (it starts its own Ray).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from console_fixtures import build_home, fold_session

import fleetlog
from fleetlog import Fleet, FleetlogError, Review, Session, WaitTimeout
from fleetlog.actors.model import demo_tasks
from fleetlog.events.errors import SessionNotFound
from fleetlog.events.schema import ReviewDecided

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "FLEETLOG_"))}
ENV["RAY_AUTH_MODE"] = "disabled"
CONFIG = """\
[agents.coder]
[agents.researcher]
[agents.ops]

[budgets.acme]
max_cost_usd = 50.0
"""


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _cli_error(*args: str, cwd: Path) -> str:
    """What the CLI says for ``args``, without its ``fleetlog: `` prefix."""
    proc = _cli(*args, cwd=cwd)
    assert proc.returncode in (1, 2) and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.strip().removeprefix("fleetlog: ")


# --- a fleet this process starts -----------------------------------------------------------


@pytest.fixture(scope="module")
def started(
    tmp_path_factory: pytest.TempPathFactory, ray_session: None
) -> Iterator[tuple[Fleet, Path]]:
    root = tmp_path_factory.mktemp("api")
    (root / "fleetlog.toml").write_text(CONFIG)
    fleet = Fleet.start(root / "home", config=root / "fleetlog.toml", hosts=2, model="scripted")
    try:
        yield fleet, root
    finally:
        fleet.close()


def test_submit_wait_review_decide_and_sql(started: tuple[Fleet, Path]) -> None:
    fleet, root = started
    assert "Fleet" in fleetlog.__all__ and fleetlog.Fleet is Fleet
    tasks = demo_tasks(30)
    ids = fleet.submit_many(tasks)
    assert ids == [f"s-{t['id']}" for t in tasks]
    sessions = fleet.wait(ids, timeout=180)
    assert [s.id for s in sessions] == ids and all(isinstance(s, Session) for s in sessions)
    assert all(s.settled for s in sessions)
    done = [s for s in sessions if s.status == "completed"]
    assert len(done) > 15 and all(s.result and s.step_count > 0 for s in done)
    # Submitting the same list again resumes the same sessions: nothing new.
    assert fleet.submit_many(tasks) == ids
    assert len(fleet.sessions()) == 30

    reviews = fleet.reviews()
    assert len(reviews) >= 2 and all(isinstance(r, Review) for r in reviews)
    assert [r.requested_at for r in reviews] == sorted(r.requested_at for r in reviews)
    first, second = reviews[0], reviews[1]
    # A hash other than the call's is refused, as `fleetlog approve --hash` refuses it.
    with pytest.raises(FleetlogError, match="hash"):
        fleet.approve(first.session_id, first.call_id, call_hash="0" * 16)
    # The task id and a prefix of the call id are enough, as on the command line.
    task_id = first.session_id.removeprefix("s-")
    fleet.approve(task_id, first.call_id[:14], call_hash=first.call_hash, reviewer="alice")
    fleet.deny(second.session_id, second.call_id, note="not this week", end=True)
    after = fleet.wait([first.session_id, second.session_id], timeout=120)
    assert after[0].status == "completed", after[0]
    assert after[1].status == "failed" and after[1].error.startswith("DENIED_BY_REVIEWER")
    assert len(list((root / "home" / "outbox").glob("*.eml"))) == 1

    rows = fleet.sql(
        "SELECT id, status, reviewer FROM agent_tool_calls WHERE tool_name = 'send_email' "
        "ORDER BY reviewed_at NULLS LAST"
    )
    assert {"id": first.call_id, "status": "succeeded", "reviewer": "alice"} in rows
    table = fleet.sql("SELECT status, count(*) AS n FROM agent_executions GROUP BY ALL", arrow=True)
    assert isinstance(table, pa.Table) and table.column_names == ["status", "n"]
    assert sum(table.column("n").to_pylist()) == 30
    health = fleet.metrics(agent_type="coder")
    assert [r["agent_type"] for r in health] == ["coder"] and health[0]["sessions"] > 0
    assert fleet.session(task_id) == fleet.wait([first.session_id])[0]


def test_errors_are_the_clis(started: tuple[Fleet, Path]) -> None:
    fleet, root = started
    home = str(root / "home")
    where = ("--home", home, "--config", str(root / "fleetlog.toml"))
    # An agent the config does not define: the same line as `fleetlog submit`.
    with pytest.raises(FleetlogError) as agent:
        fleet.submit("Tidy the notes", agent="codr")
    assert str(agent.value) == _cli_error(
        "submit", "Tidy the notes", "--agent", "codr", *where, cwd=root
    )
    with pytest.raises(FleetlogError, match=r"task 2: .*prompt"):
        fleet.submit_many([{"prompt": "fine"}, {"id": "no-prompt"}])
    with pytest.raises(SessionNotFound) as missing:
        fleet.session("no-such-task")
    assert str(missing.value) == _cli_error("show", "no-such-task", *where, cwd=root)
    for query in ("SELEC 1", "DROP TABLE events", "SELECT * FROM nowhere"):
        with pytest.raises(FleetlogError) as bad:
            fleet.sql(query)
        assert "\n" not in str(bad.value).strip() or "Did you mean" in str(bad.value)
    with pytest.raises(FleetlogError, match="read-only"):
        fleet.sql("DROP TABLE events")
    with pytest.raises(FleetlogError, match="unknown status"):
        fleet.sessions(status="done")


# --- the log alone -------------------------------------------------------------------------


def test_open_reads_decides_and_times_out_without_ray(tmp_path: Path) -> None:
    home = build_home(tmp_path)
    with Fleet.open(home, config=tmp_path / "fleetlog.toml") as fleet:
        assert "log only" in repr(fleet)
        by_id = {s.id: s for s in fleet.sessions()}
        assert by_id["s-done"].status == "completed"
        waiting = fleet.sessions(status="awaiting_review")
        assert len(waiting) == 2
        reviews = fleet.reviews()
        assert {r.session_id for r in reviews} == {s.id for s in waiting}
        review = reviews[0]
        fleet.approve(review.session_id, review.call_id, call_hash=review.call_hash, reviewer="bo")
        _, stream = fold_session(home, review.session_id)
        decided = [e.event for e in stream if isinstance(e.event, ReviewDecided)]
        assert len(decided) == 1 and decided[0].approved and decided[0].reviewer == "bo"
        # Decided once: approving again records nothing more, as the CLI's "already recorded".
        fleet.approve(review.session_id, review.call_id)
        _, stream = fold_session(home, review.session_id)
        assert sum(isinstance(e.event, ReviewDecided) for e in stream) == 1
        # Nothing runs these sessions: waiting for the running ones (the approved one is
        # running again) times out, saying where each stood.
        running = [s.id for s in fleet.sessions(status="running")]
        assert review.session_id in running
        with pytest.raises(WaitTimeout) as timed_out:
            fleet.wait(running, timeout=0.3, poll=0.05)
        assert [s.id for s in timed_out.value.sessions] == running
        assert {s.status for s in timed_out.value.sessions} == {"running"}
        assert isinstance(timed_out.value, TimeoutError)
        # Settled ones return at once.
        assert [s.id for s in fleet.wait(["s-done"], timeout=0)] == ["s-done"]
        with pytest.raises(FleetlogError, match="needs a running fleet"):
            fleet.submit("hello")
        rows = fleet.sql("SELECT id, status FROM agent_executions ORDER BY id")
        assert {"id": "s-done", "status": "completed"} in rows
        fleet.cancel(running[0], note="stop")
    with pytest.raises(FleetlogError, match="closed"):
        fleet.sql("SELECT 1")
    with pytest.raises(FleetlogError, match="no fleet home at"):
        Fleet.open(tmp_path / "nowhere")
    with pytest.raises(FleetlogError, match="no fleet is up for"):
        Fleet.connect(home, config=tmp_path / "fleetlog.toml")


# --- other processes: a fleet `fleetlog up` started, and the README's example ---------------

CONNECT = """
import json, sys
from fleetlog import Fleet
with Fleet.connect(sys.argv[1]) as fleet:
    sid = fleet.submit("Summarize the files in the workspace and write the summary to summary.md.",
                       id="via-connect", agent="coder")
    (session,) = fleet.wait([sid], timeout=120)
    print(json.dumps({"id": session.id, "status": session.status, "repr": repr(fleet)}))
"""


@pytest.mark.slow
def test_connect_from_another_process_leaves_the_fleet_up(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "fleetlog.toml").write_text(CONFIG)
    up = _cli("up", "--home", str(home), cwd=tmp_path, timeout=180)
    assert up.returncode == 0, up.stderr
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CONNECT, str(home)],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["id"] == "s-via-connect" and out["status"] == "completed"
        assert "connected" in out["repr"]
        # Closing a connected Fleet left the fleet running: it still takes work.
        submit = _cli(
            "submit",
            "list the workspace",
            "--agent",
            "coder",
            "--wait",
            "--home",
            str(home),
            cwd=tmp_path,
        )
        assert submit.returncode == 0, submit.stderr
    finally:
        down = _cli("down", "--home", str(home), cwd=tmp_path)
    assert down.returncode == 0, down.stderr


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the README's Python API section has one example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path: Path) -> None:
    example = _readme_example()
    # The example keeps its fleet in /tmp/api-tour: here, in a directory of this test's.
    home = tmp_path / "api-tour"
    code = example.replace('"/tmp/api-tour"', repr(str(home)))
    assert code != example, "the example names its home /tmp/api-tour"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "completed", proc.stdout
    assert "send_email" in proc.stdout and "succeeded" in proc.stdout
    assert len(list((home / "outbox").glob("*.eml"))) == 1
