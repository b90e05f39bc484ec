"""Cluster benchmark: the Ray fleet on FileLog vs the shared PostgresLog, and recovery.

Two tables, measured in one run against one local Ray and one real PostgreSQL 15
(``tests/pg_server.py``'s ``PgServer``: loopback, ``fsync=on``):

1. **Durable steps/s** of the Ray fleet with 1, 2 and 4 hosts, FileLog vs
   PostgresLog. Workload: ``--sessions`` (500) scripted demo tasks (``demo_tasks``,
   the email ones left out, so no session waits for an approval), the offline
   scripted model with no think time. Steps are the durable ``ModelResponded``
   events read back from the log after the fleet stopped; the time is the wall
   time from the first submit until every session has settled. Each cell runs
   ``--repeats`` times (cells interleaved, so a slow minute of the machine hits
   both logs); median with [min .. max], and the ratio PostgresLog / FileLog of
   the medians per host count.
2. **Recovery after a host loss**: ``--recovery-sessions`` sessions running on
   ``--recovery-hosts`` hosts, the scripted model thinking ``--latency-ms`` per
   call (each session runs ``--recovery-steps`` steps, so all are mid-flight),
   then one host is killed abruptly (``ray.kill(handle, no_restart=False)``: the
   worker process dies, Ray restarts the actor, which resumes its sessions).
   Measured: from the kill until every session the killed host was running has
   a ``SessionClaimed`` at a newer epoch in the log (it runs again), read from
   the claims' log timestamps (and, as a check, when the poller saw the last one);
   also when the new host process first answers and when its ``start()`` is done.
   ``--recovery-repeats`` runs per log.

Alongside the steps/s: CPU per step of the bench's process tree (driver, Ray,
actors) and of PostgreSQL, and for PostgreSQL the events per append transaction
and the WAL fsyncs per transaction. Results and analysis: docs/benchmarks-cluster.md.

Every measurement gets a fresh fleet home and, for PostgreSQL, a fresh database;
``fleet.shutdown()`` after each. Ray starts once (``address="local"``, so it never
joins another cluster on the machine; ``RAY_AUTH_MODE=disabled`` for this
loopback-only bench).

    .venv/bin/python -m bench.cluster_bench                 # full tables
    .venv/bin/python -m bench.cluster_bench --quick         # small, for the CI smoke test
    .venv/bin/python -m bench.cluster_bench --json out.json # figures as JSON too
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LOGS = ("file", "pg")
LOG_NAMES = {"file": "FileLog", "pg": "PostgresLog"}
TERMINAL_EVENTS = frozenset({"SessionCompleted", "SessionFailed", "SessionCancelled"})


def _pg_server_class() -> Any:
    """``PgServer`` from ``tests/pg_server.py`` (a test helper, not a package module)."""
    spec = importlib.util.spec_from_file_location("pg_server", ROOT / "tests" / "pg_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PgServer


# --- the log, read from outside the fleet -----------------------------------------------------

#: (partition, position, session_id, epoch, event type, log timestamp)
Row = tuple[int, int, str, int, str, float]


class LogWatch:
    """Reads a fleet's log forward from where it stopped, as light rows (no payloads)."""

    def __init__(self, spec: str, home: Path) -> None:
        self.spec = spec
        self._conn: Any = None
        self._file: Any = None
        self._next: dict[int, int] = {}
        if spec == "file":
            from fleetlog.events.source import FileSource

            self._file = FileSource(home / "log")
        else:
            import psycopg

            self._conn = psycopg.connect(spec, autocommit=True)

    def poll(self) -> list[Row]:
        out: list[Row] = []
        if self._conn is not None:
            while True:
                start = self._next.get(0, 1)
                batch = self._conn.execute(
                    "SELECT position, session_id, epoch, type, ts FROM fleetlog.events "
                    "WHERE position >= %s ORDER BY position LIMIT 50000",
                    (start,),
                ).fetchall()
                if not batch:
                    return out
                out.extend((0, p, sid, epoch, kind, ts) for p, sid, epoch, kind, ts in batch)
                self._next[0] = batch[-1][0] + 1
        for index, reader in self._file.readers():
            while True:
                rows = reader.read(self._next.get(index, 1), 50_000, rows=True)
                if not rows:
                    break
                out.extend(
                    (index, r[0], r[1], r[3], type(r[6]).__name__, float(r[4])) for r in rows
                )
                self._next[index] = rows[-1][0] + 1
        return out

    def write_transactions(self) -> int:
        """PostgreSQL: how many transactions appended events (0 for FileLog)."""
        if self._conn is None:
            return 0
        row = self._conn.execute("SELECT count(DISTINCT tx) FROM fleetlog.events").fetchone()
        return int(row[0]) if row else 0

    def owner(self, session_id: str, partition: int, hosts: int) -> int:
        """The host that runs a session (the fleet's own rule, ``LogSource.owner``)."""
        from fleetlog.events.source import host_for

        if self.spec == "file":
            return partition % hosts
        return host_for(session_id, hosts)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._file is not None:
            self._file.close()


# --- where the CPU goes ----------------------------------------------------------------------


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, ended ones included.

    User + system time of every live process in the tree, plus each one's
    ``cutime``/``cstime`` (its children that ended and were waited for: a
    fleet's worker processes are the raylet's, PostgreSQL's backends the
    postmaster's). The local Ray cluster is the driver's tree.
    """
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def _postmaster_pid(server: Any) -> int:
    return int((Path(server.data) / "postmaster.pid").read_text().split()[0])


def _wal_syncs(server: Any) -> int:
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
    return int(row[0]) if row else 0


# --- one fleet: a fresh home, a fresh database ---------------------------------------------------


class Stage:
    """Fresh homes under one scratch directory, fresh databases on one PostgreSQL."""

    def __init__(self, scratch: Path, server: Any) -> None:
        self.scratch = scratch
        self.server = server

    @contextlib.contextmanager
    def log(self, kind: str) -> Any:
        """Yields ``(home, spec)``; drops the home and the database afterwards."""
        home = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.scratch))
        name = ""
        spec = "file"
        if kind == "pg":
            import psycopg

            name = f"bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self.server.dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            spec = self.server.dsn_for(name)
        try:
            yield home, spec
        finally:
            shutil.rmtree(home, ignore_errors=True)
            if name:
                import psycopg

                with (
                    contextlib.suppress(psycopg.Error),
                    psycopg.connect(self.server.dsn, autocommit=True) as conn,
                ):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _config(spec: str) -> Any:
    from fleetlog.config import parse_config

    return parse_config(f'[fleet]\nlog = "{spec}"\n')


def _keyed(tasks: list[dict[str, Any]]) -> list[tuple[Any, str]]:
    from fleetlog.config import parse_task, session_id_for

    keyed = []
    for raw in tasks:
        task = parse_task(raw)
        assert task.id is not None
        keyed.append((task, session_id_for(task.id)))
    return keyed


def demo_without_approvals(n: int) -> list[dict[str, Any]]:
    """The first ``n`` demo tasks that never wait for a human (the email ones do)."""
    from fleetlog.actors.model import demo_tasks

    tasks: list[dict[str, Any]] = []
    pool = 2 * n + 10
    while len(tasks) < n:
        tasks = [t for t in demo_tasks(pool, seed=13) if "email" not in str(t["prompt"]).lower()]
        pool *= 2
    return tasks[:n]


def long_tasks(n: int, steps: int) -> list[dict[str, Any]]:
    """Sessions that run ``steps`` tool calls each (the scripted model's ``long`` behaviour)."""
    limits = {
        "max_steps": steps,
        "max_identical_calls": steps + 1,
        "max_tokens": 10**9,
        "max_cost_usd": 1e9,
        "total_timeout_s": 3600,
        "step_timeout_s": 600,
    }
    return [
        {
            "id": f"recovery-{i:05d}",
            "prompt": f"Do a long, thorough review of the part-{i} docs, one part at a time.",
            "limits": limits,
        }
        for i in range(n)
    ]


# --- table 1: durable steps/s ----------------------------------------------------------------


def measure_steps(stage: Stage, kind: str, hosts: int, sessions: int) -> dict[str, Any]:
    from fleetlog.actors.fleet import Fleet

    pg = stage.server if kind == "pg" else None
    with stage.log(kind) as (home, spec):
        # WAL fsyncs over the fleet's whole life (backends report them as they exit).
        syncs = _wal_syncs(pg) if pg is not None else 0
        fleet = Fleet.start(home, _config(spec), hosts=hosts)
        try:
            keyed = _keyed(demo_without_approvals(sessions))
            ids = {sid for _, sid in keyed}
            fleet_cpu = tree_cpu_s(os.getpid())
            pg_cpu = tree_cpu_s(_postmaster_pid(pg)) if pg is not None else 0.0
            started = time.perf_counter()
            fleet.submit_many(keyed)
            rows = fleet.wait_settled(ids, timeout=1800, poll=0.05)
            wall = time.perf_counter() - started
            fleet_cpu = tree_cpu_s(os.getpid()) - fleet_cpu
            if pg is not None:
                pg_cpu = tree_cpu_s(_postmaster_pid(pg)) - pg_cpu
        finally:
            fleet.shutdown()
        watch = LogWatch(spec, home)
        try:
            events = watch.poll()
            transactions = watch.write_transactions()
        finally:
            watch.close()
        if pg is not None:
            time.sleep(0.5)  # the fleet's backends exit (and report) after its shutdown
            syncs = _wal_syncs(pg) - syncs
    statuses = Counter(str(r["status"]) for r in rows)
    unsettled = len(ids) - sum(statuses[s] for s in ("completed", "failed", "cancelled"))
    if unsettled:
        raise RuntimeError(f"{kind}/{hosts} hosts: {unsettled} sessions did not settle: {statuses}")
    steps = sum(1 for e in events if e[4] == "ModelResponded")
    return {
        "steps": steps,
        "step_count": sum(int(r["step_count"]) for r in rows),
        "events": len(events),
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "events_per_s": len(events) / wall,
        "statuses": dict(statuses),
        # CPU over the wall time: the fleet (driver, Ray, every actor) and PostgreSQL.
        "fleet_cpu_s": fleet_cpu,
        "pg_cpu_s": pg_cpu,
        "cores_busy": (fleet_cpu + pg_cpu) / wall,
        "cpu_ms_per_step": 1000 * (fleet_cpu + pg_cpu) / max(steps, 1),
        "pg_cpu_ms_per_step": 1000 * pg_cpu / max(steps, 1),
        # PostgreSQL only, over the fleet's life: the transactions that appended events
        # (distinct ``events.tx``) and the server's WAL fsyncs.
        "write_transactions": transactions,
        "wal_syncs": syncs,
    }


# --- table 2: recovery after a host loss --------------------------------------------------------


@dataclass
class _Stream:
    partition: int
    epoch: int = 0  # newest claim's epoch
    steps: int = 0
    terminal_epoch: int | None = None
    claims: list[tuple[int, float]] = field(default_factory=list)  # (epoch, log ts)


def _fold(streams: dict[str, _Stream], rows: list[Row]) -> None:
    for partition, _position, sid, epoch, kind, ts in rows:
        s = streams.get(sid)
        if s is None:
            s = streams[sid] = _Stream(partition)
        if kind == "SessionClaimed":
            s.claims.append((epoch, ts))
            s.epoch = max(s.epoch, epoch)
        elif kind == "ModelResponded":
            s.steps += 1
        elif kind in TERMINAL_EVENTS:
            s.terminal_epoch = epoch


def _restart_probe(
    handle: Any, old_pid: int, killed: float, marks: dict[str, Any], timeout: float
) -> None:
    """Times the restart as the driver sees it (calls queue while the actor restarts)."""
    import ray

    deadline = killed + timeout
    while time.monotonic() < deadline:
        try:
            # ray.kill is asynchronous: the old process may still answer once or twice.
            if int(ray.get(handle.pid.remote(), timeout=timeout)) != old_pid:
                marks["process_back"] = time.monotonic() - killed
                break
        except Exception:
            pass
        time.sleep(0.02)
    else:
        return
    try:
        ray.get(handle.ping.remote(), timeout=max(1.0, deadline - time.monotonic()))
        marks["host_started"] = time.monotonic() - killed
    except Exception as e:  # the host's start() failed: say why
        marks["ping_error"] = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]


def _kick(
    handle: Any, watch: LogWatch, streams: dict[str, _Stream], before: dict[str, int]
) -> dict[str, Any]:
    import ray

    kicked = time.monotonic()
    out: dict[str, Any] = {}
    try:
        ray.get(handle.ping.remote(), timeout=60)
        out["ping_s"] = time.monotonic() - kicked
    except Exception as e:
        out["ping_error"] = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
    while time.monotonic() < kicked + 60:
        _fold(streams, watch.poll())
        left = [sid for sid, epoch in before.items() if streams[sid].epoch <= epoch]
        if not left:
            out["all_claimed_s"] = time.monotonic() - kicked
            break
        time.sleep(0.1)
    out["reclaimed"] = sum(1 for sid, epoch in before.items() if streams[sid].epoch > epoch)
    return out


def measure_recovery(
    stage: Stage,
    kind: str,
    hosts: int,
    sessions: int,
    steps: int,
    latency_ms: float,
    timeout: float,
    kill: str = "ray",
    victim: int = 0,
) -> dict[str, Any]:
    import ray

    from fleetlog.actors.fleet import Fleet

    with stage.log(kind) as (home, spec):
        # Ray workers take their environment from the raylet (started once, before this
        # run), not from the driver's os.environ now: the think time goes in the hosts'
        # runtime_env, which Ray applies to the restarted host too.
        env = {"env_vars": {"FLEETLOG_SCRIPTED_LATENCY_MS": f"{latency_ms:g}"}}
        t_start = time.perf_counter()
        fleet = Fleet.start(home, _config(spec), hosts=hosts, runtime_env=env)
        fleet_start_s = time.perf_counter() - t_start
        watch = LogWatch(spec, home)
        streams: dict[str, _Stream] = {}
        try:
            keyed = _keyed(long_tasks(sessions, steps))
            t_submit = time.perf_counter()
            fleet.submit_many(keyed)
            submit_s = time.perf_counter() - t_submit
            # Mid-flight: every session has made a durable step, none has ended.
            deadline = time.monotonic() + timeout
            while True:
                _fold(streams, watch.poll())
                running = sum(1 for s in streams.values() if s.steps >= 1)
                if running >= sessions or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            warmup_s = time.perf_counter() - t_submit
            _fold(streams, watch.poll())
            before = {
                sid: s.epoch
                for sid, s in streams.items()
                if watch.owner(sid, s.partition, hosts) == victim and s.terminal_epoch is None
            }
            steps_before = sum(s.steps for s in streams.values())
            handle = fleet.hosts[victim]
            old_pid = int(ray.get(handle.pid.remote()))
            marks: dict[str, Any] = {}
            killed_wall = time.time()
            killed = time.monotonic()
            if kill == "sigkill":
                os.kill(old_pid, signal.SIGKILL)  # a crash: Ray notices and restarts it
            else:
                ray.kill(handle, no_restart=False)  # Ray kills the process, then restarts it
            probe = threading.Thread(
                target=_restart_probe, args=(handle, old_pid, killed, marks, timeout), daemon=True
            )
            probe.start()
            seen_all: float | None = None
            deadline = killed + timeout
            while time.monotonic() < deadline:
                _fold(streams, watch.poll())
                waiting = [
                    sid
                    for sid, epoch in before.items()
                    if streams[sid].epoch <= epoch and streams[sid].terminal_epoch is None
                ]
                if not waiting:
                    seen_all = time.monotonic() - killed
                    break
                time.sleep(0.05)
            _fold(streams, watch.poll())
            steps_after = sum(s.steps for s in streams.values())
            probe.join(timeout=max(0.0, deadline - time.monotonic()))
            kicked: dict[str, Any] | None = None
            if seen_all is None:
                kicked = _kick(handle, watch, streams, before)
        finally:
            watch.close()
            fleet.shutdown()
    reclaims: list[float] = []
    ended_old = 0
    for sid, epoch in before.items():
        newer = [ts for e, ts in streams[sid].claims if e > epoch]
        if newer:
            reclaims.append(min(newer) - killed_wall)
        elif streams[sid].terminal_epoch is not None:
            ended_old += 1  # ended by its old owner between the snapshot and the kill
    targets = len(before) - ended_old
    result: dict[str, Any] = {
        "sessions": sessions,
        "hosts": hosts,
        "latency_ms": latency_ms,
        "steps_per_session": steps,
        "fleet_start_s": fleet_start_s,
        "submit_s": submit_s,
        "warmup_s": warmup_s,
        "steps_before_kill": steps_before,
        "steps_at_end": steps_after,
        "victim_sessions": targets,
        "ended_before_kill": ended_old,
        "reclaimed": len(reclaims),
        "complete": bool(targets) and len(reclaims) == targets,
        "first_s": min(reclaims) if reclaims else None,
        "p50_s": statistics.median(reclaims) if reclaims else None,
        "all_s": max(reclaims) if reclaims and len(reclaims) == targets else None,
        "seen_all_s": seen_all,
        "kill": kill,
        "timeout_s": timeout,
        # Timeline from the kill: a new host process answers (Ray restarted it, it
        # imported fleetlog and built its HostCore), then its start() has reopened
        # the log and resumed its sessions (each claims in its own task).
        "process_back_s": marks.get("process_back"),
        "host_started_s": marks.get("host_started"),
        "ping_error": marks.get("ping_error"),
        # Only when the sessions did not all run again within the timeout: one more
        # call to the host (which makes a host that has not started start), and what
        # happened in the 60 s after it. A diagnosis, not part of the figure.
        "after_timeout": kicked,
    }
    return result


# --- the run ---------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _start_ray() -> None:
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"  # this loopback-only bench
    ray.init(
        address="local",  # never join another Ray cluster running on this machine
        num_cpus=4,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    os.environ.pop("FLEETLOG_LOG", None)  # the bench picks each fleet's log itself
    os.environ.pop("FLEETLOG_SCRIPTED_LATENCY_MS", None)
    logs = [k for k in args.logs.split(",") if k]
    host_counts = [int(h) for h in args.hosts.split(",") if h]
    began = time.perf_counter()
    server = _pg_server_class()() if "pg" in logs else None
    scratch = Path(tempfile.mkdtemp(prefix="cluster-bench-", dir=args.dir))
    figures: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "sessions": args.sessions,
        "repeats": args.repeats,
        "recovery_repeats": args.recovery_repeats,
        "throughput": {},
        "recovery": {},
    }
    try:
        if server is not None:
            server.start()
        _start_ray()
        stage = Stage(scratch, server)
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in range(args.repeats):
            for hosts in host_counts:
                for kind in logs:
                    print(
                        f"repeat {r + 1}/{args.repeats}: steps/s, {LOG_NAMES[kind]}, "
                        f"{hosts} host(s), {args.sessions} sessions",
                        file=sys.stderr,
                        flush=True,
                    )
                    cell = measure_steps(stage, kind, hosts, args.sessions)
                    print(
                        f"  {cell['steps']} steps in {cell['wall_s']:.2f} s: "
                        f"{cell['steps_per_s']:,.0f} steps/s",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.setdefault((kind, hosts), []).append(cell)
        for (kind, hosts), cells in runs.items():
            figures["throughput"][f"{kind}/{hosts}"] = {
                "log": kind,
                "hosts": hosts,
                "steps_per_s": _summary([c["steps_per_s"] for c in cells]),
                "steps": _summary([float(c["steps"]) for c in cells]),
                "wall_s": _summary([c["wall_s"] for c in cells]),
                "cpu_ms_per_step": _summary([c["cpu_ms_per_step"] for c in cells]),
                "pg_cpu_ms_per_step": _summary([c["pg_cpu_ms_per_step"] for c in cells]),
                "cores_busy": _summary([c["cores_busy"] for c in cells]),
                "events_per_transaction": _summary(
                    [c["events"] / c["write_transactions"] for c in cells]
                    if all(c["write_transactions"] for c in cells)
                    else [0.0]
                ),
                "wal_syncs_per_transaction": _summary(
                    [c["wal_syncs"] / c["write_transactions"] for c in cells]
                    if all(c["write_transactions"] for c in cells)
                    else [0.0]
                ),
                "runs": cells,
            }
        for hosts in host_counts:
            f = figures["throughput"].get(f"file/{hosts}")
            p = figures["throughput"].get(f"pg/{hosts}")
            if f and p:
                ratio = p["steps_per_s"]["median"] / f["steps_per_s"]["median"]
                figures["throughput"][f"pg/{hosts}"]["ratio_pg_file"] = ratio
        if args.recovery_sessions > 0:
            recoveries: dict[str, list[dict[str, Any]]] = {kind: [] for kind in logs}
            for r in range(args.recovery_repeats):
                for kind in logs:
                    print(
                        f"repeat {r + 1}/{args.recovery_repeats}: recovery, {LOG_NAMES[kind]}, "
                        f"{args.recovery_sessions} sessions on {args.recovery_hosts} hosts",
                        file=sys.stderr,
                        flush=True,
                    )
                    rec = measure_recovery(
                        stage,
                        kind,
                        args.recovery_hosts,
                        args.recovery_sessions,
                        args.recovery_steps,
                        args.latency_ms,
                        args.recovery_timeout,
                        args.kill,
                    )
                    print(f"  {json.dumps(rec)}", file=sys.stderr, flush=True)
                    recoveries[kind].append(rec)
            for kind, recs in recoveries.items():
                done = [rec["all_s"] for rec in recs if rec["all_s"] is not None]
                figures["recovery"][kind] = {
                    "log": kind,
                    "complete_runs": len(done),
                    "all_s": _summary(done) if done else None,
                    "runs": recs,
                }
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    figures["elapsed_s"] = time.perf_counter() - began
    return figures


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(figures: dict[str, Any]) -> str:
    lines = [
        f"cluster benchmark, {figures['started']}, nproc {figures['nproc']}, "
        f"{figures['elapsed_s']:.0f} s",
    ]
    if figures["throughput"]:
        lines += _throughput_table(figures)
    lines += _recovery_table(figures)
    return "\n".join(lines)


def _throughput_table(figures: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"### Durable steps/s: {figures['sessions']} demo sessions (no approvals), "
        f"zero-latency scripted model; median of {figures['repeats']} [min .. max]",
        "",
        "| hosts | log | steps/s [min .. max] | PG / File | steps | wall s | cores busy "
        "| CPU ms/step (of it PG server) | events/commit (WAL fsyncs/commit) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(figures["throughput"].values(), key=lambda r: (r["hosts"], r["log"]))
    for row in rows:
        rate = row["steps_per_s"]
        ratio = f"{row['ratio_pg_file']:.2f}" if "ratio_pg_file" in row else ""
        cpu = f"{row['cpu_ms_per_step']['median']:.1f}"
        per_commit = ""
        if row["log"] == "pg":
            cpu += f" ({row['pg_cpu_ms_per_step']['median']:.1f})"
            per_commit = (
                f"{row['events_per_transaction']['median']:.1f} "
                f"({row['wal_syncs_per_transaction']['median']:.2f})"
            )
        lines.append(
            f"| {row['hosts']} | {LOG_NAMES[row['log']]} | {rate['median']:,.0f} "
            f"[{rate['min']:,.0f} .. {rate['max']:,.0f}] | {ratio} | "
            f"{row['steps']['median']:,.0f} | {row['wall_s']['median']:.2f} | "
            f"{row['cores_busy']['median']:.2f} | {cpu} | {per_commit} |"
        )
    return lines


def _recovery_table(figures: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    recovery = figures["recovery"]
    if recovery:
        first = next(iter(recovery.values()))["runs"][0]
        lines += [
            "",
            f"### Recovery after a host loss: {first['sessions']} sessions on "
            f"{first['hosts']} hosts, {first['latency_ms']:g} ms think time, "
            f"{first['steps_per_session']} steps each; host 0 killed "
            f"({'SIGKILL' if first['kill'] == 'sigkill' else 'ray.kill'}; Ray restarts it); "
            "seconds from the kill",
            "",
            "| log | run | sessions on the killed host | reclaimed | process back s "
            "| host started s | first claim s | p50 s | all claimed s | seen by poller s "
            "| goal ≤ 10 s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        notes = []
        for kind, summary in recovery.items():
            for number, rec in enumerate(summary["runs"], start=1):
                name = f"{LOG_NAMES[kind]}, run {number}"
                if rec.get("ping_error"):
                    notes.append(f"{name}: the restarted host's ping: {rec['ping_error']}")
                if rec.get("after_timeout") is not None:
                    notes.append(f"{name}: after the timeout: {rec['after_timeout']}")
                if rec["all_s"] is not None:
                    goal = "**met**" if rec["all_s"] <= 10 else "**not met**"
                else:
                    goal = f"**not met**: not all running again after {rec['timeout_s']:g} s"
                lines.append(
                    f"| {LOG_NAMES[kind]} | {number} | {rec['victim_sessions']} | "
                    f"{rec['reclaimed']} | {_fmt_s(rec['process_back_s'])} | "
                    f"{_fmt_s(rec['host_started_s'])} | {_fmt_s(rec['first_s'])} | "
                    f"{_fmt_s(rec['p50_s'])} | {_fmt_s(rec['all_s'])} | "
                    f"{_fmt_s(rec['seen_all_s'])} | {goal} |"
                )
        lines.append("")
        for kind, summary in recovery.items():
            runs = len(summary["runs"])
            if summary["all_s"] is None:
                lines.append(f"{LOG_NAMES[kind]}: no run had every session running again.")
                continue
            a = summary["all_s"]
            lines.append(
                f"{LOG_NAMES[kind]}: all claimed again in {a['median']:.2f} s median "
                f"[{a['min']:.2f} .. {a['max']:.2f}] over {summary['complete_runs']} of "
                f"{runs} run(s) that completed."
            )
        lines += ["", *notes] if notes else []
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", type=int, default=500, help="sessions per steps/s cell")
    parser.add_argument("--hosts", default="1,2,4", help="host counts for the steps/s table")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logs", default="file,pg", help="file, pg or both")
    parser.add_argument("--recovery-sessions", type=int, default=1000, help="0: skip")
    parser.add_argument("--recovery-hosts", type=int, default=2)
    parser.add_argument("--recovery-steps", type=int, default=40, help="steps per session")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="scripted think time")
    parser.add_argument("--recovery-repeats", type=int, default=3)
    parser.add_argument("--recovery-timeout", type=float, default=300.0)
    parser.add_argument(
        "--kill",
        choices=("ray", "sigkill"),
        default="ray",
        help="ray.kill(host, no_restart=False), or SIGKILL of the host's pid (a crash)",
    )
    parser.add_argument("--quick", action="store_true", help="20 sessions, 1,2 hosts, 50 ...")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--dir", default=None, help="scratch directory (default: $TMPDIR)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.hosts, args.repeats = 20, "1,2", 1
        args.recovery_sessions, args.recovery_steps, args.recovery_repeats = 50, 20, 1
        args.recovery_timeout = min(args.recovery_timeout, 120.0)
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    figures = run(args)
    print(render(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
