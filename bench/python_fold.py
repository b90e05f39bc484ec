"""What a projection fold written in Python would cost, beside the SQL folds (issue 16).

    python -m bench.python_fold                    # 2M events, 2,000 sessions

A rebuild reaches 70% of its floor's events/s only if folding and placing the
folded rows cost at most ~2.8 µs of CPU per event on two busy cores
(docs/benchmarks.md); the SQL folds alone cost ~3.5. The route left open was a
fold outside SQL: the decoding workers folding the events while they still
hold them as structs. This measures it on the events the SQL folds are
measured on (fold worker 0's bucket of 2 of the kept 2M-event log), in the
same run, CPU time (the Python figures the best of 3):

1. the SQL folds (``bench.fold_profile``, all of ``apply.sql`` and handing
   the rows back as Arrow);
2. the least any fold in Python does: per event, one dict lookup by its call
   or session and two writes;
3. a Python fold of the main fields of model calls, tool calls and sessions,
   and its rows turned into Arrow columns (what a worker hands back). It does
   less than ``apply.sql``: no step latencies, no calls closed by their
   session's end, no merge with rows folded before, costs as integers instead
   of decimals. So both Python figures bound a Python fold from below. Its
   rows by table are printed beside the SQL folds': the same calls and sessions.
"""

from __future__ import annotations

import collections
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.fold_profile import kept_log, profile
from fleetlog.events import schema as s
from fleetlog.events.codec import EnvelopeRow
from fleetlog.events.source import FileSource
from fleetlog.events.tail import read_segment
from fleetlog.projections.projector import _bucket, _heads, _segment_jobs

_MODEL = (s.ModelCallRequested, s.ModelCallRetried, s.ModelResponded, s.ModelCallFailed)
_TOOL = frozenset(
    {
        s.ToolCallProposed,
        s.ToolCallVetted,
        s.ToolCallRejected,
        s.ReviewRequested,
        s.ReviewDecided,
        s.ToolCallStarted,
        s.ToolCallCompleted,
        s.ToolCallFailed,
    }
)

Tables = tuple[dict[Any, list[Any]], ...]


def least(rows: list[EnvelopeRow], tables: Tables) -> None:
    """Per event: one dict lookup by its call (or session) and two writes."""
    (calls,) = tables
    for _position, sid, seq, _epoch, ts, _id, ev in rows:
        key = (sid, getattr(ev, "call_id", None) or getattr(ev, "request_id", None))
        row = calls.get(key)
        if row is None:
            row = calls[key] = [None, None]
        row[0] = seq
        row[1] = ts


def fold(rows: list[EnvelopeRow], tables: Tables) -> None:
    """The main fields of model calls, tool calls and sessions (a subset of ``apply.sql``).

    One inline chain of type tests, no call per event: the fastest form Python has.
    """
    models, tools, sessions = tables
    mcr, mct, mr, mcf = _MODEL
    for position, sid, seq, epoch, ts, _id, ev in rows:
        x = sessions.get(sid)
        if x is None:
            x = sessions[sid] = [None, None, 0, None, 0, 0, ts, None, None, None, 0, 0, 0, 0, 0]
        x[4] = max(x[4], epoch)
        x[5] = seq
        x[6] = ts
        x[10] += 1
        x[11] = position
        t = type(ev)
        if t is mcr or t is mr or t is mct or t is mcf:
            key = (sid, ev.request_id)
            m = models.get(key)
            if m is None:
                m = models[key] = [ev.step, None, None, None, None, None, None, None, None]
                m += [None, None, 0, None, None, "", ev.step, 0, 0, 0, 0, False]
            if t is mcr:
                m[1] = ev.model
                m[9] = m[9] or ts
                m[10] = "requested"
                m[14] = ev.purpose
                m[19] = seq
                m[20] = True
            elif t is mr:
                cost = round(ev.cost_usd * 1e10)
                m[1] = ev.model
                m[2] = ev.input_tokens
                m[3] = ev.output_tokens
                m[4] = ev.cache_read_tokens
                m[5] = ev.cache_write_tokens
                m[6] = cost
                m[7] = ev.latency_ms
                m[8] = ev.stop_reason
                m[10] = "responded"
                m[16] += ev.input_tokens
                m[17] += ev.output_tokens
                m[18] += cost
                m[19] = seq
                m[20] = False
                x[12] += ev.input_tokens
                x[13] += ev.output_tokens
            elif t is mct:
                m[11] += 1
            else:
                m[10] = "failed"
                m[12] = ev.error
                m[13] = ev.status_code
                m[19] = seq
                m[20] = False
            m[0] = min(m[0], ev.step)
            m[15] = max(m[15], ev.step)
        elif t in _TOOL:
            key = (sid, ev.call_id)
            c = tools.get(key)
            if c is None:
                c = tools[key] = [None] * 22
                c[14] = c[18] = 0
            if t is s.ToolCallProposed:
                c[0], c[1], c[2], c[5], c[6] = ev.step, ev.tool, ev.input, "pending", ts
            elif t is s.ToolCallVetted:
                c[7], c[8], c[9], c[10] = ev.risk, ev.verdict, ev.rule, ev.reason
            elif t is s.ToolCallStarted:
                c[5] = "running"
                c[18] += 1
                c[19] = ev.idempotency_key
            elif t is s.ToolCallCompleted:
                c[4], c[11], c[20] = ev.output, ev.latency_ms, ts
                c[5] = "failed" if ev.is_error else "succeeded"
            elif t is s.ToolCallFailed:
                c[5], c[12], c[11], c[20] = "failed", ev.error, ev.latency_ms, ts
            elif t is s.ToolCallRejected:
                c[5], c[12], c[20] = "denied", ev.reason, ts
            elif t is s.ReviewRequested:
                c[5], c[10], c[13], c[15] = "awaiting_review", ev.reason, ev.in_doubt, ts
                c[14] += 1
            else:
                c[5] = "pending" if ev.approved else "denied"
                c[16], c[17], c[21] = ts, ev.reviewer, ev.note
                if ev.approved and ev.edited_input:
                    c[3] = ev.edited_input
        elif t is s.SessionCreated:
            x[0], x[1], x[7], x[8], x[9] = ev.tenant, ev.agent_type, ev.task_id, ev.prompt, ev.model
        elif t is s.SessionClaimed:
            x[2] += 1
            x[3] = ev.owner
        elif t is s.SessionCompleted or t is s.SessionFailed:
            x[14] = 1


#: Arrow types of the columns, key first (i, s, f, b: int64, string, float64,
#: bool), so that none is inferred: typed, a list converts in ~50 ns a value
#: against 76-116 ns inferred.
_ARROW = {"i": pa.int64(), "s": pa.string(), "f": pa.float64(), "b": pa.bool_()}
_LEAST_TYPES = ("ssif",)
#: Model calls (key: session, request; 21 fields), tool calls (session, call; 22),
#: sessions (session; 15): the tables of ``_FOLD_TABLES``.
_FOLD_TABLES = ("model_calls", "agent_tool_calls", "agent_executions")
_FOLD_TYPES = ("ssisiiiiifsfsisisiiiiib", "ssisssssfssssfsbiffsisfs", "sssisiifsssiiiii")


def to_arrow(rows: dict[Any, list[Any]], types: str) -> pa.Table:
    """Folded rows as an Arrow table: the key's columns, then the row's."""
    keys = list(rows)
    columns: list[Any] = list(zip(*keys, strict=True)) if isinstance(keys[0], tuple) else [keys]
    columns += zip(*rows.values(), strict=True)
    return pa.Table.from_arrays(
        [pa.array(column, _ARROW[t]) for column, t in zip(columns, types, strict=True)],
        names=[f"c{i}" for i in range(len(columns))],
    )


def measure(
    parts: dict[int, list[list[EnvelopeRow]]],
    fold: Callable[[list[EnvelopeRow], Tables], None],
    types: tuple[str, ...],
) -> tuple[float, float, list[int]]:
    """CPU µs per event folding, and turning the rows to Arrow (best of 3); rows by table."""
    events = sum(len(rows) for segments in parts.values() for rows in segments)
    best = (float("inf"), float("inf"))
    for _ in range(3):
        folding = arrow = 0.0
        made = [0] * len(types)
        for segments in parts.values():  # a partition at a time, as a worker folds
            folded: Tables = tuple({} for _ in types)
            started = time.process_time()
            for rows in segments:
                fold(rows, folded)
            turned = time.process_time()
            for i, (table, columns) in enumerate(zip(folded, types, strict=True)):
                made[i] += to_arrow(table, columns).num_rows
            arrow += time.process_time() - turned
            folding += turned - started
        best = min(best, (folding / events * 1e6, arrow / events * 1e6))
    return *best, made


def main() -> None:
    home = kept_log(__doc__.splitlines()[0])
    print("-- the SQL folds (bench.fold_profile)")
    sql_rows = profile(home)
    source = FileSource(home / "log")
    parts: dict[int, list[list[EnvelopeRow]]] = collections.defaultdict(list)
    gc.disable()  # as the rebuild's decoding does: no cycles, and collections cost ~30%
    for job in _segment_jobs(source.paths(), _heads(source)):
        rows = read_segment(Path(job[0]), Path(job[2]), job[3])
        parts[job[1]].append([row for row in rows if _bucket(row[1], 2) == 0])
    events = sum(len(rows) for segments in parts.values() for rows in segments)
    print(f"-- in Python, the same {events:,} events decoded as structs (best of 3)")
    folding, _arrow, _made = measure(parts, least, _LEAST_TYPES)
    print(f"  {folding:5.2f} µs  the least: one dict lookup and two writes per event")
    folding, arrow, made = measure(parts, fold, _FOLD_TYPES)
    print(f"  {folding:5.2f} µs  fold of the main fields of calls, model calls and sessions")
    print(f"  {arrow:5.2f} µs  its {sum(made):,} rows as Arrow columns")
    print(f"  {folding + arrow:5.2f} µs  in all")
    # The same calls and sessions as the SQL folds found, or the figures measure another fold.
    for name, count in zip(_FOLD_TABLES, made, strict=True):
        print(f"  rows of {name}: {count:,} (the SQL folds: {sql_rows[name]:,})")


if __name__ == "__main__":
    main()
