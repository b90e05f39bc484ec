"""PostgresLog passes the EventLog contract, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

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
