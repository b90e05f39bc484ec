"""Context benchmark: accounting + verification overhead per model request (goal <= 2 ms).

    .venv/bin/python -m bench.context_bench                        # 100, 500, 2000 messages
    .venv/bin/python -m bench.context_bench --messages 500 --json out.json

Each conversation is built the way a session builds it: real events (SessionCreated,
SessionClaimed, then per turn ModelCallRequested, ModelResponded whose JSON content holds
text and tool_use blocks, parallel calls in about a quarter of the turns, and per call
ToolCallProposed, ToolCallVetted, ToolCallStarted, ToolCallCompleted with outputs from a
few bytes to tens of KiB) folded with ``evolve_agent``. The context window is huge, so
``decide`` takes the path of a plain next step (asserted): no compaction, no repair.

A request's conversation always holds an odd number of messages (the task, then
assistant + user pairs), so an even ``--messages`` is measured at one more message.

Figures, per request, in microseconds (median and p95 over ``--repeats`` of the mean
of ``--iterations`` calls; measurements interleaved so that drift hits all alike):

* (a) accounting: ``estimate_context_tokens(state, config)``;
* (b) verification: ``verify(messages, task_of(messages))``;
* (c) the whole ``decide(state, now, config)`` (it includes (a) and (b));
* (d) folding one more turn into the state with ``evolve_agent`` (the request and its
  reply, every tool call's events, the tool results message): what keeps the
  per-message token estimates current, paid once per request; the mean over 8 turns
  that could follow (one call or parallel ones, small or large outputs);
* (c)+(d): what a session pays per request; the goal holds at 500 messages.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetlog.actors.context import message_tokens, task_of, verify
from fleetlog.actors.loop import (
    AgentState,
    CallModel,
    LoopConfig,
    decide,
    estimate_context_tokens,
    evolve_agent,
    raw_request_tokens,
)
from fleetlog.events.schema import (
    Envelope,
    Event,
    Limits,
    ModelCallRequested,
    ModelResponded,
    SessionClaimed,
    SessionCreated,
    ToolCallCompleted,
    ToolCallProposed,
    ToolCallStarted,
    ToolCallVetted,
)
from fleetlog.events.state import SessionState

GOAL_US = 2000.0
GOAL_MESSAGES = 500
MODEL = "claude-bench"
SESSION = "s-context-bench"
T0 = 1_750_000_000.0

#: Nothing but the context may stop the session: the benchmark measures a plain step.
_LIMITS = Limits(
    max_steps=10**9,
    max_tokens=10**15,
    max_cost_usd=1e12,
    step_timeout_s=1e9,
    total_timeout_s=1e12,
    max_identical_calls=10**9,
)
_TOOLS = ["read_file", "write_file", "run_shell", "list_dir", "search", "http_get"]
_VOCABULARY = (
    "the a of to in and is for on with that this it as be by are from at or an was "
    "file test error value result config session request model token tool call path "
    "return import def class self none true false list dict str int async await "
    "module package function line output input data cache index fleet log event "
    "stream partition offset commit append replay state status context window budget "
    "naïve café résumé → ✓ 日本語"  # multi-byte UTF-8 too
)
_WORDS = tuple(_VOCABULARY.split())


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _sized_text(rng: random.Random, size: int, style: str) -> str:
    """About ``size`` characters of text that looks like ``style`` output."""
    lines: list[str] = []
    total = 0
    n = 0
    while total < size:
        n += 1
        if style == "code":
            line = f"{'    ' * rng.randrange(3)}{rng.choice(_WORDS)} = {_words(rng, 5)}"
        elif style == "shell":
            line = f"[{n:04d}] {rng.choice(('INFO', 'DEBUG', 'WARN'))} {_words(rng, 9)}"
        elif style == "listing":
            line = f"{rng.choice(('src', 'tests', 'docs'))}/{rng.choice(_WORDS)}_{n}.py"
        else:
            line = _words(rng, 12)
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)[:size]


def _output_size(rng: random.Random) -> int:
    """A tool output's size: mostly small, some medium, a few large."""
    roll = rng.random()
    if roll < 0.6:
        return rng.randint(20, 400)
    if roll < 0.9:
        return rng.randint(500, 4_000)
    return rng.randint(8_000, 24_000)


def _call(rng: random.Random, call_id: str) -> tuple[str, dict[str, Any], str, bool]:
    """A tool call: its name, input, output and whether it failed."""
    tool = rng.choice(_TOOLS)
    path = f"src/{rng.choice(_WORDS)}/{rng.choice(_WORDS)}_{rng.randrange(100)}.py"
    size = _output_size(rng)
    tool_input: dict[str, Any]
    if tool == "read_file":
        tool_input = {"path": path}
        output = _sized_text(rng, size, "code")
    elif tool == "write_file":
        content = _sized_text(rng, rng.randint(100, 3_000), "code")
        tool_input = {"path": path, "content": content}
        output = f"wrote {len(content.encode())} bytes to {path}"
    elif tool == "run_shell":
        tool_input = {"command": f"python -m pytest -q tests/test_{rng.choice(_WORDS)}.py"}
        output = _sized_text(rng, size, "shell")
    elif tool == "list_dir":
        tool_input = {"path": path.rsplit("/", 1)[0]}
        output = _sized_text(rng, size, "listing")
    elif tool == "search":
        tool_input = {"query": _words(rng, 4), "max_results": 10}
        hits = [
            {
                "path": f"src/{rng.choice(_WORDS)}.py",
                "line": rng.randrange(900),
                "text": _words(rng, 10),
            }
            for _ in range(max(1, size // 120))
        ]
        output = json.dumps(hits, ensure_ascii=False)
    else:
        tool_input = {"url": f"https://example.invalid/{rng.choice(_WORDS)}?id={call_id}"}
        output = _sized_text(rng, size, "prose")
    is_error = rng.random() < 0.05
    if is_error:
        output = f"error: {tool} failed: {_words(rng, 12)}"
    return tool, tool_input, output, is_error


class _Session:
    """Builds a session's events and folds them as a runner does (one envelope each)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.config = LoopConfig(context_window=10**9)  # never compacts
        self.state = AgentState(session=SessionState(session_id=SESSION))
        self.ids = 0
        task = (
            "Refactor the fleet's log reader so that a partition can be replayed from any "
            "offset, keep the public API, and make the test-suite pass. Notes:\n"
            + _sized_text(self.rng, 1_500, "prose")
        )
        self.fold(
            [
                SessionCreated(
                    task_id="t-context-bench",
                    prompt=task,
                    model=MODEL,
                    system="You are a careful software engineer. " + _words(self.rng, 120),
                    tools=list(_TOOLS),
                    limits=_LIMITS,
                ),
                SessionClaimed(owner="host-bench", epoch=1),
            ]
        )

    def envelopes(self, events: list[Event], state: AgentState) -> list[Envelope]:
        seq = state.session.seq
        return [
            Envelope(seq + 1 + i, SESSION, seq + 1 + i, 1, T0 + seq + 1 + i, f"e{seq + 1 + i}", e)
            for i, e in enumerate(events)
        ]

    def fold(self, events: list[Event]) -> None:
        for envelope in self.envelopes(events, self.state):
            self.state = evolve_agent(self.state, envelope)

    def turn(self) -> list[Event]:
        """The events of the next step: the request, the reply, its tool calls' lives."""
        rng = self.rng
        state = self.state
        step = state.session.step + 1
        request_id = f"{SESSION}:step-{step}"
        parallel = rng.random() < 0.25
        calls = []
        for _ in range(rng.randint(2, 4) if parallel else 1):
            self.ids += 1
            call_id = f"toolu_{self.ids:06d}{rng.getrandbits(64):016x}"
            calls.append((call_id, *_call(rng, call_id)))
        blocks: list[dict[str, Any]] = []
        if rng.random() < 0.85:
            sentences = rng.choice((1, 2, 3, 8, 20))
            blocks.append(
                {"type": "text", "text": ". ".join(_words(rng, 12) for _ in range(sentences))}
            )
        blocks += [
            {"type": "tool_use", "id": call_id, "name": tool, "input": tool_input}
            for call_id, tool, tool_input, _output, _error in calls
        ]
        basis = raw_request_tokens(state, self.config)
        content = json.dumps(blocks)
        events: list[Event] = [
            ModelCallRequested(
                step=step,
                request_id=request_id,
                model=MODEL,
                input_tokens_estimate=estimate_context_tokens(state, self.config),
                max_tokens=4096,
                estimate_basis=basis,
            ),
            ModelResponded(
                step=step,
                request_id=request_id,
                model=MODEL,
                content=content,
                stop_reason="tool_use",
                input_tokens=int(basis * rng.uniform(1.05, 1.2)),
                output_tokens=len(content) // 4,
                cost_usd=basis * 3e-6,
                latency_ms=rng.uniform(400, 4_000),
            ),
        ]
        events += [
            ToolCallProposed(
                step=step, call_id=call_id, tool=tool, input=json.dumps(tool_input, sort_keys=True)
            )
            for call_id, tool, tool_input, _output, _error in calls
        ]
        for call_id, _tool, _input, output, is_error in calls:
            events += [
                ToolCallVetted(call_id=call_id, verdict="allow", risk="low"),
                ToolCallStarted(call_id=call_id, idempotency_key=f"{call_id}:1"),
                ToolCallCompleted(
                    call_id=call_id,
                    output=output,
                    is_error=is_error,
                    latency_ms=rng.uniform(1, 900),
                ),
            ]
        return events


def request_count(messages: int) -> int:
    """The messages of a request's conversation for ``messages`` asked: odd, never fewer."""
    return messages if messages % 2 else messages + 1


def build(
    messages: int, seed: int = 7, alternatives: int = 8
) -> tuple[AgentState, list[list[Envelope]], LoopConfig, float]:
    """A state of ``request_count(messages)`` messages about to make its next request.

    Returns the state, the envelopes of ``alternatives`` turns that could follow it
    (for (d): one call or parallel ones, small or large outputs), the loop config and
    a ``now`` for ``decide``.
    """
    target = request_count(messages)
    session = _Session(seed)
    while len(session.state.messages) < target:
        session.fold(session.turn())
    state = session.state
    config = session.config
    now = state.started_at + 60.0
    # The figures are only worth something on the path they claim to measure.
    assert len(state.messages) == target, (len(state.messages), target)
    assert state.message_tokens == tuple(message_tokens(m) for m in state.messages)
    assert verify(state.messages, task_of(state.messages)) == []
    assert estimate_context_tokens(state, config) < config.compact_at * config.context_window
    decision = decide(state, now, config)
    assert type(decision) is CallModel, decision
    assert decision.purpose == "" and not decision.again, decision
    following = [session.envelopes(session.turn(), state) for _ in range(alternatives)]
    for envelopes in following:
        after = state
        for envelope in envelopes:
            after = evolve_agent(after, envelope)
        assert len(after.messages) == target + 2 and not after.step_calls
        assert after.message_tokens == tuple(message_tokens(m) for m in after.messages)
        assert type(decide(after, now, config)) is CallModel
    return state, following, config, now


def _per_call_us(fn: Callable[[], object], iterations: int) -> float:
    gc.collect()
    started = time.perf_counter_ns()
    for _ in range(iterations):
        fn()
    return (time.perf_counter_ns() - started) / iterations / 1_000


def _iterations_for(fn: Callable[[], object], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds`` (measured over ~20 ms)."""
    calls = 0
    started = time.perf_counter()
    while (took := time.perf_counter() - started) < 0.02:
        fn()
        calls += 1
    return max(1, math.ceil(seconds * calls / took))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def measure(messages: int, repeats: int, iterations: int, seconds: float) -> dict[str, Any]:
    state, following, config, now = build(messages)

    def fold_turns() -> None:
        # Every alternative turn from the same state (each call then counts len(following)).
        for envelopes in following:
            s = state
            for envelope in envelopes:
                s = evolve_agent(s, envelope)

    figures: dict[str, Callable[[], object]] = {
        "accounting": lambda: estimate_context_tokens(state, config),
        "verification": lambda: verify(state.messages, task_of(state.messages)),
        "decide": lambda: decide(state, now, config),
        "fold_turn": fold_turns,
    }
    counts = {name: iterations or _iterations_for(fn, seconds) for name, fn in figures.items()}
    runs: dict[str, list[float]] = {name: [] for name in figures}
    for _ in range(repeats):
        for name, fn in figures.items():
            runs[name].append(_per_call_us(fn, counts[name]))
    runs["fold_turn"] = [t / len(following) for t in runs["fold_turn"]]
    runs["decide+fold_turn"] = [
        c + d for c, d in zip(runs["decide"], runs["fold_turn"], strict=True)
    ]
    return {
        "messages_asked": messages,
        "messages": len(state.messages),
        "blocks": sum(
            len(m["content"]) if isinstance(m["content"], list) else 1 for m in state.messages
        ),
        "tool_calls": len(state.session.tool_calls),
        "events_per_turn": statistics.mean(len(e) for e in following),
        "tokens_estimate": estimate_context_tokens(state, config),
        "iterations": counts,
        "figures_us": {
            name: {"median": statistics.median(values), "p95": _pct(values, 0.95), "runs": values}
            for name, values in runs.items()
        },
    }


def _cell(figure: dict[str, Any]) -> str:
    return f"{figure['median']:,.1f} / {figure['p95']:,.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", default="100,500,2000", help="comma-separated sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--iterations", type=int, default=0, help="calls per repeat (0: about --seconds' worth)"
    )
    parser.add_argument("--seconds", type=float, default=0.2, help="per figure and repeat")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.messages.split(",") if n.strip()]
    results = [measure(n, args.repeats, args.iterations, args.seconds) for n in sizes]

    print(
        f"context accounting + verification per request: median / p95 in µs over "
        f"{args.repeats} repeat(s) of a per-call mean; Python {platform.python_version()}"
    )
    print()
    print(
        "| messages | tokens (est.) | (a) accounting | (b) verification | (c) decide "
        "| (d) fold one turn | (c)+(d) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        f = r["figures_us"]
        print(
            f"| {r['messages']:,} | {r['tokens_estimate']:,} | {_cell(f['accounting'])} "
            f"| {_cell(f['verification'])} | {_cell(f['decide'])} | {_cell(f['fold_turn'])} "
            f"| {_cell(f['decide+fold_turn'])} |"
        )
    print()
    goal: dict[str, Any] = {"goal_us": GOAL_US, "messages": request_count(GOAL_MESSAGES)}
    at_goal = [r for r in results if r["messages"] == request_count(GOAL_MESSAGES)]
    if at_goal:
        total = at_goal[0]["figures_us"]["decide+fold_turn"]
        goal.update(p95_us=total["p95"], median_us=total["median"], passed=total["p95"] <= GOAL_US)
        print(
            f"goal: (c)+(d) <= {GOAL_US:,.0f} µs per request at {goal['messages']} messages: "
            f"{'PASS' if goal['passed'] else 'FAIL'} (p95 {total['p95']:,.1f} µs, "
            f"median {total['median']:,.1f} µs)"
        )
    else:
        print(f"goal: not measured (add {GOAL_MESSAGES} to --messages)")
    if args.json:
        report = {"python": platform.python_version(), "goal": goal, "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
