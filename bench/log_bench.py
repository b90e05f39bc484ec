"""Durable append/read benchmark for :class:`fleetlog.events.filelog.FileLog`.

Everything here runs against the real log with fsync ON: ``append`` and
``append_async`` return only after ``fdatasync``, so every figure is for
acknowledged, durable events.

Method
------
* The log lives in a fresh temporary directory under ``--dir`` (default:
  ``bench/out/`` in the repository), i.e. on the filesystem being measured.
  That directory is deleted afterwards.
* Before the cells, a baseline: the latency of ``os.write`` of a 100-byte record
  plus ``os.fdatasync`` on a growing file in that directory (what one durable
  append cannot beat).
* A *cell* is one shape of load: 1 writer calling ``append``; or 8 writers, each
  with its own session, either as 8 asyncio tasks on one event loop calling
  ``append_async`` (the fleet's real shape) or as 8 OS threads calling
  ``append``. Each ``append`` carries ``batch`` events (1, 16 or 256) of a small,
  realistic ``ToolCallCompleted``.
* Each cell runs for a fixed duration (``--seconds``, default 3 s) in a fresh log
  directory: writers append back to back until the deadline, and throughput is
  acknowledged events divided by the time from start until the last writer's
  last acknowledgement. Every append's latency (call to return) is recorded,
  giving p50/p99 per cell.
* Read throughput: after the 1-writer batch-256 cell (the one that writes the
  most), ``read_all`` pages through everything written (10,000 events a call);
  the count read is checked against the count acknowledged.
* The whole set of cells is repeated ``--repeats`` times (default 3), cells
  interleaved across repeats so slow drift hits every cell alike. Each figure
  reported is the MEDIAN over repeats, with the min and max beside it.
* Goals are printed next to the figures with whether the median meets them.
  The exit status does not depend on the goals (the machines are noisy); it is
  non-zero only if the benchmark itself fails.

Run from the repository root::

    .venv/bin/python -m bench.log_bench            # 3 s x 3 repeats per cell
    .venv/bin/python -m bench.log_bench --quick    # ~1 s per cell, 1 repeat (CI smoke)
    .venv/bin/python bench/log_bench.py --json     # same figures as a JSON object
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/log_bench.py` puts bench/ first, not the root
    sys.path.insert(0, str(REPO_ROOT))

from fleetlog.events.errors import FleetlogError  # noqa: E402
from fleetlog.events.filelog import DEFAULT_SEGMENT_BYTES, FileLog  # noqa: E402
from fleetlog.events.schema import Event, ToolCallCompleted  # noqa: E402

Mode = Literal["single", "asyncio", "threads"]

BATCHES: tuple[int, ...] = (1, 16, 256)
WRITERS = 8
READ_PAGE = 10_000
BASELINE_RECORD = 100  # bytes per raw write in the fdatasync baseline

# Goals (judged on the median over repeats).
GOAL_BATCH256_EPS = 300_000.0  # 1 writer, batch 256, events/s
GOAL_CONCURRENT_EPS = 20_000.0  # 8 asyncio writers, batch 1, events/s
GOAL_P50_MS = 0.5  # 1 writer, batch 1, p50 append latency

_OUTPUT = (
    "Ran `pytest -x tests/test_filelog.py`: 48 passed, 0 failed in 2.31s; "
    "the torn-tail case is fixed and no longer needs a retry."
)


def make_event() -> ToolCallCompleted:
    """A small, realistic event: a tool call's result with ~120 characters of output."""
    return ToolCallCompleted(
        call_id="toolu_01A09q90qw90lq917835lq9", output=_OUTPUT, latency_ms=1.7
    )


# --- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q / 100.0 * len(sorted_values)), 1)
    return float(sorted_values[rank - 1])


@dataclass(frozen=True)
class Spread:
    """One figure over the repeats: the median, reported, with min and max beside it."""

    median: float
    min: float
    max: float
    runs: tuple[float, ...]

    @classmethod
    def of(cls, runs: Sequence[float]) -> Spread:
        return cls(statistics.median(runs), min(runs), max(runs), tuple(runs))

    def as_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "runs": list(self.runs)}


# --- machine info and the raw fdatasync baseline ------------------------------------------


def _unescape_mount(field_: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    for esc, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field_ = field_.replace(esc, char)
    return field_


def filesystem_of(path: Path) -> dict[str, str]:
    """The mount holding ``path`` (longest mount-point prefix in /proc/mounts)."""
    real = os.path.realpath(path)
    best: dict[str, str] = {"type": "unknown", "device": "?", "mount": "?", "options": ""}
    best_len = -1
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return best
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        mount = _unescape_mount(parts[1])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= best_len:  # later entries shadow earlier ones
            best_len = len(mount)
            best = {"type": parts[2], "device": parts[0], "mount": mount, "options": parts[3]}
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(log_root: Path) -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "log_dir": str(log_root),
        "filesystem": filesystem_of(log_root),
    }


def fdatasync_baseline(directory: Path, seconds: float, max_samples: int) -> dict[str, float]:
    """Latency of ``os.write`` (100 bytes, appending) + ``os.fdatasync`` on ``directory``'s fs."""
    path = directory / "baseline.dat"
    record = b"x" * (BASELINE_RECORD - 1) + b"\n"
    samples: list[int] = []
    clock = time.perf_counter_ns
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    try:
        for _ in range(20):  # warm-up: the first syncs also flush the new inode
            os.write(fd, record)
            os.fdatasync(fd)
        deadline = clock() + int(seconds * 1e9)
        while len(samples) < max_samples and clock() < deadline:
            t0 = clock()
            os.write(fd, record)
            os.fdatasync(fd)
            samples.append(clock() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    samples.sort()
    return {
        "p50_ms": percentile(samples, 50) / 1e6,
        "p99_ms": percentile(samples, 99) / 1e6,
        "samples": len(samples),
    }


# --- cells -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    mode: Mode
    writers: int
    batch: int

    @property
    def key(self) -> str:
        return f"{self.mode}-w{self.writers}-b{self.batch}"

    @property
    def label(self) -> str:
        if self.mode == "single":
            return "1 writer, append"
        if self.mode == "asyncio":
            return f"{self.writers} asyncio tasks, append_async"
        return f"{self.writers} threads, append"


CELLS: tuple[Cell, ...] = (
    *(Cell("single", 1, b) for b in BATCHES),
    *(Cell("asyncio", WRITERS, b) for b in BATCHES),
    *(Cell("threads", WRITERS, b) for b in BATCHES),
)
READ_CELL = Cell("single", 1, 256)


@dataclass
class WriterStats:
    latencies_ns: list[int] = field(default_factory=list)
    events: int = 0
    finished_ns: int = 0
    error: BaseException | None = None


@dataclass(frozen=True)
class CellRun:
    """One run of one cell."""

    events: int
    appends: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    bytes_per_event: float
    read_events_per_s: float | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s


def _write_loop(
    append: Callable[[str, list[Event], int], int],
    session_id: str,
    batch: list[Event],
    deadline_ns: int,
    stats: WriterStats,
) -> None:
    clock = time.perf_counter_ns
    latencies = stats.latencies_ns
    seq = 0
    while clock() < deadline_ns:
        t0 = clock()
        seq = append(session_id, batch, seq)
        latencies.append(clock() - t0)
    stats.events = seq
    stats.finished_ns = clock()


def _run_single(log: FileLog, batch: list[Event], seconds: float) -> tuple[int, list[WriterStats]]:
    def append(sid: str, events: list[Event], seq: int) -> int:
        return log.append(sid, events, seq).last_seq

    stats = WriterStats()
    start = time.perf_counter_ns()
    _write_loop(append, "session-00", batch, start + int(seconds * 1e9), stats)
    return start, [stats]


def _run_threads(
    log: FileLog, batch: list[Event], seconds: float, writers: int
) -> tuple[int, list[WriterStats]]:
    def append(sid: str, events: list[Event], seq: int) -> int:
        return log.append(sid, events, seq).last_seq

    stats = [WriterStats() for _ in range(writers)]
    barrier = threading.Barrier(writers + 1)
    timing = {"deadline": 0}

    def worker(i: int) -> None:
        try:
            barrier.wait()
            _write_loop(append, f"session-{i:02d}", batch, timing["deadline"], stats[i])
        except BaseException as e:
            stats[i].error = e

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(writers)]
    for t in threads:
        t.start()
    start = time.perf_counter_ns()
    timing["deadline"] = start + int(seconds * 1e9)
    barrier.wait()
    for t in threads:
        t.join()
    return start, stats


def _run_asyncio(
    log: FileLog, batch: list[Event], seconds: float, writers: int
) -> tuple[int, list[WriterStats]]:
    stats = [WriterStats() for _ in range(writers)]

    async def writer(sid: str, deadline_ns: int, out: WriterStats) -> None:
        clock = time.perf_counter_ns
        latencies = out.latencies_ns
        seq = 0
        while clock() < deadline_ns:
            t0 = clock()
            seq = (await log.append_async(sid, batch, seq)).last_seq
            latencies.append(clock() - t0)
        out.events = seq
        out.finished_ns = clock()

    async def main() -> int:
        start = time.perf_counter_ns()
        deadline = start + int(seconds * 1e9)
        await asyncio.gather(
            *(writer(f"session-{i:02d}", deadline, stats[i]) for i in range(writers))
        )
        return start

    start = asyncio.run(main())
    return start, stats


def read_everything(log: FileLog) -> tuple[int, float]:
    """Page through the whole log with ``read_all``; return (events read, seconds)."""
    clock = time.perf_counter
    n = 0
    position = 1
    t0 = clock()
    while True:
        page = log.read_all(position, limit=READ_PAGE)
        if not page:
            break
        n += len(page)
        position = page[-1].position + 1
    return n, clock() - t0


def run_cell(cell: Cell, directory: Path, seconds: float, *, measure_read: bool) -> CellRun:
    batch: list[Event] = [make_event() for _ in range(cell.batch)]
    gc.collect()
    log = FileLog.open(directory, segment_bytes=DEFAULT_SEGMENT_BYTES)
    try:
        if cell.mode == "single":
            start, stats = _run_single(log, batch, seconds)
        elif cell.mode == "threads":
            start, stats = _run_threads(log, batch, seconds, cell.writers)
        else:
            start, stats = _run_asyncio(log, batch, seconds, cell.writers)
        for s in stats:
            if s.error is not None:
                raise s.error
        events = sum(s.events for s in stats)
        elapsed = (max(s.finished_ns for s in stats) - start) / 1e9
        latencies = sorted(lat for s in stats for lat in s.latencies_ns)
        head = log.stats()
        if head["head"] != events:
            raise RuntimeError(f"{cell.key}: log head {head['head']} != {events} acknowledged")
        read_eps: float | None = None
        if measure_read:
            n_read, read_s = read_everything(log)
            if n_read != events:
                raise RuntimeError(f"{cell.key}: read_all returned {n_read} of {events} events")
            read_eps = n_read / read_s
    finally:
        log.close()
    return CellRun(
        events=events,
        appends=len(latencies),
        elapsed_s=elapsed,
        p50_ms=percentile(latencies, 50) / 1e6,
        p99_ms=percentile(latencies, 99) / 1e6,
        bytes_per_event=head["bytes"] / events if events else math.nan,
        read_events_per_s=read_eps,
    )


# --- the benchmark ---------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    name: str
    cell: Cell
    figure: Literal["events_per_s", "p50_ms"]
    op: Literal[">=", "<="]
    target: float

    def met(self, value: float) -> bool:
        return value >= self.target if self.op == ">=" else value <= self.target


GOALS: tuple[Goal, ...] = (
    Goal(
        "1 writer, batch 256 throughput",
        Cell("single", 1, 256),
        "events_per_s",
        ">=",
        GOAL_BATCH256_EPS,
    ),
    Goal(
        f"{WRITERS} concurrent writers (asyncio), batch 1 throughput",
        Cell("asyncio", WRITERS, 1),
        "events_per_s",
        ">=",
        GOAL_CONCURRENT_EPS,
    ),
    Goal(
        "single-event durable append p50 (1 writer, batch 1)",
        Cell("single", 1, 1),
        "p50_ms",
        "<=",
        GOAL_P50_MS,
    ),
)


@dataclass
class Results:
    machine: dict[str, Any]
    baseline: dict[str, float]
    seconds: float
    repeats: int
    runs: dict[str, list[CellRun]]

    def spread(self, cell: Cell, figure: str) -> Spread:
        return Spread.of([float(getattr(run, figure)) for run in self.runs[cell.key]])

    def read_spread(self) -> Spread:
        return Spread.of(
            [r.read_events_per_s for r in self.runs[READ_CELL.key] if r.read_events_per_s]
        )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmark(root: Path, seconds: float, repeats: int) -> Results:
    machine = machine_info(root)
    _progress(f"baseline: os.write({BASELINE_RECORD} B) + os.fdatasync in {root}")
    baseline = fdatasync_baseline(root, min(seconds, 2.0), 5_000)
    runs: dict[str, list[CellRun]] = {cell.key: [] for cell in CELLS}
    for rep in range(repeats):
        for i, cell in enumerate(CELLS):
            directory = root / f"r{rep}-{i:02d}-{cell.key}"
            _progress(f"repeat {rep + 1}/{repeats}: {cell.label}, batch {cell.batch}")
            try:
                run = run_cell(cell, directory, seconds, measure_read=cell == READ_CELL)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            runs[cell.key].append(run)
    return Results(machine, baseline, seconds, repeats, runs)


# --- output ----------------------------------------------------------------------------


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def _fmt_ms(value: float) -> str:
    return f"{value:.3f}"


def _goal_for(cell: Cell, figure: str) -> Goal | None:
    for goal in GOALS:
        if goal.cell == cell and goal.figure == figure:
            return goal
    return None


def _goal_note(results: Results, cell: Cell) -> str:
    notes = []
    for figure, fmt, unit in (("events_per_s", _fmt_rate, " ev/s"), ("p50_ms", _fmt_ms, " ms")):
        goal = _goal_for(cell, figure)
        if goal is not None:
            ok = goal.met(results.spread(cell, figure).median)
            label = "p50 " if figure == "p50_ms" else ""
            notes.append(f"{label}{goal.op} {fmt(goal.target)}{unit}: {'MET' if ok else 'MISSED'}")
    if cell == Cell("threads", WRITERS, 1):
        notes.append("(goal judged on asyncio)")
    return "; ".join(notes)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cols: list[str]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def render_text(results: Results) -> str:
    m = results.machine
    fs = m["filesystem"]
    b = results.baseline
    out = [
        "fleetlog FileLog durable append benchmark (fsync ON)",
        f"machine   nproc {m['nproc']} (cpu_count {m['cpu_count']}), {m['cpu_model']}",
        f"          {m['python']}, {m['kernel']}",
        f"log dir   {m['log_dir']}",
        f"fs        {fs['type']} on {fs['device']} mounted at {fs['mount']} ({fs['options']})",
        f"baseline  os.write {BASELINE_RECORD} B + os.fdatasync: p50 {_fmt_ms(b['p50_ms'])} ms, "
        f"p99 {_fmt_ms(b['p99_ms'])} ms ({b['samples']:,.0f} samples)",
        f"method    {results.seconds:g} s per cell, {results.repeats} repeat(s) in fresh log dirs; "
        "figures are the median over repeats, [min .. max] beside them",
        "event     ToolCallCompleted, output of "
        f"{len(_OUTPUT)} chars; each append carries `batch` events",
        "",
    ]
    header = [
        "cell",
        "batch",
        "events/s",
        "[min .. max]",
        "p50 ms",
        "[min .. max]",
        "p99 ms",
        "[min .. max]",
        "appends",
        "B/event",
        "goal",
    ]
    rows: list[list[str]] = []
    for cell in CELLS:
        eps = results.spread(cell, "events_per_s")
        p50 = results.spread(cell, "p50_ms")
        p99 = results.spread(cell, "p99_ms")
        appends = results.spread(cell, "appends")
        bpe = results.spread(cell, "bytes_per_event")
        rows.append(
            [
                cell.label,
                str(cell.batch),
                _fmt_rate(eps.median),
                f"[{_fmt_rate(eps.min)} .. {_fmt_rate(eps.max)}]",
                _fmt_ms(p50.median),
                f"[{_fmt_ms(p50.min)} .. {_fmt_ms(p50.max)}]",
                _fmt_ms(p99.median),
                f"[{_fmt_ms(p99.min)} .. {_fmt_ms(p99.max)}]",
                f"{appends.median:,.0f}",
                f"{bpe.median:.0f}",
                _goal_note(results, cell),
            ]
        )
    read = results.read_spread()
    rows.append(
        [
            "read_all (1 writer b256 cell)",
            "-",
            _fmt_rate(read.median),
            f"[{_fmt_rate(read.min)} .. {_fmt_rate(read.max)}]",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ]
    )
    out.extend(_table(header, rows, right={1, 2, 4, 6, 8, 9}))
    out.append("")
    out.append("goals (on the median)")
    for goal in GOALS:
        value = results.spread(goal.cell, goal.figure).median
        fmt = _fmt_rate if goal.figure == "events_per_s" else _fmt_ms
        unit = "events/s" if goal.figure == "events_per_s" else "ms"
        verdict = "MET   " if goal.met(value) else "MISSED"
        out.append(
            f"  [{verdict}] {goal.name}: {fmt(value)} {unit} (goal {goal.op} {fmt(goal.target)})"
        )
    threads = results.spread(Cell("threads", WRITERS, 1), "events_per_s").median
    out.append(
        f"           for comparison, {WRITERS} OS threads, batch 1: {_fmt_rate(threads)} events/s"
    )
    return "\n".join(out)


def render_json(results: Results) -> dict[str, Any]:
    cells = []
    for cell in CELLS:
        entry: dict[str, Any] = {
            "key": cell.key,
            "label": cell.label,
            "mode": cell.mode,
            "writers": cell.writers,
            "batch": cell.batch,
        }
        for figure in ("events_per_s", "p50_ms", "p99_ms", "appends", "bytes_per_event"):
            entry[figure] = results.spread(cell, figure).as_json()
        cells.append(entry)
    goals = []
    for goal in GOALS:
        value = results.spread(goal.cell, goal.figure).median
        goals.append(
            {
                "name": goal.name,
                "cell": goal.cell.key,
                "figure": goal.figure,
                "op": goal.op,
                "target": goal.target,
                "value": value,
                "met": goal.met(value),
            }
        )
    return {
        "machine": results.machine,
        "baseline_fdatasync": {"record_bytes": BASELINE_RECORD, **results.baseline},
        "method": {
            "seconds_per_cell": results.seconds,
            "repeats": results.repeats,
            "statistic": "median over repeats (min/max/runs given)",
            "event": "ToolCallCompleted",
            "output_chars": len(_OUTPUT),
        },
        "cells": cells,
        "read_all": {"cell": READ_CELL.key, "events_per_s": results.read_spread().as_json()},
        "goals": goals,
    }


# --- command line ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.log_bench",
        description="Durable (fsync ON) append and read throughput/latency of FileLog.",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="duration of each cell (default 3, quick 1)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats per cell (default 3, quick 1)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run for CI (~1 s per cell, 1 repeat)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object, not a table")
    parser.add_argument(
        "--dir",
        type=Path,
        default=REPO_ROOT / "bench" / "out",
        help="parent of the temporary log directory (default: bench/out/ in the repository)",
    )
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 1.0 if args.quick else 3.0
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path | None = None
    try:
        args.dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="log_bench-", dir=args.dir)).resolve()
        results = run_benchmark(root, args.seconds, args.repeats)
    except KeyboardInterrupt:
        print("log_bench: interrupted", file=sys.stderr)
        return 130
    except (FleetlogError, OSError, RuntimeError) as e:
        print(f"log_bench: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(render_json(results), indent=2))
    else:
        print(render_text(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
