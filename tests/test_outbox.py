"""The outbox: exactly one delivery per call, on one machine (files) and across nodes (PostgreSQL).

Every "exactly once" claim here is checked under real races: many threads (and
two outbox instances standing for two nodes, and separate processes) deliver the
same call at the same moment; one answer is True, every other one False, and the
store holds one message. The PostgreSQL tests run against a real PostgreSQL 15
(``tests/pg_server.py``).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_server import pg_database, postgres

from fleetlog.actors.outbox import FileOutbox, Outbox, PgOutbox, outbox_for
from fleetlog.actors.tools import BUILTIN_TOOLS, ToolContext, ToolOutcome, run_tool, validate_input
from fleetlog.events.errors import FleetlogError, ToolError
from fleetlog.events.faults import CRASH_EXIT_CODE
from fleetlog.events.pglog import PostgresLog

__all__ = ["pg_database", "postgres"]  # fixtures, imported for pytest

THREADS = 16


def _race(outboxes: list[Outbox], work: Callable[[Outbox, int], bool]) -> list[bool]:
    """Run ``work(outbox, i)`` in THREADS threads released together; their answers in order."""
    barrier = threading.Barrier(THREADS)
    answers: list[bool | BaseException | None] = [None] * THREADS

    def one(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = work(outboxes[i % len(outboxes)], i)
        except BaseException as e:
            answers[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    errors = [a for a in answers if not isinstance(a, bool)]
    assert not errors, errors
    return [bool(a) for a in answers]


def _message(i: int) -> bytes:
    return f"X-Fleetlog-Session: s\nX-Fleetlog-Call: c\n\nattempt {i}\n".encode()


def _file_message(session_id: str, call_id: str, i: int) -> bytes:
    return f"X-Fleetlog-Session: {session_id}\nX-Fleetlog-Call: {call_id}\n\nattempt {i}\n".encode()


# --- FileOutbox ------------------------------------------------------------------------------


def test_file_outbox_delivers_a_call_once_under_concurrent_attempts(tmp_path: Path) -> None:
    # Two instances on one home: two runners of one host racing on the same call.
    boxes: list[Outbox] = [FileOutbox(tmp_path), FileOutbox(tmp_path)]
    answers = _race(
        boxes, lambda box, i: box.deliver("s", "c", _file_message("s", "c", i), "s-c.eml")
    )
    assert Counter(answers) == Counter({True: 1, False: THREADS - 1})
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == ["s-c.eml"]
    assert FileOutbox(tmp_path).deliveries() == [("s", "c", "s-c.eml")]
    winner = answers.index(True)
    assert FileOutbox(tmp_path).message("s", "c") == _file_message("s", "c", winner)
    # A later retry of the call changes nothing.
    assert not boxes[0].deliver("s", "c", b"other", "s-c.eml")
    assert FileOutbox(tmp_path).message("s", "c") == _file_message("s", "c", winner)


def test_file_outbox_delivers_every_distinct_call(tmp_path: Path) -> None:
    box = FileOutbox(tmp_path)
    answers = _race(
        [box], lambda b, i: b.deliver("s", f"c{i}", _file_message("s", f"c{i}", i), f"s-c{i}.eml")
    )
    assert all(answers)
    assert box.deliveries() == sorted(("s", f"c{i}", f"s-c{i}.eml") for i in range(THREADS))


def test_file_outbox_refuses_names_outside_it(tmp_path: Path) -> None:
    for bad in ("", ".hidden.eml", "../x.eml", "a/b.eml"):
        with pytest.raises(ToolError, match="not a message name"):
            FileOutbox(tmp_path).deliver("s", "c", b"m", bad)


# --- PgOutbox: exactly once across nodes -----------------------------------------------------


def test_pg_outbox_delivers_a_call_once_across_two_nodes(pg_database: str) -> None:
    # Two instances = two nodes (each its own connections), eight threads on each,
    # all first users of a fresh database: the schema is created under the race too.
    nodes: list[Outbox] = [PgOutbox(pg_database), PgOutbox(pg_database)]
    answers = _race(nodes, lambda node, i: node.deliver("s", "c", _message(i), "s-c.eml"))
    assert Counter(answers) == Counter({True: 1, False: THREADS - 1})
    assert nodes[0].deliveries() == [("s", "c", "s-c.eml")]
    assert nodes[1].message("s", "c") == _message(answers.index(True))
    assert not nodes[1].deliver("s", "c", b"a retry", "s-c.eml")
    with psycopg.connect(pg_database) as conn:
        row = conn.execute("SELECT count(*) FROM fleetlog.outbox").fetchone()
    assert row == (1,)


def test_pg_outbox_delivers_every_distinct_call(pg_database: str) -> None:
    nodes: list[Outbox] = [PgOutbox(pg_database), PgOutbox(pg_database)]
    answers = _race(nodes, lambda node, i: node.deliver("s", f"c{i}", _message(i), f"s-c{i}.eml"))
    assert all(answers)
    assert nodes[0].deliveries() == sorted(("s", f"c{i}", f"s-c{i}.eml") for i in range(THREADS))
    # The key is (session, call): the same call id in another session is another message.
    assert nodes[1].deliver("other", "c0", b"m", "other-c0.eml")
    assert len(nodes[0].deliveries()) == THREADS + 1


_NODE_SCRIPT = """
import sys, time
from fleetlog.actors.outbox import PgOutbox
dsn, start_at, i = sys.argv[1], float(sys.argv[2]), sys.argv[3]
box = PgOutbox(dsn)
while time.time() < start_at:
    time.sleep(0.001)
print("delivered" if box.deliver("s", "c", f"from process {i}".encode(), "s-c.eml") else "already")
"""


def test_pg_outbox_delivers_a_call_once_across_processes(pg_database: str) -> None:
    start_at = time.time() + 3.0  # time for every interpreter to start, then all at once
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _NODE_SCRIPT, pg_database, str(start_at), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert Counter(out.strip() for out, _ in outs) == Counter({"delivered": 1, "already": 5})
    assert PgOutbox(pg_database).deliveries() == [("s", "c", "s-c.eml")]


def test_pg_outbox_shares_the_schema_with_the_log(pg_database: str) -> None:
    box = PgOutbox(pg_database)
    assert box.deliver("s", "c", b"m", "s-c.eml")
    log = PostgresLog.open(pg_database)  # the log's schema check is not upset by the table
    log.close()
    assert PgOutbox(pg_database).deliveries() == [("s", "c", "s-c.eml")]


# --- PgOutbox: commits with an unknown outcome are read back, never guessed ------------------


def _terminate_own_backend(stage: str, conn: psycopg.Connection[Any]) -> None:
    """Kill this connection's server process right before its commit."""
    if stage != "before":
        return
    pid = conn.info.backend_pid
    with psycopg.connect(conn.info.dsn, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _spy_resolve(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record what each read-back after an unknown commit concluded."""
    seen: list[object] = []
    real = PgOutbox._resolve

    def spy(self: PgOutbox, key: tuple[str, str], attempt: str, error: BaseException) -> bool:
        try:
            answer = real(self, key, attempt, error)
        except Exception:
            seen.append("retry")
            raise
        seen.append(answer)
        return answer

    monkeypatch.setattr(PgOutbox, "_resolve", spy)
    return seen


def test_pg_outbox_retries_a_commit_that_did_not_land(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = PgOutbox(pg_database)
    kills: list[str] = []

    def once(stage: str, conn: psycopg.Connection[Any]) -> None:
        if stage == "before" and not kills:
            kills.append(stage)
            _terminate_own_backend(stage, conn)

    monkeypatch.setattr(PgOutbox, "_commit_hook", staticmethod(once))
    resolved = _spy_resolve(monkeypatch)
    # The first commit fails (the row never lands), is read back, found missing, retried.
    assert box.deliver("s", "c", b"m", "s-c.eml") is True
    assert kills == ["before"]
    assert resolved == ["retry"]
    assert box.deliveries() == [("s", "c", "s-c.eml")]


def test_pg_outbox_resolves_a_lost_commit_reply_by_reading_the_row(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = PgOutbox(pg_database)
    lost: list[str] = []

    def reply_lost(stage: str, conn: psycopg.Connection[Any]) -> None:
        if stage == "after" and not lost:  # committed, but the client hears an error
            lost.append(stage)
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(PgOutbox, "_commit_hook", staticmethod(reply_lost))
    resolved = _spy_resolve(monkeypatch)
    # Our row is there with our attempt token: delivered by us (not "already delivered").
    assert box.deliver("s", "c", b"m", "s-c.eml") is True
    assert lost == ["after"]
    assert resolved == [True]
    # And another attempt of the same call, even with identical bytes, is not "us".
    assert box.deliver("s", "c", b"m", "s-c.eml") is False
    assert box.deliveries() == [("s", "c", "s-c.eml")]


# --- send_email through ToolContext ----------------------------------------------------------


def _send(ctx: ToolContext, **raw: Any) -> ToolOutcome:
    spec = BUILTIN_TOOLS["send_email"]
    return asyncio.run(run_tool(spec, validate_input(spec, raw), ctx, timeout_s=30))


def test_send_email_delivers_once_through_a_pg_outbox(pg_database: str, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    box = PgOutbox(pg_database)
    ctx = ToolContext("s-1", "toolu_01", "s-1:toolu_01", workspace, tmp_path, outbox=box)
    raw = {"to": "ops@example.com", "subject": "Report", "body": "All good.\n"}
    assert _send(ctx, **raw) == ToolOutcome(
        output="delivered to ops@example.com (s-1-toolu_01.eml)"
    )
    assert _send(ctx, **{**raw, "body": "different"}) == ToolOutcome(
        output="already delivered: s-1-toolu_01.eml"
    )
    # Another node's runner retrying the same call: its own outbox instance, same answer.
    other_node = ToolContext(
        "s-1", "toolu_01", "s-1:toolu_01", workspace, tmp_path, outbox=PgOutbox(pg_database)
    )
    assert _send(other_node, **raw).output == "already delivered: s-1-toolu_01.eml"
    assert box.deliveries() == [("s-1", "toolu_01", "s-1-toolu_01.eml")]
    message = box.message("s-1", "toolu_01")
    assert message is not None
    assert b"To: ops@example.com" in message
    assert b"X-Fleetlog-Call: toolu_01" in message
    assert b"All good." in message
    assert not (tmp_path / "outbox").exists()  # nothing went to the file outbox


def test_send_email_concurrent_attempts_on_two_nodes_deliver_once(
    pg_database: str, tmp_path: Path
) -> None:
    spec = BUILTIN_TOOLS["send_email"]
    kwargs = validate_input(spec, {"to": "a@example.com", "subject": "s", "body": "b"})
    nodes = [PgOutbox(pg_database), PgOutbox(pg_database)]
    contexts = [
        ToolContext("s", "mail", "s:mail", tmp_path, tmp_path, outbox=nodes[i % 2])
        for i in range(8)
    ]

    async def many() -> list[ToolOutcome]:
        return list(
            await asyncio.gather(*(run_tool(spec, kwargs, c, timeout_s=30) for c in contexts))
        )

    outputs = [o.output for o in asyncio.run(many())]
    assert outputs.count("delivered to a@example.com (s-mail.eml)") == 1
    assert outputs.count("already delivered: s-mail.eml") == 7
    assert nodes[0].deliveries() == [("s", "mail", "s-mail.eml")]


# --- crash points ----------------------------------------------------------------------------

_CRASH_SCRIPT = """
import sys
from pathlib import Path
from fleetlog.actors.outbox import FileOutbox, PgOutbox
where = sys.argv[1]
box = FileOutbox(Path(where)) if where.startswith("/") else PgOutbox(where)
print(box.deliver("s", "c", b"X-Fleetlog-Session: s\\nX-Fleetlog-Call: c\\n\\nm\\n", "s-c.eml"))
"""


@pytest.mark.parametrize("store", ["file", "pg"])
@pytest.mark.parametrize(
    ("point", "published"), [("in_outbox_write", False), ("after_outbox_write", True)]
)
def test_outbox_crash_points(
    store: str, point: str, published: bool, pg_database: str, tmp_path: Path
) -> None:
    where = str(tmp_path) if store == "file" else pg_database
    box: Outbox = FileOutbox(tmp_path) if store == "file" else PgOutbox(pg_database)
    run = subprocess.run(
        [sys.executable, "-c", _CRASH_SCRIPT, where],
        env={**os.environ, "FLEETLOG_CRASH_AT": point},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == CRASH_EXIT_CODE, run.stderr
    # Killed before publishing: nothing delivered, and a retry delivers. Killed after:
    # delivered, and a retry says so.
    assert box.deliveries() == ([("s", "c", "s-c.eml")] if published else [])
    assert box.deliver(
        "s", "c", b"X-Fleetlog-Session: s\nX-Fleetlog-Call: c\n\nm\n", "s-c.eml"
    ) is (not published)
    assert box.deliveries() == [("s", "c", "s-c.eml")]


# --- errors and wiring -----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_pg_outbox_says_one_line_without_the_password() -> None:
    port = _closed_port()
    box = PgOutbox(f"postgresql://fleet:s3cr3t-pw@127.0.0.1:{port}/fleetdb", retry_s=0.5)
    assert "s3cr3t-pw" not in repr(box)
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        box.deliver("s", "c", b"m", "s-c.eml")
    assert time.monotonic() - started < 10  # retried with backoff, then gave up
    text = str(caught.value)
    assert "\n" not in text
    assert f"127.0.0.1:{port}/fleetdb" in text
    assert "s3cr3t-pw" not in text
    with pytest.raises(ToolError) as caught:
        box.deliveries()
    assert "s3cr3t-pw" not in str(caught.value) and "\n" not in str(caught.value)


def test_send_email_reports_an_unreachable_outbox_as_a_tool_error(tmp_path: Path) -> None:
    box = PgOutbox(f"postgresql://u:pw-xyz@127.0.0.1:{_closed_port()}/d", retry_s=0.2)
    ctx = ToolContext("s", "c", "s:c", tmp_path, tmp_path, outbox=box)
    out = _send(ctx, to="a@example.com", subject="s", body="b")
    assert out.is_error
    assert "pw-xyz" not in out.output and "\n" not in out.output


def test_outbox_for_follows_the_log_setting(tmp_path: Path) -> None:
    assert isinstance(outbox_for("file", tmp_path), FileOutbox)
    pg = outbox_for("postgresql://u:pw@db.example:5433/fleet", tmp_path)
    assert isinstance(pg, PgOutbox)
    assert repr(pg) == "PgOutbox(db.example:5433/fleet)"
    assert isinstance(outbox_for("postgres://db.example/fleet", tmp_path), PgOutbox)
    with pytest.raises(FleetlogError) as caught:
        outbox_for("mysql://u:hunter2@db/x", tmp_path)
    assert "hunter2" not in str(caught.value)


def test_pg_outbox_pickles_without_a_connection(pg_database: str) -> None:
    box = PgOutbox(pg_database)
    assert box.deliver("s", "c", b"m", "s-c.eml")
    again = pickle.loads(pickle.dumps(box))  # what a Ray actor's dependencies need
    assert again.deliveries() == [("s", "c", "s-c.eml")]
