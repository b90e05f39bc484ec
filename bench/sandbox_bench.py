"""What the sandbox adds to a tool call: run_shell("true") with and without it.

Both run through ``run_tool`` as a session's call does (vetting of the command
included, the same minimal environment), interleaved call by call so that
machine drift hits both alike. The added latency is the difference of medians;
the goal (issue 12) is p50 ≤ 15 ms on the 2-core reference machine.

    .venv/bin/python -m bench.sandbox_bench            # 200 calls each
    .venv/bin/python -m bench.sandbox_bench --calls 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _measure(calls: int, command: str) -> dict[str, list[float]]:
    from fleetlog.actors.sandbox import Sandbox
    from fleetlog.actors.tools import BUILTIN_TOOLS, ToolContext, run_tool

    home = Path(tempfile.mkdtemp(prefix="fleetlog-bench-", dir="/var/tmp"))
    try:
        os.chmod(home, 0o755)
        workspace = home / "workspaces" / "s-bench"
        workspace.mkdir(parents=True)
        box = Sandbox.find(home)
        contexts = {
            "plain": ToolContext("s-bench", "t", "k", workspace, home),
            "sandboxed": ToolContext("s-bench", "t", "k", workspace, home, sandbox=box),
        }
        spec = BUILTIN_TOOLS["run_shell"]
        times: dict[str, list[float]] = {name: [] for name in contexts}
        for i in range(calls + 5):
            for name, ctx in contexts.items():
                started = time.perf_counter()
                out = await run_tool(spec, {"command": command}, ctx, timeout_s=30)
                elapsed = (time.perf_counter() - started) * 1000
                if out.is_error or not out.output.startswith("exit code 0"):
                    raise SystemExit(f"{name}: {out.output[:200]}")
                if i >= 5:  # the first calls warm caches (and hand the workspace over)
                    times[name].append(elapsed)
        return times
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--command", default="true")
    args = parser.parse_args(argv)
    from fleetlog.actors.sandbox import probe

    reason = probe()
    if reason:
        print(f"no sandbox here: {reason}", file=sys.stderr)
        return 1
    times = asyncio.run(_measure(args.calls, args.command))
    plain, boxed = times["plain"], times["sandboxed"]
    print(
        f"run_shell({args.command!r}), {args.calls} calls each, interleaved; nproc {os.cpu_count()}"
    )
    print(f"{'':12}{'p50 ms':>9}{'p95 ms':>9}")
    for name, values in times.items():
        print(f"{name:12}{statistics.median(values):9.2f}{_pct(values, 0.95):9.2f}")
    added = statistics.median(boxed) - statistics.median(plain)
    added95 = _pct(boxed, 0.95) - _pct(plain, 0.95)
    print(f"{'added':12}{added:9.2f}{added95:9.2f}   (goal: p50 <= 15 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
