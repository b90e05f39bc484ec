"""Projection benchmark (issue 4): rebuild throughput, catch-up lag, metrics query time.

    python -m bench.projection_bench                  # 10M events, 10k sessions (the goal)
    python -m bench.projection_bench --events 200000  # a quick look

1. generate a fleet's log: ``--sessions`` sessions (1,000 in flight at a time,
   as a fleet runs them) over two partitions, until ``--events`` events;
   the log is kept in ``--dir`` and reused by later runs with the same size;
2. full rebuild (``Projector.rebuild``: one worker process per core, each
   decoding segments and folding its sessions by hash): events/s, median of
   ``--repeats``; and its floor: the same decoding and ``events`` inserts with
   no folded tables (one run); then both again at 1, 2, 4, ... workers
   (``--workers``) and on one core (one run each);
3. ``agent_health_metrics`` over the whole table: median of 5 runs;
4. catch-up lag: another process appends ``--rate`` events/s for
   ``--lag-seconds`` (100 sessions side by side, one step per append, as a
   fleet's hosts) while this one tails the log as a fleet's projector does;
   lag = time from an append's acknowledgement to the commit of the round
   that projected it (p50, p95, p99, max), with the rounds' durations and
   those whose commit checkpointed the WAL (``--lag-only``: just this).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import concurrent.futures
import hashlib
import itertools
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from bench.histories import Append, session_history
from fleetlog.config import session_id_for
from fleetlog.events.filelog import FileLog
from fleetlog.events.source import FileSource

# The rebuild's own pieces, for the floor figure (what a rebuild costs with no folding).
from fleetlog.projections.projector import (
    _DECODE_AHEAD,
    _EVENTS_FROM_BATCH,
    TABLES_SQL,
    Projector,
    _connect,
    _cores,
    _die_with_parent,
    _heads,
    _Job,
    _mapped,
    _remove_db,
    _segment_files,
    _segment_jobs,
    _segment_table,
    _spool_dir,
)

_IN_FLIGHT = 1_000
_LAG_IN_FLIGHT = 100
#: Written into the kept log's marker: a log with other session ids is made again.
_IDS = "derived"


def _session_id(name: str) -> str:
    """A session id as `fleetlog run` makes for a task file's task (a hash, ``s-t-…``).

    Not ``s-bench-000001``: ids that sort by creation would let DuckDB skip the
    history by its zone maps, which a fleet's hashed or user-given ids do not.
    """
    return session_id_for("t-" + hashlib.sha256(name.encode()).hexdigest()[:24])


def generate(log_root: Path, sessions: int, events: int, seed: int = 7) -> int:
    """Write a fleet's log; returns the number of events written."""
    per_session = events / sessions
    # A step is ~6.5 events and the step count is uniform in 1..max_steps; a low
    # end_rate keeps most sessions from ending early, so the mean is near the ask.
    max_steps = max(int(per_session / 6.5 * 2.4), 2)
    logs = [FileLog.open(log_root / f"p{i}") for i in range(2)]
    written = 0

    async def run_session(index: int, gate: asyncio.Semaphore) -> None:
        nonlocal written
        async with gate:
            sid = _session_id(f"bench-{index}")
            rng = random.Random(seed * 1_000_003 + index)
            history: list[Append] = session_history(rng, sid, max_steps=max_steps, end_rate=0.01)
            log = logs[index % 2]
            seq = 0
            for append in history:
                if written >= events:
                    return
                await log.append_async(sid, append.events, seq, append.epoch)
                seq += len(append.events)
                written += len(append.events)

    async def main() -> None:
        gate = asyncio.Semaphore(_IN_FLIGHT)
        await asyncio.gather(*(run_session(i, gate) for i in range(sessions)))

    try:
        asyncio.run(main())
    finally:
        for log in logs:
            log.close()
    return written


def prepared_home(root: Path, sessions: int, events: int) -> Path:
    home = root / f"fleet-{sessions}s-{events}e"
    marker = home / "generated.json"
    if marker.exists() and json.loads(marker.read_text()).get("ids") == _IDS:
        return home
    shutil.rmtree(home, ignore_errors=True)
    (home / "log").mkdir(parents=True)
    started = time.perf_counter()
    written = generate(home / "log", sessions, events)
    took = time.perf_counter() - started
    marker.write_text(
        json.dumps({"events": written, "sessions": sessions, "seconds": took, "ids": _IDS})
    )
    print(f"generated {written:,} events for {sessions:,} sessions in {took:.1f} s")
    return home


def bench_rebuild(home: Path, repeats: int, workers: int | None = None) -> tuple[float, int]:
    rates = []
    n = 0
    workers_rss = 0.0
    # (A fresh file next to a big log is rebuilt on open: not here, every rebuild is timed.)
    with Projector.open(home, rebuild_from=1 << 62) as projector:
        for repeat in range(repeats):
            cpu = _cpu_seconds()
            started = time.perf_counter()
            n = projector.rebuild(workers=workers)
            took = time.perf_counter() - started
            (main_after, children_after), (main_before, children_before) = _cpu_seconds(), cpu
            main_s, children_s = main_after - main_before, children_after - children_before
            rates.append(n / took)
            print(
                f"  rebuild: {n:,} events in {took:.2f} s = {n / took:,.0f} events/s; CPU per "
                f"event: main process {main_s / n * 1e6:.2f} µs, its workers "
                f"{children_s / n * 1e6:.2f} µs"
            )
            if repeat == 0:
                # Only now: Linux counts a process forked later as having the
                # parent's RSS of that moment (ru_maxrss, KiB).
                workers_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS: this process {own:,.0f} MiB, largest worker {workers_rss:,.0f} MiB")
    print(f"  file: {(home / 'projections.duckdb').stat().st_size / 2**30:.2f} GiB")
    return statistics.median(rates), n


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU of this process and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _floor_tables(jobs: list[_Job], workers: int | None) -> Iterator[pa.Table]:
    """Each segment as an Arrow table, in job order, decoded by ``workers`` processes.

    As a rebuild's workers decode them (``_segment_files``, the files mapped
    here), with nothing else to do: one bucket each, no folds.
    """
    workers = workers if workers is not None else _cores()  # as the rebuild counts them
    if workers <= 1:
        for job in jobs:
            yield _segment_table(*job)
        return
    ctx = multiprocessing.get_context("spawn")  # as the rebuild's workers start
    with (
        tempfile.TemporaryDirectory(prefix="fleetlog-floor-", dir=_spool_dir(workers)) as spool,
        concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_die_with_parent, initargs=(os.getpid(),)
        ) as pool,
    ):
        # As many segments decoded ahead as a rebuild's workers have queued.
        window: collections.deque[concurrent.futures.Future[list[str]]] = collections.deque()
        queued = iter(jobs)
        for job in itertools.islice(queued, workers * _DECODE_AHEAD):
            window.append(pool.submit(_segment_files, spool, job, 1))
        while window:
            [path] = window.popleft().result()
            for job in itertools.islice(queued, 1):
                window.append(pool.submit(_segment_files, spool, job, 1))
            table = _mapped(path)
            os.unlink(path)  # its pages go when the table does
            yield table


def bench_floor(home: Path, workers: int | None = None) -> float:
    """Events/s of what any rebuild must do, with no folding at all.

    As many processes decode the segments into Arrow (``_floor_tables``) and
    the same statement inserts them into ``events`` of a scratch file: what
    remains of a rebuild if the folded tables cost nothing. It tells a goal
    that folding can miss from one the machine cannot reach.
    """
    source = FileSource(home / "log")
    jobs = _segment_jobs(source.paths(), _heads(source))
    scratch = home / "floor.duckdb"
    _remove_db(scratch)
    con = _connect(scratch, row_group_size=None)  # as a rebuild writes it
    n = 0
    try:
        con.execute(TABLES_SQL)
        started = time.perf_counter()
        for table in _floor_tables(jobs, workers):
            con.register("_batch", table)
            con.execute(_EVENTS_FROM_BATCH)
            con.unregister("_batch")
            n += table.num_rows
        con.execute("CHECKPOINT")
        took = time.perf_counter() - started
    finally:
        con.close()
        _remove_db(scratch)
    print(f"  decode + events table only: {n:,} events in {took:.2f} s = {n / took:,.0f} events/s")
    return n / took


def bench_scaling(
    home: Path, workers: list[int], one_core: bool
) -> list[tuple[int, int, float, float]]:
    """Rebuild against its floor with each number of workers, and on one core.

    ``workers`` processes decode (floor and rebuild) and fold (rebuild); 1 is
    everything in this process. The one-core row pins this process and its
    children to one CPU (``sched_setaffinity``), as a 1-core machine would.
    Returns ``(cores, workers, floor, rebuild)`` rows (events/s).
    """
    rows = []
    all_cores = os.sched_getaffinity(0)
    runs = [(len(all_cores), w) for w in workers]
    if one_core and len(all_cores) > 1:
        runs.insert(0, (1, 1))
    for cores, w in runs:
        os.sched_setaffinity(0, set(sorted(all_cores)[:cores]))
        try:
            print(f"  {cores} core(s), {w} worker(s):")
            floor = bench_floor(home, w)
            rebuild, _n = bench_rebuild(home, 1, w)
        finally:
            os.sched_setaffinity(0, all_cores)
        rows.append((cores, w, floor, rebuild))
    return rows


def bench_metrics(home: Path) -> float:
    times = []
    with Projector.open(home) as projector:
        for _ in range(5):
            started = time.perf_counter()
            rows = projector.query("SELECT * FROM agent_health_metrics").num_rows
            times.append(time.perf_counter() - started)
        print(f"  metrics: {rows} rows, runs {', '.join(f'{t * 1000:.0f} ms' for t in times)}")
    return statistics.median(times)


def _lag_writer(log_dir: str, rate: int, seconds: float, out: str) -> None:
    """Child process: a fleet's sessions appending ``rate`` events/s for ``seconds``.

    Writes the events written and ``[last position of an append, monotonic time
    it was acknowledged]`` pairs to ``out`` (CLOCK_MONOTONIC is one clock for
    every process on a machine).
    """
    log = FileLog.open(Path(log_dir))
    rng = random.Random(99)
    run = time.strftime("%H%M%S")  # session ids of their own when p2 is reused
    acked: list[tuple[int, float]] = []
    written = 0
    started = time.monotonic()

    async def session(index: int) -> None:
        nonlocal written
        sid = _session_id(f"lag-{run}-{index}")
        seq = 0
        for append in session_history(random.Random(rng.random()), sid, max_steps=20):
            # Pace the whole fleet to the target rate.
            while (delay := started + written / rate - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - started >= seconds:
                return
            written += len(append.events)
            result = await log.append_async(sid, append.events, seq, append.epoch)
            acked.append((result.last_position, time.monotonic()))
            seq += len(append.events)

    async def write() -> None:
        # Sessions in flight side by side, as in a fleet: one writer appending
        # step after step waits for each fsync and cannot reach the rate.
        index = 0
        running: set[asyncio.Task[None]] = set()
        while time.monotonic() - started < seconds:
            while len(running) < _LAG_IN_FLIGHT:
                running.add(asyncio.create_task(session(index)))
                index += 1
            _done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*running)

    try:
        asyncio.run(write())
    finally:
        log.close()
    Path(out).write_text(json.dumps({"events": written, "acked": acked}))


def bench_lag(home: Path, rate: int, seconds: float) -> tuple[float, float, int]:
    """Append at ``rate`` events/s to a third partition while a projector tails the log.

    The writer is another process, as a fleet's hosts are to its projector
    actor; lag = time from an append's acknowledgement to the commit of the
    round that projected it.
    """
    projector = Projector.open(home)
    projector.catch_up()
    out = home / "lag-acks.json"
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(
        target=_lag_writer, args=(str(home / "log" / "p2"), rate, seconds, str(out))
    )
    committed: list[tuple[float, int]] = []  # (when, checkpoint of p2 after the round)
    rounds: list[float] = []  # seconds each round took
    checkpointed: list[float] = []  # those of the rounds whose commit checkpointed the WAL
    try:
        writer.start()
        while writer.is_alive() or projector.lag().get(2, 0):
            before = projector.wal_bytes()
            started = time.monotonic()
            if projector.step(50_000):
                committed.append((time.monotonic(), projector.checkpoints().get(2, 0)))
                rounds.append(committed[-1][0] - started)
                if projector.wal_bytes() < before:
                    checkpointed.append(rounds[-1])
            else:
                time.sleep(0.01)
        if writer.exitcode != 0:
            raise SystemExit(f"lag writer failed (exit {writer.exitcode})")
    finally:
        writer.join()
        projector.close()
    report = json.loads(out.read_text())
    out.unlink()
    done = [position for _when, position in committed]
    lags = sorted(
        committed[bisect.bisect_left(done, position)][0] - when
        for position, when in report["acked"]
    )
    rounds.sort()
    print(
        f"  lag: p99 {lags[int(len(lags) * 0.99)] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms; "
        f"{len(rounds)} rounds, p50 {rounds[len(rounds) // 2] * 1000:.0f} ms, "
        f"max {rounds[-1] * 1000:.0f} ms; {len(checkpointed)} checkpointed the WAL"
        + (
            f" ({min(checkpointed) * 1000:.0f}-{max(checkpointed) * 1000:.0f} ms)"
            if checkpointed
            else ""
        )
    )
    return lags[len(lags) // 2], lags[int(len(lags) * 0.95)], report["events"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=int, default=10_000, help="events/s for the lag test")
    parser.add_argument("--lag-seconds", type=float, default=60.0)
    parser.add_argument("--dir", default="bench/out/projections", help="where logs are kept")
    parser.add_argument(
        "--workers",
        default="",
        help="rebuild vs floor at these worker counts (default 1, 2, 4, ... up to 2x the cores)",
    )
    parser.add_argument("--no-one-core", action="store_true", help="skip the 1-core row")
    parser.add_argument(
        "--lag-only", action="store_true", help="only the catch-up lag (a fresh partition)"
    )
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    workers = (
        [int(w) for w in args.workers.split(",")]
        if args.workers
        else [2**i for i in range(8) if 2**i <= max(2 * cores, 2)]
    )
    home = prepared_home(Path(args.dir), args.sessions, args.events)
    shutil.rmtree(home / "log" / "p2", ignore_errors=True)  # the lag test's own partition
    print(f"log: {home}")
    if args.lag_only:
        # The file left by the last run is rebuilt on open: its p2 is gone.
        p50, p95, written = bench_lag(home, args.rate, args.lag_seconds)
        print(
            f"catch-up lag at {written / args.lag_seconds:,.0f} events/s: p50 "
            f"{p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
        )
        return
    for stale in home.glob("projections.duckdb*"):
        stale.unlink()
    rate, n = bench_rebuild(home, args.repeats)
    floor = bench_floor(home)
    scaling = bench_scaling(home, workers, not args.no_one_core)
    metrics_s = bench_metrics(home)
    p50, p95, written = bench_lag(home, args.rate, args.lag_seconds)
    print()
    print(f"| figure ({n:,} events, {args.sessions:,} sessions) | median | goal |")
    print("|---|---|---|")
    print(f"| full rebuild ({cores} cores) | {rate:,.0f} events/s | >= 150,000 on 2 cores |")
    print(f"| (floor: decoding + `events` alone, no folding) | {floor:,.0f} events/s | |")
    print(f"| rebuild / floor | {rate / floor:.0%} | >= 70% |")
    print(f"| agent_health_metrics over all events | {metrics_s * 1000:.0f} ms | <= 500 ms |")
    print(
        f"| catch-up lag, appending {written / args.lag_seconds:,.0f} events/s "
        f"({written:,} events) "
        f"| p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms | p95 <= 1 s |"
    )
    print()
    print("| cores | workers | floor (events/s) | rebuild (events/s) | rebuild / floor |")
    print("|---|---|---|---|---|")
    for c, w, fl, rb in scaling:
        print(f"| {c} | {w} | {fl:,.0f} | {rb:,.0f} | {rb / fl:.0%} |")


if __name__ == "__main__":
    main()
