"""The sandbox, attacked for real: bubblewrap, an unprivileged uid, limits, no network.

Each test runs a command through ``run_shell`` with the fleet's sandbox (as a
host gives it) and checks what it could not do: read ``/etc/shadow``, see a home
directory, the fleet's log or another session's workspace, write outside its
workspace, reach a listener on this machine's loopback, outlive its timeout,
exceed its limits, regain privileges. The fleet home lives outside /tmp here
(``/var/lib``), so that hiding it is the sandbox's doing, not /tmp's.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlog.actors.sandbox import Limits, Sandbox, probe
from fleetlog.actors.tools import BUILTIN_TOOLS, ToolContext, ToolOutcome, run_tool

ROOT = os.geteuid() == 0
#: Where the test's fleet homes live: not under a directory the sandbox empties anyway
#: (/tmp, /var/tmp, homes), so that hiding them is the fleet-home rule's doing.
OUTSIDE = "/var/lib" if os.access("/var/lib", os.W_OK) else "/var/tmp"


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fleetlog-sbx-", dir=OUTSIDE))
    os.chmod(path, 0o755)
    (path / "log").mkdir()
    (path / "log" / "secret-log.txt").write_text("CANARY-LOG")
    (path / "workspaces" / "s-other").mkdir(parents=True)
    (path / "workspaces" / "s-other" / "theirs.txt").write_text("CANARY-OTHER")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _ctx(home: Path, **limits: int) -> ToolContext:
    assert probe() == "", probe()
    box = Sandbox.find(home, Limits(**limits)) if limits else Sandbox.find(home)
    workspace = home / "workspaces" / "s-1"
    workspace.mkdir(parents=True, exist_ok=True)
    return ToolContext("s-1", "toolu_1", "s-1:toolu_1", workspace.resolve(), home, sandbox=box)


def shell(home: Path, command: str, *, timeout_s: float = 20, **limits: int) -> ToolOutcome:
    """``command`` through ``run_shell`` (vetting, then the sandbox), as a session runs it."""
    ctx = _ctx(home, **limits)
    spec = BUILTIN_TOOLS["run_shell"]
    return asyncio.run(
        run_tool(spec, {"command": command, "timeout_s": timeout_s}, ctx, timeout_s=60)
    )


def boxed(home: Path, command: str, **limits: int) -> str:
    """``command`` in the sandbox alone, past the vetting: what the box itself allows."""
    ctx = _ctx(home, **limits)
    assert ctx.sandbox is not None
    env = {"PATH": os.environ["PATH"], "HOME": str(ctx.workspace), "LANG": "C.UTF-8"}
    uid = ctx.sandbox.uid_for(ctx.workspace, ctx.session_id)
    argv = ctx.sandbox.argv(["/bin/sh", "-c", command], workspace=ctx.workspace, uid=uid, env=env)
    done = subprocess.run(
        argv, cwd=ctx.workspace, capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout + done.stderr


def test_it_runs_as_an_unprivileged_uid_that_cannot_read_shadow(home: Path) -> None:
    out = boxed(home, "id -u; cat /etc/shadow; echo rc=$?; whoami")
    assert int(out.splitlines()[0]) != 0
    assert out.splitlines()[2] == "fleetlog"  # a name to look up (ssh-keygen, git need one)
    assert "Permission denied" in out and "rc=1" in out
    assert "root:" not in out


def test_only_the_workspace_is_writable(home: Path) -> None:
    out = boxed(
        home,
        "echo ok > mine.txt && cat mine.txt; "
        "for t in /etc/fleetlog-x /usr/local/bin/x ../x ../../x /var/lib/x; do "
        "  (echo x > $t) 2>/dev/null && echo WROTE $t; done; "
        "echo x > /tmp/scratch && echo x > /var/tmp/fleetlog-scratch && echo tmp-ok",
    )
    assert "ok" in out and "tmp-ok" in out, out
    assert "WROTE" not in out, out
    assert (home / "workspaces" / "s-1" / "mine.txt").read_text() == "ok\n"
    assert not (home / "workspaces" / "x").exists() and not Path("/etc/fleetlog-x").exists()
    assert not Path("/var/tmp/fleetlog-scratch").exists()  # private scratch, gone with it


def test_homes_the_fleet_home_and_other_sessions_are_absent(home: Path) -> None:
    canary = Path("/root/.fleetlog-sandbox-canary") if ROOT else Path.home() / ".fleetlog-canary"
    canary.write_text("CANARY-HOME")
    try:
        read = boxed(
            home,
            f"cat {canary} {home}/log/secret-log.txt {home}/workspaces/s-other/theirs.txt; "
            "cat /root/.bash_history /root/.ssh/* 2>&1 | head -3",
        )
        listed = boxed(home, f"ls -a /root /home; echo; ls {home}; ls {home}/workspaces")
        where = boxed(home, "echo $HOME; pwd")
    finally:
        canary.unlink()
    assert "CANARY" not in read and read.count("No such file or directory") >= 3, read
    assert "secret" not in listed and "s-other" not in listed and "log" not in listed, listed
    # Empty homes; of the fleet home, only the path down to this session's workspace.
    assert listed.split() == ["/home:", ".", "..", "/root:", ".", "..", "workspaces", "s-1"]
    assert where.split() == [str(home.resolve() / "workspaces" / "s-1")] * 2


def test_no_network_not_even_this_machines_loopback(home: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            got.append(conn.recv(100))
            conn.close()
        except OSError:
            pass

    listener = threading.Thread(target=accept)
    listener.start()
    try:
        out = boxed(
            home,
            f"(echo STOLEN > /dev/tcp/127.0.0.1/{port}) 2>&1; "
            f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"
            ".send(b'STOLEN')\" 2>&1 | tail -1; "
            "python3 -c \"import socket; socket.getaddrinfo('example.com', 80)\" 2>&1 | tail -1",
        )
    finally:
        listener.join()
        server.close()
    assert got == []
    assert "ConnectionRefusedError" in out or "refused" in out, out
    assert "gaierror" in out, out


def test_it_sees_only_its_own_processes(home: Path) -> None:
    out = boxed(home, "ls /proc | grep -c '^[0-9]'")
    assert int(out.splitlines()[0]) < 10  # bwrap's init, the shell, ls, grep


def test_a_timeout_kills_every_process_it_started(home: Path) -> None:
    marker = "27.1828"
    out = shell(home, f"(sleep {marker} &); sleep {marker}", timeout_s=0.5)
    assert out.is_error and out.output.startswith("timed out after 0.5s")

    def running() -> bool:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_text():
                    return True
            except OSError:
                continue
        return False

    for _ in range(500):
        if not running():
            break
        asyncio.run(asyncio.sleep(0.01))
    assert not running()


def test_limits_on_file_size_cpu_and_processes(home: Path) -> None:
    out = boxed(
        home,
        "ulimit -f; ulimit -t; head -c 3000000 /dev/zero > big 2>/dev/null; wc -c < big",
        file_bytes=1 << 20,
        cpu_s=7,
    )
    lines = out.splitlines()
    assert lines[0:2] == ["2048", "7"]  # 512-byte blocks; seconds
    assert int(lines[2]) <= 1 << 20
    if ROOT:  # a uid of its own: a fork bomb stops at the limit
        bomb = boxed(
            home,
            "for i in $(seq 80); do sleep 0.5 & done 2>&1 | tail -1; echo done",
            processes=20,
        )
        assert bomb.splitlines() == ["/bin/sh: 0: Cannot fork", "done"], bomb


@pytest.mark.skipif(not ROOT, reason="privileges to drop exist only when fleetlog runs as root")
def test_no_way_back_to_root(home: Path) -> None:
    out = boxed(
        home,
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
        "su -c id root </dev/null 2>&1 | tail -1; "
        "python3 -c 'import os; os.setuid(0)' 2>&1 | tail -1",
    )
    assert "CapEff:\t0000000000000000" in out
    assert "CapBnd:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    assert "uid=0" not in out
    assert "PermissionError" in out


@pytest.mark.skipif(not ROOT, reason="only root can make a workspace another user's")
def test_a_workspace_owned_by_a_user_runs_as_that_user(home: Path) -> None:
    workspace = home / "workspaces" / "s-1"
    workspace.mkdir(parents=True)
    os.chown(workspace, 4242, 4242)
    out = shell(home, "id -u; touch made")
    assert out.output.splitlines()[1] == "4242"
    assert (workspace / "made").stat().st_uid == 4242


@pytest.mark.skipif(not ROOT, reason="uids of their own need root")
def test_a_fresh_session_workspace_is_handed_to_its_own_uid(home: Path) -> None:
    box = Sandbox.find(home)
    a, b = home / "workspaces" / "a", home / "workspaces" / "b"
    for ws in (a, b):
        ws.mkdir(parents=True)
        (ws / "f").write_text("x")
    ua, ub = box.uid_for(a, "s-a"), box.uid_for(b, "s-b")
    assert ua != ub and min(ua, ub) >= 200_000
    assert (a / "f").stat().st_uid == ua
    assert box.uid_for(a, "s-a") == ua  # stable: the workspace now says whose it is


def run_in_host(home: Path, config_toml: str) -> list[Any]:
    """One session through a real host whose model asks for one shell command."""
    from fake_anthropic import FakeAnthropic
    from test_runner import claude_toml, read_stream, settle, start_host, stop_host

    from fleetlog.config import parse_config
    from fleetlog.events.schema import SessionCreated

    with FakeAnthropic() as fake:
        fake.script(
            {
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_sh",
                        "name": "run_shell",
                        "input": {"command": "cat /etc/hostname > seen; echo done"},
                    }
                ]
            },
            {"content": "finished"},
        )

        async def scenario() -> None:
            os.environ["ANTHROPIC_BASE_URL"] = fake.base_url
            os.environ["ANTHROPIC_API_KEY"] = fake.api_key
            host = await start_host(home, parse_config(claude_toml(extra=config_toml), source="t"))
            created = SessionCreated(
                task_id="t", prompt="go", model="claude-sonnet-4-6", tools=["run_shell"]
            )
            assert await host.create("s-sh", created)
            await settle(host, "s-sh")
            await stop_host(host)

        try:
            asyncio.run(scenario())
        finally:
            os.environ.pop("ANTHROPIC_BASE_URL", None)
            os.environ.pop("ANTHROPIC_API_KEY", None)
    return read_stream(home, "s-sh")


def test_sessions_record_the_sandbox_and_fail_closed_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetlog.actors import host as host_module
    from fleetlog.actors.sandbox import SandboxUnavailable
    from fleetlog.events.schema import SessionClaimed, ToolCallCompleted, ToolCallRejected

    on = run_in_host(tmp_path / "on", "")
    assert next(e.event for e in on if isinstance(e.event, SessionClaimed)).sandbox == "on"
    assert any(isinstance(e.event, ToolCallCompleted) for e in on)

    off = run_in_host(tmp_path / "off", '\n[tools]\nsandbox = "off"\n')
    assert next(e.event for e in off if isinstance(e.event, SessionClaimed)).sandbox == "off"
    assert any(isinstance(e.event, ToolCallCompleted) for e in off)

    def broken(home: Path, limits: Limits | None = None) -> Sandbox:
        raise SandboxUnavailable("bwrap not found: install bubblewrap")

    monkeypatch.setattr(host_module.Sandbox, "find", broken)
    closed = run_in_host(tmp_path / "closed", "")
    claimed = next(e.event for e in closed if isinstance(e.event, SessionClaimed))
    assert claimed.sandbox == "unavailable: bwrap not found: install bubblewrap"
    [refused] = [e.event for e in closed if isinstance(e.event, ToolCallRejected)]
    assert refused.reason == (
        "refused: run_shell is disabled because the sandbox cannot start here: "
        "bwrap not found: install bubblewrap"
    )
    assert not (tmp_path / "closed" / "workspaces" / "s-sh" / "seen").exists()


# --- Python tools: every exec tool, and any that opts in, runs in the sandbox too ---------------

TOOLS_MODULE = '''
import os, time
from fleetlog import tool

@tool(risk="exec")
def probe_box(ctx, path: str) -> dict:
    """Read a path, write a file, say who ran it."""
    try:
        seen = open(path).read()[:40]
    except OSError as e:
        seen = "error: " + (e.strerror or "")
    with open("made-by-tool.txt", "w") as f:
        f.write("x")
    try:
        open("/etc/fleetlog-tool-x", "w").write("x")
        outside = "wrote"
    except OSError as e:
        outside = e.strerror
    return {"uid": os.getuid(), "seen": seen, "outside": outside, "cwd": os.getcwd()}

@tool(risk="write", sandbox=True)
def nap(ctx, seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "rested"
'''


@pytest.fixture
def tools_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import importlib

    where = Path(tempfile.mkdtemp(prefix="fleetlog-tools-", dir=OUTSIDE))
    os.chmod(where, 0o755)
    (where / "boxed_tools.py").write_text(TOOLS_MODULE)
    (where / "boxed_tools.py").chmod(0o644)
    monkeypatch.syspath_prepend(str(where))
    yield importlib.import_module("boxed_tools")
    sys.modules.pop("boxed_tools", None)
    shutil.rmtree(where, ignore_errors=True)


def test_an_exec_python_tool_runs_confined(home: Path, tools_module: Any) -> None:
    import json

    from fleetlog.actors.tools import tool_spec

    spec = tool_spec(tools_module.probe_box)
    assert spec is not None and spec.confined
    ctx = _ctx(home)
    out = asyncio.run(run_tool(spec, {"path": "/etc/shadow"}, ctx, timeout_s=30))
    assert not out.is_error, out.output
    result = json.loads(out.output)
    assert result["uid"] != 0 or not ROOT
    assert result["seen"].startswith("error: ")
    assert result["outside"] == "Read-only file system"
    assert result["cwd"] == str(ctx.workspace)
    assert (ctx.workspace / "made-by-tool.txt").exists()


def test_a_confined_tool_is_stopped_on_timeout(home: Path, tools_module: Any) -> None:
    from fleetlog.actors.tools import tool_spec

    spec = tool_spec(tools_module.nap)
    assert spec is not None and spec.confined  # opted in, though not an exec tool
    ctx = _ctx(home)
    quick = asyncio.run(run_tool(spec, {"seconds": 0}, ctx, timeout_s=30))
    assert quick.output == "rested"
    slow = asyncio.run(run_tool(spec, {"seconds": 30}, ctx, timeout_s=1, grace_s=5))
    assert slow.is_error and slow.output == "timed out after 1s; the call was stopped"
    # The stopped process was reaped, not left to the garbage collector: collecting now
    # makes a leaked subprocess transport fail this test, not whichever runs next.
    gc.collect()


def test_an_exec_tool_cannot_opt_out_of_the_sandbox() -> None:
    from fleetlog.actors.tools import tool

    with pytest.raises(TypeError, match="always runs in the sandbox"):

        @tool(risk="exec", sandbox=False)
        def sneaky(ctx: ToolContext) -> str:
            return "unconfined"


@pytest.mark.skipif(not ROOT, reason="only root writes files another uid must own")
def test_files_fleetlog_writes_stay_the_sessions_own(home: Path) -> None:
    """write_file runs in fleetlog's process (root); the session's commands must still be able
    to change what it wrote."""
    from fleetlog.actors.tools import BUILTIN_TOOLS

    ctx = _ctx(home)
    first = shell(home, "echo start > notes.md; echo ok")  # the workspace is handed over
    assert first.output.endswith("ok\n"), first.output
    write = BUILTIN_TOOLS["write_file"]
    done = asyncio.run(
        run_tool(write, {"path": "deep/dir/notes.md", "content": "a\n"}, ctx, timeout_s=10)
    )
    assert not done.is_error, done.output
    appended = shell(home, "echo b >> deep/dir/notes.md && touch deep/new && cat deep/dir/notes.md")
    assert appended.output == "exit code 0\na\nb\n", appended.output


def test_a_long_output_is_cut_for_the_model_and_kept_whole_once(tmp_path: Path) -> None:
    """Head and tail for the model; the whole output once, in the log's blob store."""
    from test_runner import SCRIPTED_TOML, start_host, stop_host

    from fleetlog.actors.runner import SessionRunner
    from fleetlog.config import parse_config
    from fleetlog.events.schema import BlobRef, SessionCreated

    async def scenario() -> tuple[str, bytes]:
        host = await start_host(tmp_path, parse_config(SCRIPTED_TOML, source="t"))
        sid = "s-long"
        await host.log_for(sid).append_async(sid, [SessionCreated(task_id="t", prompt="p")], 0, 0)
        runner = SessionRunner(sid, host.deps)
        await runner.load()
        (tmp_path / "workspaces" / sid).mkdir(parents=True)
        ctx = ToolContext(
            sid, "t1", "k", (tmp_path / "workspaces" / sid).resolve(), tmp_path,
            sandbox=host.deps.sandbox, keep_output=runner._keep_output,
        )  # fmt: skip
        command = "seq 1 400000"
        out = await run_tool(BUILTIN_TOOLS["run_shell"], {"command": command}, ctx, timeout_s=30)
        digest = out.output.split("blob sha256:")[1].split()[0]
        size = int(out.output.split("the whole output (")[1].split()[0])
        data = host.log_for(sid).load_blob(BlobRef(sha256=digest, size=size))
        await stop_host(host)
        return out.output, data

    output, whole = asyncio.run(scenario())
    expected = "".join(f"{i}\n" for i in range(1, 400001)).encode()
    assert whole == expected
    assert output.startswith("exit code 0\n1\n2\n") and output.endswith("399999\n400000\n")
    assert f"the whole output ({len(expected)} bytes) is kept as blob sha256:" in output
    assert len(output) < 100_000


# --- network: the allowed hosts only, through the egress proxy ----------------------------------


class _Origin:
    """An HTTP server on this machine's loopback standing in for an allowed host."""

    def __init__(self, body: bytes) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_only_the_hosts_an_agent_is_granted_are_reachable(home: Path) -> None:
    import dataclasses

    allowed_origin, other_origin = _Origin(b"PACKAGE-INDEX"), _Origin(b"ATTACKER")
    try:
        ctx = dataclasses.replace(_ctx(home), network=(f"localhost:{allowed_origin.port}",))
        fetch = (
            "import sys, urllib.request\n"
            "for url in sys.argv[1:]:\n"
            "    try:\n"
            "        print(url, urllib.request.urlopen(url, timeout=5).read().decode())\n"
            "    except Exception as e:\n"
            "        print(url, 'FAILED', type(e).__name__, getattr(e, 'code', ''))\n"
        )
        (ctx.workspace / "fetch.py").write_text(fetch)
        command = (
            f"python3 fetch.py http://localhost:{allowed_origin.port}/simple "
            f"http://localhost:{other_origin.port}/ http://127.0.0.1:{allowed_origin.port}/; "
            f"env -u HTTP_PROXY -u http_proxy python3 fetch.py "
            f"http://localhost:{allowed_origin.port}/direct"
        )
        out = asyncio.run(
            run_tool(BUILTIN_TOOLS["run_shell"], {"command": command}, ctx, timeout_s=60)
        )
    finally:
        allowed_origin.close()
        other_origin.close()
    lines = out.output.splitlines()
    assert lines[0] == "exit code 0", out.output
    assert lines[1] == f"http://localhost:{allowed_origin.port}/simple PACKAGE-INDEX"
    assert lines[2] == f"http://localhost:{other_origin.port}/ FAILED HTTPError 403"
    assert lines[3] == f"http://127.0.0.1:{allowed_origin.port}/ FAILED HTTPError 403"
    # Without the proxy there is no network at all.
    assert lines[4].startswith(f"http://localhost:{allowed_origin.port}/direct FAILED URLError")
    assert "ATTACKER" not in out.output


def test_allow_list_entries() -> None:
    from fleetlog.actors.egress import allowed, check_entry

    hosts = ["pypi.org", "*.github.com:443", "files.example.com:8080"]
    assert allowed(hosts, "pypi.org", 443) and allowed(hosts, "PyPI.org.", 80)
    assert not allowed(hosts, "pypi.org", 22)
    assert allowed(hosts, "api.github.com", 443) and not allowed(hosts, "github.com", 443)
    assert not allowed(hosts, "api.github.com", 80)
    assert allowed(hosts, "files.example.com", 8080) and not allowed(hosts, "example.com", 8080)
    assert not allowed(hosts, "pypi.org.evil.com", 443)
    assert check_entry("pypi.org") is None and check_entry("*.github.com:443") is None
    assert check_entry("http://pypi.org") is not None and check_entry("a:99999") is not None


def test_network_config_is_checked_in_one_line() -> None:
    from fleetlog.config import parse_config
    from fleetlog.events.errors import ConfigError

    config = parse_config('[agents.dev]\nnetwork = ["pypi.org", "*.github.com:443"]\n')
    assert config.agent("dev").network == ["pypi.org", "*.github.com:443"]
    assert config.agent("other").network == []
    with pytest.raises(ConfigError, match=r"\[agents.dev\] network\[1\] must be host"):
        parse_config('[agents.dev]\nnetwork = ["pypi.org", "https://x.org/"]\n')
    with pytest.raises(ConfigError, match="sandbox"):
        parse_config('[tools]\nsandbox = "maybe"\n')
