"""Where a rebuild's fold worker spends its CPU, statement by statement (issue 16).

    python -m bench.fold_profile                   # 2M events, 2,000 sessions
    python -m bench.fold_profile --events 500000

Generates (and keeps) a fleet's log as ``bench.projection_bench`` does, decodes
it, takes fold worker 0's bucket of 2 (``_split_by_session``) and folds it as a
parallel rebuild's worker does (an in-memory DuckDB on one thread, 1M events
at a time, each partition's rows handed back), timing each ``apply.sql``
statement in CPU seconds. Prints µs of CPU per event of the bucket, and what
DuckDB's planning costs on an empty batch (the fixed cost of a round).
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from bench.projection_bench import prepared_home
from fleetlog.events.source import FileSource
from fleetlog.projections.projector import (
    _APPLY,
    _FOLD_EVERY,
    _FOLDED,
    _NEW_ROWS,
    _fold_connection,
    _heads,
    _rows_to_place,
    _segment_jobs,
    _segment_table,
    _split_by_session,
)


def _label(statement: duckdb.Statement) -> str:
    lines = [line for line in statement.query.splitlines() if not line.startswith("--")]
    return " ".join(" ".join(lines).split())[:64]


def profile(home: Path) -> collections.Counter[str]:
    """Prints the profile; returns the rows handed back, by table."""
    source = FileSource(home / "log")
    buckets: dict[int, list[pa.Table]] = collections.defaultdict(list)
    for job in _segment_jobs(source.paths(), _heads(source)):
        buckets[job[1]].append(_split_by_session(_segment_table(*job), 2)[0])
    con = _fold_connection()  # as a rebuild's fold worker has it
    cpu: collections.defaultdict[str, float] = collections.defaultdict(float)
    events = 0
    rows: collections.Counter[str] = collections.Counter()

    def fold(batch: pa.Table, costs: collections.defaultdict[str, float]) -> None:
        con.register("_batch", batch)
        con.execute(f"CREATE OR REPLACE TEMP VIEW _new AS {_NEW_ROWS}")
        for statement in _APPLY:
            started = time.process_time()
            con.execute(statement)
            costs[_label(statement)] += time.process_time() - started
        con.execute("DROP VIEW _new")
        con.unregister("_batch")

    for tables in buckets.values():
        whole = pa.concat_tables(tables)
        for offset in range(0, whole.num_rows, _FOLD_EVERY):
            batch = whole.slice(offset, _FOLD_EVERY)
            events += batch.num_rows
            fold(batch, cpu)
        started = time.process_time()
        handed = _rows_to_place(con)
        cpu["(handing back: _rows_to_place)"] += time.process_time() - started
        rows.update({name: table.num_rows for name, table in handed.items()})
        for name in _FOLDED:
            con.execute(f"DELETE FROM _{name}_open")
    total = sum(cpu.values())
    print(f"fold worker 0 of 2: {events:,} events, {total / events * 1e6:.2f} µs of CPU per event")
    for label, seconds in sorted(cpu.items(), key=lambda item: -item[1]):
        print(f"  {seconds / events * 1e6:5.2f} µs  {label}")
    empty = next(iter(buckets.values()))[0].slice(0, 0)
    fixed: collections.defaultdict[str, float] = collections.defaultdict(float)
    for _ in range(5):
        fold(empty, fixed)
    print(f"a fold of an empty batch (planning, set-up): {sum(fixed.values()) / 5 * 1e3:.1f} ms")
    return rows


def kept_log(description: str) -> Path:
    """The home of the kept log the command line asks for (``--events``, ``--sessions``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--dir", default="bench/out/projections", help="where logs are kept")
    args = parser.parse_args()
    return prepared_home(Path(args.dir), args.sessions, args.events)


def main() -> None:
    profile(kept_log(__doc__.splitlines()[0]))


if __name__ == "__main__":
    main()
