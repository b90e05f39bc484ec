"""Configuration (``fleetlog.toml``, SPEC §6) and tasks files (JSON Lines, SPEC §5).

Both are parsed into msgspec Structs that refuse unknown keys. Every problem is
reported as one line that names the file, the section or line, and the key, so a
user can fix it without reading a traceback: a :class:`ConfigError` for the
config, a :class:`TaskFileError` for a tasks file. Only the first problem is
reported; fixing it and running again shows the next.

Type and range checks come from the Structs' annotations (``msgspec.Meta``);
the messages are written from the same annotations, so the two cannot drift.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from fleetlog.actors.egress import check_entry
from fleetlog.events.errors import ConfigError, TaskFileError
from fleetlog.events.schema import Limits

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_TOOLS",
    "EXAMPLE_TOML",
    "AgentConfig",
    "BudgetConfig",
    "Config",
    "ContextConfig",
    "ToolsConfig",
    "FleetConfig",
    "LimitOverrides",
    "ModelConfig",
    "PolicyConfig",
    "Task",
    "derived_task_id",
    "is_safe_id",
    "load_config",
    "load_tasks",
    "new_task_id",
    "parse_config",
    "parse_policy_rule",
    "parse_task",
    "session_id_for",
]

#: Looked for in the working directory when no ``--config`` is given.
CONFIG_FILENAME = "fleetlog.toml"

#: The model used when neither the agent nor ``[fleet]`` names one and an API key is set.
DEFAULT_CLAUDE_MODEL = "claude-sonnet-4-5"

#: The offline model (no API key, no network).
SCRIPTED_MODEL = "scripted"

DEFAULT_TOOLS: tuple[str, ...] = ("read_file", "write_file", "list_dir", "run_shell", "send_email")

_T = TypeVar("_T")

# Constrained scalar types. The messages users see are derived from these.
PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Fraction = Annotated[float, Meta(gt=0, le=1)]

# The Messages API's rule for tool names.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_POLICY_RULE = re.compile(r"(?P<tool>[A-Za-z0-9_-]{1,64})(?:\((?P<glob>.+)\))?", re.DOTALL)
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BARE_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+")


# --- configuration -----------------------------------------------------------------------


class FleetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[fleet]``: how many hosts, which log, the default model, extra tools."""

    hosts: PositiveInt = 2
    log: str = "file"
    model: str | None = None
    tools_module: str | None = None
    #: Where session workspaces live (default HOME/workspaces); a shared filesystem for a
    #: fleet on several nodes, or a session moved to another node finds its files gone.
    workspaces: str | None = None
    #: Directories under which a task may name an absolute ``workspace`` (a user's own
    #: checkout, say); symlinks are resolved before the check. Empty: relative only.
    workspace_roots: list[str] = []


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[models.<id>]``: what token and cost accounting need to know about a model."""

    context_window: PositiveInt = 200_000
    input_usd_per_mtok: NonNegativeFloat = 3.0
    output_usd_per_mtok: NonNegativeFloat = 15.0


class ContextConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[context]``: when to compact, to what, and how many recent turns survive verbatim."""

    #: A request over this fraction of the model's context_window is compacted first.
    compact_at: Fraction = 0.8
    #: What a compaction aims for (fraction of the window); below compact_at.
    compact_to: Fraction = 0.5
    #: The last turns (a model reply and its tool results) never compacted.
    keep_recent_turns: PositiveInt = 4
    #: A tool result over this fraction of the window is cut to head and tail for the
    #: model; the whole output is kept and read_output pages through it.
    max_tool_result_share: Fraction = 0.1
    #: Compactions failing this many times in a row end the session CONTEXT_EXHAUSTED.
    max_compaction_failures: PositiveInt = 3
    #: The most output tokens a compaction summary may take (at most 1/8 of the window).
    summary_max_tokens: PositiveInt = 2048


class BudgetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[budgets.<tenant>]``: fleet-wide caps across all of a tenant's sessions."""

    max_cost_usd: PositiveFloat | None = None
    max_tokens: PositiveInt | None = None


class LimitOverrides(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Any subset of :class:`Limits`; ``None`` inherits. Used by ``[limits]``, agents and tasks."""

    max_steps: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    max_cost_usd: PositiveFloat | None = None
    step_timeout_s: PositiveFloat | None = None
    total_timeout_s: PositiveFloat | None = None
    max_identical_calls: PositiveInt | None = None

    def set_fields(self) -> dict[str, float | int]:
        """The limits this override sets, by name."""
        out: dict[str, float | int] = {}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def apply(self, base: Limits) -> Limits:
        """``base`` with the limits set here replaced."""
        fields = self.set_fields()
        return msgspec.structs.replace(base, **fields) if fields else base


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[agents.<name>]``: an agent type's system prompt, tools, model and limit overrides."""

    system: str = ""
    tools: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_TOOLS))
    model: str | None = None
    limits: LimitOverrides = LimitOverrides()
    #: Hosts its sandboxed tools may reach through the egress proxy (``actors/egress.py``):
    #: ``host`` (ports 80, 443), ``host:port`` or ``*.domain[:port]``. Empty: no network.
    network: list[str] = []


class ToolsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[tools]``: ``sandbox = "on"`` (the default) confines run_shell and every exec tool
    in bubblewrap; ``"off"`` runs them unconfined, and only when set explicitly."""

    sandbox: Literal["on", "off"] = "on"


class PolicyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[policy]``: ``tool`` or ``tool(glob)`` rules, evaluated deny -> ask -> allow."""

    deny: list[str] = []
    ask: list[str] = []
    allow: list[str] = []


class ConsoleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[console]``: ``fleetlog serve``, the web console."""

    #: The address it listens on. Anything but a loopback address needs a token.
    host: str = "127.0.0.1"
    #: Its TCP port (0: any free port).
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8700
    #: The bearer token every API request must carry. ``--token`` and
    #: ``FLEETLOG_CONSOLE_TOKEN`` win over it; keep it out of files others can read.
    token: str | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The whole configuration. ``Config()`` is what runs when there is no file.

    ``policy`` is ``None`` when the file has no ``[policy]`` section, so the
    safety layer can tell "no rules configured" (use its defaults) from "these
    rules, and nothing else".
    """

    fleet: FleetConfig = FleetConfig()
    models: dict[str, ModelConfig] = {}
    context: ContextConfig = ContextConfig()
    limits: Limits = Limits()
    budgets: dict[str, BudgetConfig] = {}
    agents: dict[str, AgentConfig] = {}
    policy: PolicyConfig | None = None
    tools: ToolsConfig = ToolsConfig()
    console: ConsoleConfig = ConsoleConfig()
    #: The file this came from (``None``: built-in defaults).
    source: str | None = None

    def model_for(self, agent: str) -> str:
        """The agent's model, else ``[fleet] model``, else ``scripted`` without an API key."""
        configured = self.agent(agent).model or self.fleet.model
        if configured:
            return configured
        # An empty key is treated as unset: the SDK could not authenticate with it anyway.
        if not os.environ.get("ANTHROPIC_API_KEY"):
            return SCRIPTED_MODEL
        return DEFAULT_CLAUDE_MODEL

    def model_config(self, model: str) -> ModelConfig:
        """``[models.<model>]``, else defaults (so even the scripted model's costs look real)."""
        return self.models.get(model) or ModelConfig()

    def agent(self, name: str) -> AgentConfig:
        """``[agents.<name>]``, else ``[agents.default]``, else the built-in default agent.

        An agent name no section configures is not an error: tasks may name any agent type
        (it still groups their metrics), and it runs as the default agent.
        """
        found = self.agents.get(name)
        if found is not None:
            return found
        return self.agents.get("default") or AgentConfig()

    def undefined_agent(self, name: str) -> str | None:
        """Why a task may not name agent ``name`` here (one line), or None if it may.

        Once the file defines any ``[agents.*]``, a name it does not define is a typo
        far more often than a wish for the default agent (every built-in tool, no
        system prompt): refused. ``default`` itself is always allowed.
        """
        if not self.agents or name in self.agents or name == "default":
            return None
        where = self.source or "the config"
        return (
            f"agent `{name}` is not defined in {where}{_did_you_mean(name, list(self.agents))}; "
            f"it defines {', '.join(sorted(self.agents))}"
        )

    def with_model(self, model: str) -> Config:
        """This config with every agent on ``model`` (``fleetlog run --model``)."""
        agents = {name: msgspec.structs.replace(a, model=None) for name, a in self.agents.items()}
        fleet = msgspec.structs.replace(self.fleet, model=model)
        return msgspec.structs.replace(self, fleet=fleet, agents=agents)

    def limits_for(self, agent: str, task_limits: Mapping[str, float | int] | None) -> Limits:
        """``[limits]`` <- the agent's ``limits`` <- the task's ``limits`` (later wins).

        Task limits are normally validated already by :func:`parse_task`; an unknown or
        invalid one still raises :class:`TaskFileError` naming the key.
        """
        limits = self.agent(agent).limits.apply(self.limits)
        if task_limits:
            limits = _task_limit_overrides(task_limits, "<task>", 0).apply(limits)
        return limits


def _quote_key(key: str) -> str:
    return key if _BARE_TOML_KEY.fullmatch(key) else json.dumps(key)


class _Rejected(Exception):
    """Internal: a value failed validation.

    ``where`` is the dotted key path inside the value ("" for the value itself).
    For an unknown or missing key, ``key`` names it and ``hint`` may suggest a fix;
    otherwise ``detail`` says what was expected ("must be an integer >= 1, got 0").
    """

    def __init__(self, where: str, detail: str, *, key: str = "", hint: str = "") -> None:
        super().__init__(detail)
        self.where = where
        self.detail = detail
        self.key = key
        self.hint = hint

    def in_(self, label: str) -> str:
        """The problem, placed in ``label`` (a section like ``[fleet]``, or "")."""
        if self.key:
            inside = " ".join(p for p in (label, self.where) if p)
            return f"{self.detail} in {inside}{self.hint}" if inside else self.detail + self.hint
        return " ".join(p for p in (label, self.where, self.detail) if p)


def load_config(path: str | Path | None, *, cwd: Path | None = None) -> Config:
    """Load ``path``; with ``None``, ``./fleetlog.toml`` if it exists, else the defaults.

    A relative ``path`` is taken relative to ``cwd`` (default: the working directory).
    Raises :class:`ConfigError` (one line naming the file and the key) on any problem.
    """
    base = cwd if cwd is not None else Path.cwd()
    if path is None:
        candidate = base / CONFIG_FILENAME
        if not candidate.is_file():
            return Config()
        shown, file = CONFIG_FILENAME, candidate
    else:
        shown = str(path)
        file = base / path  # an absolute path replaces base
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(shown, "no such file") from None
    except OSError as e:
        raise ConfigError(shown, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(shown, f"not UTF-8 text (byte {e.start})") from None
    return parse_config(text, source=shown)


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Parse TOML text into a :class:`Config`; ``source`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, f"invalid TOML: {e}") from None
    return _build_config(doc, source)


_SECTIONS = (
    "fleet",
    "models",
    "context",
    "limits",
    "budgets",
    "agents",
    "policy",
    "tools",
    "console",
)


def _build_config(doc: dict[str, Any], source: str) -> Config:
    def fail(detail: str) -> ConfigError:
        return ConfigError(source, detail)

    for key, value in doc.items():
        if key not in _SECTIONS:
            what = "section" if isinstance(value, dict) else "top-level key"
            raise fail(f"unknown {what} `{key}`{_did_you_mean(key, _SECTIONS)}")

    def table(value: Any, type_: type[_T], label: str) -> _T:
        if not isinstance(value, dict):
            raise fail(f"{label} must be a table, got {_show(value)}")
        try:
            return _convert(value, type_, table_word="a table")
        except _Rejected as r:
            raise fail(r.in_(label)) from None

    def tables(name: str, type_: type[_T]) -> dict[str, _T]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise fail(f"[{name}] must be a table, got {_show(value)}")
        return {key: table(sub, type_, f"[{name}.{_quote_key(key)}]") for key, sub in value.items()}

    fleet = table(doc.get("fleet", {}), FleetConfig, "[fleet]")
    if not (fleet.log == "file" or fleet.log.startswith(("postgresql://", "postgres://"))):
        # Never echo a password from a mistyped URL into a terminal or a CI log.
        shown = re.sub(r"://[^/@]*@", "://***@", fleet.log)
        raise fail(f'[fleet] log must be "file" or a postgresql:// URL, got {_show(shown)}')
    if fleet.model is not None and not fleet.model.strip():
        raise fail("[fleet] model must not be empty")
    if fleet.workspaces is not None and not Path(fleet.workspaces).expanduser().is_absolute():
        raise fail(f"[fleet] workspaces must be an absolute path, got {_show(fleet.workspaces)}")
    for i, root in enumerate(fleet.workspace_roots):
        if not root.strip() or not Path(root).expanduser().is_absolute():
            raise fail(f"[fleet] workspace_roots[{i}] must be an absolute path, got {_show(root)}")
    if fleet.tools_module is not None and not _MODULE_NAME.fullmatch(fleet.tools_module):
        raise fail(
            f"[fleet] tools_module must be a dotted module name, got {_show(fleet.tools_module)}"
        )

    models = tables("models", ModelConfig)
    context = table(doc.get("context", {}), ContextConfig, "[context]")
    if context.compact_to >= context.compact_at:
        raise fail(
            f"[context] compact_to ({context.compact_to:g}) must be below "
            f"compact_at ({context.compact_at:g})"
        )
    limits = table(doc.get("limits", {}), LimitOverrides, "[limits]").apply(Limits())
    budgets = tables("budgets", BudgetConfig)

    agents = tables("agents", AgentConfig)
    for name, agent in agents.items():
        label = f"[agents.{_quote_key(name)}]"
        if agent.model is not None and not agent.model.strip():
            raise fail(f"{label} model must not be empty")
        seen: set[str] = set()
        for i, tool in enumerate(agent.tools):
            if not _TOOL_NAME.fullmatch(tool):
                raise fail(
                    f"{label} tools[{i}] must be a tool name ([A-Za-z0-9_-], at most 64), "
                    f"got {_show(tool)}"
                )
            if tool in seen:
                raise fail(f"{label} tools lists `{tool}` twice")
            seen.add(tool)
        for i, entry in enumerate(agent.network):
            problem = check_entry(entry)
            if problem:
                raise fail(f"{label} network[{i}] {problem}")

    policy: PolicyConfig | None = None
    if "policy" in doc:
        policy = table(doc["policy"], PolicyConfig, "[policy]")
        for verdict in ("deny", "ask", "allow"):
            for i, rule in enumerate(getattr(policy, verdict)):
                try:
                    parse_policy_rule(rule)
                except ValueError as e:
                    raise fail(f"[policy] {verdict}[{i}] {e}") from None

    tools = table(doc.get("tools", {}), ToolsConfig, "[tools]")
    console = table(doc.get("console", {}), ConsoleConfig, "[console]")
    if not console.host.strip():
        raise fail("[console] host must not be empty")
    if console.token is not None and not console.token.strip():
        raise fail("[console] token must not be empty (leave it out for none)")

    return Config(
        fleet=fleet,
        tools=tools,
        console=console,
        models=models,
        context=context,
        limits=limits,
        budgets=budgets,
        agents=agents,
        policy=policy,
        source=source,
    )


def parse_policy_rule(rule: str) -> tuple[str, str | None]:
    """Split a policy entry into ``(tool, glob)``: ``"run_shell(git push *)"`` ->
    ``("run_shell", "git push *")``, ``"send_email"`` -> ``("send_email", None)``.

    Raises ``ValueError`` (a message fit to follow the entry's name) when malformed.
    """
    m = _POLICY_RULE.fullmatch(rule)
    if m is None:
        raise ValueError(f"must be `tool` or `tool(glob)`, got {_show(rule)}")
    return m["tool"], m["glob"]


# --- tasks ---------------------------------------------------------------------------------


class Task(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of a tasks file (SPEC §5). Only ``prompt`` is required."""

    prompt: str
    id: str | None = None
    agent: str = "default"
    tenant: str = "default"
    limits: dict[str, float | int] = {}
    workspace: str | None = None


def is_safe_id(value: str) -> bool:
    """Whether ``value`` is usable as-is in ids, file names and URLs: ``[A-Za-z0-9._:-]{1,128}``."""
    return _SAFE_ID.fullmatch(value) is not None


def parse_task(
    obj: dict[str, object],
    *,
    source: str = "<task>",
    line: int = 0,
    config: Config | None = None,
) -> Task:
    """Validate one task (a decoded JSON object); raises :class:`TaskFileError` naming the key.

    With ``config``, also what only the config can tell: the agent must be one it
    defines (when it defines any), and an absolute ``workspace`` must lie under one of
    its ``[fleet] workspace_roots`` (the task returned carries it resolved, so the
    session works in the directory that was checked).
    """

    def fail(detail: str) -> TaskFileError:
        return TaskFileError(source, line, detail)

    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {_json_kind(obj)}")
    # Limits first and on their own: inside Task they are a dict, whose errors
    # msgspec reports without the key's name.
    raw_limits = obj.get("limits")
    if isinstance(raw_limits, dict):
        _task_limit_overrides(raw_limits, source, line)
    try:
        task = _convert(obj, Task, table_word="an object")
    except _Rejected as r:
        if r.key:
            raise fail(r.detail + r.hint) from None
        raise fail(f"`{r.where}` {r.detail}" if r.where else f"task {r.detail}") from None
    if not task.prompt.strip():
        raise fail("`prompt` must not be empty")
    if task.id is not None and not is_safe_id(task.id):
        raise fail(f"`id` must be 1-128 characters from [A-Za-z0-9._:-], got {_show(task.id)}")
    for key in ("agent", "tenant"):
        value: str = getattr(task, key)
        if not value.strip():
            raise fail(f"`{key}` must not be empty")
    if config is not None:
        problem = config.undefined_agent(task.agent)
        if problem:
            raise fail(problem)
    if task.workspace is not None:
        roots = config.fleet.workspace_roots if config is not None else []
        if PurePosixPath(task.workspace).is_absolute():
            resolved, problem = _absolute_workspace(task.workspace, roots)
            if problem:
                raise fail(problem)
            return msgspec.structs.replace(task, workspace=resolved)
        problem = _workspace_problem(task.workspace)
        if problem:
            raise fail(f"`workspace` {problem}, got {_show(task.workspace)}")
    return task


def _task_limit_overrides(limits: Mapping[str, object], source: str, line: int) -> LimitOverrides:
    try:
        return _convert(dict(limits), LimitOverrides, table_word="an object")
    except _Rejected as r:
        if r.key:
            detail = f"unknown limit `{r.key}` in `limits`{r.hint}"
        else:
            detail = f"`limits.{r.where}` {r.detail}"
        raise TaskFileError(source, line, detail) from None


def _workspace_problem(workspace: str) -> str | None:
    if not workspace or "\x00" in workspace:
        return "must be a non-empty relative path"
    if (
        PurePosixPath(workspace).is_absolute()
        or PureWindowsPath(workspace).is_absolute()
        or PureWindowsPath(workspace).drive
        or workspace.startswith(("/", "\\", "~"))
    ):
        return "must be a relative path"
    if ".." in re.split(r"[/\\]", workspace):
        return "must not contain `..`"
    return None


def _absolute_workspace(workspace: str, roots: list[str]) -> tuple[str, str]:
    """``(resolved path, "")`` if ``workspace`` lies under one of ``roots``, else ``("", why)``.

    Both sides are resolved (``..`` and symlinks, as far as they exist), so neither
    ``/srv/repos/../etc`` nor a link under a root that points elsewhere gets out.
    """
    if "\x00" in workspace:
        return "", "`workspace` must not contain a NUL character"
    if not roots:
        return "", (
            f"`workspace` {_show(workspace, 300)} is absolute: allowed only under [fleet] "
            "workspace_roots, which the config does not set (or give a path relative "
            "to the fleet's workspaces directory)"
        )
    resolved = Path(workspace).resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).expanduser().resolve()):
            return str(resolved), ""
    shown = ", ".join(_show(r, 300) for r in roots)
    via = f" (it resolves to {_show(str(resolved), 300)})" if str(resolved) != workspace else ""
    return "", (
        f"`workspace` {_show(workspace, 300)} is not under [fleet] workspace_roots ({shown}){via}"
    )


def load_tasks(path: str | Path, config: Config | None = None) -> list[Task]:
    """Read a JSON Lines tasks file; blank lines and ``#`` comments are skipped.

    Raises :class:`TaskFileError` for the first bad line (1-based line number), for
    an id used twice in the file, or with line 0 when the file cannot be read. With
    ``config``, each task is also checked against it (see :func:`parse_task`).
    """
    shown = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TaskFileError(shown, 0, "no such file") from None
    except OSError as e:
        raise TaskFileError(shown, 0, f"cannot read: {e.strerror or e}") from None
    data = data.removeprefix(b"\xef\xbb\xbf")

    tasks: list[Task] = []
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise TaskFileError(shown, number, f"not UTF-8 text (byte {e.start})") from None
        if not text or text.startswith("#"):
            continue
        try:
            obj = msgspec.json.decode(text)
        except msgspec.DecodeError as e:
            raise TaskFileError(shown, number, f"invalid JSON: {e}") from None
        task = parse_task(obj, source=shown, line=number, config=config)
        if task.id is not None:
            first = first_line_of.setdefault(task.id, number)
            if first != number:
                raise TaskFileError(
                    shown, number, f"duplicate id {_show(task.id)} (first on line {first})"
                )
        tasks.append(task)
    return tasks


def session_id_for(task_id: str) -> str:
    """The session a task id maps to, forever: ``s-<task id>`` for a safe id.

    Any other string maps to ``sx-`` and its SHA-256, which cannot collide with a
    ``s-`` id and is still safe in paths.
    """
    if is_safe_id(task_id):
        return f"s-{task_id}"
    return "sx-" + hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()


_id_lock = threading.Lock()
_last_id = 0


def new_task_id() -> str:
    """A fresh task id: ``t-`` + 24 hex digits (48-bit milliseconds, 48 random bits).

    Ids sort by creation time; within one process they strictly increase even
    when made in the same millisecond.
    """
    global _last_id
    value = (time.time_ns() // 1_000_000 << 48) | secrets.randbits(48)
    with _id_lock:
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    return f"t-{value:024x}"


def derived_task_id(task: Task, ordinal: int) -> str:
    """A deterministic id for a task that has none: the same file yields the same ids.

    ``ordinal`` tells apart identical tasks in one file (pass the task's index).
    ``fleetlog run`` uses this so that re-running a file without ids resumes its
    sessions instead of starting them again.
    """
    body = msgspec.json.encode(
        [task.prompt, task.agent, task.tenant, sorted(task.limits.items()), task.workspace]
    )
    digest = hashlib.sha256(body + b"\x00" + str(ordinal).encode()).hexdigest()
    return f"t-{digest[:24]}"


# --- validation messages -------------------------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _convert(data: dict[str, Any], type_: type[_T], *, table_word: str) -> _T:
    """``msgspec.convert`` with its error rewritten as ``_Rejected(where, detail)``."""
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as e:
        raise _rejected(e, data, type_, table_word) from None


def _rejected(
    error: msgspec.ValidationError, data: object, root: type[Any], table_word: str
) -> _Rejected:
    m = _AT.match(str(error))
    assert m is not None  # the pattern matches any string
    message = m["msg"]
    parts: list[str | int] = []
    for name, index in _PATH_PART.findall(m["path"] or ""):
        if name:
            parts.append(name)
        elif index.isdigit():
            parts.append(int(index))
        else:
            parts.append("...")
    where = _dotted(parts)

    # "Object contains unknown field `x`" / "Object missing required field `x`"
    field = re.fullmatch(r"Object (contains unknown|missing required) field `(.*)`", message)
    if field:
        kind, name = field.groups()
        if kind == "contains unknown":
            known = _field_names(_type_at(msgspec.inspect.type_info(root), parts))
            hint = _did_you_mean(name, known)
            return _Rejected(where, f"unknown key `{name}`", key=name, hint=hint)
        return _Rejected(where, f"missing required key `{name}`", key=name)

    expected = _type_at(msgspec.inspect.type_info(root), parts)
    phrase = _describe(expected, table_word) if expected is not None else None
    if phrase is None:
        return _Rejected(where, message[:1].lower() + message[1:])
    value = _value_at(data, parts)
    got = f", got {_show(value)}" if value is not _MISSING else ""
    return _Rejected(where, f"must be {phrase}{got}")


def _dotted(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "...":
            out += "[...]"
        else:
            out += f".{part}" if out else part
    return out


_MISSING: Any = object()


def _value_at(data: object, parts: list[str | int]) -> object:
    for part in parts:
        if isinstance(part, int) and isinstance(data, list) and part < len(data):
            data = data[part]
            continue
        if isinstance(part, str) and isinstance(data, dict) and part in data:
            data = data[part]
            continue
        return _MISSING
    return data


def _type_at(info: msgspec.inspect.Type, parts: list[str | int]) -> msgspec.inspect.Type | None:
    current: msgspec.inspect.Type | None = info
    for part in parts:
        current = _descend(current, part) if current is not None else None
    return current


def _descend(info: msgspec.inspect.Type, part: str | int) -> msgspec.inspect.Type | None:
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            found = _descend(member, part)
            if found is not None:
                return found
        return None
    if isinstance(info, msgspec.inspect.StructType) and isinstance(part, str):
        for f in info.fields:
            if f.encode_name == part:
                return f.type
        return None
    if isinstance(info, msgspec.inspect.ListType) and isinstance(part, int):
        return info.item_type
    if isinstance(info, msgspec.inspect.DictType) and part == "...":
        return info.value_type
    return None


def _field_names(info: msgspec.inspect.Type | None) -> tuple[str, ...]:
    if isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            names = _field_names(member)
            if names:
                return names
    if isinstance(info, msgspec.inspect.StructType):
        return tuple(f.encode_name for f in info.fields)
    return ()


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bounds(info: msgspec.inspect.IntType | msgspec.inspect.FloatType) -> str:
    parts = []
    for op, bound in ((">", info.gt), (">=", info.ge), ("<", info.lt), ("<=", info.le)):
        if bound is not None:
            parts.append(f"{op} {_number(bound)}")
    return (" " + " and ".join(parts)) if parts else ""


def _describe(info: msgspec.inspect.Type, table_word: str) -> str | None:
    """An English phrase for what a field accepts: ``an integer >= 1``, ``a list of strings``."""
    if isinstance(info, msgspec.inspect.UnionType):
        members = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        kinds = {type(t) for t in members}
        if kinds == {msgspec.inspect.IntType, msgspec.inspect.FloatType}:
            return "a number"
        if len(members) == 1:
            return _describe(members[0], table_word)
        return None
    if isinstance(info, msgspec.inspect.IntType):
        return "an integer" + _bounds(info)
    if isinstance(info, msgspec.inspect.FloatType):
        return "a number" + _bounds(info)
    if isinstance(info, msgspec.inspect.StrType):
        return "a string"
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(info, msgspec.inspect.ListType):
        item = _describe(info.item_type, table_word)
        if item == "a string":
            return "a list of strings"
        return "a list"
    if isinstance(info, msgspec.inspect.StructType | msgspec.inspect.DictType):
        return table_word
    return None


def _show(value: object, limit: int = 60) -> str:
    """A value as the user wrote it, shortened to keep the error on one line."""
    if value is True or value is False:
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: object) -> str:
    kinds: dict[type[Any], str] = {list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return kinds.get(type(value), type(value).__name__)


def _did_you_mean(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


# --- the annotated example of SPEC §6 --------------------------------------------------------

EXAMPLE_TOML = """\
[fleet]
hosts = 2                        # SessionHost actors
log = "file"                     # or "postgresql://…" for a shared log
model = "scripted"               # default when ANTHROPIC_API_KEY is unset; else a Claude model id

[models."claude-sonnet-4-5"]     # any model id; used for token/cost accounting
context_window = 200000
input_usd_per_mtok = 3.0
output_usd_per_mtok = 15.0

[context]
compact_at = 0.8                 # fraction of context_window that triggers compaction
compact_to = 0.5                 # what a compaction aims for
keep_recent_turns = 4            # the last turns are never compacted
max_tool_result_share = 0.1      # a bigger tool result is cut to head + tail (read_output pages it)
max_compaction_failures = 3      # in a row -> CONTEXT_EXHAUSTED
summary_max_tokens = 2048

[limits]                         # session defaults (seed values)
max_steps = 25
max_tokens = 50000
max_cost_usd = 1.0
step_timeout_s = 30
total_timeout_s = 300
max_identical_calls = 3          # same tool + same input this many times in a row -> LOOP_DETECTED

[budgets.acme]                   # fleet-wide, per tenant, across all its sessions
max_cost_usd = 50.0
max_tokens = 5000000

[agents.coder]
system = "You are a careful coding agent."
tools = ["read_file", "write_file", "list_dir", "run_shell", "send_email"]
model = "claude-sonnet-4-5"
limits = { max_steps = 40 }

[policy]                         # evaluated deny -> ask -> allow; first match wins
deny  = ["run_shell(rm -rf *)", "read_file(**/.env)"]
ask   = ["send_email", "run_shell(git push *)"]
allow = ["read_file", "list_dir", "write_file", "run_shell"]
"""
