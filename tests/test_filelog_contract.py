"""FileLog passes the EventLog contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from contract_log import EventLogContract, Reopen

from fleetlog.events.filelog import DEFAULT_SEGMENT_BYTES, FileLog
from fleetlog.events.log import EventLog


class TestFileLogContract(EventLogContract):
    segment_bytes = DEFAULT_SEGMENT_BYTES

    @pytest.fixture
    def opened(self) -> Iterator[list[FileLog]]:
        logs: list[FileLog] = []
        yield logs
        for log in logs:
            log.close()

    @pytest.fixture
    def log(self, tmp_path: Path, opened: list[FileLog]) -> FileLog:
        opened.append(FileLog.open(tmp_path / "log", segment_bytes=self.segment_bytes))
        return opened[-1]

    @pytest.fixture
    def reopen(self, tmp_path: Path, opened: list[FileLog]) -> Reopen:
        def _reopen(log: EventLog) -> EventLog:
            log.close()
            opened.append(FileLog.open(tmp_path / "log", segment_bytes=self.segment_bytes))
            return opened[-1]

        return _reopen


class TestFileLogContractSmallSegments(TestFileLogContract):
    """The same contract with segments that roll every few frames."""

    segment_bytes = 600
