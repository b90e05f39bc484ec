"""The outbox: where ``send_email`` delivers, exactly once per call.

An :class:`Outbox` takes a finished message and the call it belongs to, and
delivers it unless that call already delivered one: ``deliver`` answers True
(delivered now) or False (this call was delivered before, by this attempt's
predecessor or by a concurrent one, on this node or another). Which of two
attempts wins is decided atomically by the store, never by a check-then-write:

* :class:`FileOutbox` (``[fleet] log = "file"``, one machine): one file per call,
  ``HOME/outbox/<session>-<call>.eml``. The message is made durable under a
  temporary name, then ``os.link`` publishes it atomically and fails if the name
  exists.
* :class:`PgOutbox` (``[fleet] log = "postgresql://..."``, a fleet across
  machines): one row per call in ``fleetlog.outbox``, primary key
  ``(session_id, call_id)``; ``INSERT ... ON CONFLICT DO NOTHING`` decides, in
  one transaction, for any number of nodes. Each ``deliver`` call stores a
  random attempt token with its row, so a commit whose outcome was lost (the
  connection dropped during it) is resolved by reading the row back: the row
  with our token means we delivered, another token means someone else did, no
  row means nothing was committed and the insert is tried again (safe: the
  primary key still admits one row only).

The key is the session *and* the call id: a call id is unique within its
session's log, and a model (or a scripted test) may reuse one in another
session, which must still get its own message.

``crash_point("in_outbox_write")`` fires when the message is written but not yet
published (before the link, before the commit) and ``"after_outbox_write"`` once
it is published and durable, before ``deliver`` returns; the fault suite
(``tests/faults``) kills processes at both.

psycopg is imported only when a :class:`PgOutbox` is used: ``tools.py`` imports
this module, and what it imports every confined tool call pays for.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

from fleetlog.events.errors import FleetlogError, ToolError
from fleetlog.events.faults import crash_point
from fleetlog.events.filelog import fsync_dir

if TYPE_CHECKING:
    import psycopg

__all__ = ["FileOutbox", "Outbox", "PgOutbox", "outbox_for"]

T = TypeVar("T")

#: One delivery: (session id, call id, message name).
Delivery = tuple[str, str, str]


@runtime_checkable
class Outbox(Protocol):
    """Where approved ``send_email`` calls deliver; exactly once per (session, call)."""

    def deliver(self, session_id: str, call_id: str, message: bytes, name: str) -> bool:
        """Deliver ``message`` for this call: True if delivered now, False if it already was.

        Safe to call concurrently, from many threads and processes (and, for a shared
        store, many nodes) with the same call: exactly one of them answers True, ever.
        Raises :class:`ToolError` (one line) when it cannot tell.
        """
        ...

    def deliveries(self) -> list[Delivery]:
        """Every delivered message as ``(session_id, call_id, name)``, sorted."""
        ...

    def message(self, session_id: str, call_id: str) -> bytes | None:
        """The message delivered for this call, or None."""
        ...


# --- one machine: files ----------------------------------------------------------------


_HEADERS: Final = email.parser.BytesHeaderParser(policy=email.policy.default)


class FileOutbox:
    """``HOME/outbox/<name>``: one file per call, published by ``os.link``."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.dir = self.home / "outbox"

    def __repr__(self) -> str:
        return f"FileOutbox({str(self.dir)!r})"

    def deliver(self, session_id: str, call_id: str, message: bytes, name: str) -> bool:
        if not name or name.startswith(".") or "/" in name or "\0" in name:
            raise ToolError(f"outbox: {name!r} is not a message name")
        outbox = self.dir
        outbox.mkdir(parents=True, exist_ok=True)
        final = outbox / name
        if final.exists():
            return False
        # Exactly once, even across crashes and concurrent retries: the message is
        # complete and durable under a temporary name first; os.link() then publishes
        # it atomically and fails if the final name exists, so only one attempt can
        # ever deliver.
        fd, tmp = tempfile.mkstemp(dir=outbox, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(message)
                f.flush()
                os.fsync(f.fileno())
            crash_point("in_outbox_write")
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(outbox)
        crash_point("after_outbox_write")
        return True

    def _files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.eml") if not p.name.startswith("."))

    def deliveries(self) -> list[Delivery]:
        found: list[Delivery] = []
        for path in self._files():
            with path.open("rb") as f:
                headers = _HEADERS.parse(f)
            found.append(
                (str(headers["X-Fleetlog-Session"]), str(headers["X-Fleetlog-Call"]), path.name)
            )
        return sorted(found)

    def message(self, session_id: str, call_id: str) -> bytes | None:
        for path in self._files():
            with path.open("rb") as f:
                headers = _HEADERS.parse(f)
            if (headers["X-Fleetlog-Session"], headers["X-Fleetlog-Call"]) == (
                session_id,
                call_id,
            ):
                return path.read_bytes()
        return None


# --- across machines: PostgreSQL -------------------------------------------------------

_SCHEMA: Final = (
    "CREATE SCHEMA IF NOT EXISTS fleetlog",
    """CREATE TABLE IF NOT EXISTS fleetlog.outbox (
        session_id text NOT NULL,
        call_id text NOT NULL,
        name text NOT NULL,
        message bytea NOT NULL,
        attempt text NOT NULL,
        delivered_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (session_id, call_id))""",
)

_INSERT: Final = (
    "INSERT INTO fleetlog.outbox (session_id, call_id, name, message, attempt) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (session_id, call_id) DO NOTHING RETURNING true"
)
_READ_BACK: Final = "SELECT attempt FROM fleetlog.outbox WHERE session_id = %s AND call_id = %s"


class _Retry(Exception):
    """Nothing was committed: go round the retry loop again."""


class PgOutbox:
    """``fleetlog.outbox`` in PostgreSQL: exactly once per call across every node.

    One connection per call (``send_email`` is rare: it needs approval), so an
    instance holds no connection, needs no closing, is safe from any number of
    threads and pickles (it is just the DSN).
    """

    #: Test hook: called with ``("before", conn)`` inside the insert's transaction just
    #: before it commits, and ``("after", conn)`` just after, while a connection error
    #: still means "outcome unknown". Lets tests drop the connection at either place.
    _commit_hook: Callable[[str, psycopg.Connection[Any]], None] | None = None

    def __init__(self, dsn: str, *, retry_s: float = 10.0, connect_timeout_s: int = 10) -> None:
        from fleetlog.events.pglog import _where  # noqa: PLC0415 (psycopg: only when used)

        self.dsn = dsn
        self.where = _where(dsn)
        self.retry_s = retry_s
        self.connect_timeout_s = max(2, connect_timeout_s)  # libpq's smallest
        self._ready = False

    def __repr__(self) -> str:  # never the DSN: it may carry a password
        return f"PgOutbox({self.where})"

    # --- plumbing ---------------------------------------------------------------------

    def _error(self, what: str, error: BaseException | None = None) -> ToolError:
        text = what
        if error is not None:
            line = str(error).strip()
            text += ": " + (line.splitlines()[0] if line else type(error).__name__)
        return ToolError(f"outbox {self.where}: {self._scrub(text)}")

    def _scrub(self, text: str) -> str:
        """Whatever a driver says, the password does not leave here."""
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

        try:
            password = conninfo_to_dict(self.dsn).get("password")
        except Exception:  # an unparsable DSN: hide anything that looks like userinfo
            return re.sub(r"://[^/@\s]*@", "://***@", text)
        if password:
            text = text.replace(str(password), "***")
        return text

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg  # noqa: PLC0415

        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s)
        if not self._ready:
            try:
                with conn.transaction():
                    # The same lock PostgresLog takes: concurrent CREATE SCHEMA IF NOT
                    # EXISTS from two processes can otherwise fail on a unique index.
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('fleetlog-schema'))")
                    for statement in _SCHEMA:
                        conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._ready = True  # a race only repeats idempotent DDL
        return conn

    def _retrying(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` on a fresh connection; retry connection failures with backoff.

        Only for work that is safe to repeat (reads).
        """
        import psycopg  # noqa: PLC0415

        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                with self._connect() as conn:
                    return work(conn)
            except psycopg.OperationalError as e:
                if time.monotonic() + delay > deadline:
                    raise self._error("unreachable", e) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as e:
                raise self._error("failed", e) from None

    # --- the outbox -------------------------------------------------------------------

    def deliver(self, session_id: str, call_id: str, message: bytes, name: str) -> bool:
        import psycopg  # noqa: PLC0415

        attempt = os.urandom(16).hex()
        key = (session_id, call_id)
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            committing = False
            try:
                with self._connect() as conn:
                    with conn.transaction():
                        row = conn.execute(
                            _INSERT, (session_id, call_id, name, message, attempt)
                        ).fetchone()
                        if row is not None:  # ours, not yet committed
                            crash_point("in_outbox_write")
                            committing = True
                            if self._commit_hook is not None:
                                self._commit_hook("before", conn)
                    if row is not None and self._commit_hook is not None:
                        self._commit_hook("after", conn)
                    # No row inserted: the call's row exists, a concurrent attempt's, an
                    # earlier one's, or ours from a round whose commit outcome was lost.
                    delivered = row is not None or self._is_mine(conn, key, attempt)
                if delivered:
                    crash_point("after_outbox_write")
                return delivered
            except psycopg.OperationalError as e:
                if committing:  # the commit was sent; its outcome is unknown
                    try:
                        if self._resolve(key, attempt, e):
                            crash_point("after_outbox_write")
                            return True
                        return False
                    except _Retry:
                        pass  # not committed: safe to insert again
                if time.monotonic() + delay > deadline:
                    raise self._error(f"cannot deliver {name}", e) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as e:
                raise self._error(f"cannot deliver {name}", e) from None

    def _is_mine(self, conn: psycopg.Connection[Any], key: tuple[str, str], attempt: str) -> bool:
        found = conn.execute(_READ_BACK, key).fetchone()
        if found is None:  # rows are never deleted: someone removed a delivered message
            raise self._error(f"session {key[0]} call {key[1]} conflicted but has no row")
        return bool(found[0] == attempt)

    def _resolve(self, key: tuple[str, str], attempt: str, error: BaseException) -> bool:
        """After a commit with an unknown outcome: read the call's row back."""
        try:
            found = self._retrying(lambda conn: conn.execute(_READ_BACK, key).fetchone())
        except ToolError:
            raise self._error(
                f"delivery of session {key[0]} call {key[1]} has an unknown outcome "
                f"(commit failed: {_first_line(error)}; could not read it back)"
            ) from None
        if found is None:
            raise _Retry
        return bool(found[0] == attempt)

    def deliveries(self) -> list[Delivery]:
        rows = self._retrying(
            lambda conn: conn.execute(
                "SELECT session_id, call_id, name FROM fleetlog.outbox ORDER BY session_id, call_id"
            ).fetchall()
        )
        return [(str(s), str(c), str(n)) for s, c, n in rows]

    def message(self, session_id: str, call_id: str) -> bytes | None:
        row = self._retrying(
            lambda conn: conn.execute(
                "SELECT message FROM fleetlog.outbox WHERE session_id = %s AND call_id = %s",
                (session_id, call_id),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def outbox_for(log: str, home: Path) -> Outbox:
    """The outbox that goes with ``[fleet] log``: files with a file log, else the database."""
    if log == "file":
        return FileOutbox(home)
    if log.startswith(("postgresql://", "postgres://")):
        return PgOutbox(log)
    shown = re.sub(r"://[^/@]*@", "://***@", log)
    raise FleetlogError(f'outbox: log must be "file" or a postgresql:// URL, got {shown!r}')
