"""The benchmark runners still run (figures are not asserted: timing belongs to bench/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_log_bench_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.log_bench",
            "--json",
            "--seconds",
            "0.2",
            "--repeats",
            "1",
            "--dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures
    assert list(tmp_path.iterdir()) == []  # the benchmark cleans up after itself


def test_fleet_bench_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fleet_bench", "--quick", "--json", "--dir", str(tmp_path)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads(proc.stdout)
    assert table["engine/20"]["steps_per_s"] > 0
    assert table["engine-scripted/20"]["steps_per_s"] > 0
    assert table["fleet:2/20"]["peak_rss_mb"] > 0 and table["fleet:2/20"]["ray_rss_mb"] > 0
    assert "fleet:2/1" not in table  # a one-session fleet would time Ray's latency only


def test_projection_bench_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.projection_bench",
            "--events",
            "5000",
            "--sessions",
            "20",
            "--repeats",
            "1",
            "--rate",
            "2000",
            "--lag-seconds",
            "1",
            "--dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| full rebuild (" in proc.stdout
    assert "| (floor: decoding + `events` alone, no folding) |" in proc.stdout
    assert "| rebuild / floor |" in proc.stdout
    assert "catch-up lag" in proc.stdout
    # rebuild against its floor by workers, and on one core where there are more
    assert "| cores | workers | floor (events/s) | rebuild (events/s) | rebuild / floor |" in (
        proc.stdout
    )
    assert re.search(r"^\| \d+ \| 2 \| [\d,]+ \| [\d,]+ \| \d+% \|$", proc.stdout, re.M)
    assert re.search(r"^  lag: p99 \d+ ms, max \d+ ms; \d+ rounds, p50 \d+ ms", proc.stdout, re.M)


def test_fold_profile_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.fold_profile",
            "--events",
            "3000",
            "--sessions",
            "10",
            "--dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^fold worker 0 of 2: [\d,]+ events, [\d.]+ µs", proc.stdout, re.M)
    # every statement of apply.sql is timed, and the hand-back
    assert re.search(r"µs  CREATE OR REPLACE TEMP TABLE _tc_rows AS", proc.stdout)
    assert "(handing back: _rows_to_place)" in proc.stdout
    assert re.search(
        r"^a fold of an empty batch \(planning, set-up\): [\d.]+ ms$", proc.stdout, re.M
    )


def test_sandbox_bench_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sandbox_bench", "--calls", "3"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sandboxed" in proc.stdout and "added" in proc.stdout
