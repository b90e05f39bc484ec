"""The ``fleetlog`` command line (SPEC §4).

Every error reaches the user as one line on stderr: exit 1 for a failure the
command reports, 2 for a usage error. Tracebacks are for bugs only, and even
those are reduced to one line unless ``FLEETLOG_DEBUG`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

from fleetlog.config import (
    Config,
    Task,
    derived_task_id,
    load_config,
    load_tasks,
    new_task_id,
    parse_task,
    session_id_for,
)
from fleetlog.events.errors import (
    ConcurrencyError,
    FleetlogError,
    LogLockedError,
    SessionNotFound,
    TaskFileError,
)
from fleetlog.events.filelog import FileLog
from fleetlog.events.log import EventLog
from fleetlog.events.partitions import open_readers, partition_dirs
from fleetlog.events.schema import (
    ContextCompacted,
    ReviewRequested,
)
from fleetlog.events.source import source_for
from fleetlog.events.state import SETTLED, SessionState, SessionStatus, call_hash, fold
from fleetlog.events.verify import VerifyReport, verify_events, verify_log

__all__ = ["main"]


class UsageError(FleetlogError):
    """A command was called wrongly (exit 2)."""


# --- shared helpers ------------------------------------------------------------------------


def _home(args: argparse.Namespace) -> Path:
    if getattr(args, "home", None):
        return Path(args.home)
    return Path(os.environ.get("FLEETLOG_HOME") or ".fleetlog")


def _home_origin(args: argparse.Namespace) -> str:
    """Where the home came from, for errors that name it."""
    if getattr(args, "home", None):
        return "from --home"
    if os.environ.get("FLEETLOG_HOME"):
        return "from $FLEETLOG_HOME"
    return "the default, ./.fleetlog here; give --home DIR or set FLEETLOG_HOME"


def _existing_home(args: argparse.Namespace) -> Path:
    """The fleet's home, which must exist when its log is there (a file log).

    A mistyped or relative home read from another directory is an error, not an
    empty fleet. With a shared (PostgreSQL) log nothing needs to be here.
    """
    home = _home(args).resolve()
    if _log_spec(args) == "file" and not home.is_dir():
        raise FleetlogError(f"no fleet home at {home} ({_home_origin(args)})")
    return home


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _json_lines(value: Any) -> str:
    """JSON; an array with one element per line, so that a big answer stays readable
    (and greppable) while still being one JSON array (SPEC §4)."""
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(json.dumps(v, default=str) for v in value) + "\n]"
    return json.dumps(value, default=str)


def _print_json(rows: Any) -> None:
    _out(_json_lines(rows))


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _log_spec(args: argparse.Namespace) -> str:
    """FLEETLOG_LOG, else the config's ``[fleet] log``."""
    from fleetlog.events.source import log_spec

    return log_spec(_config(args).fleet.log)


def _open_logs(args: argparse.Namespace) -> list[EventLog]:
    """The fleet's logs, to read (FileLog partitions read-only, or the PostgreSQL log)."""
    spec = _log_spec(args)
    if spec == "file":
        home = _existing_home(args)
        if not (home / "log").is_dir():
            raise FleetlogError(f"no event log under {home} (looked in {home / 'log'})")
        return list(open_readers(home / "log"))
    from fleetlog.events.pglog import PostgresLog

    return [PostgresLog.open(spec, pool_size=2)]


def _session_ids(args: argparse.Namespace) -> list[str]:
    ids: list[str] = []
    for reader in _open_logs(args):
        try:
            ids.extend(reader.session_ids())
        finally:
            reader.close()
    return ids


class _NoSuchSession(SessionNotFound):
    """SessionNotFound with a hint: what was looked for, and what is close."""

    def __init__(self, session_id: str, hint: str) -> None:
        FleetlogError.__init__(self, f"no session {session_id!r}{hint}")
        self.session_id = session_id


def _resolve_session(args: argparse.Namespace, text: str) -> str:
    """The session ``text`` names: its id, the task id it came from (``fix-login`` is
    ``s-fix-login``), or an unambiguous prefix of either, as git takes a short hash."""
    ids = set(_session_ids(args))
    if text in ids:
        return text
    if session_id_for(text) in ids:
        return session_id_for(text)
    matches = sorted(i for i in ids if text and i.startswith((text, "s-" + text)))
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(matches[:3]) + (", …" if len(matches) > 3 else "")
        raise FleetlogError(
            f"session {text!r} is ambiguous: {len(matches)} sessions match ({shown}); "
            "give more of the id"
        )
    import difflib

    close = difflib.get_close_matches(text, sorted(ids), n=1, cutoff=0.6) or (
        difflib.get_close_matches("s-" + text, sorted(ids), n=1, cutoff=0.6)
    )
    hint = f"did you mean {close[0]}? " if close else ""
    raise _NoSuchSession(
        text,
        f" (not a session id, a task id, or a prefix of either; {hint}"
        f"`fleetlog sessions` lists the {_plural(len(ids), 'session')} here)",
    )


def _resolve_call(session_id: str, calls: dict[str, Any], text: str) -> str:
    """The call id ``text`` names in a session: itself, or an unambiguous prefix.

    Among several calls sharing the prefix, the one awaiting review wins when it is
    the only one (what approve/deny is for); otherwise the prefix is ambiguous.
    """
    if not text or text in calls:
        return text
    matches = sorted(c for c in calls if c.startswith(text))
    if len(matches) > 1:
        waiting = [c for c in matches if calls[c].status == "awaiting_review"]
        if len(waiting) == 1:
            return waiting[0]
        raise FleetlogError(
            f"call id {text!r} is ambiguous in {session_id}: {len(matches)} calls match; "
            "give more of the id (fleetlog reviews shows them whole)"
        )
    return matches[0] if matches else text


def _states(args: argparse.Namespace) -> list[SessionState]:
    """Every session, folded from the log (read-only: works next to a running fleet)."""
    states: list[SessionState] = []
    for reader in _open_logs(args):
        try:
            for sid in reader.session_ids():
                states.append(fold(sid, reader.read_stream(sid, resolve_blobs=False)))
        finally:
            reader.close()
    states.sort(key=lambda s: (s.created_at, s.session_id))
    return states


def _row(s: SessionState) -> dict[str, Any]:
    return s.row()


def _table(rows: list[dict[str, Any]], columns: list[str], *, fold: tuple[str, ...] = ()) -> None:
    """A table whose cells are never cut: ids print whole, whatever the terminal's width
    (a narrow terminal wraps the line). Only the ``fold`` columns (free text: errors,
    reasons) wrap inside their cell, at 60 characters."""
    from rich.console import Console
    from rich.table import Table

    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    table = Table()
    for name, width in zip(columns, widths, strict=True):
        if name in fold:
            table.add_column(name, overflow="fold", max_width=min(width, 60))
        else:
            table.add_column(name, no_wrap=True, min_width=width)
    for row in cells:
        table.add_row(*row)
    total = sum(min(w, 60) if c in fold else w for c, w in zip(columns, widths, strict=True))
    Console(width=total + 3 * len(columns) + 1, highlight=False).print(table)


@contextmanager
def _ray(address: str | None, namespace: str | None = None) -> Iterator[str]:
    """Connect to Ray (or start a local one); yields the cluster address."""
    import logging

    import ray

    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if namespace:
        kwargs["namespace"] = namespace
    ctx: Any
    if address:
        ctx = ray.init(address=address, **kwargs)
    else:
        from fleetlog.actors.fleet import local_ray_options

        ctx = ray.init(**local_ray_options(), **kwargs)
    try:
        yield str(ctx.address_info.get("address") or ctx.address_info.get("gcs_address") or "")
    finally:
        ray.shutdown()


# --- run -----------------------------------------------------------------------------------


#: The agents ``demo_tasks`` gives its tasks (actors/model.py).
_DEMO_AGENTS = ("coder", "researcher", "ops")


def _tasks_for(args: argparse.Namespace, config: Config) -> list[Task]:
    """The run's tasks, each checked against ``config`` (agents, workspaces): all of
    them before any cluster starts, the first problem as one line."""
    if args.demo is not None:
        from fleetlog.actors.model import demo_tasks

        if args.demo < 1:
            raise UsageError("--demo needs a positive number of tasks")
        try:
            return [
                parse_task(t, source="demo", line=i + 1, config=config)
                for i, t in enumerate(demo_tasks(args.demo))
            ]
        except TaskFileError as e:
            raise FleetlogError(
                f"--demo: {e.detail} (the demo's tasks use the agents "
                f"{', '.join(_DEMO_AGENTS)}: define them, or run the demo without this config)"
            ) from None
    if not args.tasks:
        raise UsageError("give a tasks file (JSON Lines) or --demo N")
    tasks = load_tasks(args.tasks, config)
    if not tasks:
        raise FleetlogError(f"{args.tasks}: no tasks in the file")
    return tasks


def _agents_line(tasks: list[Task], config: Config) -> str:
    """What the run's agents are: the first thing ``run`` says (an agent with more tools
    than meant, or the paid model instead of the offline one, is seen before it acts)."""
    counts = Counter(t.agent for t in tasks)
    parts = []
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        agent = config.agent(name)
        builtin = "" if name in config.agents else ", built-in"
        if name not in config.agents and "default" in config.agents:
            builtin = ", as [agents.default]"
        tools = ", ".join(agent.tools) or "none"
        parts.append(
            f"{name} ({_plural(n, 'task')}{builtin}; model {config.model_for(name)}; tools {tools})"
        )
    return "agents: " + " · ".join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    home = _home(args).resolve()
    config = _config(args)
    # The demo is written for the offline model: it never switches to the paid API
    # because ANTHROPIC_API_KEY happens to be set, unless --model says so.
    model = args.model or ("scripted" if args.demo is not None else None)
    if model is not None:
        if not model.strip():
            raise UsageError("--model needs a model id (or scripted)")
        config = config.with_model(model)
    tasks = _tasks_for(args, config)
    hosts = args.hosts or config.fleet.hosts
    keyed = []
    for ordinal, task in enumerate(tasks, start=1):
        task_id = task.id or derived_task_id(task, ordinal)
        keyed.append((task, session_id_for(task_id)))
    session_ids = {sid for _, sid in keyed}
    if len(session_ids) != len(keyed):
        raise FleetlogError("two tasks map to the same session (duplicate ids)")
    _err(_agents_line(tasks, config))
    _sandbox_line(config)
    _check_log(home, config)
    # Only now Ray (its import alone takes a second or two): everything above is checked.
    from fleetlog.actors.fleet import Fleet, namespace_for

    with _ray(args.address, namespace_for(home, _log_spec(args))) as address:
        started = time.monotonic()
        fleet = Fleet.start(home, config, hosts=hosts)
        fleet.write_fleet_file(address)
        try:
            created = fleet.submit_many(keyed)
            _err(
                f"fleet: {_plural(hosts, 'host')}, {_plural(len(keyed), 'task')}: {created} new, "
                f"{len(keyed) - created} resumed; home {home}"
            )
            rows = _watch(fleet, session_ids, started, live=not args.no_progress)
        finally:
            fleet.shutdown()
    elapsed = time.monotonic() - started
    planned = _DEMO_PLANNED if args.demo is not None else frozenset()
    return _summary(rows, elapsed, settled=SETTLED, planned=planned)


def _check_log(home: Path, config: Config) -> None:
    """Reach the log before any cluster starts: a bad DSN is one line in a second."""
    source = source_for(home, config.fleet.log)
    try:
        if source.shared:
            source.readers()[0][1].head()
    finally:
        source.close()


def _sandbox_line(config: Config) -> None:
    """One line at fleet start when exec tools will not run confined (SPEC §6 [tools])."""
    if config.tools.sandbox == "off":
        _err(
            'warning: [tools] sandbox = "off": run_shell and exec tools run unconfined '
            "(every session records it)"
        )
        return
    from fleetlog.actors.sandbox import probe

    reason = probe()
    if reason:
        _err(f"warning: run_shell and exec tools are disabled (refused): {reason}")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _progress_line(rows: list[dict[str, Any]], total: int, elapsed: float) -> str:
    counts = Counter(r["status"] for r in rows)
    steps = sum(r["step_count"] for r in rows)
    tokens = sum(r["token_count"] for r in rows)
    cost = sum(r["cost_usd"] for r in rows)
    parts = [
        f"{counts.get(s, 0)} {s}"
        for s in ("running", "awaiting_review", "completed", "failed", "cancelled")
    ]
    pending = total - sum(counts.values()) + counts.get("pending", 0)
    return (
        f"[{elapsed:6.1f}s] {pending} pending, "
        + ", ".join(parts)
        + f" | {steps} steps ({steps / max(elapsed, 1e-9):.0f}/s), {tokens:,} tokens, ${cost:.4f}"
    )


def _watch(
    fleet: Any, session_ids: set[str], started: float, *, live: bool
) -> list[dict[str, Any]]:

    def poll() -> tuple[list[dict[str, Any]], bool]:
        rows = [r for r in fleet.statuses(session_ids) if r["id"] in session_ids]
        done = len(rows) == len(session_ids) and all(r["status"] in SETTLED for r in rows)
        return rows, done

    if live and sys.stderr.isatty():
        from rich.console import Console
        from rich.live import Live

        with Live(console=Console(stderr=True), refresh_per_second=4, transient=False) as view:
            while True:
                rows, done = poll()
                view.update(_progress_line(rows, len(session_ids), time.monotonic() - started))
                if done:
                    return rows
                time.sleep(0.25)
    last = 0.0
    while True:
        rows, done = poll()
        now = time.monotonic()
        if done or now - last > 2.0:
            _err(_progress_line(rows, len(session_ids), now - started))
            last = now
        if done:
            return rows
        time.sleep(0.25)


#: How many pending reviews the run's summary lists before "…and N more".
_SUMMARY_REVIEWS = 10


#: The failures the demo plans (its loop, long and expensive tasks show the caps at
#: work): a demo that ends with only these did what it is for, and exits 0.
_DEMO_PLANNED = frozenset(
    {
        "MAX_STEPS_EXCEEDED",
        "MAX_TOKENS_EXCEEDED",
        "MAX_COST_EXCEEDED",
        "LOOP_DETECTED",
        "BUDGET_EXHAUSTED",
    }
)


def _summary(
    rows: list[dict[str, Any]],
    elapsed: float,
    *,
    settled: frozenset[str],
    planned: frozenset[str] = frozenset(),
) -> int:
    """Print the run's summary; the exit status: 1 when a session failed (said last),
    unless every failure is one of ``planned`` (the demo's limit breaches)."""
    counts = Counter(r["status"] for r in rows)
    by_status = []
    for status in ("completed", "failed", "cancelled", "awaiting_review", "running", "pending"):
        sel = [r for r in rows if r["status"] == status]
        if sel:
            by_status.append(
                {
                    "status": status,
                    "sessions": len(sel),
                    "steps": sum(r["step_count"] for r in sel),
                    "tokens": f"{sum(r['token_count'] for r in sel):,}",
                    "cost_usd": f"{sum(r['cost_usd'] for r in sel):.4f}",
                }
            )
    _table(by_status, ["status", "sessions", "steps", "tokens", "cost_usd"])
    errors = Counter(r["error"].split(":", 1)[0] for r in rows if r["error"])
    if errors:
        _out("failures: " + ", ".join(f"{code} {n}" for code, n in errors.most_common()))
    refused = sum(r.get("refused_calls", 0) for r in rows)
    if refused:
        _out(f"refused tool calls: {refused} (invalid input, unknown tool, policy or safety)")
    reviews = [(r["id"], c) for r in rows for c in r.get("reviews", [])]
    if reviews:
        _out(
            f"reviews pending: {len(reviews)} (fleetlog reviews; fleetlog approve SESSION CALL_ID)"
        )
        for sid, c in reviews[:_SUMMARY_REVIEWS]:
            _out(f"  {sid} {c['call_id']} {c['tool']}: {c['reason']}")
        if len(reviews) > _SUMMARY_REVIEWS:
            _out(f"  …and {len(reviews) - _SUMMARY_REVIEWS} more (fleetlog reviews)")
    steps = sum(r["step_count"] for r in rows)
    failed = counts.get("failed", 0)
    _out(
        f"{_plural(len(rows), 'session')} in {elapsed:.1f}s: "
        f"{counts.get('completed', 0)} completed, {failed} failed, "
        f"{counts.get('awaiting_review', 0)} awaiting review; "
        f"{_plural(steps, 'step')}, {sum(r['token_count'] for r in rows):,} tokens, "
        f"${sum(r['cost_usd'] for r in rows):.4f}"
    )
    unsettled = [r for r in rows if r["status"] not in settled]
    if unsettled:
        _out(f"{len(unsettled)} session(s) still running: re-run to resume them")
    _out('ask the log anything: fleetlog metrics · fleetlog sql "SELECT … FROM agent_tool_calls"')
    if failed:
        codes = {r["error"].split(":", 1)[0] for r in rows if r["status"] == "failed"}
        if codes <= planned:
            _out(
                f"{failed} of {_plural(len(rows), 'session')} failed, all as the demo plans "
                f"({', '.join(sorted(codes))}: the limits at work; "
                "fleetlog sessions --status failed)"
            )
            return 0
        _out(
            f"{failed} of {_plural(len(rows), 'session')} failed "
            "(fleetlog sessions --status failed; fleetlog show SESSION)"
        )
        return 1
    return 0


# --- a long-running fleet: up / down / submit ----------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ray_temp_dir(home: Path) -> Path:
    # Ray keeps unix sockets here: the path must stay short (AF_UNIX limit), and
    # one per fleet home lets `down` stop exactly this fleet's Ray, not every Ray.
    import hashlib
    import tempfile

    digest = hashlib.sha1(str(home).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"fleetlog-ray-{digest}"


def _stop_ray_started_for(home: Path) -> int:
    """Terminate the Ray processes `fleetlog up` started for this home; return how many.

    In Ray's own order (``ray stop``): the raylet first (its workers go with it), then
    the other daemons, the GCS last. A GCS sent SIGTERM while its raylet still runs
    does not exit for a minute or more; that wait (cut short by SIGKILL after 10 s)
    was most of what ``fleetlog down`` took. In this order all are gone in about 1 s.
    """
    import signal

    marker = str(_ray_temp_dir(home)).encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found[int(entry.name)] = (entry / "comm").read_text().strip()

    def gone(pid: int) -> bool:
        try:  # a zombie is gone too: nothing may reap it here
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return True

    def rank(pid: int) -> int:
        return {"raylet": 0, "gcs_server": 2}.get(found[pid], 1)

    for stage in (0, 1, 2):
        group = [pid for pid in found if rank(pid) == stage]
        for pid in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while group and time.monotonic() < deadline:
            group = [pid for pid in group if not gone(pid)]
            time.sleep(0.02)
        for pid in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return len(found)


def _fleet_info(args: argparse.Namespace) -> dict[str, Any]:
    info = _fleet_location(args)
    if info is None:
        home = _home(args).resolve()
        raise FleetlogError(
            f"no fleet is up for {home} (start one with `fleetlog up`; on a Ray cluster, "
            "set RAY_ADDRESS to find its fleet by name)"
        )
    return info


def _fleet_location(args: argparse.Namespace) -> dict[str, Any] | None:
    """Which Ray to ask for the fleet's named actors, and in which namespace; None: none.

    ``HOME/fleet.json`` on the machine that ran ``fleetlog up``; anywhere else in a
    cluster (another node, a ``ray job submit`` job) ``RAY_ADDRESS`` and the fleet's
    log (``FLEETLOG_LOG``) are enough: the actors are found by name.
    """
    home = _home(args).resolve()
    path = home / "fleet.json"
    if path.exists():
        info: dict[str, Any] = json.loads(path.read_text())
        return info
    address = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    from fleetlog.actors.fleet import namespace_for

    return {"address": address, "namespace": namespace_for(home, _log_spec(args))}


def _ray_auth(home: Path, *, create: bool = False) -> None:
    """Keep Ray's token auth on for a long-running fleet: one random token per fleet home.

    The token lives in ``HOME/ray_auth_token`` (mode 0600); every fleetlog
    command that talks to this fleet points Ray at it. RAY_AUTH_MODE=disabled
    in the environment (loopback test clusters only) is respected, never set.
    """
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # a cluster's own token (cluster.yaml puts one on every node): keep it
    token = home / "ray_auth_token"
    if create and not token.exists():
        import secrets

        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if token.exists():
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)


def cmd_up(args: argparse.Namespace) -> int:
    import subprocess

    home = _home(args).resolve()
    config = _config(args)
    if (home / "fleet.json").exists():
        raise FleetlogError(f"a fleet is already up for {home} (`fleetlog down` first)")
    _sandbox_line(config)
    _check_log(home, config)
    hosts = args.hosts or config.fleet.hosts
    started_ray = False
    address = args.address
    from fleetlog.actors.fleet import LOCAL_RAY_SYSTEM_CONFIG, Fleet, namespace_for

    if not address:
        port = _free_port()
        ray_cli = Path(sys.executable).with_name("ray")
        proc = subprocess.run(
            [
                str(ray_cli),
                "start",
                "--head",
                f"--port={port}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={_ray_temp_dir(home)}",
                f"--system-config={json.dumps(LOCAL_RAY_SYSTEM_CONFIG)}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            raise FleetlogError(f"could not start Ray: {last[0] if last else proc.returncode}")
        address = f"127.0.0.1:{port}"
        started_ray = True
    with _ray(address, namespace_for(home, _log_spec(args))):
        fleet = Fleet.start(home, config, hosts=hosts, detached=True)
        fleet.write_fleet_file(address, started_ray=started_ray)
    _out(f"fleet up: {hosts} host(s) on Ray at {address}; home {home}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from fleetlog.actors.fleet import Fleet

    home = _home(args).resolve()
    info = _fleet_info(args)
    try:
        with _ray(info["address"], info["namespace"]):
            Fleet.join(home, _config(args)).shutdown()
    except FleetlogError:
        raise
    except Exception as e:  # Ray is already gone: nothing left to stop but the record
        _err(f"fleetlog: the fleet did not answer ({type(e).__name__}); cleaning up")
        (home / "fleet.json").unlink(missing_ok=True)
    if info.get("started_ray"):
        _stop_ray_started_for(home)
        shutil.rmtree(_ray_temp_dir(home), ignore_errors=True)
    _out("fleet down")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    home = _home(args).resolve()
    config = _config(args)
    raw: dict[str, object] = {"prompt": args.prompt, "agent": args.agent, "tenant": args.tenant}
    if args.id:
        raw["id"] = args.id
    try:
        task = parse_task(raw, source="submit", config=config)
    except TaskFileError as e:
        raise FleetlogError(e.detail) from None
    info = _fleet_info(args)
    from fleetlog.actors.fleet import Fleet

    task_id = task.id or new_task_id()
    session_id = session_id_for(task_id)
    with _ray(info["address"], info["namespace"]):
        fleet = Fleet.join(home, config)
        fleet.submit(task, session_id)
        _out(session_id)
        if args.wait:
            while True:
                rows = [r for r in fleet.statuses({session_id}) if r["id"] == session_id]
                if rows and rows[0]["status"] in SETTLED:
                    row = rows[0]
                    _err(
                        f"{session_id}: {row['status']} after {row['step_count']} steps"
                        + (f" ({row['error']})" if row["error"] else "")
                    )
                    return 0 if row["status"] != "failed" else 1
                time.sleep(0.2)
    return 0


# --- reading commands ----------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace) -> int:
    rows = [_row(s) for s in _states(args)]
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    if args.json:
        _print_json(rows)
    elif not rows:
        which = f" {args.status}" if args.status else ""
        _out(f"no{which} sessions in {_home(args).resolve()}")
    else:
        _table(
            rows,
            [
                "id",
                "status",
                "agent_type",
                "tenant",
                "step_count",
                "token_count",
                "cost_usd",
                "error",
            ],
            fold=("error",),
        )
        counts = Counter(r["status"] for r in rows)
        _out(
            f"({_plural(len(rows), 'session')}: "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            + ")"
        )
    return 0


def _find_stream(args: argparse.Namespace, session_id: str) -> list[Any]:
    """A session's events; ``session_id`` may also be its task id or a unique prefix."""
    for attempt in range(2):
        for reader in _open_logs(args):
            try:
                if reader.last_seq(session_id) > 0:
                    stream = reader.read_stream(session_id, resolve_blobs=False)
                    # Summaries are shown in the timeline: the few kept as blobs are read.
                    return [
                        reader.blobs.resolve(e) if isinstance(e.event, ContextCompacted) else e
                        for e in stream
                    ]
            finally:
                reader.close()
        if attempt == 0:
            session_id = _resolve_session(args, session_id)
    raise SessionNotFound(session_id)


def cmd_show(args: argparse.Namespace) -> int:
    import msgspec

    stream = _find_stream(args, args.session)
    if args.json:
        # One JSON array, one event per line (as _json_lines, msgspec's encoding kept).
        events = ",\n".join(msgspec.json.encode(env).decode() for env in stream)
        _out(f"[\n{events}\n]" if stream else "[]")
        return 0
    session_id = stream[0].session_id if stream else args.session
    state = fold(session_id, stream)
    _out(
        f"session {state.session_id}  task {state.task_id}  {state.status}  "
        f"agent {state.agent_type}  tenant {state.tenant}"
    )
    _out(
        f"steps {state.step}  tokens {state.token_count:,}  cost ${state.cost_usd:.4f}  "
        f"restarts {state.restarts}  {state.error}"
    )
    for env in stream:
        stamp = time.strftime("%H:%M:%S", time.localtime(env.ts))
        lines = _compaction_lines(env.event) if isinstance(env.event, ContextCompacted) else None
        if lines is None:
            data = msgspec.to_builtins(env.event)
            data.pop("type", None)
            text = json.dumps(data, default=str)
            lines = [text[:157] + "..." if len(text) > 160 else text]
        _out(f"{env.seq:>4} {stamp} e{env.epoch} {type(env.event).__name__:<20} {lines[0]}")
        for line in lines[1:]:
            _out(f"{'':>37}{line}")
    return 0


def _compaction_lines(event: ContextCompacted) -> list[str]:
    """A compaction in the timeline: its stage, what it replaced, tokens before → after."""
    tokens = f"~{event.tokens_before:,} → ~{event.tokens_after:,} tokens"
    if event.stage == "clear_tool_results":
        ids = ", ".join(event.cleared[:4]) + (" …" if len(event.cleared) > 4 else "")
        return [
            f"clear_tool_results: {len(event.cleared)} old result(s) cleared "
            f"from message {event.first_message} on, {tokens}",
            f"cleared: {ids}",
        ]
    last = event.first_message + event.dropped_messages - 1
    summary = event.summary if isinstance(event.summary, str) else "<summary kept as a blob>"
    head = f"{event.stage}: messages {event.first_message} to {last} summarized, {tokens}"
    if event.request_id:
        head += f" (model call {event.request_id})"
    shown = [line for line in summary.splitlines() if line.strip()][:6]
    return [head, *(f"│ {line[:150]}" for line in shown)]


def _reviews(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for reader in _open_logs(args):
        try:
            for sid in reader.session_ids():
                stream = reader.read_stream(sid, resolve_blobs=False)
                state = fold(sid, stream)
                asked = {
                    e.event.call_id: e.ts for e in stream if isinstance(e.event, ReviewRequested)
                }
                for call in state.awaiting_review():
                    rows.append(
                        {
                            "session_id": sid,
                            "call_id": call.call_id,
                            "tool": call.tool,
                            "input": call.input if isinstance(call.input, str) else "<blob>",
                            "risk": call.risk,
                            "reason": call.reason,
                            "in_doubt": call.in_doubt,
                            "call_hash": call_hash(call.tool, call.input),
                            "requested_at": asked.get(call.call_id, 0.0),
                        }
                    )
        finally:
            reader.close()
    rows.sort(key=lambda r: r["requested_at"])
    return rows


def cmd_reviews(args: argparse.Namespace) -> int:
    rows = _reviews(args)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        _out("no tool calls await review")
        return 0
    # One block per call, not a table: a table narrows its columns to the terminal and
    # cuts the call id, the one value approve/deny need. Here ids always print whole.
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["requested_at"]))
        _out(f"{row['session_id']}  {row['call_id']}")
        _out(
            f"  {row['tool']} (risk {row['risk']}) · requested {when} · hash {row['call_hash']}"
            + (" · in doubt: it may have run before a crash" if row["in_doubt"] else "")
        )
        _out(f"  reason: {row['reason']}")
        text = " ".join(str(row["input"]).split())
        _out(f"  input:  {text[:297] + '...' if len(text) > 300 else text}")
        _out("")
    _out(
        f"{_plural(len(rows), 'call')} awaiting review: fleetlog approve SESSION CALL_ID "
        "[--note TEXT] / fleetlog deny SESSION CALL_ID [--end] (a unique prefix of either "
        "id, or the task id, is enough)"
    )
    return 0


# --- decisions -----------------------------------------------------------------------------


def _command(args: argparse.Namespace, kind: str, reviewer: str = "") -> tuple[str, Any]:
    """``(session id, Command)`` for approve/deny/cancel, as ``args`` names them.

    The session by id, task id or prefix, and the call by id or prefix: resolved once,
    here, so the fleet and the log are told exact ids. The reviewer is ``$USER``
    unless named.
    """
    from fleetlog.actors.runner import Command

    stream = _find_stream(args, args.session)
    session_id: str = stream[0].session_id
    call_id = getattr(args, "call_id", "") or ""
    if call_id:
        call_id = _resolve_call(session_id, fold(session_id, stream).tool_calls, call_id)
    command = Command(
        kind=kind,
        call_id=call_id,
        note=getattr(args, "note", "") or "",
        reviewer=reviewer or os.environ.get("USER", "") or "operator",
        end_session=bool(getattr(args, "end", False)),
        call_hash=getattr(args, "hash", "") or "",
        edited_input=getattr(args, "input", "") or "",
    )
    return session_id, command


def _decide(args: argparse.Namespace, kind: str) -> int:
    home = _home(args).resolve()
    session_id, command = _command(args, kind)
    args = argparse.Namespace(**{**vars(args), "session": session_id, "call_id": command.call_id})
    # Either way the decision is durable in the log before this returns (SPEC §4).
    info = _fleet_location(args)
    if info is not None and _route_to_fleet(home, info, args, command):
        _out(f"{kind}: recorded; the running fleet goes on with {session_id}")
        return 0
    if _append_offline(args, session_id, command):
        _out(f"{kind}: recorded; {session_id} picks it up when it runs")
    else:
        _out(f"{kind}: already recorded; nothing to do")
    return 0


def _route_to_fleet(
    home: Path, info: dict[str, Any], args: argparse.Namespace, command: Any
) -> bool:
    from fleetlog.actors.fleet import Fleet, FleetNotRunning

    try:
        with _ray(info["address"], info["namespace"]):
            fleet = Fleet.join(home, _config(args))
            if not fleet.command(args.session, command):
                raise SessionNotFound(args.session)
            return True
    except FleetNotRunning:
        return False  # Ray is up, the fleet is not: the log is the way
    except FleetlogError:
        raise
    except Exception:
        return False  # no fleet answering: the log is the way


def _append_offline(args: argparse.Namespace, session_id: str, command: Any) -> bool:
    """Append the decision to the session's partition; False if it was already made."""
    from fleetlog.actors.runner import command_events
    from fleetlog.actors.safety import redact_event

    home = _home(args)
    spec = _log_spec(args)
    if spec != "file":
        return _append_shared(spec, session_id, command)
    for path in partition_dirs(home / "log"):
        try:
            log = FileLog.open(path)
        except LogLockedError as e:
            raise FleetlogError(
                f"a fleet owns {path} but did not answer; try again, or stop it ({e.holder})"
            ) from None
        try:
            last = log.last_seq(session_id)
            if last == 0:
                continue
            state = fold(session_id, log.read_stream(session_id, resolve_blobs=False))
            events = command_events(state, command)
            if events:
                # We hold the partition's lock, so no owner is writing: append at the
                # session's current epoch (a newer owner's claim still fences this off).
                events = [redact_event(e) for e in events]
                log.append(session_id, events, last, log.current_epoch(session_id))
            return bool(events)
        finally:
            log.close()
    raise SessionNotFound(session_id)


def _append_shared(spec: str, session_id: str, command: Any) -> bool:
    """``_append_offline`` on the shared PostgreSQL log: the database fences and orders.

    No lock keeps an owner on another node from appending meanwhile: the append
    names the seq it read, so a race is a ConcurrencyError, and the decision is
    made again on the new state (it may have become unnecessary).
    """
    from fleetlog.actors.runner import command_events
    from fleetlog.actors.safety import redact_event
    from fleetlog.events.pglog import PostgresLog

    with PostgresLog.open(spec, pool_size=1) as log:
        for _attempt in range(20):
            last = log.last_seq(session_id)
            if last == 0:
                raise SessionNotFound(session_id)
            state = fold(session_id, log.read_stream(session_id, resolve_blobs=False))
            events = [redact_event(e) for e in command_events(state, command)]
            if not events:
                return False
            try:
                log.append(session_id, events, last, log.current_epoch(session_id))
            except ConcurrencyError:
                continue
            return True
    raise FleetlogError(f"session {session_id} keeps changing; try the command again")


def cmd_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def cmd_deny(args: argparse.Namespace) -> int:
    return _decide(args, "deny")


def cmd_cancel(args: argparse.Namespace) -> int:
    return _decide(args, "cancel")


# --- projections: sql / metrics / project ---------------------------------------------------


def _projections(cli: argparse.Namespace, method: str, *args: Any) -> dict[str, Any]:
    """Ask the running fleet's projector; with no fleet answering, open the file here.

    DuckDB allows one read-write process per file: while a fleet runs, its
    projector owns ``projections.duckdb`` and this process only asks.
    """
    from fleetlog.projections.projector import Projector
    from fleetlog.projections.service import answer

    home = _existing_home(cli)
    info = _fleet_location(cli)
    if info is not None:
        import ray

        try:
            with _ray(info["address"], info["namespace"]):
                actor = ray.get_actor("fleetlog-projector", namespace=info["namespace"])
                reply: dict[str, Any] = ray.get(getattr(actor, method).remote(*args))
                return reply
        except Exception:
            if os.environ.get("FLEETLOG_DEBUG"):
                raise
            # No fleet answering: fall through and open the projections here.
    source = source_for(home, _config(cli).fleet.log)
    if not source.exists():
        raise FleetlogError(f"no event log under {home} (looked in {home / 'log'})")
    started = time.perf_counter()
    with Projector.open(home, wait_s=5.0, source=source) as projector:
        if not projector.rebuilt_on_open:
            return answer(projector, method, *args)
        # Another version's file, say: rebuilt on open already; do not rebuild twice.
        _err(f"fleetlog: projections rebuilt: {projector.rebuilt_on_open}")
        rebuilt = sum(projector.checkpoints().values())
        if method != "project":
            return answer(projector, method, *args)
        result = answer(projector, "project", False)
        if "events" in result:
            result["events"] += rebuilt
            result["seconds"] = time.perf_counter() - started
        return result


def _answer(answer: dict[str, Any]) -> Any:
    if "error" in answer:
        raise FleetlogError(answer["error"])
    return answer.get("table", answer)


def _interval(value: Any) -> str | None:
    """A SQL INTERVAL (Arrow month-day-nano or a timedelta) as text like 2 days 03:04:05.5."""
    import datetime

    if isinstance(value, datetime.timedelta):
        months, days, nanos = 0, value.days, (value.seconds * 10**6 + value.microseconds) * 1000
    elif type(value).__name__ == "MonthDayNano":
        months, days, nanos = value.months, value.days, value.nanoseconds
    else:
        return None
    seconds, frac = divmod(nanos, 10**9)
    text = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if frac:
        text += f".{frac:09d}".rstrip("0")
    parts = [
        f"{months} mon" if months else "",
        f"{days} day{'s' if days != 1 else ''}" if days else "",
    ]
    return " ".join(p for p in [*parts, text] if p)


def _jsonable(value: Any) -> Any:
    import datetime
    import decimal

    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    interval = _interval(value)
    return value if interval is None else interval


def _cell(value: Any) -> str:
    import datetime
    import decimal

    if value is None:
        return ""
    if isinstance(value, decimal.Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="milliseconds")
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else repr(value)
    interval = _interval(value)
    return str(value) if interval is None else interval


def _print_arrow(table: Any, fmt: str) -> None:
    names: list[str] = list(table.column_names)
    rows: list[dict[str, Any]] = table.to_pylist()
    if fmt == "json":
        _print_json([{k: _jsonable(v) for k, v in r.items()} for r in rows])
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(names)
        for r in rows:
            writer.writerow(["" if r[n] is None else _jsonable(r[n]) for n in names])
    else:
        from rich.console import Console
        from rich.table import Table

        cells = [[_cell(r[n]) for n in names] for r in rows]
        # Wide enough that no header or value is cut (a terminal may wrap it).
        widths = [
            max([len(n), *(len(row[i]) for row in cells[:1000])]) for i, n in enumerate(names)
        ]
        view = Table(*names)
        for row in cells:
            view.add_row(*row)
        Console(width=max(80, min(sum(widths) + 3 * len(names) + 1, 400)), highlight=False).print(
            view
        )
        _out(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def cmd_sql(args: argparse.Namespace) -> int:
    table = _answer(_projections(args, "query", args.query))
    _print_arrow(table, "json" if args.json else "csv" if args.csv else "table")
    return 0


def parse_since(text: str, now: float | None = None) -> Any:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` ago, or an ISO date/time (UTC) -> datetime."""
    import datetime
    import re

    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if m:
        seconds = (
            float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        )
        return datetime.datetime.fromtimestamp(now - seconds, datetime.UTC).replace(tzinfo=None)
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since {text!r}: give a duration like 7d, 12h, 30m, or a date like 2026-11-01"
        ) from None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.UTC).replace(tzinfo=None)
    return when


def cmd_metrics(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    table = _answer(_projections(args, "health", since, args.agent_type))
    if args.json:
        _print_arrow(table, "json")
        return 0
    window = f"sessions created since {since:%Y-%m-%d %H:%M} UTC" if since else "all sessions"
    _out(f"agent health, {window}" + (f", agent {args.agent_type}" if args.agent_type else ""))
    _print_arrow(table, "table")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    answer = _answer(_projections(args, "project", bool(args.rebuild)))
    n, seconds = answer["events"], answer["seconds"]
    where = ", ".join(f"p{p} at {pos:,}" for p, pos in sorted(answer["checkpoints"].items()))
    verb = "rebuilt from" if args.rebuild else "caught up with"
    rate = f" ({n / seconds:,.0f} events/s)" if n and seconds > 0 else ""
    _out(f"projections {verb} {n:,} events in {seconds:.2f}s{rate}; {where or 'empty log'}")
    return 0


# --- verify --------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    home = _existing_home(args)
    spec = _log_spec(args)
    paths = partition_dirs(home / "log") if spec == "file" else [spec]
    if not paths:
        raise FleetlogError(f"no event log under {home} (looked in {home / 'log'})")
    ok = True
    reports = []
    for path in paths:
        report = verify_log(path) if spec == "file" else _verify_shared(spec)
        ok = ok and report.ok
        reports.append(report)
        if not args.json:
            for fault in report.faults:
                _out(f"FAULT {fault}")
            for note in report.notes:
                _out(f"note: {note}")
            verdict = "ok" if report.ok else f"{len(report.faults)} fault(s)"
            framing = (
                f" in {report.frames} frames, {report.segments} segment(s)"
                if spec == "file"
                else ""
            )
            _out(
                f"{report.path}: {verdict} — {report.events} events{framing}, "
                f"{report.sessions} session(s), {report.blobs_checked} blob(s) checked"
            )
    if args.json:
        _print_json(
            {
                "ok": ok,
                "events": sum(r.events for r in reports),
                "frames": sum(r.frames for r in reports),
                "segments": sum(r.segments for r in reports),
                "sessions": sum(r.sessions for r in reports),
                "blobs_checked": sum(r.blobs_checked for r in reports),
                "faults": [f"{r.path}: {f}" for r in reports for f in r.faults],
                "notes": [n for r in reports for n in r.notes],
            }
        )
    return 0 if ok else 1


def _verify_shared(spec: str) -> VerifyReport:
    from fleetlog.events.pglog import PostgresLog
    from fleetlog.events.source import PgSource

    with PostgresLog.open(spec, pool_size=1) as log:
        return verify_events(log, PgSource(spec).where())


# --- argument parsing ----------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options every command takes, before or after its name (SPEC §4).

    On the main parser they default to None; on each command's parser to SUPPRESS,
    so that one given after the command name wins and its absence keeps one given
    before it (``fleetlog --home H sessions`` = ``fleetlog sessions --home H``).
    """
    parser.add_argument(
        "--home",
        default=default,
        metavar="DIR",
        help="fleet home (default $FLEETLOG_HOME, else ./.fleetlog)",
    )
    parser.add_argument(
        "--config",
        default=default,
        metavar="FILE",
        help="config file (default ./fleetlog.toml if present)",
    )
    parser.add_argument(
        "--address",
        default=default,
        help="a running Ray cluster: run and up join it instead of starting one; the other "
        "commands find the fleet there (default $RAY_ADDRESS, or HOME/fleet.json)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from fleetlog.console import serve
    except ImportError as e:  # fastapi/uvicorn are dependencies: a broken install
        raise FleetlogError(f"the web console cannot start: {e} (reinstall fleetlog)") from None
    return serve(args)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="fleetlog", description="A production runtime for fleets of LLM agents."
    )
    _global_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "run every task until each session is terminal or awaiting review")
    run.add_argument("tasks", nargs="?", help="tasks file (JSON Lines, SPEC §5)")
    run.add_argument("--demo", type=int, metavar="N", help="run N generated demo tasks instead")
    run.add_argument("--hosts", type=int, help="SessionHost actors (default [fleet] hosts)")
    run.add_argument(
        "--model",
        help="the model of every new session of this run (a Claude model id, or scripted: "
        "offline); --demo defaults to scripted whatever ANTHROPIC_API_KEY says",
    )
    run.add_argument(
        "--no-progress", action="store_true", help="plain progress lines, no live display"
    )

    up = add("up", cmd_up, "start a long-running local fleet (Ray head + detached actors)")
    up.add_argument("--hosts", type=int, help="SessionHost actors (default [fleet] hosts)")
    add("down", cmd_down, "stop the long-running fleet")
    submit = add(
        "submit", cmd_submit, "submit one task to the running fleet; prints the session id"
    )
    submit.add_argument("prompt")
    submit.add_argument("--agent", default="default")
    submit.add_argument("--tenant", default="default")
    submit.add_argument("--id", help="task id (a task id maps to one session forever)")
    submit.add_argument("--wait", action="store_true", help="wait until the session settles")

    sessions = add("sessions", cmd_sessions, "list sessions")
    sessions.add_argument(
        "--status",
        choices=get_args(SessionStatus),
    )
    sessions.add_argument("--json", action="store_true")

    show = add("show", cmd_show, "one session's timeline, event by event")
    show.add_argument("session")
    show.add_argument("--json", action="store_true")

    reviews = add("reviews", cmd_reviews, "tool calls waiting for a human decision")
    reviews.add_argument("--json", action="store_true")

    approve = add("approve", cmd_approve, "approve a tool call; the session resumes")
    approve.add_argument("session")
    approve.add_argument("call_id")
    approve.add_argument("--note", default="")
    approve.add_argument(
        "--hash", default="", help="the call's hash as `reviews` shows it: refuse any other call"
    )
    approve.add_argument(
        "--input",
        default="",
        metavar="JSON",
        help="run the call with this input (a JSON object) instead of the model's; it is "
        "vetted again (deny rules still refuse it) and the model is told",
    )

    deny = add(
        "deny", cmd_deny, "deny a tool call; the model is told (or the session ends with --end)"
    )
    deny.add_argument("session")
    deny.add_argument("call_id")
    deny.add_argument("--note", default="")
    deny.add_argument(
        "--hash", default="", help="the call's hash as `reviews` shows it: refuse any other call"
    )
    deny.add_argument(
        "--end", action="store_true", help="also end the session (DENIED_BY_REVIEWER)"
    )

    cancel = add("cancel", cmd_cancel, "cancel a session")
    cancel.add_argument("session")

    sql = add("sql", cmd_sql, "catch projections up with the log and run one SQL query")
    sql.add_argument("query")
    fmt = sql.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON array of row objects")
    fmt.add_argument("--csv", action="store_true")

    metrics = add("metrics", cmd_metrics, "agent health metrics (agent_health_metrics)")
    metrics.add_argument("--since", help="only sessions created since: 7d, 12h, 30m, or a date")
    metrics.add_argument("--agent-type", help="only this agent type")
    metrics.add_argument("--json", action="store_true")

    project = add("project", cmd_project, "catch projections up, or drop and rebuild them")
    project.add_argument(
        "--rebuild", action="store_true", help="drop every projection and rebuild from the log"
    )

    serve = add(
        "serve", cmd_serve, "the web console: overview, review queue, timelines, read-only SQL"
    )
    serve.add_argument("--host", help="address to listen on (default [console] host: 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="TCP port (default [console] port: 8700; 0: any free port)"
    )
    serve.add_argument(
        "--token",
        help="bearer token required on every API request (default $FLEETLOG_CONSOLE_TOKEN, "
        "then [console] token); without one, loopback addresses only",
    )

    verify = add(
        "verify", cmd_verify, "check the log end to end (checksums, contiguous sequence numbers)"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        # Before Ray is imported anywhere: it reads its auth settings at import.
        _ray_auth(_home(args).resolve(), create=args.command == "up")
        status = func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return status
    except BrokenPipeError:
        # `fleetlog show S | head`: the reader has what it wanted. Stop quietly, as a
        # command killed by SIGPIPE would (status 128 + 13), with no "Broken pipe" line.
        # stdout is pointed at /dev/null so the interpreter's last flush cannot fail.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 141
    except UsageError as e:
        print(f"fleetlog: {e}", file=sys.stderr)
        return 2
    except FleetlogError as e:
        print(f"fleetlog: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fleetlog: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleetlog: interrupted; re-run to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("FLEETLOG_DEBUG"):
            raise
        print(f"fleetlog: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
