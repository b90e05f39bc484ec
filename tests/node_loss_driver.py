"""Driver for the node-loss test (its own Ray cluster, so it runs in a child process).

A two-node ``ray.cluster_utils.Cluster``: the SessionHosts start on the worker
node; mid-run that node is removed. Ray restarts the hosts on the head node,
they reopen their log partitions and resume every session. Prints one JSON
object with what happened.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fleetlog.actors.fleet import Fleet
from fleetlog.actors.runner import Command
from fleetlog.config import parse_config, parse_task, session_id_for


def main() -> None:
    home = Path(sys.argv[1])
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    config = parse_config(
        '[policy]\nallow = ["send_email", "read_file", "list_dir", "write_file", "run_shell"]\n',
        source="node-loss",
    )
    fleet = Fleet.start(
        home,
        config,
        hosts=2,
        runtime_env={"env_vars": {"FLEETLOG_SCRIPTED_LATENCY_MS": "200"}},
        host_scheduling=NodeAffinitySchedulingStrategy(worker.node_id, soft=True),
    )
    # Soft affinity is a preference, not a promise: make sure the node we are about
    # to lose really holds hosts (restarting one re-runs its placement).
    for _ in range(20):
        placed = ray.get([h.node_id.remote() for h in fleet.hosts])
        if worker.node_id in placed:
            break
        ray.kill(fleet.hosts[0], no_restart=False)
    else:
        raise SystemExit(f"no host was ever placed on the worker node: {placed}")
    hosts_on_lost_node = placed.count(worker.node_id)
    tasks = []
    for i in range(12):
        prompt = (
            f"Summarize the notes and email them to ops{i}@example.com"
            if i % 2
            else (f"Write a short report about topic {i}")
        )
        task = parse_task({"id": f"n{i}", "prompt": prompt})
        tasks.append((task, session_id_for(f"n{i}")))
    fleet.submit_many(tasks)
    ids = {sid for _, sid in tasks}
    deadline = time.monotonic() + 60
    while sum(r["step_count"] for r in fleet.statuses()) < 10:
        if time.monotonic() > deadline:
            raise SystemExit("sessions never got going")
        time.sleep(0.05)
    before = {r["id"]: r["status"] for r in fleet.statuses()}
    cluster.remove_node(worker, allow_graceful=False)  # abrupt: no SIGTERM first
    approvals = 0
    deadline = time.monotonic() + 240
    while True:
        rows = fleet.wait_settled(ids, timeout=240)
        waiting = [r for r in rows if r["status"] == "awaiting_review"]
        if not waiting or time.monotonic() > deadline:
            break
        for row in waiting:  # calls left in doubt by the lost node: a human says go
            for review in row["reviews"]:
                fleet.command(row["id"], Command(kind="approve", call_id=review["call_id"]))
                approvals += 1
        time.sleep(0.2)
    nodes_alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    fleet.shutdown()
    ray.shutdown()
    cluster.shutdown()
    print(
        json.dumps(
            {
                "statuses": dict(Counter(r["status"] for r in rows)),
                "running_before_loss": sum(1 for s in before.values() if s == "running"),
                "in_doubt_approvals": approvals,
                "hosts_on_lost_node": hosts_on_lost_node,
                "nodes_alive": len(nodes_alive),
            }
        )
    )


if __name__ == "__main__":
    main()
