"""Tools as the agent loop uses them: real files, real processes, a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import http.server
import os
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetlog.actors.tools import (
    BUILTIN_TOOLS,
    HTTP_MAX_BYTES,
    MAX_OUTPUT_CHARS,
    ToolContext,
    ToolOutcome,
    ToolSpec,
    load_tools_module,
    resolve_in_workspace,
    run_tool,
    tool,
    tool_spec,
    validate_input,
)
from fleetlog.events.errors import ToolError, ToolInputError, ToolRefused


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return ToolContext(
        session_id="s-1",
        call_id="toolu_01",
        idempotency_key="s-1:toolu_01",
        workspace=workspace,
        home=tmp_path / "home",
    )


def call(ctx: ToolContext, name: str, *, step_timeout_s: float = 10, **raw: Any) -> ToolOutcome:
    spec = BUILTIN_TOOLS[name]
    return asyncio.run(run_tool(spec, validate_input(spec, raw), ctx, timeout_s=step_timeout_s))


def spec_of(fn: object) -> ToolSpec:
    spec = tool_spec(fn)
    assert spec is not None
    return spec


# --- @tool: schemas from type hints ------------------------------------------------------


@tool(risk="read", idempotent=True)
def word_count(
    ctx: ToolContext,
    text: str,
    min_len: int = 1,
    ratio: float = 0.5,
    strict: bool = False,
    stop_words: list[str] | None = None,
) -> int:
    """Count the words in a text.

    Longer explanation that stays in the description.

    Args:
        text: The text to count
            (may span lines).
        min_len: Ignore words shorter than this.

    Returns:
        The count.
    """
    words = [w for w in text.split() if len(w) >= min_len]
    return len([w for w in words if w not in (stop_words or [])])


def test_schema_is_derived_from_type_hints_and_docstring() -> None:
    spec = spec_of(word_count)
    assert spec.name == "word_count"
    assert spec.risk == "read"
    assert spec.idempotent is True
    assert spec.description == (
        "Count the words in a text.\n\nLonger explanation that stays in the description."
    )
    assert spec.input_schema == {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "The text to count (may span lines)."},
            "min_len": {
                "type": "integer",
                "default": 1,
                "description": "Ignore words shorter than this.",
            },
            "ratio": {"type": "number", "default": 0.5},
            "strict": {"type": "boolean", "default": False},
            "stop_words": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
            },
        },
        "required": ["text"],
        "additionalProperties": False,
    }
    assert spec.anthropic_tool() == {
        "name": "word_count",
        "description": spec.description,
        "input_schema": spec.input_schema,
    }
    # The decorator hands the function back unchanged.
    assert word_count(None, "a bb ccc", min_len=2) == 2  # type: ignore[arg-type]


def test_tool_without_ctx_name_and_description_overrides(ctx: ToolContext) -> None:
    @tool(risk="exec", name="shout", description="Upper-case a text.")
    async def loud(text: str) -> str:
        return text.upper()

    spec = spec_of(loud)
    assert (spec.name, spec.description, spec.idempotent) == ("shout", "Upper-case a text.", False)
    assert spec.input_schema["required"] == ["text"]
    outcome = asyncio.run(run_tool(spec, {"text": "hi"}, ctx, timeout_s=5))
    assert outcome == ToolOutcome(output="HI")


def test_declaration_mistakes_fail_at_import_time() -> None:
    with pytest.raises(TypeError, match="needs a type annotation"):

        @tool(risk="read")
        def untyped(ctx: ToolContext, x) -> None:  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(TypeError, match="named parameter"):

        @tool(risk="read")
        def star(ctx: ToolContext, *xs: str) -> None:
            pass

    with pytest.raises(TypeError, match="tool name"):

        @tool(risk="read", name="has space")
        def named(ctx: ToolContext) -> None:
            pass

    with pytest.raises(TypeError, match="risk must be one of"):
        tool(risk="dangerous")  # type: ignore[arg-type]


def test_builtin_tools_match_the_spec() -> None:
    risks = {name: (spec.risk, spec.idempotent) for name, spec in BUILTIN_TOOLS.items()}
    assert risks == {
        "read_file": ("read", True),
        "write_file": ("write", True),
        "list_dir": ("read", True),
        "run_shell": ("exec", False),
        "send_email": ("external", False),
        "http_get": ("network", True),
        "read_output": ("read", True),
    }
    for spec in BUILTIN_TOOLS.values():
        assert spec.description and "\n" not in spec.description
        assert spec.input_schema["type"] == "object"
    assert BUILTIN_TOOLS["list_dir"].input_schema["required"] == []
    assert BUILTIN_TOOLS["run_shell"].input_schema["required"] == ["command"]


# --- validation ----------------------------------------------------------------------------


def test_validate_input_fills_defaults() -> None:
    spec = spec_of(word_count)
    assert validate_input(spec, {"text": "a b"}) == {
        "text": "a b",
        "min_len": 1,
        "ratio": 0.5,
        "strict": False,
        "stop_words": None,
    }
    assert validate_input(spec, {"text": "a", "ratio": 2})["ratio"] == 2.0


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({}, "missing required field `text`"),
        ({"text": "a", "colour": "red"}, "unknown field `colour`"),
        ({"text": 3}, "Expected `str`, got `int` - at `$.text`"),
        ({"text": "a", "min_len": "2"}, "`$.min_len`"),
        ({"text": "a", "min_len": True}, "`$.min_len`"),
        ({"text": "a", "stop_words": ["x", 1]}, "`$.stop_words[1]`"),
        (["text"], "expected a JSON object, got list"),
    ],
)
def test_validation_errors_are_one_line_and_name_the_key(raw: Any, fragment: str) -> None:
    with pytest.raises(ToolInputError) as info:
        validate_input(spec_of(word_count), raw)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid input for word_count: ")
    assert fragment in message
    assert info.value.tool == "word_count"


# --- loading a tools module ------------------------------------------------------------------


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_load_tools_module_collects_decorated_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _module(
        tmp_path,
        monkeypatch,
        "fleetlog_test_tools_ok",
        """
        import fleetlog.actors.tools as t

        @t.tool(risk="read", idempotent=True)
        def lookup(ctx: t.ToolContext, key: str) -> str:
            '''Look a key up.'''
            return key

        def helper() -> None:
            pass
        """,
    )
    tools = load_tools_module(name)
    assert list(tools) == ["lookup"]
    assert tools["lookup"].description == "Look a key up."


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("raise RuntimeError('boom\\nsecond line')", "cannot import: RuntimeError: boom second"),
        ("x = 1", "defines no @fleetlog.tool functions"),
        (
            "import fleetlog.actors.tools as t\n"
            "@t.tool(risk='read')\n"
            "def read_file(ctx: t.ToolContext, path: str) -> str:\n"
            "    return path\n",
            "shadows a built-in tool",
        ),
    ],
)
def test_load_tools_module_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, fragment: str
) -> None:
    name = _module(tmp_path, monkeypatch, f"fleetlog_test_tools_bad{abs(hash(source))}", source)
    with pytest.raises(ToolError) as info:
        load_tools_module(name)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ToolError, match="cannot import: ModuleNotFoundError"):
        load_tools_module("fleetlog_test_no_such_module")


# --- paths -----------------------------------------------------------------------------------


def test_resolve_in_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (ws / "escape").symlink_to(tmp_path / "outside")
    (ws / "inner").symlink_to(ws / "sub")
    real = ws.resolve()
    assert resolve_in_workspace(ws, "sub/../a.txt", tool="t") == real / "a.txt"
    assert resolve_in_workspace(ws, "inner/x", tool="t") == real / "sub" / "x"
    assert resolve_in_workspace(ws, ".", tool="t") == real
    for bad, why in [
        ("../x", "outside the workspace"),
        ("sub/../../x", "outside the workspace"),
        ("/etc/passwd", "not relative to the workspace"),
        ("~/.bashrc", "not relative to the workspace"),
        ("escape/secret", "resolves outside the workspace"),
        ("inner/../../outside", "outside the workspace"),
        ("a\x00b", "NUL byte"),
    ]:
        with pytest.raises(ToolRefused, match=why):
            resolve_in_workspace(ws, bad, tool="t")


# --- read_file / write_file / list_dir --------------------------------------------------------


def test_read_file(ctx: ToolContext) -> None:
    (ctx.workspace / "notes.txt").write_text("héllo\n")
    assert call(ctx, "read_file", path="notes.txt") == ToolOutcome(output="héllo\n")
    (ctx.workspace / "big.txt").write_bytes(b"x" * (2 << 20))
    big = call(ctx, "read_file", path="big.txt")
    assert not big.is_error
    assert "\n[output truncated: " in big.output
    assert len(big.output) < MAX_OUTPUT_CHARS + 200
    (ctx.workspace / "blob.bin").write_bytes(b"\x00\x01\x02")
    assert "binary file" in call(ctx, "read_file", path="blob.bin").output
    assert "no such file" in call(ctx, "read_file", path="missing.txt").output
    (ctx.workspace / "d").mkdir()
    assert "is a directory" in call(ctx, "read_file", path="d").output


def test_read_file_caps_at_one_mebibyte(ctx: ToolContext) -> None:
    from fleetlog.actors.tools import read_file

    (ctx.workspace / "big.txt").write_bytes(b"y" * ((1 << 20) + 10))
    text = read_file(ctx, "big.txt")
    assert text.startswith("y" * (1 << 20))
    assert text.endswith(f"[file truncated: {(1 << 20) + 10} bytes, showing the first {1 << 20}]")


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".env.production",
        "config/.env",
        "server.pem",
        "tls/private.key",
        "id_rsa",
        ".ssh/id_ed25519.pub",
        ".ssh/config",
        ".aws/credentials",
        ".netrc",
        "cert.p12",
        "linked-notes.txt",  # a symlink to .env
    ],
)
def test_read_file_refuses_credential_files(ctx: ToolContext, path: str) -> None:
    (ctx.workspace / ".env").write_text("API_KEY=secret")
    (ctx.workspace / "linked-notes.txt").symlink_to(ctx.workspace / ".env")
    target = ctx.workspace / path
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("secret")
    outcome = call(ctx, "read_file", path=path)
    assert outcome.is_error
    assert "credential file" in outcome.output
    assert "secret" not in outcome.output


def test_file_tools_refuse_paths_outside_the_workspace(ctx: ToolContext, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("outside")
    (ctx.workspace / "link").symlink_to(tmp_path)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("read_file", {"path": "../outside.txt"}),
        ("read_file", {"path": str(tmp_path / "outside.txt")}),
        ("read_file", {"path": "link/outside.txt"}),
        ("write_file", {"path": "../evil.txt", "content": "x"}),
        ("write_file", {"path": "link/evil.txt", "content": "x"}),
        ("list_dir", {"path": ".."}),
        ("list_dir", {"path": "link"}),
    ]
    for name, raw in cases:
        outcome = call(ctx, name, **raw)
        assert outcome.is_error, (name, raw)
        assert outcome.output.startswith(f"{name} refused: "), outcome.output
        assert "\n" not in outcome.output
    assert not (tmp_path / "evil.txt").exists()


def test_write_file_is_atomic_and_idempotent(ctx: ToolContext) -> None:
    first = call(ctx, "write_file", path="a/b/c.txt", content="one\n")
    assert first == ToolOutcome(output="wrote 4 bytes to a/b/c.txt")
    assert (ctx.workspace / "a/b/c.txt").read_text() == "one\n"
    assert call(ctx, "write_file", path="a/b/c.txt", content="one\n") == first
    os.chmod(ctx.workspace / "a/b/c.txt", 0o600)
    call(ctx, "write_file", path="a/b/c.txt", content="two")
    assert (ctx.workspace / "a/b/c.txt").read_text() == "two"
    assert (ctx.workspace / "a/b/c.txt").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (ctx.workspace / "a/b").iterdir()) == ["c.txt"]  # no temp files
    assert "is a directory" in call(ctx, "write_file", path="a", content="x").output


def test_list_dir(ctx: ToolContext) -> None:
    assert call(ctx, "list_dir") == ToolOutcome(output="(empty directory)")
    for name in ("b.txt", "a.txt", ".hidden"):
        (ctx.workspace / name).write_text("")
    (ctx.workspace / "src").mkdir()
    (ctx.workspace / "src" / "m.py").write_text("")
    assert call(ctx, "list_dir").output == ".hidden\na.txt\nb.txt\nsrc/"
    assert call(ctx, "list_dir", path="src").output == "m.py"
    assert "not a directory" in call(ctx, "list_dir", path="a.txt").output


# --- run_shell -----------------------------------------------------------------------------


def test_run_shell_reports_exit_code_and_output(ctx: ToolContext) -> None:
    out = call(ctx, "run_shell", command="echo out; echo err >&2; exit 3")
    assert out == ToolOutcome(output="exit code 3\nout\nerr\n")
    pwd = call(ctx, "run_shell", command="pwd; echo $HOME")
    real = str(ctx.workspace.resolve())
    assert pwd.output.splitlines()[1:] in ([real, str(ctx.workspace)], [real, real])


def test_run_shell_environment_is_minimal(
    ctx: ToolContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETLOG_TEST_SECRET", "sk-ant-do-not-leak")
    out = call(ctx, "run_shell", command='echo "secret=${FLEETLOG_TEST_SECRET:-unset}"; echo $LANG')
    assert out.output == "exit code 0\nsecret=unset\nC.UTF-8\n"
    # The environment cannot be dumped either: run_shell refuses what vetting denies.
    refused = call(ctx, "run_shell", command="printenv")
    assert refused.is_error
    assert refused.output.startswith("run_shell refused: printenv prints the environment")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/status")
    # Without a reaping init (containers) a killed orphan lingers as a zombie: dead all the same.
    return status.exists() and "State:\tZ" in status.read_text()


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return False


def test_run_shell_timeout_kills_the_process_group(ctx: ToolContext) -> None:
    started = time.monotonic()
    out = call(
        ctx, "run_shell", command="sleep 30 & echo $! > pid; echo started; wait", timeout_s=0.5
    )
    assert time.monotonic() - started < 5
    assert out.is_error
    assert out.output.startswith("timed out after 0.5s; the command was killed\nstarted")
    assert _wait_gone(int((ctx.workspace / "pid").read_text()))


def test_step_timeout_cancels_run_shell_and_kills_it(ctx: ToolContext) -> None:
    spec = BUILTIN_TOOLS["run_shell"]
    kwargs = validate_input(spec, {"command": "sleep 30 & echo $! > pid; wait", "timeout_s": 60})
    out = asyncio.run(run_tool(spec, kwargs, ctx, timeout_s=0.5))
    assert out == ToolOutcome(
        output="timed out after 0.5s; the call was stopped", is_error=True, timed_out=True
    )
    assert _wait_gone(int((ctx.workspace / "pid").read_text()))


def test_run_shell_background_children_do_not_outlive_the_call(ctx: ToolContext) -> None:
    started = time.monotonic()
    out = call(ctx, "run_shell", command="sleep 30 & echo $! > pid; echo done")
    assert out.output == "exit code 0\ndone\n"
    assert time.monotonic() - started < 5
    assert _wait_gone(int((ctx.workspace / "pid").read_text()))


def test_run_shell_truncates_huge_output(ctx: ToolContext) -> None:
    out = call(ctx, "run_shell", command="head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END")
    assert out.output.startswith("exit code 0\nxxx")
    assert "bytes of output omitted" in out.output
    assert out.output.rstrip().endswith("END")
    assert len(out.output) <= MAX_OUTPUT_CHARS + 200


# --- send_email ------------------------------------------------------------------------------


def test_send_email_delivers_exactly_once(ctx: ToolContext) -> None:
    raw: dict[str, Any] = {"to": "ops@example.com", "subject": "Report", "body": "All good.\n"}
    first = call(ctx, "send_email", **raw)
    assert first == ToolOutcome(output="delivered to ops@example.com (s-1-toolu_01.eml)")
    outbox = ctx.home / "outbox"
    eml = outbox / "s-1-toolu_01.eml"
    message = eml.read_text()
    assert "To: ops@example.com" in message
    assert "Subject: Report" in message
    assert "All good." in message

    # A retry of the same call (say, after a crash before its completion was logged).
    again = call(ctx, "send_email", **{**raw, "body": "different"})
    assert again == ToolOutcome(output="already delivered: s-1-toolu_01.eml")
    assert eml.read_text() == message
    assert [p.name for p in outbox.iterdir()] == ["s-1-toolu_01.eml"]

    other = ToolContext("s-1", "toolu_02", "s-1:toolu_02", ctx.workspace, ctx.home)
    call(other, "send_email", **raw)
    assert sorted(p.name for p in outbox.iterdir()) == ["s-1-toolu_01.eml", "s-1-toolu_02.eml"]


def test_send_email_concurrent_retries_deliver_once(ctx: ToolContext) -> None:
    spec = BUILTIN_TOOLS["send_email"]
    kwargs = validate_input(spec, {"to": "a@example.com", "subject": "s", "body": "b"})

    async def many() -> list[ToolOutcome]:
        return list(
            await asyncio.gather(*(run_tool(spec, kwargs, ctx, timeout_s=5) for _ in range(8)))
        )

    outcomes = asyncio.run(many())
    assert sum(o.output.startswith("delivered") for o in outcomes) == 1
    assert sum(o.output.startswith("already delivered") for o in outcomes) == 7
    assert [p.name for p in (ctx.home / "outbox").iterdir()] == ["s-1-toolu_01.eml"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"to": "not-an-address", "subject": "s", "body": "b"}, "is not a list of email"),
        ({"to": "a@example.com\nBcc: x@evil.com", "subject": "s", "body": "b"}, "one line"),
        ({"to": "a@example.com", "subject": "s\nBcc: x@evil.com", "body": "b"}, "one line"),
    ],
)
def test_send_email_rejects_bad_headers(
    ctx: ToolContext, raw: dict[str, Any], fragment: str
) -> None:
    out = call(ctx, "send_email", **raw)
    assert out.is_error
    assert fragment in out.output
    assert not list(ctx.home.glob("outbox/*"))


# --- http_get against a loopback server ------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/hello":
            body, status = b"hello from loopback", 200
        elif self.path == "/big":
            body, status = b"z" * 300_000, 200
        elif self.path.startswith("/redirect-"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect-") + "://x/etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            body, status = b"nothing here", 404
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_http_get(ctx: ToolContext, server: str) -> None:
    ok = call(ctx, "http_get", url=f"{server}/hello")
    assert ok == ToolOutcome(
        output="HTTP 200\ncontent-type: text/plain; charset=utf-8\n\nhello from loopback"
    )
    missing = call(ctx, "http_get", url=f"{server}/nope")
    assert missing.output.startswith("HTTP 404\n")
    assert missing.output.endswith("nothing here")
    big = call(ctx, "http_get", url=f"{server}/big")
    assert big.output.endswith(f"[body truncated at {HTTP_MAX_BYTES} bytes]")
    assert big.output.count("z") == HTTP_MAX_BYTES
    assert len(big.output) <= MAX_OUTPUT_CHARS


def test_http_get_refusals(ctx: ToolContext, server: str) -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x", "http://"):
        out = call(ctx, "http_get", url=url)
        assert out.is_error
        assert out.output.startswith("http_get refused: "), out.output
    redirected = call(ctx, "http_get", url=f"{server}/redirect-ftp")
    assert redirected.is_error
    assert redirected.output.startswith("http_get refused: redirect to a non-HTTP URL")
    # urllib itself will not follow a redirect to file://; the model sees the 302.
    not_followed = call(ctx, "http_get", url=f"{server}/redirect-file")
    assert not_followed.output.startswith("HTTP 302\n")
    assert "root:" not in not_followed.output
    port = server.rsplit(":", 1)[1]
    closed = call(ctx, "http_get", url=f"http://127.0.0.1:{int(port) ^ 1}/x")
    assert closed.is_error
    assert "\n" not in closed.output


# --- run_tool ----------------------------------------------------------------------------------


def test_run_tool_turns_failures_into_one_line_outcomes(ctx: ToolContext) -> None:
    @tool(risk="read")
    def boom(ctx: ToolContext, kind: str) -> Any:
        if kind == "value":
            raise ValueError("bad\nvalue")
        if kind == "tool":
            raise ToolRefused("boom", "not today")
        if kind == "exit":
            raise SystemExit(3)
        if kind == "long":
            return "x" * (MAX_OUTPUT_CHARS + 5)
        if kind == "sleep":
            time.sleep(0.3)
        return {"n": 1, "items": ["a"]}

    spec = spec_of(boom)

    def run(kind: str, timeout_s: float = 5, grace_s: float = 5) -> ToolOutcome:
        return asyncio.run(
            run_tool(spec, {"kind": kind}, ctx, timeout_s=timeout_s, grace_s=grace_s)
        )

    assert run("value") == ToolOutcome(output="ValueError: bad value", is_error=True)
    assert run("tool") == ToolOutcome(output="boom refused: not today", is_error=True)
    assert run("exit") == ToolOutcome(output="SystemExit: 3", is_error=True)
    assert run("json") == ToolOutcome(output='{"n":1,"items":["a"]}')
    # A sync tool cannot be stopped: it is waited for, and what it did is the outcome...
    assert run("sleep", timeout_s=0.05) == ToolOutcome(
        output='{"n":1,"items":["a"]}', timed_out=True
    )
    # ...unless it outlives the grace too: then nobody knows whether it took effect.
    assert run("sleep", timeout_s=0.05, grace_s=0.05) == ToolOutcome(
        output="timed out after 0.05s; still running 0.05s later: whether it took effect "
        "is unknown",
        is_error=True,
        timed_out=True,
        in_doubt=True,
    )
    long = run("long")
    assert not long.is_error
    assert long.output.startswith("x" * MAX_OUTPUT_CHARS + "\n[output truncated: ")


def test_a_timeout_raised_by_the_tool_is_not_a_step_timeout(ctx: ToolContext) -> None:
    @tool(risk="network")
    async def slow(ctx: ToolContext) -> str:
        raise TimeoutError("upstream took too long")

    out = asyncio.run(run_tool(spec_of(slow), {}, ctx, timeout_s=5))
    assert out == ToolOutcome(output="TimeoutError: upstream took too long", is_error=True)
