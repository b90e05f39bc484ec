"""Crash tests, for real: SIGKILL a writing process at random moments, then check
that every acknowledged event is present and intact and the log verifies clean.

60 kills across the three modes (asyncio writers, OS threads, both), each
restarting the writer on the same log so recovery runs after every kill,
including kills that land during recovery itself.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from crash_writer import payload

from fleetlog.events.filelog import FileLog
from fleetlog.events.verify import verify_log

HERE = Path(__file__).parent
KILLS_PER_MODE = 20


class Child:
    def __init__(self, log_dir: Path, mode: str, segment_bytes: int) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), str(log_dir), mode, str(segment_bytes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.acked: dict[str, tuple[int, int]] = {}
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if parts[0] == "ready":
                self.ready.set()
            elif parts[0] == "ack" and len(parts) == 4:
                sid, seq, pos = parts[1], int(parts[2]), int(parts[3])
                self.acked[sid] = max(self.acked.get(sid, (0, 0)), (seq, pos))

    def kill(self) -> str:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc.stdout.close()
        return stderr


def check(log_dir: Path, acked: dict[str, tuple[int, int]], segment_bytes: int) -> int:
    """Every acknowledged event is there and intact; return the head."""
    with FileLog.open(log_dir, segment_bytes=segment_bytes) as log:
        head = log.head()
        for sid, (seq, position) in acked.items():
            assert log.last_seq(sid) >= seq, f"{sid}: acked seq {seq} lost"
            stream = log.read_stream(sid)
            assert [e.seq for e in stream] == list(range(1, len(stream) + 1))
            for env in stream:
                assert env.event.call_id == f"{sid}:{env.seq}"  # type: ignore[union-attr]
                assert env.event.output == payload(sid, env.seq)  # type: ignore[union-attr]
            at = log.read_all(position, limit=1)[0]
            assert (at.session_id, at.seq) == (sid, seq)
        positions = [e.position for e in log.read_all(1, limit=10_000_000)]
        assert positions == list(range(1, head + 1))
    report = verify_log(log_dir)
    assert report.ok, [str(f) for f in report.faults]
    return head


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "segment_bytes"),
    [("async", 256 * 1024), ("threads", 256 * 1024), ("mixed", 48 * 1024)],
)
def test_sigkill_never_loses_an_acknowledged_event(
    tmp_path: Path, mode: str, segment_bytes: int
) -> None:
    rng = random.Random(f"{mode}-{os.getpid()}")
    log_dir = tmp_path / "log"
    acked: dict[str, tuple[int, int]] = {}
    heads: list[int] = []
    for kill in range(KILLS_PER_MODE):
        child = Child(log_dir, mode, segment_bytes)
        if kill % 7 == 3:
            time.sleep(rng.uniform(0.0, 0.25))  # may land during open/recovery
        else:
            assert child.ready.wait(30), "writer did not start"
            time.sleep(rng.uniform(0.02, 0.4))
        stderr = child.kill()
        assert "Traceback" not in stderr, stderr
        for sid, mark in child.acked.items():
            acked[sid] = max(acked.get(sid, (0, 0)), mark)
        heads.append(check(log_dir, acked, segment_bytes))
    assert sum(seq for seq, _ in acked.values()) > 500, "the writers barely ran"
    assert heads == sorted(heads)
    segments = list((log_dir / "segments").glob("*.seg"))
    assert len(segments) > 1, "segment rolls were not exercised"
