"""The cluster benchmark still runs: real Ray, real PostgreSQL (``tests/pg_server.py``).

Figures are not asserted beyond sanity (timing belongs to bench/): both tables
have their rows, steps/s are positive, and the recovery after a host loss was
measured, on both logs, for every session of the killed host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)  # ~75 s on an idle 2-core machine; Ray and PostgreSQL start for real
def test_cluster_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    scratch = tmp_path / "scratch"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cluster_bench",
            "--quick",
            "--json",
            str(out),
            "--dir",
            str(scratch),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())

    throughput = figures["throughput"]
    assert set(throughput) == {"file/1", "pg/1", "file/2", "pg/2"}
    for key, row in throughput.items():
        assert row["steps_per_s"]["median"] > 0, key
        assert row["steps"]["median"] > 0, key
        run = row["runs"][0]
        # The demo sessions all ended, and the durable steps are the sessions' own count.
        assert sum(run["statuses"].values()) == 20, key
        assert run["steps"] == run["step_count"], key
        assert 0 < run["cores_busy"] <= (os.cpu_count() or 1) + 0.5, key
    for hosts in (1, 2):
        assert throughput[f"pg/{hosts}"]["ratio_pg_file"] > 0
        assert throughput[f"pg/{hosts}"]["runs"][0]["write_transactions"] > 0
        assert throughput[f"pg/{hosts}"]["runs"][0]["pg_cpu_s"] > 0

    recovery = figures["recovery"]
    assert set(recovery) == {"file", "pg"}
    for kind, summary in recovery.items():
        assert summary["complete_runs"] == 1, kind
        [rec] = summary["runs"]
        assert rec["sessions"] == 50, kind
        assert rec["victim_sessions"] > 0, kind
        assert rec["reclaimed"] == rec["victim_sessions"], kind
        assert rec["complete"], kind
        assert 0 < rec["first_s"] <= rec["all_s"] < 120, kind
        assert rec["steps_at_end"] > rec["steps_before_kill"], kind  # they ran on

    table = proc.stdout
    assert "### Durable steps/s" in table and "### Recovery after a host loss" in table
    for hosts in (1, 2):
        assert f"| {hosts} | FileLog |" in table
        assert f"| {hosts} | PostgresLog |" in table
    assert "\n| FileLog | " in table and "\n| PostgresLog | " in table
    assert list(scratch.iterdir()) == []  # fleet homes removed (databases dropped)
