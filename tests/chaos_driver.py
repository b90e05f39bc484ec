"""The chaos suite's driver: a multi-node fleet on PostgreSQL, under faults.

``python tests/chaos_driver.py ROOT [--sessions N] [--kills K] [--rounds R]``

* a real PostgreSQL (``pg_server.PgServer``) holds the shared log and the outbox;
* a ``ray.cluster_utils.Cluster``: a head and two workers, each node with a
  directory of its own (``FLEETLOG_NODE_HOME``: workspaces, projections — its
  disk), deleted when the node is lost;
* the real ``anthropic`` SDK against the loopback Messages-API server
  (``fake_anthropic``), which answers after a think time;
* N sessions of tenant ``acme`` under a fleet-wide budget, an operator that
  approves every review (in-doubt calls too) and records what was acknowledged.

Each round injects, mid-run: (a) the abrupt loss of a worker node
(``remove_node(allow_graceful=False)``, its directory deleted, a fresh node
added), (b) SIGKILL of K random host processes, (c) ``pg_ctl restart -m
immediate``. Before each fault the driver snapshots every committed event
(position, event id); acknowledged means committed, so each snapshot must be in
the final log. At the end: every session terminal or awaiting review, the log
verified, the live (incremental) projections equal to a rebuild, no snapshot
event lost, no model call answered twice, no email delivered twice, every
billed request recorded, no tenant over its budget. Prints a table on stderr
and one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback test cluster only

import psycopg
import ray
from fake_anthropic import FakeAnthropic, scripted_responder
from pg_server import PgServer
from ray.cluster_utils import Cluster

from fleetlog.actors.fleet import SETTLED, Fleet
from fleetlog.actors.model import demo_tasks
from fleetlog.actors.runner import Command
from fleetlog.config import parse_config, parse_task, session_id_for
from fleetlog.events.pglog import PostgresLog
from fleetlog.events.schema import (
    ModelCallRequested,
    ModelResponded,
    ReviewDecided,
    ToolCallCompleted,
    ToolCallProposed,
)
from fleetlog.events.source import PgSource
from fleetlog.events.state import fold
from fleetlog.events.verify import verify_events
from fleetlog.projections.projector import Projector

CLAUDE = "claude-sonnet-4-6"
BUDGET_USD = 25.0  # binding for no session here: reservations are worst cases


def _config(dsn: str) -> Any:
    return parse_config(
        f"""
[fleet]
log = "{dsn}"
model = "{CLAUDE}"

[models."{CLAUDE}"]
input_usd_per_mtok = 3.0
output_usd_per_mtok = 15.0

[limits]
max_steps = 12
step_timeout_s = 20
total_timeout_s = 600

[budgets.acme]
max_cost_usd = {BUDGET_USD}
""",
        source="chaos",
    )


def _committed(dsn: str) -> set[tuple[int, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT position, event_id FROM fleetlog.events").fetchall()
    return {(int(p), str(e)) for p, e in rows}


class Chaos:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.rng = random.Random(args.seed)
        self.faults: Counter[str] = Counter()
        self.snapshots: list[tuple[str, set[tuple[int, str]]]] = []
        self.acked: list[tuple[str, str]] = []  # (session, call) approvals acknowledged
        self.nodes: dict[Any, Path] = {}
        self.started = time.monotonic()
        self.timeline: list[tuple[str, float]] = []

    # --- the cluster ----------------------------------------------------------------------

    def add_node(self, cluster: Cluster, name: str) -> Any:
        local = self.root / "nodes" / f"{name}-{uuid.uuid4().hex[:6]}"
        local.mkdir(parents=True)
        node = cluster.add_node(num_cpus=2, env_vars={"FLEETLOG_NODE_HOME": str(local)})
        self.nodes[node] = local
        return node

    def lose_node(self, cluster: Cluster) -> None:
        workers = [n for n in self.nodes if n is not self.head]
        node = self.rng.choice(workers)
        cluster.remove_node(node, allow_graceful=False)  # SIGKILL, no goodbye
        shutil.rmtree(self.nodes.pop(node))  # its disk goes with it
        self.faults["node lost"] += 1
        self.add_node(cluster, "replacement")  # the autoscaler's part
        cluster.wait_for_nodes()

    def kill_hosts(self, fleet: Fleet, count: int) -> None:
        for _ in range(count):
            host = self.rng.choice(fleet.hosts)
            try:
                pid = ray.get(host.pid.remote(), timeout=60)
            except Exception:
                continue  # restarting already
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.faults["host SIGKILL"] += 1
            time.sleep(self.rng.uniform(0.2, 1.0))

    def restart_postgres(self, server: PgServer) -> None:
        server.restart("immediate")  # a crash: no shutdown checkpoint, WAL replay on start
        self.faults["PostgreSQL restart -m immediate"] += 1

    # --- the run --------------------------------------------------------------------------

    def snapshot(self, dsn: str, before: str) -> None:
        self.snapshots.append((before, _committed(dsn)))
        self.timeline.append((before, round(time.monotonic() - self.started, 1)))

    def approve_waiting(self, fleet: Fleet, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["status"] != "awaiting_review":
                continue
            for review in row["reviews"]:
                try:
                    if fleet.command(row["id"], Command(kind="approve", call_id=review["call_id"])):
                        self.acked.append((row["id"], review["call_id"]))
                except Exception:
                    pass  # a host restarting, or decided meanwhile: next round

    def wait_steps(self, fleet: Fleet, ids: set[str], steps: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                rows = [r for r in fleet.statuses(ids) if r["id"] in ids]
            except Exception:
                time.sleep(0.5)
                continue
            self.approve_waiting(fleet, rows)
            if sum(r["step_count"] for r in rows) >= steps:
                return
            if len(rows) == len(ids) and all(
                r["status"] in SETTLED and r["status"] != "awaiting_review" for r in rows
            ):
                return
            time.sleep(0.2)

    def settle(self, fleet: Fleet, ids: set[str], timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                rows = [r for r in fleet.statuses(ids) if r["id"] in ids]
            except Exception:
                time.sleep(0.5)
                continue
            settled = len(rows) == len(ids) and all(r["status"] in SETTLED for r in rows)
            waiting = [r for r in rows if r["status"] == "awaiting_review"]
            if settled and not waiting:
                return rows
            self.approve_waiting(fleet, waiting)
            time.sleep(0.3)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--think-ms", type=int, default=300)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--settle-s", type=float, default=240.0)
    args = parser.parse_args()
    # Stopped from outside (a test's timeout): still take the cluster and the database down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    root = Path(args.root)
    chaos = Chaos(root, args)
    started = time.monotonic()

    server = PgServer()
    server.start()
    fake = FakeAnthropic(
        responder=lambda req: (time.sleep(args.think_ms / 1000), scripted_responder(req))[1]
    )
    fake.start()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE chaos")
        dsn = server.dsn_for("chaos")
        chaos.head = next(iter(cluster.list_all_nodes()))
        chaos.nodes[chaos.head] = root / "nodes" / "head"  # the driver's node: never lost
        chaos.add_node(cluster, "w1")
        chaos.add_node(cluster, "w2")
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        fleet = Fleet.start(
            root / "fleet",
            _config(dsn),
            hosts=args.hosts,
            runtime_env={
                "env_vars": {
                    "ANTHROPIC_BASE_URL": fake.base_url,
                    "ANTHROPIC_API_KEY": fake.api_key,
                }
            },
            host_scheduling="SPREAD",
        )
        tasks = []
        for t in demo_tasks(args.sessions, seed=args.seed):
            task = parse_task({**t, "tenant": "acme"})
            assert task.id is not None
            tasks.append((task, session_id_for(task.id)))
        fleet.submit_many(tasks)
        ids = {sid for _, sid in tasks}
        per_round = max(args.sessions // 4, 10)
        for r in range(args.rounds):
            base = sum(x["step_count"] for x in fleet.statuses(ids))
            chaos.wait_steps(fleet, ids, base + per_round, 60)
            chaos.snapshot(dsn, f"round {r + 1}: node loss")
            chaos.lose_node(cluster)
            chaos.wait_steps(fleet, ids, base + 2 * per_round, 60)
            chaos.snapshot(dsn, f"round {r + 1}: host kills")
            chaos.kill_hosts(fleet, args.kills)
            chaos.wait_steps(fleet, ids, base + 3 * per_round, 60)
            chaos.snapshot(dsn, f"round {r + 1}: PostgreSQL restart")
            chaos.restart_postgres(server)
        rows = chaos.settle(fleet, ids, args.settle_s)
        chaos.timeline.append(("settled", round(time.monotonic() - chaos.started, 1)))
        live = {name: fleet_query(fleet, sql) for name, sql in CHECKED_TABLES.items()}
        fleet.shutdown()
        report = check(chaos, dsn, ids, rows, live, fake)
        report["seconds"] = round(time.monotonic() - started, 1)
        print_table(report)
        print(json.dumps(report))
    finally:
        ray.shutdown()
        cluster.shutdown()
        fake.close()
        server.stop()


CHECKED_TABLES = {
    "agent_executions": "SELECT id, status, step_count, token_count, input_tokens, output_tokens, "
    "round(cost_usd, 9) AS cost, restarts, error FROM agent_executions",
    "agent_tool_calls": "SELECT id, execution_id, tool_name, status, verdict FROM agent_tool_calls",
    "model_calls": "SELECT execution_id, step_number, input_tokens, output_tokens FROM model_calls",
    "budget_counters": "SELECT tenant, agent_type, sessions, steps, tokens, round(cost_usd, 9) "
    "FROM budget_counters",
}


def fleet_query(fleet: Fleet, sql: str) -> list[tuple[Any, ...]]:
    reply = ray.get(fleet.projector.query.remote(sql), timeout=300)
    if "error" in reply:
        raise SystemExit(f"projections: {reply['error']}")
    return sorted((tuple(r.values()) for r in reply["table"].to_pylist()), key=repr)


def check(
    chaos: Chaos,
    dsn: str,
    ids: set[str],
    rows: list[dict[str, Any]],
    live: dict[str, list[tuple[Any, ...]]],
    fake: FakeAnthropic,
) -> dict[str, Any]:
    final = _committed(dsn)
    lost = sum(len(snap - final) for _, snap in chaos.snapshots)
    with PostgresLog.open(dsn, pool_size=2) as log:
        verified = verify_events(log, "chaos")
        streams = {sid: log.read_stream(sid, resolve_blobs=False) for sid in log.session_ids()}
    states = {sid: fold(sid, s) for sid, s in streams.items()}
    statuses = Counter(states[sid].status for sid in ids if sid in states)
    unsettled = [sid for sid in ids if sid not in states or states[sid].status not in SETTLED]
    answered: Counter[str] = Counter()
    requested: set[str] = set()
    emails: Counter[tuple[str, str]] = Counter()
    email_calls: set[tuple[str, str]] = set()
    for sid, stream in streams.items():
        for env in stream:
            ev = env.event
            if isinstance(ev, ModelResponded):
                answered[ev.request_id] += 1
            elif isinstance(ev, ModelCallRequested):
                requested.add(ev.request_id)
            elif isinstance(ev, ToolCallProposed) and ev.tool == "send_email":
                email_calls.add((sid, ev.call_id))
            elif (
                isinstance(ev, ToolCallCompleted)
                and not ev.is_error
                and (sid, ev.call_id) in email_calls
            ):
                emails[(sid, ev.call_id)] += 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        outbox = conn.execute(
            "SELECT session_id, call_id, count(*) FROM fleetlog.outbox GROUP BY session_id, call_id"
        ).fetchall()
    delivered = Counter({(str(s), str(c)): int(n) for s, c, n in outbox})
    duplicated_models = sum(n - 1 for n in answered.values() if n > 1)
    duplicated_emails = sum(n - 1 for n in delivered.values() if n > 1) + sum(
        n - 1 for n in emails.values() if n > 1
    )
    undelivered = [c for c in emails if c not in delivered]
    billed = {request for request, _usage in fake.billed}
    unrecorded = sorted(billed - requested)
    spent = sum(s.cost_usd for s in states.values() if s.tenant == "acme")
    acked_missing = [
        (sid, call)
        for sid, call in chaos.acked
        if not any(
            isinstance(e.event, ReviewDecided) and e.event.call_id == call for e in streams[sid]
        )
    ]
    source = PgSource(dsn)
    try:
        with Projector.open(chaos.root / "rebuild", source=source) as projector:
            projector.rebuild()
            rebuilt = {
                name: sorted(
                    (tuple(r.values()) for r in projector.query(sql).to_pylist()), key=repr
                )
                for name, sql in CHECKED_TABLES.items()
            }
    finally:
        source.close()
    mismatched = [name for name in CHECKED_TABLES if rebuilt[name] != live[name]]
    return {
        "faults": dict(chaos.faults),
        "sessions": len(ids),
        "statuses": dict(statuses),
        "errors": dict(
            Counter(states[sid].error.split(":")[0] for sid in ids if states[sid].error)
        ),
        "unsettled": len(unsettled),
        "events": len(final),
        "snapshots": len(chaos.snapshots),
        "lost": lost,
        "acked_decisions_missing": len(acked_missing),
        "duplicated_model_answers": duplicated_models,
        "duplicated_emails": duplicated_emails,
        "emails_delivered": len(delivered),
        "emails_succeeded_not_in_outbox": len(undelivered),
        "billed_requests": len(billed),
        "billed_not_recorded": len(unrecorded),
        "tenant_spend_usd": round(spent, 6),
        "budget_usd": BUDGET_USD,
        "verify_faults": [str(f) for f in verified.faults][:5],
        "projection_mismatches": mismatched,
        "approvals": len(chaos.acked),
        "timeline": chaos.timeline,
    }


def print_table(report: dict[str, Any]) -> None:
    faults = ", ".join(f"{n} x {k}" for k, n in report["faults"].items())
    lines = [
        "| faults injected | sessions | events | lost | duplicated | verify "
        "| rebuild = incremental |",
        "|---|---|---|---|---|---|---|",
        f"| {faults} | {report['sessions']} ({report['unsettled']} unsettled) "
        f"| {report['events']:,} | {report['lost']} "
        f"| {report['duplicated_model_answers'] + report['duplicated_emails']} "
        f"| {'clean' if not report['verify_faults'] else 'FAULTS'} "
        f"| {'yes' if not report['projection_mismatches'] else 'NO'} |",
    ]
    sys.stderr.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
