"""Tools: the ``@tool`` decorator, input schemas and validation, and the built-in tools.

A tool is a plain function (sync or async) whose first parameter is
``ctx: ToolContext`` and whose other parameters are its input. ``@tool`` derives
the JSON Schema the model sees, and a msgspec Struct that validates the model's
input, from the type hints; the docstring's summary becomes the description and
its ``Args:`` section the per-parameter descriptions.

Nothing here decides whether a call *may* run: that is :mod:`fleetlog.actors.safety`
(``vet``), which the agent loop consults before :func:`run_tool`. The built-in
tools still refuse what no reviewer can approve (paths outside the workspace,
credential files, shell commands the vetting denies), so a bug upstream cannot
turn into a leak.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import contextvars
import dataclasses
import email.policy
import email.utils
import fnmatch
import functools
import importlib
import inspect
import os
import re
import signal
import stat
import sys
import tempfile
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from fleetlog.actors.context import page
from fleetlog.actors.egress import EgressProxy
from fleetlog.actors.outbox import FileOutbox, Outbox
from fleetlog.actors.sandbox import Sandbox, python_paths
from fleetlog.events.errors import ToolError, ToolInputError, ToolRefused
from fleetlog.events.filelog import fsync_dir

__all__ = [
    "BUILTIN_TOOLS",
    "DEFAULT_GRACE_S",
    "MAX_OUTPUT_CHARS",
    "Risk",
    "ToolContext",
    "ToolOutcome",
    "ToolSpec",
    "is_credential_path",
    "load_tools_module",
    "resolve_in_workspace",
    "run_tool",
    "tool",
    "tool_spec",
    "validate_input",
]

Risk = Literal["read", "write", "exec", "external", "network"]
_RISKS: frozenset[str] = frozenset(typing.get_args(Risk))

#: Outputs longer than this are cut before the model (and the log) sees them.
MAX_OUTPUT_CHARS = 100_000
MAX_READ_BYTES = 1 << 20
MAX_WRITE_BYTES = 10 << 20
MAX_LIST_ENTRIES = 1000
HTTP_TIMEOUT_S = 10.0
# "100 KB", less room for the status lines, so the whole answer fits in MAX_OUTPUT_CHARS.
HTTP_MAX_BYTES = MAX_OUTPUT_CHARS - 2000

_ATTR = "__fleetlog_tool__"
# The Messages API's constraint on tool names.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may know about its call; made where the effect happens."""

    session_id: str
    call_id: str
    idempotency_key: str  # stable across retries of the same call
    workspace: Path  # the session's workspace directory (exists)
    home: Path  # fleet home; the file outbox is home / "outbox"
    #: Where exec tools run confined; None only with ``[tools] sandbox = "off"``.
    sandbox: Sandbox | None = None
    #: Hosts a confined call may reach through the egress proxy (``egress.py``); none: none.
    network: tuple[str, ...] = ()
    #: Stores a large output whole, once (the log's blob store); returns how to name it.
    keep_output: Callable[[bytes], Awaitable[str]] | None = None
    #: Where send_email delivers, exactly once per call (``outbox.py``); None: the
    #: file outbox in ``home``. A fleet across machines shares one in PostgreSQL.
    outbox: Outbox | None = None
    #: An earlier call's whole output as the log recorded it (None: no such output):
    #: what ``read_output`` pages through. Set by the runner.
    recorded_output: Callable[[str], str | None] | None = None
    #: The most characters of one tool result the model may see (its share of the window).
    page_chars: int = 20_000


class ToolOutcome(msgspec.Struct, frozen=True):
    """What the model receives as the ``tool_result``.

    ``timed_out``: the call ran out of time or was stopped; ``in_doubt``: it was
    still running when given up on, so whether it took effect is unknown.
    """

    output: str
    is_error: bool = False
    timed_out: bool = False
    in_doubt: bool = False


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    risk: Risk
    idempotent: bool
    input_schema: dict[str, Any]  # the Anthropic tool's ``input_schema`` (a JSON Schema object)
    input_type: type[msgspec.Struct]  # validates the model's input (unknown fields forbidden)
    fn: Callable[..., Any]  # sync or async; called as fn(ctx, **kwargs)
    #: Runs inside the sandbox when the fleet has one (every exec tool; others may opt in).
    confined: bool = False
    #: ``module:qualname`` of the decorated function: how a confined call finds it again.
    origin: str = ""

    def anthropic_tool(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": self.input_schema,
        }


# --- @tool -----------------------------------------------------------------------------


def tool(
    *,
    risk: Risk,
    idempotent: bool = False,
    name: str | None = None,
    description: str | None = None,
    sandbox: bool | None = None,
) -> Callable[[F], F]:
    """Declare a function as a tool (``@fleetlog.tool(risk="read", idempotent=True)``).

    The function is returned unchanged, with its :class:`ToolSpec` attached
    (read it back with :func:`tool_spec`). A function whose first parameter is
    not ``ctx`` is wrapped so that ``spec.fn`` is always called as ``fn(ctx, **kwargs)``.
    Mistakes in the declaration raise ``TypeError`` at import time.

    ``sandbox=True`` runs each call in a process of its own inside the fleet's
    sandbox (see ``sandbox.py``); every ``exec`` tool does, and cannot opt out:
    only ``[tools] sandbox = "off"`` runs them unconfined. Such a tool must be a
    module-level function whose module the fleet can import, and its result
    must be JSON-serializable.
    """
    if risk not in _RISKS:
        raise TypeError(f"@tool risk must be one of {sorted(_RISKS)}, not {risk!r}")
    if risk == "exec" and sandbox is False:
        raise TypeError('@tool(risk="exec") always runs in the sandbox: drop sandbox=False')
    confined = risk == "exec" if sandbox is None else sandbox

    def decorate(fn: F) -> F:
        spec = _build_spec(fn, risk=risk, idempotent=idempotent, name=name, description=description)
        spec = dataclasses.replace(
            spec, confined=confined, origin=f"{fn.__module__}:{fn.__qualname__}"
        )
        fn.__fleetlog_tool__ = spec  # type: ignore[attr-defined]
        return fn

    return decorate


def tool_spec(fn: object) -> ToolSpec | None:
    """The :class:`ToolSpec` that ``@tool`` attached to ``fn``, if any."""
    spec = getattr(fn, _ATTR, None)
    return spec if isinstance(spec, ToolSpec) else None


def _build_spec(
    fn: Callable[..., Any],
    *,
    risk: Risk,
    idempotent: bool,
    name: str | None,
    description: str | None,
) -> ToolSpec:
    tool_name = name or fn.__name__
    if not _TOOL_NAME.fullmatch(tool_name):
        raise TypeError(f"tool name {tool_name!r} must match [A-Za-z0-9_-]{{1,64}}")
    params = list(inspect.signature(fn).parameters.values())
    takes_ctx = bool(params) and (
        params[0].name == "ctx" or params[0].annotation in (ToolContext, "ToolContext")
    )
    if takes_ctx:
        params = params[1:]
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"tool {tool_name}: parameter {p.name!r} must be a named parameter")
        if p.annotation is p.empty:
            raise TypeError(f"tool {tool_name}: parameter {p.name!r} needs a type annotation")
    hints = _param_hints(fn, tool_name, [p.name for p in params])

    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for p in params:
        if p.default is p.empty:
            fields.append((p.name, hints[p.name]))
        else:
            fields.append((p.name, hints[p.name], p.default))
    try:
        input_type = msgspec.defstruct(
            f"{tool_name}_input", fields, kw_only=True, forbid_unknown_fields=True
        )
        schema = _object_schema(input_type)
    except (TypeError, ValueError) as err:
        raise TypeError(f"tool {tool_name}: unsupported parameter types: {err}") from err

    summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
    for key, text in arg_docs.items():
        prop = schema["properties"].get(key)
        if prop is not None and "description" not in prop:
            prop["description"] = text

    call: Callable[..., Any] = fn if takes_ctx else _drop_ctx(fn)
    return ToolSpec(
        name=tool_name,
        description=description if description is not None else summary,
        risk=risk,
        idempotent=idempotent,
        input_schema=schema,
        input_type=input_type,
        fn=call,
    )


def _param_hints(fn: Callable[..., Any], tool_name: str, names: list[str]) -> dict[str, Any]:
    # Resolve only the tool's own parameters, so that `ctx: ToolContext` imported under
    # TYPE_CHECKING (or any unresolvable return annotation) does not break the decorator.
    wanted = {k: v for k, v in inspect.get_annotations(fn).items() if k in names}
    shim = types.SimpleNamespace(__annotations__=wanted, __globals__=getattr(fn, "__globals__", {}))
    try:
        return typing.get_type_hints(shim, include_extras=True)
    except Exception as err:
        raise TypeError(f"tool {tool_name}: cannot resolve type hints: {err}") from err


def _object_schema(input_type: type[msgspec.Struct]) -> dict[str, Any]:
    full = msgspec.json.schema(input_type)
    defs: dict[str, Any] = full.get("$defs", {})
    ref = str(full.get("$ref", "")).rsplit("/", 1)[-1]
    schema = dict(defs.pop(ref, full))
    schema.pop("title", None)
    schema.setdefault("properties", {})
    if defs:  # nested Structs in the parameters keep their references
        schema["$defs"] = defs
    return schema


_ARGS_HEADER = re.compile(r"(?:Args|Arguments|Parameters):\s*")
_ARG_LINE = re.compile(r"(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into its description and ``Args:`` entries."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if _ARGS_HEADER.fullmatch(line.strip()):
            head, rest = lines[:i], lines[i + 1 :]
            break
    else:
        return doc.strip(), {}
    args: dict[str, str] = {}
    current: str | None = None
    indent: int | None = None
    for line in rest:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:  # the next section starts
            break
        m = _ARG_LINE.fullmatch(line.strip())
        if depth == indent and m:
            current = m.group(1)
            args[current] = m.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return "\n".join(head).strip(), args


def _drop_ctx(fn: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        async def call_async(ctx: ToolContext, **kwargs: Any) -> Any:
            return await fn(**kwargs)

        return call_async

    def call(ctx: ToolContext, **kwargs: Any) -> Any:
        return fn(**kwargs)

    return call


# --- loading, validation, running ------------------------------------------------------


def load_tools_module(module: str) -> dict[str, ToolSpec]:
    """Import ``pkg.mod`` (``[fleet] tools_module``) and collect its ``@tool`` functions."""
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # any failure while importing user code is a config problem
        raise ToolError(
            f"tools_module {module!r}: cannot import: {_one_line(type(err).__name__, err)}"
        ) from err
    found: dict[str, ToolSpec] = {}
    for value in vars(mod).values():
        spec = tool_spec(value)
        if spec is None:
            continue
        if spec.name in BUILTIN_TOOLS:
            # Safety checks key on the built-in names; a shadowing tool would get the wrong ones.
            raise ToolError(f"tools_module {module!r}: tool {spec.name!r} shadows a built-in tool")
        if spec.name in found and found[spec.name] is not spec:
            raise ToolError(f"tools_module {module!r}: two tools are named {spec.name!r}")
        found[spec.name] = spec
    if not found:
        raise ToolError(f"tools_module {module!r} defines no @fleetlog.tool functions")
    return found


def validate_input(spec: ToolSpec, raw: Any) -> dict[str, Any]:
    """Check the model's ``tool_use`` input against the tool's schema; return the kwargs."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ToolInputError(spec.name, f"expected a JSON object, got {type(raw).__name__}")
    try:
        value = msgspec.convert(dict(raw), spec.input_type)
    except msgspec.ValidationError as err:
        raise ToolInputError(spec.name, " ".join(str(err).split())) from None
    return {f: getattr(value, f) for f in value.__struct_fields__}


_INLINE = frozenset({"read_file", "list_dir", "read_output"})  # write_file fsyncs: it gets a thread

#: After a timeout or a stop, how long a tool that cannot be interrupted (a sync tool in
#: its thread) is waited for before its call is declared in doubt.
DEFAULT_GRACE_S = 5.0


async def run_tool(
    spec: ToolSpec,
    kwargs: dict[str, Any],
    ctx: ToolContext,
    *,
    timeout_s: float,
    grace_s: float = DEFAULT_GRACE_S,
    stop: asyncio.Event | None = None,
) -> ToolOutcome:
    """Run one validated call; every failure becomes an ``is_error`` outcome, never a raise.

    The call is never abandoned: on timeout, or when ``stop`` is set (the session
    is being cancelled), an async tool is cancelled and awaited (``run_shell``
    kills its whole process group then); a sync tool runs in a worker thread,
    which cannot be killed, so it is waited for up to ``grace_s`` more and its
    real outcome returned. Only if it is still running then is the outcome
    unknown: ``in_doubt``, and the caller must not treat the call as not done.
    """
    if not inspect.iscoroutinefunction(spec.fn) and (
        spec.name in _INLINE and BUILTIN_TOOLS.get(spec.name) is spec
    ):
        # Bounded local reads (1 MiB cap): a thread hop would cost more than the call.
        try:
            return _outcome(spec.fn(ctx, **kwargs))
        except (Exception, SystemExit) as err:
            return _failure(err)
    work: asyncio.Future[Any]
    stoppable = inspect.iscoroutinefunction(spec.fn)
    if spec.confined and ctx.sandbox is not None and BUILTIN_TOOLS.get(spec.name) is not spec:
        # Out of this process, into the sandbox; a kill of the process stops it.
        work = asyncio.ensure_future(_call_confined(spec, kwargs, ctx, ctx.sandbox))
        stoppable = True
    elif inspect.iscoroutinefunction(spec.fn):
        work = asyncio.ensure_future(spec.fn(ctx, **kwargs))
    else:
        # A plain future, never cancelled below: it completes when the thread does (a
        # task would re-raise a SystemExit from the tool out of the event loop).
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, spec.fn, ctx, **kwargs)
        work = loop.run_in_executor(None, call)
    waits: set[asyncio.Future[Any]] = {work}
    stopper: asyncio.Task[bool] | None = None
    if stop is not None:
        stopper = asyncio.ensure_future(stop.wait())
        waits.add(stopper)
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopper is not None:
            stopper.cancel()
    if work.done():
        return _settled(work)
    why = f"timed out after {timeout_s:g}s" if stop is None or not stop.is_set() else "cancelled"
    if stoppable:
        work.cancel()
        await asyncio.wait({work}, timeout=grace_s)
        return ToolOutcome(output=f"{why}; the call was stopped", is_error=True, timed_out=True)
    await asyncio.wait({work}, timeout=grace_s)
    if work.done():  # late, but it ran: its real outcome is what happened
        return msgspec.structs.replace(_settled(work), timed_out=True)
    return ToolOutcome(
        output=f"{why}; still running {grace_s:g}s later: whether it took effect is unknown",
        is_error=True,
        timed_out=True,
        in_doubt=True,
    )


async def _call_confined(
    spec: ToolSpec, kwargs: dict[str, Any], ctx: ToolContext, sandbox: Sandbox
) -> ToolOutcome:
    """Call a Python tool in a process of its own inside the sandbox (``_confined.py``).

    The interpreter, its libraries and the module path come back read-only
    (they may live under an emptied directory such as /root); the call travels
    as JSON on stdin and its outcome comes back as JSON on stdout.
    """
    request = msgspec.json.encode(
        {
            "origin": spec.origin,
            "kwargs": kwargs,
            "ctx": [ctx.session_id, ctx.call_id, ctx.idempotency_key, str(ctx.workspace)],
            "home": str(ctx.home),
        }
    )
    pythonpath, read_only = python_paths()
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(ctx.workspace),
        "LANG": "C.UTF-8",
        "PYTHONPATH": pythonpath,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    uid = await asyncio.to_thread(sandbox.uid_for, ctx.workspace, ctx.session_id)
    argv = sandbox.argv(
        [sys.executable, "-m", "fleetlog.actors._confined"],
        workspace=ctx.workspace,
        uid=uid,
        env=env,
        read_only=read_only,
    )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ctx.workspace,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await proc.communicate(request)
    finally:
        _kill_group(proc.pid)  # on cancel or timeout too: nothing it started survives
        if proc.returncode is None:
            # Reaped here, not left to the garbage collector (a cancelled communicate()
            # leaves the killed process and its pipes behind).
            with contextlib.suppress(TimeoutError):
                await asyncio.shield(asyncio.wait_for(proc.wait(), 10))
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        detail = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"{spec.name} failed in the sandbox (exit {proc.returncode}): {detail}")
    return msgspec.json.decode(lines[-1], type=ToolOutcome)


def _settled(work: asyncio.Future[Any]) -> ToolOutcome:
    """The outcome of a finished call, read without raising its error again."""
    if work.cancelled():
        return ToolOutcome(output="cancelled", is_error=True)
    err = work.exception()
    return _outcome(work.result()) if err is None else _failure(err)


def _failure(err: BaseException) -> ToolOutcome:
    if isinstance(err, ToolError):
        return ToolOutcome(output=_truncate(" ".join(str(err).split())), is_error=True)
    # Anything else, SystemExit included: a tool must never take its host down.
    return ToolOutcome(output=_one_line(type(err).__name__, err), is_error=True)


def _outcome(result: Any) -> ToolOutcome:
    if isinstance(result, ToolOutcome):
        return msgspec.structs.replace(result, output=_truncate(result.output))
    if result is None:
        text = ""
    elif isinstance(result, str):
        text = result
    elif isinstance(result, bytes):
        text = result.decode("utf-8", errors="replace")
    else:
        try:
            text = msgspec.json.encode(result).decode()
        except (TypeError, ValueError):
            text = str(result)
    return ToolOutcome(output=_truncate(text))


def _truncate(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return (
        text[:MAX_OUTPUT_CHARS]
        + f"\n[output truncated: {len(text)} characters, showing the first {MAX_OUTPUT_CHARS}]"
    )


def _one_line(kind: str, err: BaseException) -> str:
    message = " ".join(str(err).split())
    return _truncate(f"{kind}: {message}" if message else kind)


# --- paths -----------------------------------------------------------------------------

# Matched against a path's last component, lower-cased.
_CREDENTIAL_NAMES = (
    ".env",
    ".env.*",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.ppk",
    "*.tfstate",
    "*.tfstate.backup",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    "_netrc",
    ".pgpass",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".my.cnf",
    ".vault-token",
    ".htpasswd",
    "application_default_credentials.json",
    "credentials.tfrc.json",
)
# Templates of secrets files hold placeholders, not secrets (`.env.example`).
_NOT_CREDENTIALS = (".env.example", ".env.sample", ".env.template", ".env.dist", ".env.tmpl")
# Matched against the path's trailing components, lower-cased: (directory, file glob). The
# directory may have several components; a "*" glob covers any depth below it.
_CREDENTIAL_PAIRS = (
    (".aws", "credentials"),
    (".ssh", "*"),
    (".gnupg", "*"),
    (".docker", "config.json"),
    (".kube", "config"),
    (".azure", "*"),
    (".config/gcloud", "*"),
    (".config/gh", "hosts.yml"),
    (".config/hub", "*"),
    (".cargo", "credentials*"),
    (".cache/huggingface", "token"),
    (".huggingface", "token"),
    (".terraform.d", "credentials*"),
    (".password-store", "*"),
    (".local/share/keyrings", "*"),
    ("etc", "shadow"),
    ("etc", "gshadow"),
)


def is_credential_path(path: str) -> bool:
    """Whether ``path`` names a file that typically holds secrets (SPEC §7)."""
    parts = [p for p in path.replace("\\", "/").lower().split("/") if p not in ("", ".")]
    if not parts:
        return False
    name = parts[-1]
    if name not in _NOT_CREDENTIALS and any(
        fnmatch.fnmatchcase(name, pat) for pat in _CREDENTIAL_NAMES
    ):
        return True
    # `.ssh/*` covers files at any depth below the directory, not just directly in it.
    for directory, pattern in _CREDENTIAL_PAIRS:
        dirs = directory.split("/")
        for i in range(len(parts) - len(dirs)):
            if parts[i : i + len(dirs)] == dirs and (
                pattern == "*" or fnmatch.fnmatchcase(parts[i + len(dirs)], pattern)
            ):
                return True
    return False


def resolve_in_workspace(workspace: Path, path: str, *, tool: str) -> Path:
    """Resolve a model-given path inside ``workspace``, following symlinks.

    Refuses absolute and ``~`` paths, ``..`` escapes and symlinks that resolve
    outside the workspace. The returned path has no symlinks left in it; a
    symlink swapped in after this check is the caller's to guard against
    (the built-in readers open with ``O_NOFOLLOW``).
    """
    if "\x00" in path:
        raise ToolRefused(tool, "the path contains a NUL byte")
    text = path or "."
    if os.path.isabs(text) or text.startswith("~"):
        raise ToolRefused(tool, f"{_show(path)} is not relative to the workspace")
    if os.path.normpath(text).split(os.sep)[0] == os.pardir:
        raise ToolRefused(tool, f"{_show(path)} is outside the workspace")
    root = _real_dir(str(workspace))
    resolved = Path(_realpath_under(root, text))
    if not resolved.is_relative_to(root):
        raise ToolRefused(tool, f"{_show(path)} resolves outside the workspace (symlink)")
    return resolved


@functools.lru_cache(maxsize=4096)
def _real_dir(workspace: str) -> str:
    # A session's workspace is made by the runtime and does not move; resolving
    # it once per process saves a dozen lstat calls on every file tool call.
    return os.path.realpath(workspace)


def _realpath_under(root: str, relative: str) -> str:
    """``realpath(root/relative)`` for a ``root`` that is already real.

    When no component of ``relative`` is a symlink or ``..``, the answer is the
    lexical join, found with one lstat per component instead of one per
    component of the whole path; otherwise fall back to ``os.path.realpath``.
    """
    current = root
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return os.path.realpath(os.path.join(root, relative))
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except OSError:
            # Missing from here on: nothing below can be a symlink yet.
            return os.path.normpath(os.path.join(root, relative))
        if stat.S_ISLNK(mode):
            return os.path.realpath(os.path.join(root, relative))
    return current


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _relative(workspace: Path, resolved: Path) -> str:
    return resolved.relative_to(workspace.resolve()).as_posix()


# --- built-in tools --------------------------------------------------------------------


@tool(risk="read", idempotent=True)
def read_file(ctx: ToolContext, path: str) -> str:
    """Read a UTF-8 text file from the workspace (at most 1 MiB is returned).

    Args:
        path: Path relative to the workspace root.
    """
    target = resolve_in_workspace(ctx.workspace, path, tool="read_file")
    if is_credential_path(path) or is_credential_path(_relative(ctx.workspace, target)):
        raise ToolRefused("read_file", f"{_show(path)} is a credential file")
    try:
        # O_NOFOLLOW: a symlink swapped in after the check is not followed; O_NONBLOCK: a
        # FIFO cannot hang the call (it is refused below as not a regular file).
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ToolError(f"read_file: no such file: {_show(path)}") from None
    except OSError as err:
        raise ToolError(f"read_file: cannot open {_show(path)}: {err.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ToolError(f"read_file: {_show(path)} is a directory; use list_dir")
        raise ToolError(f"read_file: {_show(path)} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        size = st.st_size
        data = f.read(MAX_READ_BYTES)
    if b"\x00" in data[:8192]:
        raise ToolError(f"read_file: {_show(path)} is a binary file ({size} bytes)")
    text = data.decode("utf-8", errors="replace")
    if size > len(data):
        text += f"\n[file truncated: {size} bytes, showing the first {len(data)}]"
    return text


@tool(risk="write", idempotent=True)
def write_file(ctx: ToolContext, path: str, content: str) -> str:
    """Create or replace a text file in the workspace (parent directories are created).

    Args:
        path: Path relative to the workspace root.
        content: The complete new content of the file.
    """
    target = resolve_in_workspace(ctx.workspace, path, tool="write_file")
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(f"write_file: content is {len(data)} bytes; the limit is {MAX_WRITE_BYTES}")
    if target.is_dir():
        raise ToolError(f"write_file: {_show(path)} is a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ToolError(f"write_file: cannot create the parent of {_show(path)}: {err}") from None
    owner = _workspace_owner(ctx.workspace, target.parent)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    # Temp file + rename: a reader (or a crash) sees the old content or the new, never half.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return f"wrote {len(data)} bytes to {_relative(ctx.workspace, target)}"


def _workspace_owner(workspace: Path, created: Path) -> tuple[int, int] | None:
    """Under root, the (uid, gid) a workspace handed to its session's sandbox uid has.

    What fleetlog writes there is given to that uid too, so that the session's own
    commands can change it (``echo >> notes.md``); ``created`` and the directories
    above it up to the workspace, if root made them, are given over now.
    """
    if os.geteuid() != 0:
        return None
    st = os.stat(workspace)
    if st.st_uid == 0:
        return None
    for directory in (created, *created.parents):
        if directory == workspace or workspace not in directory.parents:
            break
        if directory.stat().st_uid == 0:
            os.chown(directory, st.st_uid, st.st_gid)
    return st.st_uid, st.st_gid


@tool(risk="read", idempotent=True)
def list_dir(ctx: ToolContext, path: str = ".") -> str:
    """List a workspace directory: one entry per line, sorted, directories end with '/'.

    Args:
        path: Directory relative to the workspace root (default: the root).
    """
    target = resolve_in_workspace(ctx.workspace, path, tool="list_dir")
    try:
        with os.scandir(target) as it:
            entries = sorted(e.name + ("/" if e.is_dir() else "") for e in it)
    except FileNotFoundError:
        raise ToolError(f"list_dir: no such directory: {_show(path)}") from None
    except NotADirectoryError:
        raise ToolError(f"list_dir: {_show(path)} is not a directory") from None
    except OSError as err:
        raise ToolError(f"list_dir: cannot list {_show(path)}: {err.strerror}") from None
    if not entries:
        return "(empty directory)"
    lines = entries[:MAX_LIST_ENTRIES]
    if len(entries) > MAX_LIST_ENTRIES:
        lines.append(f"[{len(entries) - MAX_LIST_ENTRIES} more entries not shown]")
    return "\n".join(lines)


# Head and tail of the output, with room for the exit code line and the omission note.
_SHELL_OUTPUT_BYTES = MAX_OUTPUT_CHARS - 1000


@tool(risk="exec")
async def run_shell(ctx: ToolContext, command: str, timeout_s: float = 30) -> ToolOutcome:
    """Run a shell command (/bin/sh) in the workspace; returns the exit code and output.

    Args:
        command: The command line; it is vetted before it runs.
        timeout_s: Seconds before the command and everything it started are killed.
    """
    # The vetting runs before this tool; checking again here means a denied command
    # cannot run even if a caller skipped it. Imported here: safety imports this module.
    from fleetlog.actors.safety import check_shell  # noqa: PLC0415

    verdict = check_shell(command, ctx.workspace, sandboxed=ctx.sandbox is not None)
    if verdict.verdict == "deny":
        raise ToolRefused("run_shell", verdict.reason)
    if not 0 < timeout_s <= 3600:
        raise ToolInputError("run_shell", "timeout_s must be in (0, 3600]")
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(ctx.workspace),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    argv = ["/bin/sh", "-c", command]
    if ctx.sandbox is None:
        return await _shell(argv, ctx, env, timeout_s)
    # First use under root may hand the workspace to the session's uid: a tree walk.
    uid = await asyncio.to_thread(ctx.sandbox.uid_for, ctx.workspace, ctx.session_id)
    if not ctx.network:
        boxed = ctx.sandbox.argv(argv, workspace=ctx.workspace, uid=uid, env=env)
        return await _shell(boxed, ctx, env, timeout_s)
    # The agent may reach some hosts: through this call's proxy, and nowhere else.
    async with EgressProxy(ctx.network) as proxy:
        pythonpath, read_only = python_paths()
        relay = [sys.executable, "-m", "fleetlog.actors._egress_relay", str(proxy.socket), "--"]
        boxed = ctx.sandbox.argv(
            [*relay, *argv],
            workspace=ctx.workspace,
            uid=uid,
            env={**env, "PYTHONPATH": pythonpath},
            read_only=[*read_only, proxy.dir],
        )
        return await _shell(boxed, ctx, env, timeout_s)


async def _shell(
    argv: list[str], ctx: ToolContext, env: dict[str, str], timeout_s: float
) -> ToolOutcome:
    """Run ``argv`` (a shell, confined or not) and report its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ctx.workspace,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a kill reaches its children too
    )
    assert proc.stdout is not None
    capture = _Capture(_SHELL_OUTPUT_BYTES)
    reader = asyncio.create_task(capture.drain(proc.stdout))
    timed_out = False
    try:
        await asyncio.wait_for(_exited(proc), timeout_s)
    except TimeoutError:
        timed_out = True
    except BaseException:
        capture.whole.close()  # cancelled: no text() to close it
        raise
    finally:
        # Runs on success, timeout and cancellation alike: background children die with
        # the command instead of holding the output pipe open and outliving the call.
        _kill_group(proc.pid)
        await _exited(proc)
        # A child that left the process group may still hold the pipe: stop waiting for it.
        await asyncio.wait({reader}, timeout=2.0)
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    if timed_out:
        return ToolOutcome(
            output=f"timed out after {timeout_s:g}s; the command was killed\n"
            + await capture.text(ctx.keep_output),
            is_error=True,
        )
    return ToolOutcome(
        output=f"exit code {proc.returncode}\n" + await capture.text(ctx.keep_output)
    )


async def _exited(proc: asyncio.subprocess.Process) -> None:
    # Not proc.wait(): on Python 3.11 it also waits for the output pipe to close, which a
    # background child may hold open indefinitely. The return code is set at exit.
    # Polled from 1 ms up to 10 ms: most commands end within milliseconds, and a fixed
    # 10 ms poll was most of a quick command's latency.
    delay = 0.001
    while proc.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.01)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


#: The most of one command's output kept whole (as a blob) when the model sees only part.
MAX_KEPT_OUTPUT_BYTES = 64 << 20


class _Capture:
    """Collects a stream's head and tail, draining it all so the child never blocks.

    Everything up to ``MAX_KEPT_OUTPUT_BYTES`` is also spooled aside, so that when
    the model sees only the head and tail the whole output can be kept once.
    """

    def __init__(self, cap: int) -> None:
        self.half = cap // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        # Closed by text(), or by run_shell when it is cancelled before it gets there.
        self.whole: typing.IO[bytes] = tempfile.SpooledTemporaryFile(max_size=cap * 2)  # noqa: SIM115

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            if self.total < MAX_KEPT_OUTPUT_BYTES:
                self.whole.write(chunk[: MAX_KEPT_OUTPUT_BYTES - self.total])
            self.total += len(chunk)
            room = self.half - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            self.tail += chunk
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    async def text(self, keep: Callable[[bytes], Awaitable[str]] | None = None) -> str:
        """Head and tail; ``keep`` stores the whole output when part of it is left out."""
        text = self.head.decode("utf-8", errors="replace")
        omitted = self.total - len(self.head) - len(self.tail)
        if omitted > 0:
            note = f"{omitted} bytes of output omitted"
            if keep is not None:
                self.whole.seek(0)
                data = self.whole.read()
                kept = await keep(data)
                whole = "the whole output" if len(data) == self.total else "its first bytes"
                note += f"; {whole} ({len(data)} bytes) is kept as {kept}"
            text += f"\n[... {note} ...]\n"
        self.whole.close()
        return text + self.tail.decode("utf-8", errors="replace")


_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
_EMAIL = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")


@tool(risk="external")
def send_email(ctx: ToolContext, to: str, subject: str, body: str) -> str:
    """Send an email (delivered to the fleet outbox). Irreversible: needs approval by default.

    Args:
        to: Recipient address.
        subject: Subject line.
        body: Plain-text body.
    """
    if any(c in to + subject for c in "\r\n"):
        raise ToolInputError("send_email", "to and subject must be one line each")
    addresses = [addr for _, addr in email.utils.getaddresses([to])]
    if not addresses or any(not _EMAIL.fullmatch(addr) for addr in addresses):
        raise ToolInputError("send_email", f"to: {_show(to)} is not a list of email addresses")
    name = f"{_SAFE_ID.sub('_', ctx.session_id)}-{_SAFE_ID.sub('_', ctx.call_id)}.eml"

    msg = EmailMessage(policy=email.policy.default)
    msg["From"] = "fleetlog@localhost"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = f"<{name[:-4]}@fleetlog>"
    msg["X-Fleetlog-Session"] = ctx.session_id
    msg["X-Fleetlog-Call"] = ctx.call_id
    msg.set_content(body)

    # Exactly once, even across crashes, concurrent retries and (with a shared outbox)
    # nodes: the outbox decides atomically which attempt delivers (outbox.py).
    outbox = ctx.outbox if ctx.outbox is not None else FileOutbox(ctx.home)
    if not outbox.deliver(ctx.session_id, ctx.call_id, msg.as_bytes(), name):
        return f"already delivered: {name}"
    return f"delivered to {', '.join(addresses)} ({name})"


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: typing.IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ToolRefused("http_get", f"redirect to a non-HTTP URL {_show(newurl)}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


@tool(risk="network", idempotent=True)
def http_get(ctx: ToolContext, url: str) -> str:
    """Fetch a URL with HTTP GET; returns the status, content type and up to 100 KB of body.

    Args:
        url: An http:// or https:// URL.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ToolRefused("http_get", f"{_show(url)} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "fleetlog-http_get/1"})
    try:
        with _OPENER.open(request, timeout=HTTP_TIMEOUT_S) as response:
            return _http_answer(response.status, response.headers, response)
    except urllib.error.HTTPError as err:
        with err:  # a 4xx/5xx is still an answer the model can read
            return _http_answer(err.code, err.headers, err)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ToolError(f"http_get: {_show(url)}: {reason}") from None


def _http_answer(status: int, headers: Message, body_file: typing.IO[bytes]) -> str:
    charset = headers.get_content_charset() or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    body = body_file.read(HTTP_MAX_BYTES + 1)
    text = body[:HTTP_MAX_BYTES].decode(charset, errors="replace")
    if len(body) > HTTP_MAX_BYTES:
        text += f"\n[body truncated at {HTTP_MAX_BYTES} bytes]"
    return f"HTTP {status}\ncontent-type: {headers.get('Content-Type', '')}\n\n{text}"


@tool(risk="read", idempotent=True)
def read_output(ctx: ToolContext, call_id: str, offset: int = 0) -> str:
    """Read an earlier tool call's whole output (kept when shown cut or cleared), page by page.

    Args:
        call_id: The id of the earlier tool call (its tool_use id).
        offset: The character to start from (0 for the beginning).
    """
    text = ctx.recorded_output(call_id) if ctx.recorded_output is not None else None
    if text is None:
        raise ToolError(
            f"read_output: no tool call {_show(call_id)} with an output in this session"
        )
    try:
        return page(text, call_id, offset, ctx.page_chars)
    except ValueError as err:
        raise ToolError(f"read_output: {err}") from None


BUILTIN_TOOLS: dict[str, ToolSpec] = {}
for _fn in (read_file, write_file, list_dir, run_shell, send_email, http_get, read_output):
    _spec = tool_spec(_fn)
    assert _spec is not None
    BUILTIN_TOOLS[_spec.name] = _spec
del _fn, _spec
