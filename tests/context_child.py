"""A host process for the context tests: one session under a small window, to the end.

    python context_child.py HOME TOML_FILE TASK_ID PROMPT

Runs a real ``HostCore`` on ``HOME`` (FileLog, the real SDK against the loopback
server named by ``ANTHROPIC_BASE_URL``), submits the task unless its session exists
(a restart resumes it from the log instead), and exits 0 once the session is terminal.
``FLEETLOG_CRASH_AT=after_compaction`` ends it right after a compaction is durable.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fleetlog.actors.fleet import session_event
from fleetlog.actors.host import HostCore
from fleetlog.config import parse_config, parse_task, session_id_for


async def main(home: Path, toml: str, task_id: str, prompt: str) -> int:
    config = parse_config(toml, source="context_child")
    host = HostCore(0, 1, home, config, None, lock_wait_s=10.0)
    await host.start()
    sid = session_id_for(task_id)
    if not any(r["id"] == sid for r in host.statuses()):
        task = parse_task({"id": task_id, "prompt": prompt})
        await host.create(sid, session_event(config, task, sid))
    for _ in range(6000):
        rows = {r["id"]: r for r in host.statuses()}
        if rows.get(sid, {}).get("status") in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(0.01)
    else:
        print(f"{sid} did not end: {rows.get(sid)}", file=sys.stderr)
        return 1
    tasks = list(host.tasks.values())
    await host.aclose()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0


if __name__ == "__main__":
    home, toml_file, task_id, prompt = sys.argv[1:5]
    sys.exit(asyncio.run(main(Path(home), Path(toml_file).read_text(), task_id, prompt)))
