"""One fleet process for the fault suite: ``python tests/faults/fleet_child.py HOME [TAG]``.

It runs four sessions of tenant ``acme`` on a real ``HostCore`` over FileLog
partitions under ``HOME``, with the real ``anthropic`` SDK talking to the model
server named by ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY`` (the test's
``FakeAnthropic``), and an in-process ledger rebuilt at every start by folding
the whole log (so a restart of this process is a ledger restart too):

* ``plain``: the scripted agent's idempotent file tools, several model calls;
* ``mail``: a ``send_email`` that policy sends for review;
* ``nap``: a non-idempotent ``run_shell("sleep 3")`` the operator cancels while it runs;
* ``slow``: a ``run_shell("sleep 5")`` under ``step_timeout_s = 1`` (STEP_TIMEOUT).

An in-process operator approves every call awaiting review (in-doubt ones too)
except the nap's, and cancels the nap once its shell call is running (or in
doubt after a restart). After each command returns it prints
``ack <kind> <session> <call id>`` (flushed): acknowledged means durable, which
the test checks against the log. When every session is terminal it prints
``done`` and one JSON line, the ledger's snapshot, closes the host and exits 0.

``FLEETLOG_CRASH_AT`` (read by ``fleetlog.events.faults``) makes it die at a
named point with exit code 86 instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from fleetlog.actors.fleet import session_event
from fleetlog.actors.host import HostCore
from fleetlog.actors.ledger import Ledger, LocalBudget, budgets_of
from fleetlog.actors.runner import Command
from fleetlog.config import Config, parse_config, parse_task, session_id_for
from fleetlog.events.errors import FleetlogError
from fleetlog.events.partitions import open_readers

CLAUDE = "claude-sonnet-4-6"
INPUT_USD_PER_MTOK = 2.0
OUTPUT_USD_PER_MTOK = 10.0
BUDGET_USD = 1.0

CONFIG_TOML = f"""
[fleet]
hosts = 1
model = "{CLAUDE}"

[models."{CLAUDE}"]
context_window = 200000
input_usd_per_mtok = {INPUT_USD_PER_MTOK}
output_usd_per_mtok = {OUTPUT_USD_PER_MTOK}

[limits]
max_steps = 10
max_tokens = 200000
max_cost_usd = 0.5
step_timeout_s = 20
total_timeout_s = 120

[budgets.acme]
max_cost_usd = {BUDGET_USD}

[policy]
ask = ["send_email"]
allow = ["read_file", "list_dir", "write_file", "run_shell"]
"""

#: Markers the test's model server recognises in the task prompt (first user message).
NAP_MARK = "NAP-TASK"
SLOW_MARK = "SLOW-TASK"

#: (kind, task prompt, task limits)
SCENARIO: list[tuple[str, str, dict[str, float | int]]] = [
    ("plain", "Summarize the workspace.", {}),
    ("mail", "Summarize the workspace and email it to bob@example.com.", {}),
    ("nap", f"{NAP_MARK}: take a short nap in the workspace.", {}),
    ("slow", f"{SLOW_MARK}: take a long nap in the workspace.", {"step_timeout_s": 1}),
]


def session_ids(tag: str) -> dict[str, str]:
    """The session id of each scenario kind, for a run tagged ``tag``."""
    return {kind: session_id_for(f"{kind}-{tag}") for kind, _prompt, _limits in SCENARIO}


def rebuilt_ledger(home: Path, config: Config) -> Ledger:
    """A ledger folded from every partition of the log, from position 1."""
    ledger = Ledger(budgets_of(config))
    root = home / "log"
    if not root.is_dir():
        return ledger
    for log in open_readers(root):
        try:
            position = 1
            while batch := log.read_all(position, 10_000):
                ledger.fold(batch)
                position = batch[-1].position + 1
        finally:
            log.close()
    return ledger


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def command(host: HostCore, sid: str, cmd: Command) -> None:
    try:
        ok = await host.command(sid, cmd)
    except FleetlogError as e:  # raced with the session (it ended, or decided otherwise)
        say(f"nack {cmd.kind} {sid} {cmd.call_id or '-'} {e}")
        return
    if ok:
        say(f"ack {cmd.kind} {sid} {cmd.call_id or '-'}")


async def operator(host: HostCore, sids: dict[str, str]) -> None:
    """Approve every review (but the nap's), cancel the nap once its shell call runs."""
    nap = sids["nap"]
    while True:
        states = {}
        for sid in sids.values():
            runner = host.runners.get(sid)
            if runner is not None and hasattr(runner, "durable"):
                states[sid] = runner.durable.session  # durable state only
        if len(states) == len(sids) and all(s.terminal for s in states.values()):
            return
        for sid, s in states.items():
            if s.terminal:
                continue
            if sid == nap:
                shell_busy = any(
                    c.tool == "run_shell" and c.status in ("running", "awaiting_review")
                    for c in s.tool_calls.values()
                )
                if shell_busy and not s.cancel_requested:
                    await command(host, sid, Command(kind="cancel", reviewer="operator"))
                continue
            for call in s.awaiting_review():
                await command(
                    host, sid, Command(kind="approve", call_id=call.call_id, reviewer="operator")
                )
        await asyncio.sleep(0.01)


async def main(home: Path, tag: str) -> int:
    config = parse_config(CONFIG_TOML, source="fleet_child")
    ledger = rebuilt_ledger(home, config)
    host = HostCore(0, 1, home, config, LocalBudget(ledger), lock_wait_s=10.0)
    await host.start()
    sids = session_ids(tag)
    for kind, prompt, limits in SCENARIO:
        task = parse_task(
            {"id": f"{kind}-{tag}", "prompt": prompt, "tenant": "acme", "limits": limits}
        )
        await host.create(sids[kind], session_event(config, task, sids[kind]))
    try:
        await operator(host, sids)
    finally:
        tasks = list(host.tasks.values())
        await host.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)
    say("done")
    say(json.dumps(ledger.snapshot(), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "x")))
