"""Peer figures: the fleetlog agent workload on DBOS Transact and on LangGraph.

The workload (the same as fleetlog's): ``sessions`` concurrent sessions, each
running ``steps`` steps. One step is one "model call" with zero latency that
returns a tool request (``{"tool": "noop", "input": {"i": i}}``), then one
"tool call" (a no-op returning ``f"ok {i}"``), and the step's results are
durable before the next step starts. After ``steps`` steps the session ends.

Each peer runs in its own natural durable configuration:

* **DBOS** (``dbos`` 3.4): one ``@DBOS.workflow()`` per session looping over two
  ``@DBOS.step()`` calls (model, tool). DBOS checkpoints every step's output in
  its system database before the step returns, here SQLite
  (``system_database_url="sqlite:///…"``). DBOS leaves SQLite's journal and sync
  modes at their defaults (rollback journal ``DELETE``, ``synchronous=FULL``) and
  opens ``BEGIN IMMEDIATE`` transactions with a 30 s busy timeout; its engine
  pool holds 20 connections. Variants: ``threads`` (the default: sync workflow
  and steps, N threads each calling the workflow function, which DBOS runs
  durably in the calling thread), ``async`` (async workflow and steps, all N
  started with ``DBOS.start_workflow_async`` under ``asyncio.gather`` and their
  handles awaited; DBOS runs the database calls on its thread pool) and
  ``start-loop`` (``DBOS.start_workflow`` called N times from one thread, then
  the handles awaited: each call waits for the workflow's status row to commit,
  so sessions are admitted one at a time and few are in flight at once; see
  ``mean_in_flight``). ``--dbos-journal wal`` puts the file in WAL mode before
  DBOS opens it, for comparison only: it is not how DBOS ships.
* **LangGraph** (``langgraph`` 1.2 + ``langgraph-checkpoint-sqlite`` 3.1): a
  ``StateGraph`` with an ``agent`` node (the model call, or END after the last
  step) and a ``tool`` node, ``agent -> tool | END`` and ``tool -> agent``,
  compiled with the SQLite checkpointer; one ``thread_id`` per session. It runs
  with ``durability="sync"``: each super-step's checkpoint is committed before
  the next super-step starts (LangGraph's default, ``"async"``, lets the next
  step run while the previous checkpoint is still being written, which is not
  "durable before the next step"). The saver sets ``journal_mode=WAL`` and
  leaves ``synchronous`` at SQLite's default (``FULL``: the WAL is fsynced on
  every commit). Variants: ``async`` (``AsyncSqliteSaver`` on one aiosqlite
  connection, async nodes, sessions as ``ainvoke`` tasks under
  ``asyncio.gather``) and ``threads`` (the default: ``SqliteSaver`` on one
  ``sqlite3`` connection behind its lock, sync nodes, N threads each calling
  ``invoke``).

Measurements (all inside the child process, after imports, setup and one
warm-up session of ``steps`` steps that is not measured, so first-call costs
such as lazy imports stay out of the figures):

* ``wall_s``: from the first session being started to the last one finishing.
* ``steps_per_s``: ``sessions * steps / wall_s``.
* ``p50_step_ms`` / ``p95_step_ms`` / ``p99_step_ms``: per-step latency inside a
  session, the time between consecutive durable step completions (``steps - 1``
  gaps per session; with ``steps == 1``, the first step's latency). A step is
  complete when its tool result is durable: for DBOS when the tool step returns
  (DBOS has committed its output); for LangGraph when the next ``agent`` node
  starts (with ``durability="sync"`` the tool super-step's checkpoint has been
  awaited by then).
* ``p50_first_step_ms`` / ``p95_first_step_ms``: from the session being started
  to its first durable step (includes the session's own start-up writes and
  any wait to be admitted).
* ``mean_in_flight`` / ``peak_in_flight``: sessions between their start and
  their last step, on average over ``wall_s`` and at most: how concurrent the
  run really was.
* ``peak_rss_mb``: the child's peak RSS (``ru_maxrss``); the peers run in-process
  and start no processes of their own.
* ``sqlite_wal`` (1/0) and ``sqlite_synchronous`` (0 OFF, 1 NORMAL, 2 FULL,
  3 EXTRA): read back from the peer's own database connection after the run.
* ``durable_rows``: rows found in the database afterwards (DBOS: step outputs;
  LangGraph: checkpoints), checked against what the workload must have written.

Each peer runs in a child process (``python -m bench.peers PEER N K DIR``) so
that RSS and global state (DBOS is a process-wide singleton) are isolated; the
child works in a fresh temporary directory under ``DIR``, deletes it afterwards
and prints one JSON line. :func:`run_dbos` and :func:`run_langgraph` spawn that
child and parse its line; a child that runs past ``timeout_s`` (300 s) is
killed and reported as a :class:`PeerFailed` error.

Run from the repository root::

    .venv/bin/python -m bench.peers dbos 100 10 /tmp/x          # default variant: threads
    .venv/bin/python -m bench.peers dbos 100 10 /tmp/x --variant start-loop
    .venv/bin/python -m bench.peers langgraph 1000 10 /tmp/x --variant async
    .venv/bin/python -m bench.peers all 100 10 /tmp/x   # both peers, each in a child
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import itertools
import json
import math
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypedDict

REPO_ROOT = Path(__file__).resolve().parent.parent

PEERS = ("dbos", "langgraph")
VARIANTS = ("async", "threads", "start-loop")  # start-loop: DBOS only
# The variant each peer runs unless told otherwise: the one with the higher
# throughput at N=100 and N=1000 on the 2-core reference machine.
DEFAULT_VARIANT = {"dbos": "threads", "langgraph": "threads"}
REQUIRED_MODULES = {
    "dbos": ("dbos",),
    "langgraph": ("langgraph", "langgraph.checkpoint.sqlite", "aiosqlite"),
}
CHILD_TIMEOUT_S = 300.0
INSTALL_HINT = "pip install -e '.[bench]'"


class PeerNotInstalled(RuntimeError):
    """The peer's packages are not importable in this interpreter."""


class PeerFailed(RuntimeError):
    """The peer's child process failed, timed out or printed no result."""


# --------------------------------------------------------------------------- parent side


def require_peer(peer: str) -> None:
    """Raise :class:`PeerNotInstalled` (one line) unless ``peer`` can be imported."""
    for module in REQUIRED_MODULES[peer]:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            what = peer if module == peer else f"{peer} ({module} missing)"
            raise PeerNotInstalled(f"{what} is not installed: {INSTALL_HINT}")


def run_dbos(
    sessions: int,
    steps: int,
    workdir: Path,
    *,
    variant: str | None = None,
    journal: str = "default",
    timeout_s: float = CHILD_TIMEOUT_S,
) -> dict[str, float]:
    """Run the workload on DBOS (SQLite system database) in a child process.

    ``journal="default"`` is DBOS as shipped (rollback journal); ``"wal"`` puts the
    file in WAL mode first (still ``synchronous=FULL``), for comparison only.
    """
    extra = ["--dbos-journal", journal]
    return _run_child("dbos", sessions, steps, workdir, variant, extra, timeout_s)


def run_langgraph(
    sessions: int,
    steps: int,
    workdir: Path,
    *,
    variant: str | None = None,
    durability: str = "sync",
    timeout_s: float = CHILD_TIMEOUT_S,
) -> dict[str, float]:
    """Run the workload on LangGraph (SQLite checkpointer) in a child process.

    ``durability="sync"`` (the default here) commits each super-step's checkpoint
    before the next one starts; ``"async"`` (LangGraph's own default) does not.
    """
    extra = ["--lg-durability", durability]
    return _run_child("langgraph", sessions, steps, workdir, variant, extra, timeout_s)


def _check_variant(peer: str, variant: str) -> None:
    if variant not in VARIANTS or (variant == "start-loop" and peer != "dbos"):
        raise ValueError(f"{peer} has no variant {variant!r}")


def _run_child(
    peer: str,
    sessions: int,
    steps: int,
    workdir: Path,
    variant: str | None,
    extra: list[str],
    timeout_s: float,
) -> dict[str, float]:
    require_peer(peer)
    variant = variant or DEFAULT_VARIANT[peer]
    _check_variant(peer, variant)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # The child cleans up after itself, but not when it is killed: own the directory here.
    with tempfile.TemporaryDirectory(
        prefix=f"{peer}-", dir=workdir, ignore_cleanup_errors=True
    ) as tmp:
        return _spawn(peer, sessions, steps, Path(tmp), variant, extra, timeout_s)


def _spawn(
    peer: str,
    sessions: int,
    steps: int,
    workdir: Path,
    variant: str,
    extra: list[str],
    timeout_s: float,
) -> dict[str, float]:
    cmd = [
        sys.executable,
        "-m",
        "bench.peers",
        peer,
        str(sessions),
        str(steps),
        str(workdir),
        "--variant",
        variant,
        *extra,
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed the child
        raise PeerFailed(
            f"{peer} ({variant}) N={sessions} K={steps}: killed after {timeout_s:.0f} s"
        ) from exc
    result: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    if proc.returncode != 0 or result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise PeerFailed(
            f"{peer} ({variant}) N={sessions} K={steps}: exit {proc.returncode}: "
            + " | ".join(tail)
        )
    return {k: float(v) for k, v in result.items() if isinstance(v, int | float)}


# --------------------------------------------------------------------------- measuring


class _Clock:
    """Per-session step-completion timestamps (``time.perf_counter``)."""

    def __init__(self, sessions: int) -> None:
        self.started = [math.nan] * sessions
        self.done: list[list[float]] = [[] for _ in range(sessions)]

    def start(self, sid: int) -> None:
        self.started[sid] = time.perf_counter()

    def step_done(self, sid: int) -> None:
        self.done[sid].append(time.perf_counter())

    def check(self, sessions: int, steps: int) -> None:
        """Every measured session (ids ``0 .. sessions-1``; later ids are warm-up) ran."""
        for sid, stamps in enumerate(self.done[:sessions]):
            if len(stamps) != steps or math.isnan(self.started[sid]):
                raise RuntimeError(f"session {sid} completed {len(stamps)} of {steps} steps")

    def step_gaps_ms(self, sessions: int) -> list[float]:
        """Time between consecutive step completions inside each session."""
        return [
            (b - a) * 1e3 for stamps in self.done[:sessions] for a, b in itertools.pairwise(stamps)
        ]

    def first_step_ms(self, sessions: int) -> list[float]:
        """From the session being started to its first step's completion."""
        return [(self.done[s][0] - self.started[s]) * 1e3 for s in range(sessions)]

    def in_flight(self, sessions: int, wall_s: float) -> tuple[float, int]:
        """Mean and peak number of sessions between start and last step completion."""
        spans = [(self.started[s], self.done[s][-1]) for s in range(sessions)]
        mean = sum(end - start for start, end in spans) / wall_s
        events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        peak = live = 0
        for _, delta in events:
            live += delta
            peak = max(peak, live)
        return mean, peak


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _summary(
    sessions: int, steps: int, wall_s: float, clock: _Clock, setup_s: float
) -> dict[str, Any]:
    clock.check(sessions, steps)
    first = sorted(clock.first_step_ms(sessions))
    # With one step per session there is no gap between steps: use the first step.
    lat = sorted(clock.step_gaps_ms(sessions)) if steps > 1 else first
    mean_live, peak_live = clock.in_flight(sessions, wall_s)
    return {
        "sessions": sessions,
        "steps": steps,
        "steps_per_s": sessions * steps / wall_s,
        "p50_step_ms": _percentile(lat, 50),
        "p95_step_ms": _percentile(lat, 95),
        "p99_step_ms": _percentile(lat, 99),
        "p50_first_step_ms": _percentile(first, 50),
        "p95_first_step_ms": _percentile(first, 95),
        "mean_in_flight": mean_live,
        "peak_in_flight": peak_live,
        "wall_s": wall_s,
        "setup_s": setup_s,
    }


def _peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _model(i: int) -> dict[str, Any]:
    return {"tool": "noop", "input": {"i": i}}


def _tool(request: dict[str, Any]) -> str:
    return f"ok {request['input']['i']}"


# --------------------------------------------------------------------------- DBOS child


def _child_dbos(
    sessions: int, steps: int, rundir: Path, variant: str, journal: str
) -> dict[str, Any]:
    t_setup = time.perf_counter()
    import sqlalchemy as sa
    from dbos import DBOS, DBOSConfig

    clock = _Clock(sessions + 1)  # the last id is the warm-up session
    warm = sessions

    if variant == "async":

        @DBOS.step()
        async def model_step(i: int) -> dict[str, Any]:
            return _model(i)

        @DBOS.step()
        async def tool_step(request: dict[str, Any]) -> str:
            return _tool(request)

        @DBOS.workflow()
        async def session_async(sid: int, k: int) -> int:
            for i in range(k):
                request = await model_step(i)
                await tool_step(request)
                clock.step_done(sid)
            return k

    else:

        @DBOS.step()
        def model_step_sync(i: int) -> dict[str, Any]:
            return _model(i)

        @DBOS.step()
        def tool_step_sync(request: dict[str, Any]) -> str:
            return _tool(request)

        @DBOS.workflow()
        def session_sync(sid: int, k: int) -> int:
            for i in range(k):
                request = model_step_sync(i)
                tool_step_sync(request)
                clock.step_done(sid)
            return k

    db_path = rundir / "dbos_sys.sqlite"
    if journal == "wal":
        # Not DBOS's default: WAL is a property of the file, so setting it before
        # DBOS opens the file switches every DBOS connection to it. synchronous
        # stays at SQLite's default (FULL: the WAL is fsynced at every commit).
        wal_conn = sqlite3.connect(db_path)
        try:
            wal_conn.execute("PRAGMA journal_mode=WAL")
        finally:
            wal_conn.close()
    config: DBOSConfig = {
        "name": "fleetlog-peer-bench",
        "system_database_url": f"sqlite:///{db_path}",
        "log_level": "WARNING",
    }
    dbos = DBOS(config=config)
    DBOS.launch()
    try:
        if variant == "async":

            async def one(sid: int) -> int:
                clock.start(sid)
                handle = await DBOS.start_workflow_async(session_async, sid, steps)
                return await handle.get_result()

            async def drive() -> tuple[list[int], float, float]:
                await one(warm)  # warm-up session, not measured
                setup_s = time.perf_counter() - t_setup
                t0 = time.perf_counter()
                res = await asyncio.gather(*(one(s) for s in range(sessions)))
                return list(res), time.perf_counter() - t0, setup_s

            results, wall_s, setup_s = asyncio.run(drive())
        elif variant == "threads":
            # One thread per session, each calling the workflow function: DBOS
            # runs a directly called workflow in the calling thread.
            def run_one(sid: int) -> int:
                clock.start(sid)
                return session_sync(sid, steps)

            run_one(warm)  # warm-up session, not measured
            setup_s = time.perf_counter() - t_setup
            with ThreadPoolExecutor(max_workers=sessions) as pool:
                t0 = time.perf_counter()
                results = list(pool.map(run_one, range(sessions)))
                wall_s = time.perf_counter() - t0
        else:  # start-loop
            # DBOS.start_workflow from one thread (it returns once the workflow's
            # status row is committed), then wait on the handles.
            clock.start(warm)
            DBOS.start_workflow(session_sync, warm, steps).get_result()  # warm-up
            setup_s = time.perf_counter() - t_setup
            t0 = time.perf_counter()
            handles = []
            for sid in range(sessions):
                clock.start(sid)
                handles.append(DBOS.start_workflow(session_sync, sid, steps))
            results = [h.get_result() for h in handles]
            wall_s = time.perf_counter() - t0
        if results != [steps] * sessions:
            raise RuntimeError("a DBOS workflow returned an unexpected result")
        out = _summary(sessions, steps, wall_s, clock, setup_s)
        with dbos._sys_db.engine.connect() as conn:  # DBOS's own engine and pragmas
            mode = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
            sync = conn.execute(sa.text("PRAGMA synchronous")).scalar()
            rows = conn.execute(sa.text("SELECT count(*) FROM operation_outputs")).scalar()
            done = conn.execute(
                sa.text("SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS'")
            ).scalar()
    finally:
        DBOS.destroy()
    total = sessions + 1  # with the warm-up session
    if rows != total * steps * 2 or done != total:
        raise RuntimeError(
            f"DBOS recorded {rows} step outputs and {done} finished workflows, "
            f"expected {total * steps * 2} and {total}"
        )
    out.update(
        peer="dbos",
        variant=variant,
        journal_mode=str(mode),
        sqlite_wal=float(str(mode).lower() == "wal"),
        sqlite_synchronous=float(str(sync)),
        durable_rows=float(str(rows)),
    )
    return out


# --------------------------------------------------------------------------- LangGraph child


class _AgentState(TypedDict):
    sid: int
    k: int
    i: int
    request: dict[str, Any] | None
    result: str | None


def _build_graph(clock: _Clock, use_async: bool) -> Any:
    from langgraph.graph import END, START, StateGraph

    def agent(state: _AgentState) -> dict[str, Any]:
        if state["i"] > 0:
            # Reaching this node again means the previous tool super-step's
            # checkpoint has been committed (durability="sync").
            clock.step_done(state["sid"])
        if state["i"] >= state["k"]:
            return {"request": None}
        return {"request": _model(state["i"])}

    def tool(state: _AgentState) -> dict[str, Any]:
        request = state["request"]
        assert request is not None
        return {"result": _tool(request), "i": state["i"] + 1}

    def route(state: _AgentState) -> str:
        return "tool" if state["request"] is not None else END

    builder = StateGraph(_AgentState)
    if use_async:
        # Async nodes run on the event loop; sync ones would be sent to a thread pool.
        async def agent_async(state: _AgentState) -> dict[str, Any]:
            return agent(state)

        async def tool_async(state: _AgentState) -> dict[str, Any]:
            return tool(state)

        builder.add_node("agent", agent_async)
        builder.add_node("tool", tool_async)
    else:
        builder.add_node("agent", agent)
        builder.add_node("tool", tool)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, {"tool": "tool", END: END})
    builder.add_edge("tool", "agent")
    return builder


def _lg_config(sid: int, steps: int) -> dict[str, Any]:
    # 2 super-steps per step plus the final agent turn; the default limit is 25.
    return {"configurable": {"thread_id": f"session-{sid}"}, "recursion_limit": 2 * steps + 10}


def _lg_input(sid: int, steps: int) -> _AgentState:
    return {"sid": sid, "k": steps, "i": 0, "request": None, "result": None}


def _check_lg_rows(rows: int, sessions: int, steps: int) -> None:
    # Per session: the input checkpoint, the __start__ super-step, 2 per step, the final agent.
    expected = sessions * (2 * steps + 3)
    if rows != expected:
        raise RuntimeError(f"LangGraph stored {rows} checkpoints, expected {expected}")


def _child_langgraph(
    sessions: int, steps: int, rundir: Path, variant: str, durability: str
) -> dict[str, Any]:
    t_setup = time.perf_counter()
    db_path = rundir / "checkpoints.sqlite"
    clock = _Clock(sessions + 1)  # the last id is the warm-up session
    warm = sessions
    builder = _build_graph(clock, use_async=variant == "async")

    if variant == "async":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async def drive() -> tuple[dict[str, Any], str, int, int]:
            async with AsyncSqliteSaver.from_conn_string(str(db_path)) as saver:
                await saver.setup()
                graph = builder.compile(checkpointer=saver)

                async def one(sid: int) -> dict[str, Any]:
                    clock.start(sid)
                    out: dict[str, Any] = await graph.ainvoke(
                        _lg_input(sid, steps), _lg_config(sid, steps), durability=durability
                    )
                    return out

                await one(warm)  # warm-up session, not measured
                setup_s = time.perf_counter() - t_setup
                t0 = time.perf_counter()
                finals = await asyncio.gather(*(one(s) for s in range(sessions)))
                wall_s = time.perf_counter() - t0
                _check_finals(finals, steps)
                summary = _summary(sessions, steps, wall_s, clock, setup_s)
                async with saver.conn.execute("PRAGMA journal_mode") as cur:
                    journal = str((await cur.fetchone())[0])  # type: ignore[index]
                async with saver.conn.execute("PRAGMA synchronous") as cur:
                    sync = int((await cur.fetchone())[0])  # type: ignore[index]
                async with saver.conn.execute("SELECT count(*) FROM checkpoints") as cur:
                    rows = int((await cur.fetchone())[0])  # type: ignore[index]
            return summary, journal, sync, rows

        out, journal, sync, rows = asyncio.run(drive())
    else:
        from langgraph.checkpoint.sqlite import SqliteSaver

        with SqliteSaver.from_conn_string(str(db_path)) as saver:
            saver.setup()
            graph = builder.compile(checkpointer=saver)

            def one_sync(sid: int) -> dict[str, Any]:
                clock.start(sid)
                out_: dict[str, Any] = graph.invoke(
                    _lg_input(sid, steps), _lg_config(sid, steps), durability=durability
                )
                return out_

            one_sync(warm)  # warm-up session, not measured
            setup_s = time.perf_counter() - t_setup
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=sessions) as pool:
                finals = list(pool.map(one_sync, range(sessions)))
            wall_s = time.perf_counter() - t0
            _check_finals(finals, steps)
            out = _summary(sessions, steps, wall_s, clock, setup_s)
            with saver.lock:
                journal = str(saver.conn.execute("PRAGMA journal_mode").fetchone()[0])
                sync = int(saver.conn.execute("PRAGMA synchronous").fetchone()[0])
                rows = int(saver.conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
    _check_lg_rows(rows, sessions + 1, steps)  # with the warm-up session
    out.update(
        peer="langgraph",
        variant=variant,
        durability=durability,
        journal_mode=journal,
        sqlite_wal=float(journal.lower() == "wal"),
        sqlite_synchronous=float(sync),
        durable_rows=float(rows),
    )
    return out


def _check_finals(finals: list[dict[str, Any]], steps: int) -> None:
    for final in finals:
        if final["i"] != steps or final["result"] != f"ok {steps - 1}":
            raise RuntimeError(f"a LangGraph session ended in an unexpected state: {final}")


# --------------------------------------------------------------------------- CLI


def _run_in_process(
    peer: str,
    sessions: int,
    steps: int,
    workdir: Path,
    variant: str,
    journal: str = "default",
    durability: str = "sync",
) -> dict[str, Any]:
    require_peer(peer)
    _check_variant(peer, variant)
    workdir.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix=f"{peer}-", dir=workdir))
    try:
        if peer == "dbos":
            out = _child_dbos(sessions, steps, rundir, variant, journal)
        else:
            out = _child_langgraph(sessions, steps, rundir, variant, durability)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Run the fleetlog agent workload on a peer (DBOS or LangGraph) "
        "and print one JSON line of figures.",
    )
    parser.add_argument("peer", choices=(*PEERS, "all"))
    parser.add_argument("sessions", type=int, help="concurrent sessions (N)")
    parser.add_argument("steps", type=int, help="steps per session (K)")
    parser.add_argument("workdir", type=Path, help="a fresh temp dir is made (and removed) here")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        help="default: threads (the faster for both peers); see the docstring",
    )
    parser.add_argument(
        "--lg-durability",
        choices=("sync", "async"),
        default="sync",
        help="LangGraph durability mode (default sync: durable before the next step)",
    )
    parser.add_argument(
        "--dbos-journal",
        choices=("default", "wal"),
        default="default",
        help="DBOS SQLite journal: default (as DBOS ships: rollback journal) or wal",
    )
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.steps < 1:
        parser.error("sessions and steps must be >= 1")
    try:
        if args.peer == "all":
            # Each peer in its own child, as the benchmark harness runs them.
            runners: dict[str, Callable[..., dict[str, float]]] = {
                "dbos": functools.partial(run_dbos, journal=args.dbos_journal),
                "langgraph": functools.partial(run_langgraph, durability=args.lg_durability),
            }
            for peer, runner in runners.items():
                try:
                    fig = runner(args.sessions, args.steps, args.workdir, variant=args.variant)
                    print(json.dumps({"peer": peer, **fig}, sort_keys=True))
                except RuntimeError as exc:
                    print(json.dumps({"peer": peer, "error": str(exc)}), flush=True)
            return 0
        variant = args.variant or DEFAULT_VARIANT[args.peer]
        if variant == "start-loop" and args.peer != "dbos":
            parser.error("--variant start-loop is for dbos only")
        out = _run_in_process(
            args.peer,
            args.sessions,
            args.steps,
            args.workdir,
            variant,
            journal=args.dbos_journal,
            durability=args.lg_durability,
        )
    except PeerNotInstalled as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
