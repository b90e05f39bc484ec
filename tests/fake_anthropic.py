"""A real HTTP server speaking the Anthropic Messages API on loopback: the test fake.

The ``anthropic`` SDK sends through ``httpx2``, which transport-level mocks never
see; so the fake is a server, and the code under test runs the real SDK against it
unchanged (``base_url=fake.base_url``). It checks requests the way the real API
does (required fields, alternating roles, tool_use/tool_result pairing, an API key)
and answers with the real response and error JSON shapes, so a request the fake
accepts is one the API would accept too.

    with FakeAnthropic() as fake:
        fake.script({"content": "hi"})          # then a scripted reply
        fake.fail_next(529, times=2)            # ...after two overloaded errors
        model = AnthropicModel(api_key=fake.api_key, base_url=fake.base_url)

Replies come, in order, from: injected failures (``fail_next``), the script
(``script``), then ``responder`` (a function of the request JSON), then a fixed
text reply. ``delay_next`` holds the next answers back, whatever they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from fleetlog.actors.model import ModelReply, ModelRequest, ScriptedModel

__all__ = [
    "ErrorReply",
    "FakeAnthropic",
    "Reply",
    "Responder",
    "reply_dict",
    "scripted_responder",
    "validate_request",
]


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_ERROR_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "timeout_error": "Request timed out",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}


@dataclass(frozen=True)
class ErrorReply:
    """An error answer: ``status`` with the real ``{"type": "error", ...}`` body."""

    status: int
    message: str | None = None
    error_type: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        if self.error_type is not None:
            return self.error_type
        if self.status in _ERROR_TYPES:
            return _ERROR_TYPES[self.status]
        return "api_error" if self.status >= 500 else "invalid_request_error"

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": self.kind, "message": self.message or _ERROR_MESSAGES[self.kind]},
            "request_id": request_id,
        }


#: A scripted answer: a reply dict (``content`` as blocks or a string, optional
#: ``stop_reason``, ``usage``, ``model``) or an :class:`ErrorReply`.
Reply = dict[str, Any] | ErrorReply
Responder = Callable[[dict[str, Any]], Reply]

_DEFAULT_REPLY: dict[str, Any] = {"content": "Hello from FakeAnthropic."}


# --- request validation, as the real API does it -------------------------------------------


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _tool_use_ids(message: dict[str, Any]) -> list[str]:
    return [
        str(b.get("id")) for b in _blocks(message.get("content")) if b.get("type") == "tool_use"
    ]


def _validate_content(i: int, message: dict[str, Any], last: bool) -> str | None:
    role = message.get("role")
    content = message.get("content")
    empty = content in ("", [])
    if empty and not (last and role == "assistant"):
        return (
            f"messages.{i}: all messages must have non-empty content except for the "
            "optional final assistant message"
        )
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"messages.{i}.content: Input should be a valid string or list of content blocks"
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"{where}.type: Field required"
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"]:
                return f"{where}.text: text content blocks must be non-empty"
        elif kind == "tool_use":
            if role != "assistant":
                return f"{where}: `tool_use` blocks can only be in `assistant` messages"
            if not isinstance(block.get("id"), str) or not block["id"]:
                return f"{where}.id: Field required"
            if not isinstance(block.get("name"), str) or not block["name"]:
                return f"{where}.name: Field required"
            if not isinstance(block.get("input"), dict):
                return f"{where}.input: Input should be a valid dictionary"
        elif kind == "tool_result":
            if role != "user":
                return f"{where}: `tool_result` blocks can only be in `user` messages"
            if not isinstance(block.get("tool_use_id"), str):
                return f"{where}.tool_use_id: Field required"
    return None


def _validate_pairing(messages: list[dict[str, Any]]) -> str | None:
    seen: set[str] = set()
    for i, message in enumerate(messages):
        ids = _tool_use_ids(message)
        for call_id in ids:
            if call_id in seen:
                return f"messages.{i}: `tool_use` ids must be unique: {call_id}"
            seen.add(call_id)
        if message["role"] == "assistant" and ids:
            following = messages[i + 1] if i + 1 < len(messages) else None
            answered = {
                str(b.get("tool_use_id"))
                for b in _blocks(following.get("content") if following else None)
                if b.get("type") == "tool_result"
            }
            missing = [call_id for call_id in ids if call_id not in answered]
            if missing:
                return (
                    f"messages.{min(i + 1, len(messages) - 1)}: `tool_use` ids were found "
                    f"without `tool_result` blocks immediately after: {', '.join(missing)}. "
                    "Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )
        if message["role"] == "user":
            asked = set(_tool_use_ids(messages[i - 1])) if i > 0 else set()
            for j, block in enumerate(_blocks(message.get("content"))):
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in asked:
                    return (
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block.get('tool_use_id')}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous message."
                    )
    return None


def validate_request(body: Any) -> str | None:
    """Why the Messages API would answer 400 to ``body``, or ``None`` when it is valid."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be an integer greater than or equal to 1"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or list of text blocks"
    tools = body.get("tools", [])
    if not isinstance(tools, list):
        return "tools: Input should be a valid list"
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            return f"tools.{i}.name: Field required"
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            return f"tools.{i}.custom.input_schema: Field required"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            if i == 0:
                return 'messages: first message must use the "user" role'
            return 'messages: roles must alternate between "user" and "assistant"'
        problem = _validate_content(i, message, last=i == len(messages) - 1)
        if problem is not None:
            return problem
    return _validate_pairing(messages)


# --- replies ------------------------------------------------------------------------------


def _short_id(prefix: str, seed: str) -> str:
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:24]


def _message_json(
    reply: dict[str, Any], request: dict[str, Any], raw_len: int, serial: int
) -> dict[str, Any]:
    content = reply.get("content", [])
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for k, given in enumerate(content):
        block = dict(given)
        if block.get("type") == "tool_use" and not block.get("id"):
            block["id"] = _short_id("toolu_", f"{serial}/{k}")
        blocks.append(block)
    has_tool_use = any(b.get("type") == "tool_use" for b in blocks)
    stop_reason = reply.get("stop_reason") or ("tool_use" if has_tool_use else "end_turn")
    usage = dict(reply.get("usage") or {})
    return {
        "id": _short_id("msg_", str(serial)),
        "type": "message",
        "role": "assistant",
        "model": reply.get("model") or request.get("model"),
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("input_tokens", max(1, raw_len // 4)),
            "output_tokens": usage.get("output_tokens", max(1, len(json.dumps(blocks)) // 4)),
            "cache_read_input_tokens": usage.get(
                "cache_read_input_tokens", usage.get("cache_read_tokens", 0)
            ),
            "cache_creation_input_tokens": usage.get(
                "cache_creation_input_tokens", usage.get("cache_write_tokens", 0)
            ),
        },
    }


def reply_dict(reply: ModelReply) -> dict[str, Any]:
    """A :class:`ModelReply` as a script entry for the fake."""
    return {
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "usage": {
            "input_tokens": reply.usage.input_tokens,
            "output_tokens": reply.usage.output_tokens,
            "cache_read_input_tokens": reply.usage.cache_read_tokens,
            "cache_creation_input_tokens": reply.usage.cache_write_tokens,
        },
    }


def _system_text(system: Any) -> str:
    if isinstance(system, list):
        return "\n".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    return str(system or "")


def scripted_responder(request: dict[str, Any]) -> Reply:
    """Answer as :class:`ScriptedModel` would: a plausible agent, served over real HTTP."""
    model_request = ModelRequest(
        model=request["model"],
        system=_system_text(request.get("system")),
        messages=request["messages"],
        tools=request.get("tools", []),
        max_tokens=request["max_tokens"],
    )
    return reply_dict(ScriptedModel().respond(model_request))


# --- the server ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    timeout = 30  # an idle kept-alive connection ends by itself
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
    server: _Server

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeAnthropic) -> None:
        self.fake = fake
        self.conn_lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.threads: set[threading.Thread] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Our own threads (ThreadingMixIn forgets daemon ones) so close() can wait for them.
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True
        )
        with self.conn_lock:
            self.connections.add(request)
            self.threads.add(thread)
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.conn_lock:
                self.connections.discard(request)
                self.threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError | OSError):
            return  # the client went away (a timed-out attempt, a closed pool): not a fault
        self.fake.server_errors.append(traceback.format_exc())
        traceback.print_exc()


class FakeAnthropic:
    """The Messages API on ``127.0.0.1``, for one test. Use as a context manager."""

    #: A key the fake accepts (any non-empty ``x-api-key`` or bearer token is accepted).
    api_key = "sk-ant-fake-0000"

    def __init__(
        self,
        *,
        responder: Responder | None = None,
        require_api_key: bool = True,
        context_window: int | None = None,
        chars_per_token: float = 4.0,
    ) -> None:
        self.responder: Responder | None = responder
        self.require_api_key = require_api_key
        #: With a window, requests are counted (``chars_per_token`` of their JSON) and one
        #: over it is answered 400 as the real API does; replies bill the same count.
        self.context_window = context_window
        self.chars_per_token = chars_per_token
        self.server_errors: list[str] = []
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._failures: deque[ErrorReply] = deque()
        self._delays: deque[float] = deque()
        self._requests: list[dict[str, Any]] = []
        self._headers: list[dict[str, str]] = []
        self._billed: list[tuple[str, dict[str, int]]] = []
        self._rejected: list[str] = []
        self._serial = 0
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle

    def __enter__(self) -> FakeAnthropic:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-anthropic",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()  # wakes handlers held by delay_next
        server.shutdown()
        with server.conn_lock:
            connections = list(server.connections)
            threads = list(server.threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- scripting

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order once any injected failures are used up."""
        with self._lock:
            self._script.extend(replies)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` valid requests with ``status`` and the real error body."""
        with self._lock:
            self._failures.extend(
                ErrorReply(status, message=message, retry_after=retry_after) for _ in range(times)
            )

    def delay_next(self, seconds: float, times: int = 1) -> None:
        """Hold the next ``times`` requests for ``seconds`` before answering them.

        The answer is chosen when the request arrives, as a real server would have
        started work on it: a client that times out has still used up its reply.
        """
        with self._lock:
            self._delays.extend(seconds for _ in range(times))

    @staticmethod
    def error(
        status: int, message: str | None = None, retry_after: float | None = None
    ) -> ErrorReply:
        return ErrorReply(status, message=message, retry_after=retry_after)

    # --- what was received

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request body received (JSON), in arrival order, rejected ones included."""
        with self._lock:
            return list(self._requests)

    @property
    def billed(self) -> list[tuple[str, dict[str, int]]]:
        """Every reply answered (status 200), in order: the ``X-Fleetlog-Request`` header it
        answered (fleetlog's request id: the same on every attempt of one call) and the
        usage it billed."""
        with self._lock:
            return list(self._billed)

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers of every request, lower-cased names, parallel to :attr:`requests`."""
        with self._lock:
            return [dict(h) for h in self._headers]

    # --- serving

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in handler.headers.items()}

        with self._lock:
            self._serial += 1
            serial = self._serial
            self._requests.append(body if isinstance(body, dict) else {"_raw": raw.decode()})
            self._headers.append(headers)
            delay = self._delays.popleft() if self._delays else 0.0
            # Consuming a failure or a script entry is atomic; a responder runs unlocked,
            # so it may itself call back into the fake.
            answer = self._pick(handler, headers, body)
        try:
            if answer is None:
                answer = self.responder(body) if self.responder is not None else _DEFAULT_REPLY
            if not isinstance(answer, ErrorReply):
                answer = _message_json(answer, body, len(raw), serial)
                if self.context_window is not None:  # bill what the window was checked with
                    answer["usage"]["input_tokens"] = self.count_tokens(body)
        except Exception as exc:  # a broken script or responder: a test bug, made visible
            self.server_errors.append(traceback.format_exc())
            answer = ErrorReply(500, message=f"FakeAnthropic responder failed: {exc!r}")

        if delay > 0 and self._closing.wait(delay):
            handler.close_connection = True
            return
        if self._send(handler, answer, serial) and not isinstance(answer, ErrorReply):
            # Billed: a reply the server answered, whatever the client did with it next.
            with self._lock:
                self._billed.append((headers.get("x-fleetlog-request", ""), answer["usage"]))

    def _pick(self, handler: _Handler, headers: dict[str, str], body: Any) -> Reply | None:
        """The answer due now, or ``None`` when the responder (or the default) should answer."""
        path = urlsplit(handler.path).path
        if handler.command != "POST" or path != "/v1/messages":
            return ErrorReply(404, message=f"{handler.command} {path} not found")
        if self.require_api_key and not _has_api_key(headers):
            return ErrorReply(401, message="x-api-key header is required")
        problem = validate_request(body)
        if problem is not None:
            return ErrorReply(400, message=problem)
        too_long = self._too_long(body)
        if too_long is not None:
            self._rejected.append(too_long)
            return ErrorReply(400, message=too_long)
        if self._failures:
            return self._failures.popleft()
        if self._script:
            return self._script.popleft()
        return None

    def count_tokens(self, body: dict[str, Any]) -> int:
        """The request's input tokens as this fake's "tokenizer" counts them."""
        counted = json.dumps([body.get("system", ""), body["messages"], body.get("tools", [])])
        return int(len(counted) / self.chars_per_token) + 1

    def _too_long(self, body: dict[str, Any]) -> str | None:
        """The real API's answer to a request over the window, or None."""
        window = self.context_window
        if window is None:
            return None
        tokens = self.count_tokens(body)
        if tokens > window:
            return f"prompt is too long: {tokens} tokens > {window} maximum"
        if tokens + body["max_tokens"] > window:
            return (
                f"input length and `max_tokens` exceed context limit: {tokens} + "
                f"{body['max_tokens']} > {window}, decrease input length or `max_tokens` "
                "and try again"
            )
        return None

    @property
    def rejected(self) -> list[str]:
        """The message of every 400 answered because a request did not fit the window."""
        with self._lock:
            return list(self._rejected)

    def _send(self, handler: _Handler, answer: Reply, serial: int) -> bool:
        request_id = _short_id("req_", f"r{serial}")
        extra: dict[str, str] = {"request-id": request_id}
        if isinstance(answer, ErrorReply):
            status = answer.status
            payload = answer.body(request_id)
            if answer.retry_after is not None:
                extra["retry-after"] = f"{answer.retry_after:g}"
            extra.update(answer.headers)
        else:
            status = 200
            payload = answer
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
        except OSError:
            handler.close_connection = True
            return False
        return True


def _has_api_key(headers: dict[str, str]) -> bool:
    # The real API takes ``x-api-key``; the 2.x SDK sends its api_key as a bearer token.
    if headers.get("x-api-key"):
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())
