"""Context management as pure functions over a conversation (SPEC §2, layer 2).

The conversation is the Messages API's own list of messages, as ``loop.py`` folds it
from the log. Everything here is a function of its arguments (no clock, no I/O), so
that replaying the log rebuilds exactly the context the model saw:

* **accounting**: a cheap per-message estimate (UTF-8 bytes of the JSON / 4), scaled by
  a per-model calibration that ``loop.py`` derives from the ``usage.input_tokens`` each
  reply reports (and from the counts a "prompt is too long" error gives);
* **bounding** a tool result at ingestion: head and tail for the model, the whole
  output kept once in the log, paged with the ``read_output`` tool;
* **compaction** in stages: (a) clear the oldest tool results, keeping each
  ``tool_result`` block (so its ``tool_use`` stays answered) with a short placeholder;
  (b) replace older turns with a model-written summary. The first message always opens
  with the task verbatim, and the last ``keep_recent_turns`` turns are never touched;
* **verification** before every request, and a deterministic repair of what it finds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

__all__ = [
    "CLEARED_PREFIX",
    "SUMMARY_HEADER",
    "SUMMARY_SYSTEM",
    "READ_OUTPUT",
    "Message",
    "apply_clear",
    "apply_summary",
    "clear_plan",
    "excerpt",
    "message_tokens",
    "overflow_tokens",
    "render_transcript",
    "repair",
    "summary_range",
    "task_of",
    "text_tokens",
    "verify",
]

Message = dict[str, Any]

#: How every cleared tool result starts: what the clearing stage skips the next time.
CLEARED_PREFIX = "[cleared to save context]"
#: Opens the second block of the first message once older turns were summarized.
SUMMARY_HEADER = "[Earlier steps, compacted]\n"
#: The tool that pages through a tool output the model saw only part of.
READ_OUTPUT = "read_output"
#: The system prompt of a summary request (the offline model recognizes it too).
SUMMARY_SYSTEM = (
    "You compact the history of an AI agent's working session so that it can go on "
    "with its task in a smaller context. Write a concise summary of the transcript you "
    "are given: what was done (files read or written, commands run, messages sent), "
    "what was learned (facts, results, errors), decisions made and what is still open. "
    "Keep exact names, paths, numbers and tool call ids that may be needed again; an "
    "earlier output can be read again with read_output(call_id). Do not call tools and "
    "do not address the user: write only the summary."
)

# Framing the API adds per message (role, separators), on top of the content's tokens.
_MESSAGE_OVERHEAD = 4


def text_tokens(text: str) -> int:
    """The raw estimate for a piece of text: about four UTF-8 bytes a token."""
    return (len(text.encode()) + 3) // 4


def message_tokens(message: Message) -> int:
    """The raw estimate of one message: its JSON, four bytes a token, plus framing."""
    return (len(msgspec.json.encode(message)) + 3) // 4 + _MESSAGE_OVERHEAD


def _blocks(content: Any) -> list[Message]:
    if isinstance(content, list):
        return content
    return [{"type": "text", "text": content}] if isinstance(content, str) else []


def task_of(messages: Sequence[Message]) -> str:
    """The task, as the first message carries it (first text block once compacted)."""
    if not messages:
        return ""
    content = messages[0].get("content")
    if isinstance(content, str):
        return content
    for block in _blocks(content):
        if block.get("type") == "text":
            return str(block.get("text", ""))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", "")) for b in content if isinstance(b, dict) and "text" in b
        )
    return json.dumps(content)


# --- bounding a tool result ---------------------------------------------------------------


def excerpt(text: str, limit_chars: int, call_id: str) -> str:
    """``text`` cut to about ``limit_chars``: its head and tail, and how to read the rest.

    Returns ``text`` itself when it fits. The note in the middle says how much was cut
    and names the ``read_output`` call that pages through the whole output.
    """
    if len(text) <= limit_chars:
        return text
    # The note takes ~240 characters; under that, keep what the limit allows (some
    # head and tail still beat none), never more than the text itself.
    budget = max(limit_chars - 240, min(64, max(limit_chars, 2)))
    head_len = budget * 2 // 3
    tail_len = budget - head_len
    cut = len(text) - head_len - tail_len
    note = (
        f"\n[... {cut:,} of {len(text):,} characters cut here to save context; the whole "
        f'output is kept: read_output(call_id="{call_id}", offset={head_len}) pages '
        "through it ...]\n"
    )
    return text[:head_len] + note + text[len(text) - tail_len :]


def page(text: str, call_id: str, offset: int, limit_chars: int) -> str:
    """One page of a kept output for ``read_output``, with where the next page starts."""
    total = len(text)
    if offset < 0 or offset > total:
        raise ValueError(f"offset {offset} is outside the output (0 to {total})")
    end = min(total, offset + max(limit_chars - 200, 200))
    more = f'; next page: read_output(call_id="{call_id}", offset={end})' if end < total else ""
    return f"[characters {offset:,} to {end:,} of {total:,}{more}]\n{text[offset:end]}"


# --- stage (a): clearing old tool results -------------------------------------------------


def _tool_uses(message: Message) -> dict[str, Message]:
    return {
        str(b.get("id")): b
        for b in _blocks(message.get("content"))
        if isinstance(b, dict) and b.get("type") == "tool_use"
    }


def clear_plan(
    messages: Sequence[Message], keep_from: int, need: int, min_tokens: int = 64
) -> tuple[list[str], int]:
    """The oldest tool results to clear to save at least ``need`` tokens (raw estimate).

    Only messages before index ``keep_from`` (where the recent turns start) are looked
    at; results already cleared and results too small to be worth it are skipped.
    Returns ``(call ids, tokens saved)``; saves less than ``need`` when there is no more.
    """
    chosen: list[str] = []
    saved = 0
    for i in range(1, min(keep_from, len(messages))):
        message = messages[i]
        if message.get("role") != "user":
            continue
        for block in _blocks(message.get("content")):
            if block.get("type") != "tool_result":
                continue
            text = _content_text(block.get("content", ""))
            if text.startswith(CLEARED_PREFIX):
                continue
            before = text_tokens(text)
            after = text_tokens(_placeholder(str(block.get("tool_use_id")), {}, text))
            if before - after < min_tokens:
                continue
            chosen.append(str(block.get("tool_use_id")))
            saved += before - after
            if saved >= need:
                return chosen, saved
    return chosen, saved


def _placeholder(call_id: str, use: Message, text: str) -> str:
    name = str(use.get("name", "tool"))
    args = json.dumps(use.get("input", {}), sort_keys=True)
    if len(args) > 80:
        args = args[:77] + "..."
    return (
        f"{CLEARED_PREFIX} {name}({args}) returned {len(text):,} characters; "
        f'read_output(call_id="{call_id}") shows them again'
    )


def apply_clear(messages: Sequence[Message], call_ids: Iterable[str]) -> tuple[Message, ...]:
    """``messages`` with the results of ``call_ids`` replaced by placeholders (pairs kept)."""
    wanted = set(call_ids)
    out = list(messages)
    for i in range(1, len(out)):
        message = out[i]
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        blocks = message["content"]
        if not any(b.get("tool_use_id") in wanted for b in blocks if isinstance(b, dict)):
            continue
        uses = _tool_uses(out[i - 1])
        new_blocks = []
        for block in blocks:
            call_id = block.get("tool_use_id") if isinstance(block, dict) else None
            text = _content_text(block.get("content", "")) if call_id in wanted else ""
            if call_id in wanted and not text.startswith(CLEARED_PREFIX):  # idempotent
                cleared = _placeholder(call_id, uses.get(call_id, {}), text)
                new_blocks.append({**block, "content": cleared})
            else:
                new_blocks.append(block)
        out[i] = {**message, "content": new_blocks}
    return tuple(out)


# --- stage (b): summarizing older turns ---------------------------------------------------


def summary_range(messages: Sequence[Message], keep_recent_turns: int) -> int:
    """Where the kept messages start after a summary: ``messages[1:upto]`` get summarized.

    The cut falls just before an assistant message, so a ``tool_use`` and the
    ``tool_result`` that answers it (the next message) stay together; the last
    ``keep_recent_turns`` turns (assistant + user pairs) are kept. 0: nothing to summarize.
    """
    upto = len(messages) - 2 * keep_recent_turns
    if upto % 2 == 0:  # messages[odd] are the assistant's
        upto -= 1
    return upto if upto >= 3 else 0


def apply_summary(messages: Sequence[Message], upto: int, summary: str) -> tuple[Message, ...]:
    """The task verbatim and the summary as the first message, then ``messages[upto:]``."""
    head: Message = {
        "role": "user",
        "content": [
            {"type": "text", "text": task_of(messages)},
            {"type": "text", "text": SUMMARY_HEADER + summary},
        ],
    }
    return (head, *messages[upto:])


def _clip(text: str, cap: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= cap else text[: cap - 3] + "..."


def render_transcript(
    messages: Sequence[Message], upto: int, budget_tokens: int, cap: int = 2000
) -> str:
    """``messages[:upto]`` as plain text for a summary request, within ``budget_tokens``.

    Deterministic: each block is clipped to ``cap`` characters, halved until the whole
    fits; at the smallest clip the oldest lines go first (and it says how many).
    """
    task = task_of(messages)
    earlier = ""
    for block in _blocks(messages[0].get("content")) if messages else []:
        text = str(block.get("text", ""))
        if block.get("type") == "text" and text.startswith(SUMMARY_HEADER):
            earlier = text.removeprefix(SUMMARY_HEADER)

    def lines_at(clip: int) -> list[str]:
        lines: list[str] = []
        for message in messages[1:upto]:
            for block in _blocks(message.get("content")):
                kind = block.get("type")
                if kind == "text" and block.get("text"):
                    who = "ASSISTANT" if message.get("role") == "assistant" else "USER"
                    lines.append(f"{who}: {_clip(str(block['text']), clip)}")
                elif kind == "tool_use":
                    args = json.dumps(block.get("input", {}), sort_keys=True)
                    lines.append(f"CALL {block.get('id')} {block.get('name')}({_clip(args, clip)})")
                elif kind == "tool_result":
                    err = " (error)" if block.get("is_error") else ""
                    text = _content_text(block.get("content", ""))
                    lines.append(f"RESULT {block.get('tool_use_id')}{err}: {_clip(text, clip)}")
        return lines

    def head_at(task_cap: int, earlier_cap: int) -> str:
        head = f"THE TASK (kept verbatim, do not repeat it):\n{_clip(task, task_cap)}\n"
        if earlier:
            head += f"\nSUMMARY OF EVEN EARLIER STEPS:\n{_clip(earlier, earlier_cap)}\n"
        return head + "\nTRANSCRIPT TO SUMMARIZE:\n"

    # The head takes at most half the budget (the task is kept verbatim elsewhere: here
    # it is only a reminder), so that the transcript itself gets the rest.
    task_cap, earlier_cap = 2000, 4 * cap
    head = head_at(task_cap, earlier_cap)
    while text_tokens(head) > budget_tokens // 2 and max(task_cap, earlier_cap) > 40:
        task_cap, earlier_cap = max(task_cap // 2, 40), max(earlier_cap // 2, 40)
        head = head_at(task_cap, earlier_cap)
    clip = max(cap, 40)
    while True:
        lines = lines_at(clip)
        body = "\n".join(lines)
        if text_tokens(head + body) <= budget_tokens or clip <= 40:
            break
        clip //= 2

    def rendered(dropped: int) -> str:
        note = [f"[{dropped} earlier lines left out to fit]"] if dropped else []
        return head + "\n".join([*note, *lines[dropped:]])

    dropped = 0
    while dropped < len(lines) and text_tokens(rendered(dropped)) > budget_tokens:
        dropped += max(1, (len(lines) - dropped) // 8)
    return rendered(min(dropped, len(lines)))


# --- verification and repair --------------------------------------------------------------


def verify(messages: Sequence[Message], task: str) -> list[str]:
    """What is wrong with ``messages`` as a Messages API request; [] when nothing is.

    The first message is the user's, opening with ``task``; roles alternate; every
    ``tool_use`` is answered by exactly one ``tool_result`` in the next message and
    every ``tool_result`` answers a ``tool_use`` of the message before it; no message
    is empty; tool_use ids are unique. (Whether it fits the window is the caller's.)
    """
    problems: list[str] = []
    if not messages:
        return ["no messages"]
    if messages[0].get("role") != "user":
        problems.append("the first message is not the user's")
    elif task_of(messages) != task:
        problems.append("the first message does not open with the task verbatim")
    seen: set[str] = set()
    asked: dict[str, Message] = {}
    for i, message in enumerate(messages):
        role = message.get("role")
        if i and role == messages[i - 1].get("role"):
            problems.append(f"messages {i - 1} and {i} are both {role}'s")
        content = message.get("content")
        if content in ("", [], None):
            problems.append(f"message {i} is empty")
            continue
        answered: list[str] = []
        uses: dict[str, Message] = {}
        for block in _blocks(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "tool_use":
                call_id = str(block.get("id"))
                if role != "assistant":
                    problems.append(f"message {i} is the user's and holds tool_use {call_id}")
                if call_id in seen:
                    problems.append(f"tool_use id {call_id} is used twice")
                seen.add(call_id)
                uses[call_id] = block
            elif kind == "tool_result":
                call_id = str(block.get("tool_use_id"))
                if role != "user":
                    problems.append(
                        f"message {i} is the assistant's and holds tool_result {call_id}"
                    )
                elif call_id not in asked:
                    problems.append(f"tool_result {call_id} in message {i} answers no tool_use")
                elif call_id in answered:
                    problems.append(f"tool_use {call_id} is answered twice in message {i}")
                answered.append(call_id)
        missing = [c for c in asked if c not in answered]
        if missing:
            problems.append(f"tool_use {', '.join(missing)} has no tool_result in message {i}")
        asked = uses
    if asked and len(messages) > 1:
        # A trailing assistant message with calls: the next request must answer them.
        problems.append(f"tool_use {', '.join(asked)} has no tool_result after it")
    return problems


_MISSING = "no result was recorded for this call (the conversation was repaired)"


def repair(messages: Sequence[Message], task: str) -> tuple[Message, ...]:
    """``messages`` made valid for the API, deterministically, changing as little as it can.

    The task opens the first message; an orphaned or repeated ``tool_result`` is dropped;
    a ``tool_use`` left unanswered gets an ``is_error`` result saying so; a repeated
    ``tool_use`` id is dropped; same-role neighbours are merged; empty messages go.
    An empty task (no text to open with: empty text blocks are dropped) is "(no task)".
    """
    task = task or "(no task)"
    out: list[Message] = []
    for message in messages:
        role = message.get("role")
        if role not in ("user", "assistant"):
            continue
        blocks = [dict(b) for b in _blocks(message.get("content")) if isinstance(b, dict)]
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": [*out[-1]["content"], *blocks]}
        else:
            out.append({"role": role, "content": blocks})
    # The task first, verbatim.
    if not out or out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": task}]})
    elif task_of(out) != task:
        out[0] = {"role": "user", "content": [{"type": "text", "text": task}, *out[0]["content"]]}
    # Pairing, message by message.
    seen: set[str] = set()
    fixed: list[Message] = []
    for i, message in enumerate(out):
        blocks = message["content"]
        if message["role"] == "assistant":
            kept = []
            for block in blocks:
                if block.get("type") == "tool_result":
                    continue
                if block.get("type") == "tool_use":
                    call_id = str(block.get("id"))
                    if call_id in seen:
                        continue
                    seen.add(call_id)
                kept.append(block)
            blocks = kept
        else:
            previous = fixed[-1] if fixed and fixed[-1]["role"] == "assistant" else None
            asked = list(_tool_uses(previous)) if previous is not None else []
            results: dict[str, Message] = {}
            others: list[Message] = []
            for block in blocks:
                if block.get("type") == "tool_use":
                    continue
                if block.get("type") == "tool_result":
                    call_id = str(block.get("tool_use_id"))
                    if call_id in asked and call_id not in results:
                        results[call_id] = block
                    continue
                others.append(block)
            answers = [
                results.get(c)
                or {"type": "tool_result", "tool_use_id": c, "content": _MISSING, "is_error": True}
                for c in asked
            ]
            blocks = [*answers, *others]
        blocks = [b for b in blocks if not (b.get("type") == "text" and not b.get("text"))]
        if not blocks:
            if message["role"] == "user" and i == 0:
                blocks = [{"type": "text", "text": task}]
            else:
                continue
        if fixed and fixed[-1]["role"] == message["role"]:
            fixed[-1] = {"role": message["role"], "content": [*fixed[-1]["content"], *blocks]}
        else:
            fixed.append({"role": message["role"], "content": blocks})
    # An assistant message with calls at the very end: answer them too.
    if len(fixed) > 1 and fixed[-1]["role"] == "assistant":
        calls = list(_tool_uses(fixed[-1]))
        if calls:
            fixed.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": c,
                            "content": _MISSING,
                            "is_error": True,
                        }
                        for c in calls
                    ],
                }
            )
    return tuple(fixed)


# --- what the API says when a request is too long -----------------------------------------

_TOO_LONG = (
    # "prompt is too long: 208310 tokens > 200000 maximum"
    re.compile(r"prompt is too long: (\d+) tokens > (\d+)"),
    # "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000, ..."
    re.compile(r"input length and `?max_tokens`? exceed context limit: (\d+) \+ \d+ > (\d+)"),
)


def overflow_tokens(error: str) -> tuple[int, int] | None:
    """``(input tokens, window)`` when ``error`` is the API saying the prompt is too long."""
    for pattern in _TOO_LONG:
        match = pattern.search(error)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None
