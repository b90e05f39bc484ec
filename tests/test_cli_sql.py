"""`fleetlog sql`, `metrics` and `project` as a user runs them (no fleet up: the CLI
opens the projections itself)."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest
from test_cli import fleetlog
from test_projections import _write_random_fleet


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
    assert proc.returncode == 1 and "no event log under" in proc.stderr
    assert not (tmp_path / "nothing").exists()
