"""PostgresLog passes the EventLog contract, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_log import EventLogContract, Reopen
from pg_server import pg_database, postgres

from fleetlog.events.log import EventLog
from fleetlog.events.pglog import PostgresLog

__all__ = ["TestPostgresLogContract", "pg_database", "postgres"]


class TestPostgresLogContract(EventLogContract):
    @pytest.fixture
    def opened(self) -> Iterator[list[PostgresLog]]:
        logs: list[PostgresLog] = []
        yield logs
        for log in logs:
            log.close()

    @pytest.fixture
    def log(self, pg_database: str, opened: list[PostgresLog]) -> PostgresLog:
        opened.append(PostgresLog.open(pg_database, poll_s=0.05))
        return opened[-1]

    @pytest.fixture
    def reopen(self, pg_database: str, opened: list[PostgresLog]) -> Reopen:
        def _reopen(log: EventLog) -> EventLog:
            log.close()
            opened.append(PostgresLog.open(pg_database, poll_s=0.05))
            return opened[-1]

        return _reopen


def test_is_an_event_log(pg_database: str) -> None:
    with PostgresLog.open(pg_database) as log:
        assert isinstance(log, EventLog)


def test_a_fleet_refuses_the_postgres_log_until_it_is_wired(tmp_path: Path) -> None:
    """Accepted by the config parser (SPEC §6), but refused in one line by a fleet that
    would otherwise write FileLog partitions and silently ignore it."""
    from fleetlog.actors.fleet import Fleet
    from fleetlog.config import parse_config
    from fleetlog.events.errors import FleetlogError

    config = parse_config('[fleet]\nlog = "postgresql://u@db/fleet"\n')
    with pytest.raises(FleetlogError, match="not wired into the fleet yet"):
        Fleet.start(tmp_path, config, hosts=1)
    assert not (tmp_path / "log").exists()
