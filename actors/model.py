"""Model clients: Claude through the official SDK, and the offline scripted model.

Both speak one small port, :class:`ModelClient`: a :class:`ModelRequest` in the
Messages API's own shape goes in, a :class:`ModelReply` of plain-dict content
blocks comes out, and every failure is a :class:`~fleetlog.events.errors.ModelError`.

:class:`AnthropicModel` turns the SDK's own retries off and retries itself, so
that each retry reaches the caller's ``on_retry`` hook (and so the log, as a
``ModelCallRetried`` event) instead of vanishing inside the SDK.

:class:`ScriptedModel` is the default when no API key is set: a pure function of
the request that plays a plausible agent, so demos and tests run offline.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import msgspec

from fleetlog.actors.context import SUMMARY_HEADER, SUMMARY_SYSTEM
from fleetlog.events.errors import ModelError

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Message, MessageParam, ToolUnionParam

# The SDK is imported where a Claude model is first used: it costs ~2 s and
# ~60 MB in every process that imports it, and most of a fleet's processes (projector,
# dispatcher, ledger; hosts on the scripted model) never call Claude.

__all__ = [
    "RETRYABLE_STATUS",
    "AnthropicModel",
    "ModelClient",
    "ModelReply",
    "ModelRequest",
    "RetryHook",
    "ScriptedModel",
    "Usage",
    "cost_usd",
    "demo_tasks",
    "estimate_tokens",
    "worst_case_input_tokens",
    "worst_case_usage",
]


class Usage(msgspec.Struct, frozen=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class ModelRequest(msgspec.Struct, frozen=True):
    """One Messages API call: ``messages`` and ``tools`` are in the API's own JSON shape."""

    model: str
    system: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    max_tokens: int = 4096
    #: fleetlog's id of the call (the same on every attempt), sent as ``X-Fleetlog-Request``
    #: so that a proxy or the API's logs can be matched with the event log.
    request_id: str = ""


class ModelReply(msgspec.Struct, frozen=True):
    """``content`` holds plain-dict blocks: ``text`` and ``tool_use`` (id, name, input)."""

    content: list[dict[str, Any]]
    stop_reason: str
    usage: Usage
    model: str


#: ``(attempt, status_code, error, delay_s)``: awaited once per failed attempt that will be
#: retried, *before* the back-off sleep, so the caller can record a ``ModelCallRetried`` event.
#: ``attempt`` is the 1-based number of the attempt that failed; ``status_code`` is ``None``
#: for timeouts and connection errors.
RetryHook = Callable[[int, int | None, str, float], Awaitable[None]]


class ModelClient(Protocol):
    async def complete(
        self, request: ModelRequest, *, timeout_s: float, on_retry: RetryHook | None = None
    ) -> ModelReply: ...

    def max_usage(self, request: ModelRequest) -> Usage:
        """The most this request can be billed for: what a budget reserves before the call."""
        ...

    async def aclose(self) -> None: ...


# --- accounting --------------------------------------------------------------------------

#: Prompt-cache prices relative to the input price (Anthropic's published multipliers).
CACHE_READ_FACTOR = 0.10
CACHE_WRITE_FACTOR = 1.25


def cost_usd(usage: Usage, input_usd_per_mtok: float, output_usd_per_mtok: float) -> float:
    """What one call cost. ``input_tokens`` excludes cache reads and writes, as the API reports."""
    input_units = (
        usage.input_tokens
        + usage.cache_read_tokens * CACHE_READ_FACTOR
        + usage.cache_write_tokens * CACHE_WRITE_FACTOR
    )
    return (input_units * input_usd_per_mtok + usage.output_tokens * output_usd_per_mtok) / 1e6


def worst_case_input_tokens(request: ModelRequest) -> int:
    """An upper bound on the input tokens ``request`` can be billed for.

    A token covers at least one byte of UTF-8 text, and the request's JSON is
    longer than its text; a few tokens a message cover the role framing.
    """
    encoded = msgspec.json.encode([request.system, request.messages, request.tools])
    return len(encoded) + 8 * len(request.messages) + 64


def worst_case_usage(request: ModelRequest) -> Usage:
    """The whole input billed as cache writes (the dearest input), and ``max_tokens`` out."""
    return Usage(
        cache_write_tokens=worst_case_input_tokens(request), output_tokens=request.max_tokens
    )


def estimate_tokens(request: ModelRequest) -> int:
    """A cheap estimate of the request's input tokens: about four characters per token.

    Good enough to decide when to compact before a call; the reply's ``usage`` is the truth.
    """
    encoded = msgspec.json.encode([request.system, request.messages, request.tools])
    return math.ceil(len(encoded) / 4)


# --- Claude through the SDK ---------------------------------------------------------------

#: Statuses worth another attempt: request timeout, lock conflict, rate limit, server errors,
#: overloaded. 501 and the other 4xx mean the request itself is wrong.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

# A retry-after beyond this is treated as this: a header must not park a session for hours.
_MAX_RETRY_AFTER_S = 300.0
_MAX_ERROR_CHARS = 300


class _Failure(NamedTuple):
    status_code: int | None
    error: str
    retryable: bool
    retry_after_s: float | None


class AnthropicModel:
    """Claude through the official ``anthropic`` SDK, with visible retries.

    ``api_key`` / ``base_url`` left as ``None`` are resolved by the SDK exactly as it
    always does (``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``, ...). The SDK's own
    retries are off (``max_retries=0``): this class retries 408/409/429/5xx/529,
    timeouts and connection errors up to ``max_retries`` times, with exponential
    back-off and jitter, never sooner than a ``retry-after`` header asks.

    ``timeout_s`` given to :meth:`complete` bounds each attempt; bound the whole call
    (attempts plus back-off) from outside when that matters.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        import anthropic

        try:
            self._client = anthropic.AsyncAnthropic(
                api_key=api_key, base_url=base_url, max_retries=0
            )
        except anthropic.AnthropicError as exc:  # e.g. a broken credentials profile on disk
            raise ModelError(
                _one_line(f"cannot set up the Anthropic client: {exc}"), retryable=False
            ) from exc
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._rng = random.Random()
        client = self._client
        # Without any credential the SDK raises a bare TypeError at send time; say it plainly.
        self._has_credentials = not (
            client.api_key is None and client.auth_token is None and client.credentials is None
        )

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    async def complete(
        self, request: ModelRequest, *, timeout_s: float, on_retry: RetryHook | None = None
    ) -> ModelReply:
        if not self._has_credentials:
            raise ModelError(
                "no Anthropic credentials: set ANTHROPIC_API_KEY or pass api_key", retryable=False
            )
        import anthropic

        attempt = 0
        while True:
            attempt += 1
            try:
                message = await self._create(request, timeout_s)
            except anthropic.AnthropicError as exc:
                failure = _classify(exc, timeout_s)
                failure = failure._replace(error=_one_line(failure.error))
                last_exc: BaseException = exc
            else:
                return _to_reply(message)

            if not failure.retryable or attempt > self._max_retries:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise ModelError(
                    _one_line(f"model call failed{tries}: {failure.error}"),
                    status_code=failure.status_code,
                    retryable=failure.retryable,
                    retry_after_s=failure.retry_after_s,
                ) from last_exc
            delay = self._delay(attempt, failure.retry_after_s)
            if on_retry is not None:
                await on_retry(attempt, failure.status_code, failure.error, delay)
            await asyncio.sleep(delay)

    async def _create(self, request: ModelRequest, timeout_s: float) -> Message:
        import anthropic

        return await self._client.messages.create(
            model=request.model,
            max_tokens=request.max_tokens,
            messages=cast("list[MessageParam]", request.messages),
            system=request.system if request.system else anthropic.omit,
            tools=cast("list[ToolUnionParam]", request.tools) if request.tools else anthropic.omit,
            timeout=timeout_s,
            extra_headers={"X-Fleetlog-Request": request.request_id}
            if request.request_id
            else None,
        )

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        base = min(self._max_backoff_s, self._backoff_s * 2.0 ** (attempt - 1))
        # "Equal jitter": at least half the back-off, so retries spread out but never collapse
        # to zero, which would hammer an overloaded API in lock-step with every other session.
        delay = base / 2 + self._rng.uniform(0.0, base / 2)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, _MAX_RETRY_AFTER_S))
        return delay

    def max_usage(self, request: ModelRequest) -> Usage:
        return worst_case_usage(request)

    async def aclose(self) -> None:
        await self._client.close()


def _classify(exc: anthropic.AnthropicError, timeout_s: float) -> _Failure:
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = exc.type or "error"
        detail = exc.api_message or exc.message
        retryable = status in RETRYABLE_STATUS
        # The API may say explicitly whether a retry can help; it knows better than a table.
        should_retry = exc.response.headers.get("x-should-retry")
        if should_retry == "true":
            retryable = True
        elif should_retry == "false":
            retryable = False
        return _Failure(
            status, f"{status} {kind}: {detail}", retryable, _retry_after(exc.response.headers)
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return _Failure(None, f"timed out after {timeout_s:g}s", True, None)
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__
        detail = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
        return _Failure(None, f"connection error: {detail}", True, None)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return _Failure(exc.status_code, f"invalid response: {exc.message}", False, None)
    return _Failure(None, f"{type(exc).__name__}: {exc}", False, None)


def _retry_after(headers: Any) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > _MAX_ERROR_CHARS:
        line = line[: _MAX_ERROR_CHARS - 1] + "…"
    return line


_TEXT_KEYS = ("type", "text")
_TOOL_USE_KEYS = ("type", "id", "name", "input")


def _to_reply(message: Message) -> ModelReply:
    content: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}
            )
        else:
            # Thinking and server-tool blocks must go back to the API verbatim (signatures),
            # so they keep every field they came with.
            content.append(block.model_dump(mode="json", exclude_none=True))
    usage = message.usage
    return ModelReply(
        content=content,
        stop_reason=message.stop_reason or "end_turn",
        usage=Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_input_tokens or 0,
            cache_write_tokens=usage.cache_creation_input_tokens or 0,
        ),
        model=message.model,
    )


# --- the offline scripted model -----------------------------------------------------------

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    chars: list[str] = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") == "text"
        )
    return ""


class _Turn(NamedTuple):
    """One tool call the model made, and what came back for it."""

    name: str
    input: dict[str, Any]
    output: str
    is_error: bool


def _prompt_of(messages: list[dict[str, Any]]) -> str:
    """The task: the first user message (its first text block, once compacted)."""
    for message in messages:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list) and content and isinstance(content[0], dict):
                return str(content[0].get("text", ""))
            return _text_of(content)
    return ""


def _history(messages: list[dict[str, Any]]) -> list[_Turn]:
    """The answered tool calls, in the order they were made."""
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    order: list[str] = []
    answers: dict[str, tuple[str, bool]] = {}
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use" and message.get("role") == "assistant":
                call_id = str(block.get("id", ""))
                raw_input = block.get("input")
                calls[call_id] = (
                    str(block.get("name", "")),
                    raw_input if isinstance(raw_input, dict) else {},
                )
                order.append(call_id)
            elif block.get("type") == "tool_result":
                answers[str(block.get("tool_use_id", ""))] = (
                    _text_of(block.get("content")),
                    bool(block.get("is_error", False)),
                )
    return [
        _Turn(calls[call_id][0], calls[call_id][1], *answers[call_id])
        for call_id in order
        if call_id in answers
    ]


class _Call(NamedTuple):
    name: str
    input: dict[str, Any]
    say: str


class _Final(NamedTuple):
    text: str


_Action = _Call | _Final


def _has(pattern: str, prompt: str) -> bool:
    return re.search(pattern, prompt, re.IGNORECASE) is not None


def _scenario(prompt: str) -> str:
    """Which behaviour a task prompt triggers; the first match wins."""
    if _BENCH_RE.match(prompt):
        return "bench"
    if _has(r"\bloop\b", prompt):
        return "loop"
    if _has(r"\blong\b", prompt):
        return "long"
    if _has(r"\bdangerous\b", prompt):
        return "dangerous"
    if _has(r"\bsecrets?\b", prompt) or ".env" in prompt.lower():
        return "secret"
    if _has(r"\bbad input\b", prompt):
        return "bad_input"
    if _has(r"\be-?mail\b", prompt):
        return "email"
    if _has(r"\bshell\b", prompt) or _has(r"\btests?\b", prompt):
        return "shell"
    return "default"


_FILE_RE = re.compile(r"[\w\-./]*\w\.[A-Za-z][A-Za-z0-9]{0,7}\b")
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PREFERRED_SUFFIXES = (".md", ".txt", ".py", ".toml", ".json", ".yaml", ".yml", ".csv")


def _files_in(listing: str) -> list[str]:
    """File names in a ``list_dir`` result, whatever its layout; hidden files are skipped."""
    seen: list[str] = []
    for match in _FILE_RE.findall(listing):
        name = match.removeprefix("./")
        if not name or name.startswith(".") or "/." in name or name.endswith("/"):
            continue
        if name not in seen:
            seen.append(name)
    return sorted(seen, key=lambda n: (not n.lower().endswith(_PREFERRED_SUFFIXES), seen.index(n)))


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:120]
    return "(empty)"


_LONG_MAX_STEPS = 200
_EXPENSIVE_INPUT_TOKENS = 120_000
_EXPENSIVE_OUTPUT_TOKENS = 60_000


class ScriptedModel:
    """The offline default model (no API key): deterministic, no network.

    It reads the conversation and plays a plausible agent. Its reply is a pure
    function of the request: the behaviour is chosen by keywords in the FIRST user
    message (the task prompt, which survives compaction verbatim), the step by how
    many tool calls already have a ``tool_result``. It makes one tool call per
    reply, with a short text block before it, as Claude does. After an ``is_error``
    result it moves on to its next step: it never repeats a failing call. (Compaction
    that drops answered calls makes it redo those steps, as a forgetful agent would.)

    Behaviours (first match wins, keywords are case-insensitive whole words):

    * ``loop``: ``list_dir(".")`` with the same input forever (-> ``LOOP_DETECTED``).
    * ``long``: writes ``notes/part-NNN.md`` then reads it back, part after part,
      with small inputs, for 200 tool calls before answering (-> ``MAX_STEPS_EXCEEDED``).
    * ``dangerous``: ``run_shell("rm -rf /")`` (denied), then says it did not run it.
    * ``secret`` or ``.env``: ``read_file(".env")`` (refused), then answers that it
      could not read it.
    * ``bad input``: ``read_file({"file": 3})`` (invalid: the runtime answers with an
      ``is_error`` result), then recovers with valid calls: the default flow below.
    * ``email`` (or ``e-mail``): the default flow's first two calls, then
      ``send_email`` to the first address in the prompt (``team@example.com`` if
      none; policy ``ask`` -> human approval), then a final answer that says whether
      it was sent.
    * ``shell``: ``run_shell("ls -la")``; ``test``/``tests``:
      ``run_shell("python3 -c 'print(1+1)'")`` (both, in that order, if both
      appear); then a final answer quoting the output.
    * default: ``list_dir(".")`` -> ``read_file`` of the first file it saw
      (``write_file("notes.md")`` if it saw none) -> ``write_file("summary.md")``
      -> a final text answer (``end_turn``).
    * ``expensive`` (combines with any of the above): usage of 120k input and 60k
      output tokens on every reply (-> ``MAX_TOKENS_EXCEEDED`` / ``MAX_COST_EXCEEDED``).

    When the request offers tools and the next call's tool is not among them, it
    answers that it cannot finish instead of calling it. When it offers none, all
    the built-in tools are assumed.

    Usage is plausible: input tokens are :func:`estimate_tokens` of the request,
    output tokens a quarter of the reply's JSON length. Tool-use ids are
    ``toolu_01`` plus 22 base-62 characters of a hash of the conversation.

    ``latency_s`` makes each call take that long; a latency above the call's
    ``timeout_s`` waits ``timeout_s`` and raises a retryable :class:`ModelError`.
    """

    def __init__(self, *, latency_s: float = 0.0) -> None:
        self._latency_s = latency_s

    async def complete(
        self, request: ModelRequest, *, timeout_s: float, on_retry: RetryHook | None = None
    ) -> ModelReply:
        if self._latency_s > 0:
            if self._latency_s > timeout_s:
                await asyncio.sleep(timeout_s)
                raise ModelError(f"scripted model timed out after {timeout_s:g}s", retryable=True)
            await asyncio.sleep(self._latency_s)
        return self.respond(request)

    def max_usage(self, request: ModelRequest) -> Usage:
        usage = worst_case_usage(request)
        if _has(r"\bexpensive\b", _prompt_of(request.messages)):
            # Its "expensive" replies bill more than any real request could.
            return Usage(
                cache_write_tokens=usage.cache_write_tokens + _EXPENSIVE_INPUT_TOKENS,
                output_tokens=usage.output_tokens + _EXPENSIVE_OUTPUT_TOKENS,
            )
        return usage

    async def aclose(self) -> None:
        return None

    def respond(self, request: ModelRequest) -> ModelReply:
        """The reply to ``request``: synchronous, pure, no I/O (``complete`` only adds latency)."""
        if request.system == SUMMARY_SYSTEM:
            return self._summarize(request)
        prompt = _prompt_of(request.messages)
        history = _history(request.messages)
        # Calls a compaction summary stands for: the agent goes on from where it was.
        history = [_Turn("", {}, "", False)] * _calls_summarized(request.messages) + history
        action = _decide(prompt, history)
        offered = {str(tool.get("name")) for tool in request.tools}
        if isinstance(action, _Call) and offered and action.name not in offered:
            action = _Final(
                f"I can't finish this task: it needs the `{action.name}` tool, "
                "which is not available to me."
            )

        content: list[dict[str, Any]]
        if isinstance(action, _Call):
            content = [
                {"type": "text", "text": action.say},
                {
                    "type": "tool_use",
                    "id": _tool_use_id(request),
                    "name": action.name,
                    "input": action.input,
                },
            ]
            stop_reason = "tool_use"
        else:
            content = [{"type": "text", "text": action.text}]
            stop_reason = "end_turn"

        input_tokens = estimate_tokens(request)
        output_tokens = max(1, math.ceil(len(msgspec.json.encode(content)) / 4))
        if _has(r"\bexpensive\b", prompt):
            input_tokens += _EXPENSIVE_INPUT_TOKENS
            output_tokens += _EXPENSIVE_OUTPUT_TOKENS
        return ModelReply(
            content=content,
            stop_reason=stop_reason,
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model=request.model,
        )

    def _summarize(self, request: ModelRequest) -> ModelReply:
        """A compaction summary: how many calls the transcript holds, and the last few."""
        transcript = _text_of(request.messages[-1].get("content")) if request.messages else ""
        before = _SO_FAR_RE.search(transcript)
        calls = [line for line in transcript.splitlines() if line.startswith("CALL ")]
        total = (int(before.group(1)) if before else 0) + len(calls)
        recent = "\n".join(f"- {line[5:].split(' ', 1)[-1][:100]}" for line in calls[-3:])
        text = f"Tool calls so far: {total}.\nThe last ones:\n{recent or '- none'}"
        content = [{"type": "text", "text": text}]
        return ModelReply(
            content=content,
            stop_reason="end_turn",
            usage=Usage(
                input_tokens=estimate_tokens(request),
                output_tokens=max(1, math.ceil(len(msgspec.json.encode(content)) / 4)),
            ),
            model=request.model,
        )


_SO_FAR_RE = re.compile(r"Tool calls so far: (\d+)\.")


def _calls_summarized(messages: list[dict[str, Any]]) -> int:
    """The calls the first message's compaction summary (if any) says were made."""
    content = messages[0].get("content") if messages else None
    if not isinstance(content, list):
        return 0
    for block in content:
        text = str(block.get("text", "")) if isinstance(block, dict) else ""
        if text.startswith(SUMMARY_HEADER):
            found = _SO_FAR_RE.search(text)
            return int(found.group(1)) if found else 0
    return 0


def _tool_use_id(request: ModelRequest) -> str:
    digest = hashlib.sha256(
        msgspec.json.encode(
            [request.model, request.system, request.messages, request.tools], order="sorted"
        )
    ).digest()
    return "toolu_01" + _base62(digest, 22)


_BENCH_RE = re.compile(r"benchmark: (\d+) steps")


def _decide(prompt: str, history: list[_Turn]) -> _Action:
    scenario = _scenario(prompt)
    step = len(history)
    if scenario == "bench":
        # The benchmark workload: one cheap tool call per step, then done.
        match = _BENCH_RE.match(prompt)
        assert match is not None
        if step < int(match.group(1)):
            return _Call("list_dir", {"path": "."}, f"step {step + 1}")
        return _Final("done")
    if scenario == "loop":
        return _Call("list_dir", {"path": "."}, "Checking the workspace again.")
    if scenario == "long":
        return _long(step)
    if scenario == "dangerous":
        if step == 0:
            return _Call(
                "run_shell", {"command": "rm -rf /"}, "Freeing space by wiping everything."
            )
        return _Final(_outcome("I did not wipe anything", "The wipe ran", history[0]))
    if scenario == "secret":
        if step == 0:
            return _Call("read_file", {"path": ".env"}, "Let me read the .env file.")
        if history[0].is_error:
            return _Final(
                f"I could not read .env: {_first_line(history[0].output)} "
                "I did not try to get around that."
            )
        return _Final("I read .env, but I will not repeat credentials in my answer.")
    if scenario == "bad_input":
        if step == 0:
            return _Call("read_file", {"file": 3}, "Let me open the file.")
        return _default(prompt, history[1:])
    if scenario == "email":
        return _email(prompt, history)
    if scenario == "shell":
        return _shell(prompt, history)
    return _default(prompt, history)


def _outcome(refused: str, ran: str, turn: _Turn) -> str:
    if turn.is_error:
        return f"{refused}: {_first_line(turn.output)}"
    return f"{ran}: {_first_line(turn.output)}"


def _default(prompt: str, history: list[_Turn]) -> _Action:
    step = len(history)
    if step == 0:
        return _Call("list_dir", {"path": "."}, "I'll start by looking at what's in the workspace.")
    if step == 1:
        listing = history[0]
        files = [] if listing.is_error else _files_in(listing.output)
        if files:
            return _Call("read_file", {"path": files[0]}, f"Let me read {files[0]}.")
        return _Call(
            "write_file",
            {
                "path": "notes.md",
                "content": f"# Notes\n\nTask: {prompt}\n\nThe workspace held no files to read.\n",
            },
            "The workspace is empty, so I'll start a notes file.",
        )
    if step == 2:
        return _Call(
            "write_file",
            {"path": "summary.md", "content": _summary(prompt, history)},
            "Now I'll write up a summary.",
        )
    if history[2].is_error:
        return _Final(f"Done. {_what_i_did(history)} I could not save summary.md.")
    return _Final(f"Done. {_what_i_did(history)} The summary is in summary.md.")


def _what_i_did(history: list[_Turn]) -> str:
    listing, second = history[0], history[1]
    seen = [] if listing.is_error else _files_in(listing.output)
    parts = [f"I listed the workspace ({len(seen)} file(s))."]
    if second.name == "read_file":
        path = second.input.get("path", "?")
        if second.is_error:
            parts.append(f"I could not read {path}: {_first_line(second.output)}")
        else:
            parts.append(f"I read {path}, which starts: {_first_line(second.output)!r}.")
    else:
        parts.append("I started notes.md.")
    return " ".join(parts)


def _summary(prompt: str, history: list[_Turn]) -> str:
    listing, second = history[0], history[1]
    seen = [] if listing.is_error else _files_in(listing.output)
    lines = ["# Summary", "", f"Task: {prompt}", "", f"Files seen: {', '.join(seen) or 'none'}"]
    if second.name == "read_file" and not second.is_error:
        text = second.output
        lines.append(
            f"{second.input.get('path', '?')}: {len(text.splitlines())} line(s), "
            f"first: {_first_line(text)}"
        )
    return "\n".join(lines) + "\n"


def _email(prompt: str, history: list[_Turn]) -> _Action:
    step = len(history)
    if step < 2:
        return _default(prompt, history)
    if step == 2:
        found = _EMAIL_RE.search(prompt)
        to = found.group(0).rstrip(".") if found else "team@example.com"
        return _Call(
            "send_email",
            {"to": to, "subject": "Workspace summary", "body": _summary(prompt, history)},
            f"I'll email the summary to {to}.",
        )
    sent = history[2]
    if sent.is_error:
        return _Final(f"I did not send the email: {_first_line(sent.output)}")
    return _Final(f"Done. {_what_i_did(history)} I emailed the summary to {sent.input['to']}.")


def _shell(prompt: str, history: list[_Turn]) -> _Action:
    commands: list[str] = []
    if _has(r"\bshell\b", prompt):
        commands.append("ls -la")
    if _has(r"\btests?\b", prompt):
        commands.append("python3 -c 'print(1+1)'")
    step = len(history)
    if step < len(commands):
        return _Call("run_shell", {"command": commands[step]}, f"Running `{commands[step]}`.")
    reports = [
        f"`{turn.input.get('command', '?')}` "
        + ("failed: " if turn.is_error else "printed: ")
        + _first_line(turn.output)
        for turn in history
    ]
    return _Final("Done. " + "; ".join(reports))


def _long(step: int) -> _Action:
    if step >= _LONG_MAX_STEPS:
        return _Final(f"Done: I reviewed {step // 2} parts.")
    part = step // 2 + 1
    path = f"notes/part-{part:03d}.md"
    if step % 2 == 0:
        return _Call("write_file", {"path": path, "content": f"Part {part}: reviewed.\n"}, "Next.")
    return _Call("read_file", {"path": path}, "Checking it.")


# --- demo tasks ---------------------------------------------------------------------------

#: The demo's mix of behaviours (fractions of all tasks).
_DEMO_MIX: tuple[tuple[str, float], ...] = (
    ("ordinary", 0.75),
    ("email", 0.06),
    ("loop", 0.05),
    ("long", 0.04),
    ("expensive", 0.03),
    ("refused", 0.04),  # secret / dangerous: calls that safety refuses
    ("bad_input", 0.03),
)

_TOPICS = (
    "billing",
    "onboarding",
    "search",
    "payments",
    "reporting",
    "caching",
    "exports",
    "scheduler",
)
_PEOPLE = ("alice", "bob", "carol", "dave", "erin")

#: (prompt template, agents that may run it); ``{topic}``, ``{who}``, ``{tenant}`` are filled in.
_ANY = ("coder", "researcher", "ops")
_WRITERS = ("coder", "researcher")
_SHELL_USERS = ("coder", "ops")

_TEMPLATES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "ordinary": (
        ("Summarize the files in the workspace and write the summary to summary.md.", _ANY),
        ("Look through the workspace for the {topic} notes and write up what you find.", _ANY),
        ("Review the project layout for the {topic} work and note anything unusual.", _WRITERS),
        ("Draft release notes for the {topic} change from what is in the workspace.", _WRITERS),
        ("Run the unit tests for the {topic} module and report the result.", _SHELL_USERS),
        (
            "Use the shell to take an inventory of the workspace for the {topic} audit.",
            _SHELL_USERS,
        ),
    ),
    "email": (
        (
            "Summarize the {topic} notes in the workspace and email them to "
            "{who}@{tenant}.example.com.",
            ("ops", "coder"),
        ),
    ),
    "loop": (("Poll the workspace in a loop until the {topic} report shows up.", _ANY),),
    "long": (("Do a long, thorough review of the {topic} docs, one part at a time.", _ANY),),
    "expensive": (("Run an expensive deep analysis of the {topic} codebase.", _WRITERS),),
    "refused": (
        ("Find the {topic} API secret in .env and tell me what it is.", _ANY),
        (
            "The disk is full: do the dangerous cleanup of the {topic} host and wipe everything.",
            _SHELL_USERS,
        ),
    ),
    "bad_input": (
        ("Summarize the {topic} config; expect bad input handling on the first try.", _ANY),
    ),
}

_TENANTS = (("acme", 0.5), ("globex", 0.3), ("initech", 0.2))
_LONG_DEMO_MAX_STEPS = 12


def _mix_counts(n: int) -> list[tuple[str, int]]:
    """Split ``n`` by the demo mix with the largest-remainder method: exact for any ``n``."""
    shares = [(kind, n * weight) for kind, weight in _DEMO_MIX]
    counts = {kind: int(share) for kind, share in shares}
    left = n - sum(counts.values())
    by_remainder = sorted(
        range(len(shares)), key=lambda i: (-(shares[i][1] - int(shares[i][1])), i)
    )
    for i in by_remainder[:left]:
        counts[shares[i][0]] += 1
    return [(kind, counts[kind]) for kind, _ in _DEMO_MIX]


def demo_tasks(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` demo tasks in the SPEC §5 tasks-file shape, the same list for the same ``seed``.

    About 75% ordinary tasks (file work, some shell and test runs), 6% email (approvals),
    5% loop, 4% long, 3% expensive, 4% secret/dangerous (refused calls) and 3% bad input,
    split exactly (largest remainder) and shuffled. Ids are ``demo-0001`` onwards; keys are
    ``id``, ``prompt``, ``agent`` (coder/researcher/ops), ``tenant`` (acme/globex/initech),
    and ``limits`` (``max_steps``) on long tasks only.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    kinds = [kind for kind, count in _mix_counts(n) for _ in range(count)]
    rng.shuffle(kinds)
    tenants = [name for name, _ in _TENANTS]
    tenant_weights = [weight for _, weight in _TENANTS]
    tasks: list[dict[str, Any]] = []
    for index, kind in enumerate(kinds, start=1):
        template, agents = rng.choice(_TEMPLATES[kind])
        tenant = rng.choices(tenants, tenant_weights)[0]
        prompt = template.format(topic=rng.choice(_TOPICS), who=rng.choice(_PEOPLE), tenant=tenant)
        task: dict[str, Any] = {
            "id": f"demo-{index:04d}",
            "prompt": prompt,
            "agent": rng.choice(agents),
            "tenant": tenant,
        }
        if kind == "long":
            # A long task's context grows every step; a step cap well under the token cap
            # makes it end on MAX_STEPS_EXCEEDED, whatever the agent's own limits are.
            task["limits"] = {"max_steps": _LONG_DEMO_MAX_STEPS}
        tasks.append(task)
    return tasks
