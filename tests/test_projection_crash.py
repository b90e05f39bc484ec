"""Exactly-once catch-up under real crashes: SIGKILL a projecting process mid-stream,
then the next owner catches up and the tables equal a full rebuild."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from test_projections import _write_random_fleet, snapshot

from fleetlog.projections.projector import Projector

HERE = Path(__file__).parent


def test_sigkill_mid_catch_up_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rng = random.Random(11)
    total = _write_random_fleet(tmp_path, rng, 150, 2)
    kills = 0
    for attempt in range(6):
        child = subprocess.Popen(
            [sys.executable, str(HERE / "projector_child.py"), str(tmp_path), "37"],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert child.stdout is not None
        # Kill after a random number of committed rounds: usually mid-transaction.
        wanted = rng.randint(1, 12)
        for line in child.stdout:
            if line.startswith("done"):
                break
            if int(line.split()[1]) >= wanted:
                child.send_signal(signal.SIGKILL)
                kills += 1
                break
        child.wait(timeout=60)
        child.stdout.close()
        if attempt == 2:
            # A kill can land anywhere, including before a round: check on the way.
            with Projector.open(tmp_path) as projector:
                done = sum(projector.checkpoints().values())
                assert projector.query("SELECT count(*) AS n FROM events").to_pylist() == [
                    {"n": done}
                ]
    assert kills >= 3
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        incremental = snapshot(projector)
        assert len(incremental["events"]) == total
        projector.rebuild(workers=1)
        assert snapshot(projector) == incremental
