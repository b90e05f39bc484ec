"""The context benchmark still runs (figures are not asserted: timing belongs to bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_context_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "context.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.context_bench",
            "--messages",
            "9,50",
            "--repeats",
            "1",
            "--iterations",
            "5",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| messages | tokens (est.) | (a) accounting | (b) verification |" in proc.stdout
    assert "| 9 |" in proc.stdout
    assert "| 51 |" in proc.stdout  # a request's conversation has an odd count
    assert "goal: not measured" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["messages"] for r in report["results"]] == [9, 51]
    for result in report["results"]:
        assert result["tokens_estimate"] > 0
        figures = result["figures_us"]
        assert set(figures) == {
            "accounting",
            "verification",
            "decide",
            "fold_turn",
            "decide+fold_turn",
        }
        for figure in figures.values():
            assert figure["median"] > 0
            assert figure["p95"] >= figure["median"]
