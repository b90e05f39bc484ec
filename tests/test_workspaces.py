"""Workspaces: ``[fleet] workspaces``, and a session whose workspace did not follow it.

A session moved to a node where its workspace does not exist (a node-local disk
lost with its node) must not run on blind in an empty directory: its next tool
call goes to review, and nothing is created until a reviewer says go on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

from fleetlog.actors.fleet import session_event
from fleetlog.actors.host import HostCore
from fleetlog.actors.model import ModelReply, ModelRequest, ScriptedModel, Usage
from fleetlog.actors.runner import Command
from fleetlog.config import ConfigError, parse_config, parse_task, session_id_for
from fleetlog.events.filelog import FileLog
from fleetlog.events.source import FileSource
from fleetlog.events.state import fold


def _tool_results(request: ModelRequest) -> int:
    return sum(
        1
        for m in request.messages
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    )


class WriteThenRead(ScriptedModel):
    """write_file, then (unless ``hang``) read_file of the same file, then done."""

    def __init__(self, *, hang: bool) -> None:
        super().__init__()
        self.hang = hang
        self.second_asked = asyncio.Event()

    async def complete(self, request: ModelRequest, **_: Any) -> ModelReply:
        done = _tool_results(request)
        usage = Usage(input_tokens=10, output_tokens=5)
        if done == 0:
            use = {"path": "notes.txt", "content": "kept in the workspace"}
            return ModelReply(
                [{"type": "tool_use", "id": "toolu_w", "name": "write_file", "input": use}],
                "tool_use",
                usage,
                request.model,
            )
        if done == 1:
            self.second_asked.set()
            if self.hang:  # the node is lost while the model thinks
                await asyncio.Event().wait()
            use = {"path": "notes.txt"}
            return ModelReply(
                [{"type": "tool_use", "id": "toolu_r", "name": "read_file", "input": use}],
                "tool_use",
                usage,
                request.model,
            )
        return ModelReply([{"type": "text", "text": "done"}], "end_turn", usage, request.model)


def _host(node_home: Path, log_root: Path, model: ScriptedModel, extra: str = "") -> HostCore:
    config = parse_config(f'[fleet]\nmodel = "m"\n{extra}')
    return HostCore(
        0,
        1,
        node_home,
        config,
        lock_wait_s=5.0,
        model_factory=lambda _name: model,
        source=FileSource(log_root),
    )


def _state(log_root: Path, sid: str) -> Any:
    with FileLog.open(log_root / "p0", readonly=True) as log:
        return fold(sid, log.read_stream(sid))


def test_a_session_on_a_node_without_its_workspace_asks_before_going_on(tmp_path: Path) -> None:
    log_root = tmp_path / "shared-log"
    sid = session_id_for("moved")

    async def run() -> None:
        first = WriteThenRead(hang=True)
        host_a = _host(tmp_path / "node-a", log_root, first)
        await host_a.start()
        task = parse_task({"id": "moved", "prompt": "write notes, then read them"})
        assert await host_a.create(sid, session_event(host_a.config, task, sid))
        await asyncio.wait_for(first.second_asked.wait(), 20)
        assert (tmp_path / "node-a" / "workspaces" / sid / "notes.txt").exists()
        tasks = list(host_a.tasks.values())
        await host_a.aclose()  # node A is gone, and its disk with it
        await asyncio.gather(*tasks, return_exceptions=True)

        host_b = _host(tmp_path / "node-b", log_root, WriteThenRead(hang=False))
        await host_b.start()
        try:
            await _until(lambda: _state(log_root, sid).status == "awaiting_review")
            state = _state(log_root, sid)
            (call,) = state.awaiting_review()
            assert call.tool == "read_file"
            assert "is not on node" in call.reason
            # Nothing was created on the new node before the reviewer's go.
            assert not (tmp_path / "node-b" / "workspaces" / sid).exists()
            await host_b.command(sid, Command(kind="approve", call_id=call.call_id))
            await _until(lambda: _state(log_root, sid).terminal)
            assert _state(log_root, sid).status == "completed"
            assert (tmp_path / "node-b" / "workspaces" / sid).is_dir()
        finally:
            await host_b.aclose()

    asyncio.run(run())


def test_a_shared_workspaces_directory_follows_the_session(tmp_path: Path) -> None:
    log_root = tmp_path / "shared-log"
    shared = tmp_path / "nfs" / "ws"
    extra = f'workspaces = "{shared}"\n'
    sid = session_id_for("follows")

    async def run() -> None:
        first = WriteThenRead(hang=True)
        host_a = _host(tmp_path / "node-a", log_root, first, extra)
        await host_a.start()
        task = parse_task({"id": "follows", "prompt": "write notes, then read them"})
        assert await host_a.create(sid, session_event(host_a.config, task, sid))
        await asyncio.wait_for(first.second_asked.wait(), 20)
        assert (shared / sid / "notes.txt").exists()
        tasks = list(host_a.tasks.values())
        await host_a.aclose()
        await asyncio.gather(*tasks, return_exceptions=True)

        host_b = _host(tmp_path / "node-b", log_root, WriteThenRead(hang=False), extra)
        await host_b.start()
        try:
            await _until(lambda: _state(log_root, sid).terminal)
        finally:
            await host_b.aclose()
        state = _state(log_root, sid)
        assert state.status == "completed"
        assert not state.awaiting_review()
        read = state.tool_calls["toolu_r"]
        assert read.status == "succeeded"

    asyncio.run(run())


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    await asyncio.to_thread(wait_until, predicate, timeout, 0.02)


def test_workspaces_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match="workspaces must be an absolute path"):
        parse_config('[fleet]\nworkspaces = "rel/ws"\n')
