"""A real PostgreSQL 15 for the tests, in a temporary directory, on loopback only.

``postgres`` (session scope) starts one server and yields its DSN; ``pg_database``
(per test) creates a fresh database on it and yields that database's DSN, so
tests never see each other's rows. Import both into a test module::

    from pg_server import pg_database, postgres

PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
system user (the Debian package creates it), otherwise as the current user. It
listens on 127.0.0.1 on a free port, keeps its Unix socket in its own directory,
trusts loopback connections and runs with ``fsync=on``. A missing PostgreSQL is a
test failure, never a skip: ``scripts/setup`` installs it.

For fault tests, a ``PgServer`` of their own (never the shared one) can be
crashed and brought back on the same port: ``restart("immediate")``, ``kill()``
(SIGKILL of the postmaster) then ``resume()``, ``halt()`` then ``resume()``;
``require_password`` adds a role that must log in with a password.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PG_BIN", "PgServer", "pg_database", "postgres"]

PG_BIN = Path(os.environ.get("FLEETLOG_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgServer:
    """One throwaway PostgreSQL cluster."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fleetlog-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._prefix: list[str] = []
        self._uid: int | None = None
        self._gid: int | None = None
        self.started = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._prefix, *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
            timeout=120,
        )

    def start(self) -> None:
        initdb = PG_BIN / "initdb"
        if not os.access(initdb, os.X_OK):
            pytest.fail(
                f"PostgreSQL 15 is not installed ({initdb} is missing): run scripts/setup "
                "or apt-get install postgresql-15",
                pytrace=False,
            )
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "running as root and there is no 'postgres' system user to run "
                    "PostgreSQL as (PostgreSQL refuses root)",
                    pytrace=False,
                )
            self._uid, self._gid = user.pw_uid, user.pw_gid
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        done = self._run(
            str(initdb),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # initdb's own final sync only; the server runs with fsync=on
        )
        if done.returncode != 0:
            pytest.fail(f"initdb failed: {_last_line(done.stderr)}", pytrace=False)
        last_error = ""
        for _attempt in range(5):  # a free port can be taken between probe and bind
            self.port = _free_port()
            done = self._pg_ctl_start()
            if done.returncode == 0:
                self.started = True
                return
            last_error = _last_line(done.stderr or done.stdout)
        log = self.root / "server.log"
        tail = _last_line(log.read_text(errors="replace")) if log.exists() else last_error
        pytest.fail(f"PostgreSQL did not start: {tail}", pytrace=False)

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=on "
            "-c max_connections=200"
        )
        return self._run(
            str(PG_BIN / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
        )

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = _last_line(log.read_text(errors="replace")) if log.exists() else ""
            detail = _last_line(done.stderr or done.stdout)
            pytest.fail(f"PostgreSQL {what} failed: {detail} ({tail})", pytrace=False)

    # --- faults, for tests of what clients do when the server goes away -----------------

    def restart(self, mode: str = "immediate") -> None:
        """``pg_ctl restart -m mode``: same port and options; ``immediate`` is a crash
        (no shutdown checkpoint: crash recovery replays the WAL on start)."""
        done = self._run(
            str(PG_BIN / "pg_ctl"),
            "restart",
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
        )
        self._check(done, f"restart -m {mode}")

    def halt(self, mode: str = "fast") -> None:
        """Stop the server but keep its data: :meth:`resume` starts it again, same port."""
        done = self._run(str(PG_BIN / "pg_ctl"), "stop", "-m", mode, "-w", "-D", str(self.data))
        self._check(done, f"stop -m {mode}")
        self.started = False

    def resume(self) -> None:
        """Start a halted (or killed) server again on the same port."""
        done = self._pg_ctl_start()
        for _attempt in range(50):  # after kill(): until the old shared memory is released
            if done.returncode == 0:
                break
            time.sleep(0.1)
            done = self._pg_ctl_start()
        self._check(done, "start")
        self.started = True

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends exit on noticing); :meth:`resume` recovers."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.started = False

    def require_password(self, role: str, password: str) -> str:
        """Create a login role that must authenticate with scram-sha-256 over TCP.

        Every other role stays trusted. Returns the role's DSN for ``postgres``.
        """
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    psycopg.sql.Identifier(role), psycopg.sql.Literal(password)
                )
            )
            hba = self.data / "pg_hba.conf"
            hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        return f"postgresql://{role}:{password}@127.0.0.1:{self.port}/postgres"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and delete it (``immediate`` skips the shutdown checkpoint)."""
        try:
            if self.started:
                self._run(str(PG_BIN / "pg_ctl"), "stop", "-m", mode, "-w", "-D", str(self.data))
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, reparented to an init that does not reap, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# One server per test session, however many test modules import the fixture
# (each import registers its own fixture definition): reference-counted.
_lock = threading.Lock()
_server: PgServer | None = None
_users = 0


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """Start PostgreSQL 15 once; yield the DSN of its ``postgres`` database."""
    global _server, _users
    with _lock:
        if _server is None:
            server = PgServer()
            try:
                server.start()
            except BaseException:
                server.stop()
                raise
            _server = server
        _users += 1
        dsn = _server.dsn
    try:
        yield dsn
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _server is not None:
                _server.stop()
                _server = None


@pytest.fixture
def pg_database(postgres: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    assert _server is not None
    try:
        yield _server.dsn_for(name)
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(postgres, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
