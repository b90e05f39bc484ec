"""Fault injection: kill a real fleet process at every named crash point, restart it,
run it to the end, and check the promises of SPEC §9 on what it left behind.

For each name in ``CRASH_POINTS`` a fresh home gets a child process
(``fleet_child.py``: a real ``HostCore``, FileLog partitions, the real
``anthropic`` SDK against one ``FakeAnthropic`` on loopback, an in-process
ledger rebuilt from the log at every start, an operator that approves and
cancels). The child runs with ``FLEETLOG_CRASH_AT=<point>`` and must die there
(exit 86: a point that never fires fails the suite); then it runs again, without
the variable, until it exits 0. Projections catch up after every run. Then:

* ``fired``      the point ended the first run (exit 86, recorded in the crash log);
* ``resumed``    the restarts ran to the end (exit 0), each one making progress;
* ``terminal``   every session ended, per the log, as its scenario does (the nap
                 cancelled, the slow one failed with STEP_TIMEOUT, the others completed);
* ``verify``     ``verify_log`` finds nothing wrong in any partition;
* ``projection`` the incrementally caught-up tables equal a full rebuild's;
* ``lost≤1``     replies the server billed but the log never recorded: at most one
                 per session (a session has one call in flight) per crash;
* ``usage``      every recorded reply's usage is the server's last billed usage for
                 its request id, and its cost is ``cost_usd`` of that usage;
* ``ledger``     the child's final ledger: spent == the log's recorded cost == the
                 projections' cost, within the budget, nothing reserved or held; a
                 ledger freshly folded from the log holds nothing either;
* ``outbox``     one message in ``HOME/outbox`` per approved, completed send_email
                 call, and nothing else;
* ``no-running`` no tool call left ``running`` (started, outcome never recorded);
* ``acked``      every command the operator saw acknowledged is in the log.

The table (rows: crash points, columns: invariants) is printed (``pytest -s``)
and written to ``fault_table.txt`` next to the homes.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import FakeAnthropic, Reply, scripted_responder
from fleet_child import (
    BUDGET_USD,
    INPUT_USD_PER_MTOK,
    NAP_MARK,
    OUTPUT_USD_PER_MTOK,
    SLOW_MARK,
    session_ids,
)
from test_projections import TABLES, snapshot

from fleetlog.actors.ledger import Budget, Ledger
from fleetlog.actors.model import Usage, cost_usd
from fleetlog.events.faults import CRASH_EXIT_CODE, CRASH_POINTS
from fleetlog.events.filelog import FileLog
from fleetlog.events.partitions import partition_dirs
from fleetlog.events.schema import (
    CancelRequested,
    Envelope,
    ModelResponded,
    ReviewDecided,
    ToolCallCompleted,
    ToolCallProposed,
)
from fleetlog.events.state import fold
from fleetlog.events.verify import verify_log
from fleetlog.projections.projector import Projector

CHILD = Path(__file__).with_name("fleet_child.py")
CHILD_TIMEOUT_S = 90.0  # one child run; a few seconds normally
MAX_RESUMES = 3
INVARIANTS = (
    "fired",
    "resumed",
    "terminal",
    "verify",
    "projection",
    "lost≤1",
    "usage",
    "ledger",
    "outbox",
    "no-running",
    "acked",
)


# --- the model server ------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))


def responder(body: dict[str, Any]) -> Reply:
    """The scripted agent, plus the nap sessions: one ``run_shell("sleep N")``, then an answer.

    Tool-use ids are a hash of the conversation, so a call asked again after a crash
    gets the same id.
    """
    messages = body["messages"]
    prompt = _text_of(messages[0]["content"])
    for mark, command in ((NAP_MARK, "sleep 3"), (SLOW_MARK, "sleep 5")):
        if mark not in prompt:
            continue
        answered = any(
            isinstance(m["content"], list)
            and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in m["content"])
            for m in messages
            if m["role"] == "user"
        )
        if answered:
            return {"content": "The nap is over."}
        digest = json.dumps(messages, sort_keys=True).encode()
        call_id = "toolu_" + hashlib.sha256(digest).hexdigest()[:24]
        return {
            "content": [
                {"type": "text", "text": "Taking a nap."},
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": "run_shell",
                    "input": {"command": command},
                },
            ]
        }
    return scripted_responder(body)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(responder=responder) as server:
        yield server
    assert server.server_errors == []


# --- running the child -----------------------------------------------------------------------


@dataclass
class ChildRun:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    #: Each session's last seq once the run was over: what it had made durable.
    seqs_after: dict[str, int] = field(default_factory=dict)

    @property
    def acks(self) -> list[list[str]]:
        return [line.split() for line in self.stdout.splitlines() if line.startswith("ack ")]

    @property
    def snapshot(self) -> dict[str, dict[str, float]] | None:
        lines = self.stdout.splitlines()
        if "done" not in lines:
            return None
        snap: dict[str, dict[str, float]] = json.loads(lines[lines.index("done") + 1])
        return snap

    def describe(self) -> str:
        return f"rc={self.rc} stdout={self.stdout[-500:]!r} stderr={self.stderr[-1500:]!r}"


def run_child(
    home: Path, tag: str, fake: FakeAnthropic, crash_at: str | None, crash_log: Path
) -> ChildRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETLOG_CRASH")}
    env.update(
        ANTHROPIC_BASE_URL=fake.base_url,
        ANTHROPIC_API_KEY=fake.api_key,
        PYTHONUNBUFFERED="1",
        FLEETLOG_CRASH_LOG=str(crash_log),
    )
    if crash_at is not None:
        env["FLEETLOG_CRASH_AT"] = crash_at
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(CHILD), str(home), tag],
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:  # run() has killed it
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return ChildRun(-9, out, err + "\n[timed out]", time.monotonic() - started)
    return ChildRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def catch_up(home: Path) -> None:
    """Project what the last run wrote, incrementally (never a rebuild on open)."""
    with Projector.open(home, rebuild_from=10**15) as projector:
        projector.catch_up()


def log_head(home: Path) -> int:
    total = 0
    for path in partition_dirs(home / "log"):
        with FileLog.open(path, readonly=True) as log:
            total += log.head()
    return total


def last_seqs(home: Path) -> dict[str, int]:
    seqs: dict[str, int] = {}
    for path in partition_dirs(home / "log"):
        with FileLog.open(path, readonly=True) as log:
            seqs.update((sid, log.last_seq(sid)) for sid in log.session_ids())
    return seqs


def read_log(home: Path) -> tuple[list[Envelope], dict[str, list[Envelope]]]:
    """Every envelope of every partition (in order), and each session's stream."""
    everything: list[Envelope] = []
    streams: dict[str, list[Envelope]] = {}
    for path in partition_dirs(home / "log"):
        with FileLog.open(path, readonly=True) as log:
            position = 1
            while batch := log.read_all(position, 10_000):
                everything.extend(batch)
                position = batch[-1].position + 1
            for sid in log.session_ids():
                streams[sid] = log.read_stream(sid)
    return everything, streams


# --- one crash point -------------------------------------------------------------------------


@dataclass
class Outcome:
    point: str
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)
    runs: list[ChildRun] = field(default_factory=list)
    lost: int = 0  # replies billed but never recorded, all sessions together

    def check(self, name: str, fn: Callable[[], str | None]) -> None:
        """Record ``name``: ✓ when ``fn`` returns None, ✗ with its detail otherwise."""
        try:
            problem = fn()
        except Exception as e:  # a check that cannot even be made is a failed one
            problem = f"{type(e).__name__}: {e}"
        self.checks[name] = (problem is None, problem or "")

    @property
    def ok(self) -> bool:
        return all(ok for ok, _ in self.checks.values())


def crash_and_resume(point: str, root: Path, fake: FakeAnthropic) -> Outcome:
    home = root / point
    crash_log = root / f"{point}.crashes"
    outcome = Outcome(point)
    tag = point
    sids = session_ids(tag)
    billed_before = len(fake.billed)

    first = run_child(home, tag, fake, point, crash_log)
    outcome.runs.append(first)
    first.seqs_after = last_seqs(home)
    if (home / "log").is_dir():
        catch_up(home)
    fired = crash_log.is_file() and crash_log.read_text().split()[:1] == [point]
    outcome.check(
        "fired",
        lambda: (
            None
            if first.rc == CRASH_EXIT_CODE and fired
            else f"the point never fired: {first.describe()}"
        ),
    )
    crashes = 1 if first.rc == CRASH_EXIT_CODE else 0

    last = first
    resume_problem: str | None = None
    if first.rc == CRASH_EXIT_CODE:
        resume_problem = f"no run finished in {MAX_RESUMES} restarts"
        for _ in range(MAX_RESUMES):
            head = log_head(home)
            last = run_child(home, tag, fake, None, crash_log)
            outcome.runs.append(last)
            last.seqs_after = last_seqs(home)
            catch_up(home)
            if last.rc == 0:
                resume_problem = None
                break
            if last.rc == CRASH_EXIT_CODE:
                crashes += 1
            if log_head(home) <= head:
                resume_problem = f"a restart made no progress: {last.describe()}"
                break
    outcome.check("resumed", lambda: resume_problem)

    everything, streams = read_log(home)
    billed = [
        (rid, usage)
        for rid, usage in fake.billed[billed_before:]
        if rid.split(":")[0] in sids.values()
    ]
    ours = {sid: streams.get(sid, []) for sid in sids.values()}
    states = {sid: fold(sid, stream) for sid, stream in ours.items()}

    def terminal() -> str | None:
        # How each scenario ends: the operator approves everything but cancels the nap.
        want = {"plain": "completed", "mail": "completed", "nap": "cancelled", "slow": "failed"}
        got = {kind: states[sid].status for kind, sid in sids.items()}
        if got != want:
            return f"sessions ended {got}, expected {want}"
        slow = states[sids["slow"]]
        if not slow.error.startswith("STEP_TIMEOUT:"):
            return f"the slow session failed with {slow.error!r}, not STEP_TIMEOUT"
        return None

    def verify() -> str | None:
        faults = []
        for path in partition_dirs(home / "log"):
            report = verify_log(path)
            faults += [f"{path.name}: {f}" for f in report.faults]
        return "; ".join(faults) if faults else None

    def projection() -> str | None:
        with Projector.open(home, rebuild_from=10**15) as projector:
            incremental = snapshot(projector)
            projector.rebuild(workers=1)
            rebuilt = snapshot(projector)
        differ = [t for t in TABLES if incremental[t] != rebuilt[t]]
        if not incremental["events"] or len(incremental["events"]) != len(everything):
            return f"events projected {len(incremental['events'])}, in the log {len(everything)}"
        return f"incremental != rebuild in {differ}" if differ else None

    responded = [e.event for e in everything if isinstance(e.event, ModelResponded)]
    recorded = Counter(r.request_id for r in responded)
    answered = Counter(rid for rid, _ in billed)

    def lost() -> str | None:
        problems = []
        lost_by_session: Counter[str] = Counter()
        for rid in set(answered) | set(recorded):
            missing = answered[rid] - recorded[rid]
            if missing < 0:
                problems.append(f"{rid}: recorded {recorded[rid]}, billed {answered[rid]}")
            lost_by_session[rid.split(":")[0]] += max(missing, 0)
        over = {sid: n for sid, n in lost_by_session.items() if n > crashes}
        if over:
            problems.append(f"lost replies over {crashes} per session: {over}")
        outcome.lost = sum(lost_by_session.values())
        return "; ".join(problems) if problems else None

    def usage() -> str | None:
        last_billed = dict(billed)  # the last billed answer per id
        problems = []
        for r in responded:
            u = last_billed.get(r.request_id)
            if u is None:
                problems.append(f"{r.request_id}: recorded, never billed")
                continue
            got = (r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens)
            want = (
                u["input_tokens"],
                u["output_tokens"],
                u.get("cache_read_input_tokens", 0),
                u.get("cache_creation_input_tokens", 0),
            )
            if got != want:
                problems.append(f"{r.request_id}: recorded usage {got}, last billed {want}")
            price = cost_usd(Usage(*want), INPUT_USD_PER_MTOK, OUTPUT_USD_PER_MTOK)
            if abs(r.cost_usd - price) > 1e-12:
                problems.append(f"{r.request_id}: cost {r.cost_usd}, usage prices at {price}")
        return "; ".join(problems) if problems else None

    def ledger() -> str | None:
        snap = last.snapshot
        if snap is None or "acme" not in snap:
            return f"no ledger snapshot from the last run: {last.describe()}"
        acme = snap["acme"]
        in_log = sum(r.cost_usd for r in responded)
        with (
            Projector.open(home, rebuild_from=10**15) as projector,
            projector.cursor() as cur,
        ):
            counters = cur.execute(
                "SELECT coalesce(sum(cost_usd), 0) FROM budget_counters WHERE tenant = 'acme'"
            ).fetchone()
            executions = cur.execute(
                "SELECT coalesce(sum(cost_usd), 0) FROM agent_executions WHERE tenant = 'acme'"
            ).fetchone()
        assert counters is not None and executions is not None
        problems = []
        for what, value in (
            ("log", in_log),
            ("budget_counters", float(counters[0])),
            ("agent_executions", float(executions[0])),
        ):
            if abs(acme["spent_usd"] - value) > 1e-9:
                problems.append(f"ledger spent {acme['spent_usd']!r} != {what} {value!r}")
        if acme["spent_usd"] > BUDGET_USD:
            problems.append(f"spent {acme['spent_usd']} over the budget {BUDGET_USD}")
        if acme["reserved_usd"] != 0 or acme["reserved_tokens"] != 0 or acme["holders"] != 0:
            problems.append(f"ledger still holds: {acme}")
        fresh = Ledger({"acme": Budget(BUDGET_USD)})
        fresh.fold(everything)
        again = fresh.snapshot()["acme"]
        if again["reserved_usd"] != 0 or again["holders"] != 0:
            problems.append(f"a ledger folded from the log holds: {again}")
        if abs(again["spent_usd"] - in_log) > 1e-9:
            problems.append(f"a ledger folded from the log spent {again['spent_usd']} != {in_log}")
        return "; ".join(problems) if problems else None

    def outbox() -> str | None:
        expected: set[tuple[str, str]] = set()
        for sid, stream in ours.items():
            emails = {
                e.event.call_id
                for e in stream
                if isinstance(e.event, ToolCallProposed) and e.event.tool == "send_email"
            }
            approved = {
                e.event.call_id
                for e in stream
                if isinstance(e.event, ReviewDecided) and e.event.approved
            }
            completed = {e.event.call_id for e in stream if isinstance(e.event, ToolCallCompleted)}
            expected |= {(sid, c) for c in emails & approved & completed}
        box = home / "outbox"
        files = (
            sorted(p for p in box.glob("*.eml") if not p.name.startswith("."))
            if box.is_dir()
            else []
        )
        found: list[tuple[str, str]] = []
        for path in files:
            with path.open("rb") as f:
                msg = email.message_from_binary_file(f, policy=email.policy.default)
            found.append((str(msg["X-Fleetlog-Session"]), str(msg["X-Fleetlog-Call"])))
        problems = []
        if not expected:
            problems.append("no approved send_email completed (the mail session sends one)")
        dupes = [k for k, n in Counter(found).items() if n > 1]
        if dupes:
            problems.append(f"delivered more than once: {dupes}")
        if set(found) != expected:
            problems.append(f"outbox {sorted(set(found))} != approved+completed {sorted(expected)}")
        return "; ".join(problems) if problems else None

    def no_running() -> str | None:
        running = {
            sid: [c.call_id for c in s.tool_calls.values() if c.status == "running"]
            for sid, s in states.items()
        }
        running = {sid: calls for sid, calls in running.items() if calls}
        if running:
            status = {sid: states[sid].status for sid in running}
            return f"tool calls left running: {running} (sessions {status})"
        return None

    def acked() -> str | None:
        # Durable when acknowledged: in the log as that run left it, not added by a later one.
        problems = []
        for run in outcome.runs:
            for kind, sid, call_id in (ack[1:4] for ack in run.acks):
                upto = run.seqs_after.get(sid, 0)
                stream = [e for e in ours.get(sid, []) if e.seq <= upto]
                if kind == "approve":
                    ok = any(
                        isinstance(e.event, ReviewDecided)
                        and e.event.call_id == call_id
                        and e.event.approved
                        for e in stream
                    )
                elif kind == "cancel":
                    ok = any(isinstance(e.event, CancelRequested) for e in stream)
                else:
                    ok = False
                if not ok:
                    problems.append(
                        f"acknowledged {kind} {sid} {call_id} was not durable when that run ended"
                    )
        return "; ".join(problems) if problems else None

    outcome.check("terminal", terminal)
    outcome.check("verify", verify)
    outcome.check("projection", projection)
    outcome.check("lost≤1", lost)
    outcome.check("usage", usage)
    outcome.check("ledger", ledger)
    outcome.check("outbox", outbox)
    outcome.check("no-running", no_running)
    outcome.check("acked", acked)
    return outcome


def render(outcomes: list[Outcome]) -> str:
    width = max(len(p) for p in CRASH_POINTS)
    head = f"{'crash point':<{width}} | " + " | ".join(INVARIANTS) + " | lost | runs | s"
    lines = [head, "-" * len(head)]
    for o in outcomes:
        cells = [
            ("✓" if o.checks[name][0] else "✗").center(len(name))
            if name in o.checks
            else "?".center(len(name))
            for name in INVARIANTS
        ]
        seconds = sum(r.seconds for r in o.runs)
        lines.append(
            f"{o.point:<{width}} | "
            + " | ".join(cells)
            + f" | {o.lost:>4} | {len(o.runs):>4} | {seconds:4.1f}"
        )
    problems = [
        f"{o.point} / {name}: {detail}"
        for o in outcomes
        for name, (ok, detail) in o.checks.items()
        if not ok
    ]
    if problems:
        lines += ["", "failures:", *problems]
    return "\n".join(lines) + "\n"


def test_every_crash_point_keeps_every_promise(tmp_path: Path, fake: FakeAnthropic) -> None:
    started = time.monotonic()
    outcomes = [crash_and_resume(point, tmp_path, fake) for point in CRASH_POINTS]
    table = render(outcomes)
    table += f"\n{len(CRASH_POINTS)} crash points in {time.monotonic() - started:.1f}s\n"
    (tmp_path / "fault_table.txt").write_text(table)
    print("\n" + table)
    assert all(o.ok for o in outcomes), table
