"""The benchmark runners still run (figures are not asserted: timing belongs to bench/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    """Run ``python -m bench.<args>`` from the repository; its stdout, once it exited 0."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_log_bench_runs(tmp_path: Path) -> None:
    out = _bench(
        "bench.log_bench", "--json", "--seconds", "0.2", "--repeats", "1", "--dir", str(tmp_path)
    )
    figures = json.loads(out)
    assert figures
    assert list(tmp_path.iterdir()) == []  # the benchmark cleans up after itself


def test_fleet_bench_runs(tmp_path: Path) -> None:
    out = _bench(
        "bench.fleet_bench",
        "--quick",
        "--json",
        "--dir",
        str(tmp_path),
        timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    table = json.loads(out)
    assert table["engine/20"]["steps_per_s"] > 0
    assert table["engine-scripted/20"]["steps_per_s"] > 0
    assert table["fleet:2/20"]["peak_rss_mb"] > 0 and table["fleet:2/20"]["ray_rss_mb"] > 0
    assert "fleet:2/1" not in table  # a one-session fleet would time Ray's latency only


def test_projection_bench_runs(tmp_path: Path) -> None:
    out = _bench(
        "bench.projection_bench",
        *("--events", "5000", "--sessions", "20", "--repeats", "1"),
        *("--rate", "2000", "--lag-seconds", "1", "--dir", str(tmp_path)),
    )
    assert "| full rebuild (" in out
    assert "| (floor: decoding + `events` alone, no folding) |" in out
    assert "| rebuild / floor |" in out
    assert "catch-up lag" in out
    # rebuild against its floor by workers, and on one core where there are more
    assert "| cores | workers | floor (events/s) | rebuild (events/s) | rebuild / floor |" in out
    assert re.search(r"^\| \d+ \| 2 \| [\d,]+ \| [\d,]+ \| \d+% \|$", out, re.M)
    assert re.search(r"^  lag: p99 \d+ ms, max \d+ ms; \d+ rounds, p50 \d+ ms", out, re.M)


def test_fold_profile_runs(tmp_path: Path) -> None:
    out = _bench(
        "bench.fold_profile", "--events", "3000", "--sessions", "10", "--dir", str(tmp_path)
    )
    assert re.search(r"^fold worker 0 of 2: [\d,]+ events, [\d.]+ µs", out, re.M)
    # every statement of apply.sql is timed, and the hand-back
    assert re.search(r"µs  CREATE OR REPLACE TEMP TABLE _tc_rows AS", out)
    assert "(handing back: _rows_to_place)" in out
    assert re.search(r"^a fold of an empty batch \(planning, set-up\): [\d.]+ ms$", out, re.M)


def test_python_fold_runs(tmp_path: Path) -> None:
    out = _bench(
        "bench.python_fold", "--events", "3000", "--sessions", "10", "--dir", str(tmp_path)
    )
    assert re.search(r"^fold worker 0 of 2: [\d,]+ events, [\d.]+ µs", out, re.M)
    assert re.search(r"^  +[\d.]+ µs  the least: one dict lookup", out, re.M)
    assert re.search(r"^  +[\d.]+ µs  its [\d,]+ rows as Arrow columns$", out, re.M)
    # the Python fold finds the calls and sessions the SQL folds do
    counts = re.findall(r"^  rows of (\w+): ([\d,]+) \(the SQL folds: ([\d,]+)\)$", out, re.M)
    tables = ["model_calls", "agent_tool_calls", "agent_executions"]
    assert [name for name, _, _ in counts] == tables
    assert all(python == sql != "0" for _, python, sql in counts), counts


def test_sandbox_bench_runs() -> None:
    out = _bench("bench.sandbox_bench", "--calls", "3")
    assert "sandboxed" in out and "added" in out
