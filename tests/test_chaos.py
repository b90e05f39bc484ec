"""The chaos suite: a multi-node fleet on PostgreSQL loses a node, hosts and its database.

The driver (``chaos_driver.py``) runs in a child process: it needs a Ray cluster of
its own (``ray.cluster_utils.Cluster``), not the test session's Ray. In CI it runs
one round of every fault against 200 sessions; ``FLEETLOG_CHAOS_LONG=1`` runs the
longer version (1,000 sessions, three rounds, more kills).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
LONG = os.environ.get("FLEETLOG_CHAOS_LONG") == "1"


@pytest.mark.timeout(3900 if LONG else 900)
def test_nothing_acknowledged_is_lost_and_nothing_is_done_twice(tmp_path: Path) -> None:
    args = ["--sessions", "1000", "--rounds", "3", "--kills", "5"] if LONG else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Its own process group: whatever happens, its Ray nodes and PostgreSQL go with it.
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "chaos_driver.py"), str(tmp_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=HERE,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=3600 if LONG else 840)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the driver cleans up on SIGTERM
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    proc_stdout, proc_stderr = stdout, stderr
    lines = [line for line in proc_stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc_stdout[-3000:] + proc_stderr[-3000:]
    report = json.loads(lines[-1])
    table = [line for line in proc_stderr.splitlines() if line.startswith("|")]
    print("\n".join(table))  # shown with -s, and kept in the CI log on failure
    rounds = 3 if LONG else 1
    assert report["faults"]["node lost"] == rounds
    assert report["faults"]["PostgreSQL restart -m immediate"] == rounds
    assert report["faults"]["host SIGKILL"] >= rounds
    assert report["unsettled"] == 0, report
    assert report["lost"] == 0 and report["snapshots"] == 3 * rounds
    assert report["acked_decisions_missing"] == 0
    assert report["duplicated_model_answers"] == 0
    assert report["duplicated_emails"] == 0
    assert report["emails_succeeded_not_in_outbox"] == 0
    assert report["emails_delivered"] > 0, "the run should have delivered email"
    assert report["billed_not_recorded"] == 0
    assert report["tenant_spend_usd"] <= report["budget_usd"]
    assert not report["verify_faults"], report["verify_faults"]
    assert not report["projection_mismatches"], report["projection_mismatches"]
    assert report["statuses"].get("completed", 0) >= report["sessions"] // 2, report
