"""Inside the sandbox: call one confined Python tool (``python -m fleetlog.actors._confined``).

Started by ``tools._call_confined``: the request (the tool's ``module:qualname``,
its validated input, the call's context) comes as JSON on stdin; the outcome
goes back as one JSON line on stdout. Runs as the session's unprivileged uid,
with the workspace the only writable path and no network.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import msgspec

from fleetlog.actors.tools import ToolContext, ToolOutcome, _failure, _outcome, tool_spec


def _call(request: dict[str, Any]) -> ToolOutcome:
    module_name, _, qualname = str(request["origin"]).partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    spec = tool_spec(target)
    if spec is None:
        return ToolOutcome(output=f"{request['origin']} is not a fleetlog tool", is_error=True)
    session_id, call_id, key, workspace = request["ctx"]
    ctx = ToolContext(session_id, call_id, key, Path(workspace), Path(request["home"]))
    try:
        result = spec.fn(ctx, **request["kwargs"])
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return _outcome(result)
    except (Exception, SystemExit) as err:
        return _failure(err)


async def _awaited(result: Any) -> Any:
    return await result


def main() -> int:
    request = msgspec.json.decode(sys.stdin.buffer.read())
    outcome = _call(request)
    sys.stdout.write(msgspec.json.encode(outcome).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
