"""Agent-runtime benchmark: fleetlog's overhead per durable step, and peers on the same work.

Workload (the same for every runtime): N concurrent sessions, each K steps; a
step is one call to a zero-latency scripted model that asks for one tool call,
then that tool call (a cheap ``list_dir``); every step is durable before the
next one starts. Peers: DBOS Transact on SQLite and LangGraph with its SQLite
checkpointer (``bench/peers.py``, installed with ``pip install -e '.[bench]'``).

Figures:

* **overhead per step** (p50, p95): wall time between the starts of consecutive
  steps of one session, read from the timestamps the log stamped on each
  ``ModelCallRequested``. The model and the tool cost ~0 here, so this is the
  runtime's own cost: deciding, vetting, two durable appends (group-committed
  with whatever else is in flight), folding.
* **steps/s**: N*K completed steps over the wall time from first submit to last
  completion.
* **peak RSS**: fleetlog engine runs in one child process per cell (ru_maxrss);
  the Ray fleet cell sums the RSS of every process of the local Ray cluster and
  the driver, sampled every 0.2 s.

Each cell runs in a fresh child process (and fresh directories) ``--repeats``
times; the median is reported with [min .. max].

    .venv/bin/python -m bench.fleet_bench                 # full table (1/100/1000 sessions)
    .venv/bin/python -m bench.fleet_bench --quick         # small, for CI smoke
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _bench_tasks(sessions: int, steps: int) -> list[dict[str, Any]]:
    limits = {
        "max_steps": steps + 1,
        "max_identical_calls": steps + 1,
        "max_tokens": 10**9,
        "max_cost_usd": 1e9,
        "total_timeout_s": 3600,
        "step_timeout_s": 600,
    }
    return [
        {"id": f"bench-{i:05d}", "prompt": f"benchmark: {steps} steps", "limits": limits}
        for i in range(sessions)
    ]


def _step_gaps(log_root: Path) -> tuple[list[float], int]:
    from fleetlog.events.partitions import open_readers
    from fleetlog.events.schema import ModelCallRequested

    gaps: list[float] = []
    steps = 0
    for reader in open_readers(log_root):
        try:
            for sid in reader.session_ids():
                starts = [
                    e.ts
                    for e in reader.read_stream(sid, resolve_blobs=False)
                    if isinstance(e.event, ModelCallRequested)
                ]
                steps += max(len(starts) - 1, 0)
                gaps.extend(b - a for a, b in itertools.pairwise(starts))
        finally:
            reader.close()
    return gaps, steps


#: Ray's worker processes that are the fleet (actor classes in actors/fleet.py).
_FLEET_ACTORS = (b"ray::_HostActor", b"ray::_ProjectorActor", b"ray::_Dispatcher", b"ray::_Ledger")
#: Ray's daemons that may not descend from the driver.
_RAY_DAEMONS = ("raylet", "gcs_server")


def _tree_rss_mb(root: int) -> tuple[float, float]:
    """RSS now of (the fleet: the driver ``root`` and the fleet's actor processes, Ray's
    own processes: its daemons and idle workers), in MiB."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    daemons: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        for line in status.splitlines():
            if line.startswith("PPid:"):
                parents[pid] = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1])
            elif line.startswith("Name:") and line.split()[1] in _RAY_DAEMONS:
                daemons.add(pid)
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    fleet = {root}
    for pid in tree:
        try:
            if (Path(f"/proc/{pid}/cmdline").read_bytes()).startswith(_FLEET_ACTORS):
                fleet.add(pid)
        except OSError:
            continue
    ray_own = (tree | daemons) - fleet
    return (
        sum(rss.get(pid, 0) for pid in fleet) / 1024,
        sum(rss.get(pid, 0) for pid in ray_own) / 1024,
    )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- child: the engine in one process ---------------------------------------------------------


class BenchModel:
    """Zero-latency, near-zero-CPU model: ``steps`` tool calls, then a final answer.

    The peers' "model" is a plain function too; using the richer ScriptedModel
    here would charge its conversation hashing to fleetlog's overhead.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps

    async def complete(self, request: Any, *, timeout_s: float, on_retry: Any = None) -> Any:
        from fleetlog.actors.model import ModelReply, Usage

        done = (len(request.messages) - 1) // 2  # user, then (assistant, user) per step
        if done < self.steps:
            call = {
                "type": "tool_use",
                "id": f"toolu_{done:04d}_{id(request) & 0xFFFFFF:06x}",
                "name": "list_dir",
                "input": {"path": "."},
            }
            return ModelReply(
                content=[call], stop_reason="tool_use", usage=Usage(10, 10), model="bench"
            )
        return ModelReply(
            content=[{"type": "text", "text": "done"}],
            stop_reason="end_turn",
            usage=Usage(10, 5),
            model="bench",
        )

    def max_usage(self, request: Any) -> Any:
        from fleetlog.actors.model import worst_case_usage

        return worst_case_usage(request)

    async def aclose(self) -> None:
        return None


async def _engine(sessions: int, steps: int, home: Path, *, scripted: bool) -> dict[str, float]:
    """One HostCore in this process: with BenchModel, or (``scripted``) with the offline
    model the fleet's hosts run, so that the two compare the same work."""
    from fleetlog.actors.fleet import session_event
    from fleetlog.actors.host import HostCore
    from fleetlog.config import Config, parse_task, session_id_for

    config = Config()
    model = BenchModel(steps)
    factory = None if scripted else (lambda _name: model)
    host = HostCore(0, 1, home, config, model_factory=factory)
    await host.start()
    tasks = [parse_task(t) for t in _bench_tasks(sessions, steps)]
    started = time.perf_counter()
    for task in tasks:
        assert task.id is not None
        sid = session_id_for(task.id)
        await host.create(sid, session_event(config, task, sid))
    while True:
        rows = host.statuses()
        if len(rows) == sessions and all(r["status"] in ("completed", "failed") for r in rows):
            break
        await asyncio.sleep(0.005)
    wall = time.perf_counter() - started
    failed = [r for r in rows if r["status"] != "completed"]
    host.close()
    if failed:
        raise SystemExit(f"{len(failed)} bench sessions failed: {failed[0]['error']}")
    gaps, counted = _step_gaps(home / "log")
    return {
        "steps_per_s": sessions * steps / wall,
        "p50_step_ms": _pct(gaps, 0.5) * 1000,
        "p95_step_ms": _pct(gaps, 0.95) * 1000,
        "wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps_counted": counted,
    }


def _fleet(sessions: int, steps: int, home: Path, hosts: int) -> dict[str, float]:
    import logging
    import threading

    import ray

    from fleetlog.actors.fleet import Fleet, local_ray_options
    from fleetlog.config import Config, parse_task, session_id_for

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The Ray `fleetlog run` starts, as it starts it.
    ray.init(**local_ray_options(), logging_level=logging.ERROR, log_to_driver=False)
    peak = 0.0
    peak_ray = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_ray
        while not stop.is_set():
            fleet_mb, ray_mb = _tree_rss_mb(os.getpid())
            peak, peak_ray = max(peak, fleet_mb), max(peak_ray, ray_mb)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    config = Config()
    fleet = Fleet.start(home, config, hosts=hosts)
    tasks = [parse_task(t) for t in _bench_tasks(sessions, steps)]
    keyed = [(t, session_id_for(t.id or "")) for t in tasks]
    started = time.perf_counter()
    fleet.submit_many(keyed)
    rows = fleet.wait_settled({sid for _, sid in keyed}, timeout=1800, poll=0.1)
    wall = time.perf_counter() - started
    fleet.shutdown()
    stop.set()
    sampler.join()
    ray.shutdown()
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        raise SystemExit(f"{len(failed)} bench sessions failed: {failed[0]['error']}")
    gaps, _ = _step_gaps(home / "log")
    return {
        "steps_per_s": sessions * steps / wall,
        "p50_step_ms": _pct(gaps, 0.5) * 1000,
        "p95_step_ms": _pct(gaps, 0.95) * 1000,
        "wall_s": wall,
        "peak_rss_mb": peak,
        "ray_rss_mb": peak_ray,
    }


def _child(argv: list[str]) -> None:
    kind, sessions, steps, workdir = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    if kind in ("engine", "engine-scripted"):
        result = asyncio.run(_engine(sessions, steps, workdir, scripted=kind != "engine"))
    else:
        result = _fleet(sessions, steps, workdir, hosts=int(kind.split(":")[1]))
    sys.stdout.write(json.dumps(result) + "\n")


# --- parent: cells, repeats, table ------------------------------------------------------------


def _run_cell(kind: str, sessions: int, steps: int, parent: Path) -> dict[str, float] | str:
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind.replace(':', '')}-{sessions}-", dir=parent))
    if kind in ("dbos", "langgraph"):
        from bench import peers

        runner = peers.run_dbos if kind == "dbos" else peers.run_langgraph
        try:
            return runner(sessions, steps, workdir)
        except Exception as e:
            return f"failed: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.fleet_bench",
            "--child",
            kind,
            str(sessions),
            str(steps),
            str(workdir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        return f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:120]}"
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list and args_list[0] == "--child":
        _child(args_list[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,100,1000", help="comma-separated session counts")
    parser.add_argument("--steps", type=int, default=10, help="steps per session")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default="dbos,langgraph", help="peers to run ('' for none)")
    parser.add_argument("--fleet-hosts", type=int, default=2, help="hosts for the Ray fleet cell")
    parser.add_argument("--quick", action="store_true", help="1 and 20 sessions, 1 repeat")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args(args_list)
    counts = [int(c) for c in args.sessions.split(",")]
    repeats = args.repeats
    peers = [p for p in args.peers.split(",") if p]
    if args.quick:
        counts, repeats, peers = [1, 20], 1, []
    parent = Path(args.dir)
    parent.mkdir(parents=True, exist_ok=True)
    # The Ray fleet runs the offline scripted model (what `fleetlog run` runs); so does
    # "engine-scripted": the same work in one process, which the fleet is measured against.
    fleet_kind = f"fleet:{args.fleet_hosts}"
    kinds = ["engine", "engine-scripted", fleet_kind, *peers]
    results: dict[str, dict[int, list[dict[str, float] | str]]] = {k: {} for k in kinds}
    with tempfile.TemporaryDirectory(dir=parent) as scratch:
        # Interleaved (each repeat runs every cell once): the machine's drift hits all alike.
        for r in range(repeats):
            for n in counts:
                for kind in kinds:
                    if kind == fleet_kind and n < 100 and n != max(counts):
                        continue  # a Ray fleet for one session measures Ray's latency only
                    print(f"repeat {r + 1}/{repeats}: {kind}, {n} sessions", file=sys.stderr)
                    results[kind].setdefault(n, []).append(
                        _run_cell(kind, n, args.steps, Path(scratch))
                    )
    table = _summarise(results)
    if args.json:
        print(json.dumps(table))
    else:
        _print(table, args.steps, repeats)
    return 0


def _summarise(
    results: dict[str, dict[int, list[dict[str, float] | str]]],
) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for kind, by_n in results.items():
        for n, runs in by_n.items():
            ok = [r for r in runs if isinstance(r, dict)]
            key = f"{kind}/{n}"
            if not ok:
                table[key] = {"error": runs[0]}
                continue
            row: dict[str, Any] = {}
            for metric in (
                "steps_per_s",
                "p50_step_ms",
                "p95_step_ms",
                "peak_rss_mb",
                "ray_rss_mb",
            ):
                values = [r[metric] for r in ok if metric in r]
                if not values:
                    continue
                row[metric] = statistics.median(values)
                row[metric + "_range"] = (min(values), max(values))
            table[key] = row
    return table


def _print(table: dict[str, dict[str, Any]], steps: int, repeats: int) -> None:
    print(f"agent runtime benchmark: {steps} steps/session, 1 tool call/step, zero-latency model")
    print(f"median of {repeats} run(s) in fresh processes; [min .. max]; nproc {os.cpu_count()}")
    print()
    print(
        f"{'runtime/sessions':<22} {'steps/s':>22} {'p50 ms':>8} {'p95 ms':>8} {'peak RSS MB':>12}"
    )
    for key, row in table.items():
        if "error" in row:
            print(f"{key:<22} {row['error']}")
            continue
        lo, hi = row["steps_per_s_range"]
        rate = f"{row['steps_per_s']:,.0f} [{lo:,.0f}..{hi:,.0f}]"
        ray_mb = f"  (+ Ray's own {row['ray_rss_mb']:,.0f})" if "ray_rss_mb" in row else ""
        print(
            f"{key:<22} {rate:>22} {row['p50_step_ms']:>8.2f} {row['p95_step_ms']:>8.2f} "
            f"{row['peak_rss_mb']:>12.0f}{ray_mb}"
        )
    fleet = next((k for k in table if k.startswith("fleet:") and k.endswith("/100")), "")
    engine = table.get("engine-scripted/100", {})
    if fleet and "steps_per_s" in table[fleet] and engine.get("steps_per_s"):
        row = table[fleet]
        print()
        print(
            f"Ray fleet at 100 sessions: {row['steps_per_s']:,.0f} steps/s = "
            f"{row['steps_per_s'] / engine['steps_per_s']:.2f}x the engine on the same model "
            f"(goal >= 0.8x); fleet processes' peak RSS {row['peak_rss_mb']:,.0f} MB "
            f"(goal <= 1,024), Ray's own {row.get('ray_rss_mb', 0):,.0f} MB"
        )
    fleet100 = table.get("engine/100", {})
    peer_rates = [
        table[k]["steps_per_s"]
        for k in ("dbos/100", "langgraph/100")
        if k in table and "steps_per_s" in table[k]
    ]
    if fleet100.get("steps_per_s") and peer_rates:
        best = max(peer_rates)
        print()
        print(
            f"steps/s at 100 sessions: fleetlog {fleet100['steps_per_s']:,.0f} vs faster peer "
            f"{best:,.0f} -> {fleet100['steps_per_s'] / best:.1f}x (goal >= 5x)"
        )


if __name__ == "__main__":
    sys.exit(main())
