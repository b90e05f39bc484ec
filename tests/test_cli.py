"""The ``fleetlog`` command as a user runs it: real processes, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import CancelRequested


def fleetlog(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _home_with_log(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    with FileLog.open(home / "log") as log:
        for i in range(5):
            log.append("s", [CancelRequested(note=str(i))], i)
    return home


def test_verify_clean_log(tmp_path: Path) -> None:
    home = _home_with_log(tmp_path)
    proc = fleetlog("verify", "--home", str(home))
    assert proc.returncode == 0, proc.stderr
    assert ": ok — 5 events in 5 frames" in proc.stdout
    proc = fleetlog("verify", "--home", str(home), "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["events"] == 5 and report["faults"] == []


def test_verify_reports_damage_with_exit_1(tmp_path: Path) -> None:
    home = _home_with_log(tmp_path)
    seg = next((home / "log" / "segments").glob("*.seg"))
    data = bytearray(seg.read_bytes())
    data[40] ^= 0xFF
    seg.write_bytes(bytes(data))
    proc = fleetlog("verify", "--home", str(home))
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAULT corrupt_frame at 00000000000000000001.seg@0")
    assert "Traceback" not in proc.stderr


def test_home_from_environment(tmp_path: Path) -> None:
    home = _home_with_log(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "fleetlog.cli", "verify"],
        check=False,
        capture_output=True,
        text=True,
        env={"FLEETLOG_HOME": str(home), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_missing_log_is_one_line(tmp_path: Path) -> None:
    proc = fleetlog("verify", "--home", str(tmp_path / "nothing"))
    assert proc.returncode == 1
    assert proc.stderr == f"fleetlog: no fleet home at {tmp_path / 'nothing'} (from --home)\n"
    (tmp_path / "empty").mkdir()
    proc = fleetlog("verify", "--home", str(tmp_path / "empty"))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fleetlog: no event log")


def test_usage_errors_exit_2() -> None:
    assert fleetlog("no-such-command").returncode == 2
    assert fleetlog("verify", "--bogus").returncode == 2
