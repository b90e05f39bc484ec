"""Losing the node that holds the hosts: every session completes on the surviving node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fleetlog.events.partitions import open_readers
from fleetlog.events.schema import (
    ModelResponded,
    SessionClaimed,
    ToolCallCompleted,
    ToolCallProposed,
)

HERE = Path(__file__).parent


@pytest.mark.slow
def test_node_loss_every_session_completes_no_email_twice(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, str(HERE / "node_loss_driver.py"), str(home)],
        check=False,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["statuses"] == {"completed": 12}, report
    assert report["running_before_loss"] > 0
    assert report["nodes_alive"] == 1
    assert report["hosts_on_lost_node"] >= 1

    email_calls: set[str] = set()
    reclaimed = 0
    for reader in open_readers(home / "log"):
        try:
            for sid in reader.session_ids():
                stream = reader.read_stream(sid)
                answered = [
                    e.event.request_id for e in stream if isinstance(e.event, ModelResponded)
                ]
                assert len(answered) == len(set(answered)), f"{sid} repeated a model call"
                emails = {
                    e.event.call_id
                    for e in stream
                    if isinstance(e.event, ToolCallProposed) and e.event.tool == "send_email"
                }
                email_calls |= emails
                claims = [e.event for e in stream if isinstance(e.event, SessionClaimed)]
                reclaimed += len(claims) > 1 and claims[-1].node != ""
                for e in stream:
                    if isinstance(e.event, ToolCallCompleted) and e.event.call_id in emails:
                        assert isinstance(e.event.output, str)
        finally:
            reader.close()
    assert reclaimed > 0, "sessions of the lost node were claimed again on the survivor"
    delivered = sorted((home / "outbox").glob("*.eml"))
    assert len(email_calls) == 6
    # One file per approved call, never two: the outbox name is the call's identity.
    assert len(delivered) == len(email_calls)
    assert {p.name.split("-toolu_")[1].removesuffix(".eml") for p in delivered} == {
        c.removeprefix("toolu_") for c in email_calls
    }
