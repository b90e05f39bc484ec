"""Child for tests/test_projection_crash.py: catch a home's projections up in tiny rounds.

Prints "round N" after each committed round, so the parent can kill it mid-stream.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fleetlog.projections.projector import Projector


def main() -> None:
    home, size = Path(sys.argv[1]), int(sys.argv[2])
    with Projector.open(home, wait_s=30) as projector:
        rounds = 0
        while projector.step(size):
            rounds += 1
            print(f"round {rounds}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
