"""A restart starts from the projections plus the log's tail, and misses nothing:
hosts find every unfinished session, the ledger every dollar spent."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from test_projections import _write_random_fleet

from fleetlog.actors.host import HostCore
from fleetlog.actors.ledger import Budget, Ledger
from fleetlog.events.filelog import FileLog
from fleetlog.events.schema import SessionClaimed, SessionCreated
from fleetlog.events.state import fold
from fleetlog.events.tail import LogTail
from fleetlog.projections.projector import Projector
from fleetlog.projections.service import sessions_view


def test_unfinished_sessions_and_spending_from_projections_plus_tail(tmp_path: Path) -> None:
    _write_random_fleet(tmp_path, random.Random(8), 80, 2)
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        view = sessions_view(projector)
    # After the checkpoint: a new session, and more events for an unfinished one.
    logs = [FileLog.open(tmp_path / "log" / f"p{i}") for i in range(2)]
    unfinished_before = [
        sid for sid, part, status, *_ in view.sessions if status in ("running", "pending")
    ]
    assert unfinished_before
    target = unfinished_before[0]
    part = next(p for sid, p, *_ in view.sessions if sid == target)
    log = logs[part]
    log.append(target, [SessionClaimed(owner="h9", epoch=9)], log.last_seq(target), 9)
    logs[0].append("s-late", [SessionCreated(task_id="late", prompt="p", tenant="acme")], 0)

    expected_unfinished: set[str] = set()
    for index, log in enumerate(logs):
        for sid in log.session_ids():
            if not fold(sid, log.read_stream(sid)).terminal:
                expected_unfinished.add(sid)
        found = set(HostCore._unfinished(index, log, view))
        assert {s for s in expected_unfinished if log.last_seq(s)} <= found
        # Terminal ones are skipped unless the tail mentions them.
        for sid in found - expected_unfinished:
            assert any(e.session_id == sid for e in log.read_all(view.checkpoints[index] + 1))
    assert "s-late" in expected_unfinished

    full = Ledger({"acme": Budget(max_cost_usd=10.0)})
    for log in logs:
        full.fold(log.read_all(1, 10**9))
    seeded = Ledger({"acme": Budget(max_cost_usd=10.0)})
    for sid, _part, _status, tenant, cost, tokens in view.sessions:
        seeded.seed(sid, tenant, cost, tokens)
    for index, log in enumerate(logs):
        tail = LogTail(log.path).read(view.checkpoints[index] + 1, 10**9)
        seeded.fold(tail)
    for log in logs:
        log.close()
    assert full.snapshot().keys() == seeded.snapshot().keys()
    for tenant, account in full.snapshot().items():
        assert seeded.snapshot()[tenant]["spent_usd"] == pytest.approx(account["spent_usd"])
        assert seeded.snapshot()[tenant]["spent_tokens"] == account["spent_tokens"]


def test_reservations_in_flight_come_back_through_the_projections(tmp_path: Path) -> None:
    """A restarted ledger (projections + tail) holds exactly what a full fold of the log holds."""
    from fleetlog.actors.fleet import seed_ledger
    from fleetlog.events.schema import ModelCallRequested, ModelResponded, SessionFailed

    def asked(step: int, usd: float) -> ModelCallRequested:
        return ModelCallRequested(
            step=step, request_id=f"r{step}", model="m", reserved_usd=usd, reserved_tokens=100
        )

    def answered(step: int, usd: float) -> ModelResponded:
        return ModelResponded(
            step=step, request_id=f"r{step}", model="m", content="[]", stop_reason="tool_use",
            cost_usd=usd, input_tokens=10, output_tokens=5,
        )  # fmt: skip

    created = SessionCreated(task_id="t", prompt="p", tenant="acme")
    log = FileLog.open(tmp_path / "log" / "p0")
    histories = {
        "s-held": [created, asked(1, 0.4)],  # in flight at the checkpoint
        "s-paid": [created, asked(1, 0.3), answered(1, 0.1)],
        "s-ended": [created, asked(1, 0.2), SessionFailed(error="x")],
        "s-later": [created, asked(1, 0.3), answered(1, 0.05), asked(2, 0.3)],
    }
    for sid, events in histories.items():
        log.append(sid, events, 0, 1)
    with Projector.open(tmp_path) as projector:
        projector.catch_up()
        view = sessions_view(projector)
    assert sorted(view.reservations) == [("s-held", 0.4, 100), ("s-later", 0.3, 100)]
    # After the checkpoint: s-later's call is answered, a new one is in flight.
    log.append("s-later", [answered(2, 0.07)], 4, 1)
    log.append("s-new", [created, asked(1, 0.25)], 0, 1)
    budgets = {"acme": Budget(max_cost_usd=10.0)}
    seeded = Ledger(budgets)
    seed_ledger(seeded, view)
    seeded.fold(LogTail(log.path).read(view.checkpoints[0] + 1, 10**9))
    full = Ledger(budgets)
    full.fold(log.read_all(1, 10**9))
    log.close()
    expected = {"spent_usd": 0.22, "spent_tokens": 45, "reserved_usd": 0.65, "holders": 2}
    for ledger in (full, seeded):
        account = ledger.snapshot()["acme"]
        assert {k: account[k] for k in expected} == pytest.approx(expected)
        assert account["reserved_tokens"] == 200
