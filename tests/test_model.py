"""Model clients: AnthropicModel through the real SDK against a loopback fake; ScriptedModel."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import ErrorReply, FakeAnthropic, scripted_responder, validate_request

from fleetlog.actors.model import (
    AnthropicModel,
    ModelReply,
    ModelRequest,
    ScriptedModel,
    Usage,
    cost_usd,
    demo_tasks,
    estimate_tokens,
)
from fleetlog.events.errors import ModelError

MODEL = "claude-sonnet-4-6"  # not on the SDK's deprecated list (that warns, and warnings fail)
TOOL_ID = re.compile(r"^toolu_[A-Za-z0-9]{24}$")


def _tool(name: str, **props: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The {name} tool.",
        "input_schema": {
            "type": "object",
            "properties": {key: {"type": kind} for key, kind in props.items()},
            "required": list(props),
        },
    }


TOOLS = [
    _tool("read_file", path="string"),
    _tool("write_file", path="string", content="string"),
    _tool("list_dir", path="string"),
    _tool("run_shell", command="string"),
    _tool("send_email", to="string", subject="string", body="string"),
]


def _request(
    messages: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    prompt: str = "Say hello.",
) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        system="You are a careful agent.",
        messages=messages if messages is not None else [{"role": "user", "content": prompt}],
        tools=tools if tools is not None else [],
    )


class _Retries:
    """Records the on_retry hook's calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None, str, float]] = []

    async def __call__(self, attempt: int, status: int | None, error: str, delay: float) -> None:
        self.calls.append((attempt, status, error, delay))


def _with_model(
    fake: FakeAnthropic,
    body: Callable[[AnthropicModel], Awaitable[Any]],
    **options: Any,
) -> Any:
    async def run() -> Any:
        options.setdefault("backoff_s", 0.001)
        options.setdefault("max_backoff_s", 0.01)
        model = AnthropicModel(api_key=fake.api_key, base_url=fake.base_url, **options)
        try:
            return await body(model)
        finally:
            await model.aclose()

    return asyncio.run(run())


# --- AnthropicModel against FakeAnthropic ---------------------------------------------------


def test_plain_text_reply() -> None:
    with FakeAnthropic() as fake:
        fake.script({"content": "Hello there."})
        reply = _with_model(fake, lambda m: m.complete(_request(), timeout_s=5))

        assert reply.content == [{"type": "text", "text": "Hello there."}]
        assert reply.stop_reason == "end_turn"
        assert reply.model == MODEL
        (sent,) = fake.requests
        assert sent["model"] == MODEL
        assert sent["max_tokens"] == 4096
        assert sent["system"] == "You are a careful agent."
        assert sent["messages"] == [{"role": "user", "content": "Say hello."}]
        assert "tools" not in sent  # an empty tool list is left out, not sent as []
        assert fake.headers[0]["authorization"] == f"Bearer {fake.api_key}"
        assert not fake.server_errors


def test_tool_use_reply_is_parsed_into_plain_dict_blocks() -> None:
    with FakeAnthropic() as fake:
        fake.script(
            {
                "content": [
                    {"type": "text", "text": "Let me look.", "citations": None},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9z",
                        "name": "read_file",
                        "input": {"path": "README.md"},
                        "caller": {"type": "direct"},
                    },
                ],
                "stop_reason": "tool_use",
            }
        )
        reply = _with_model(fake, lambda m: m.complete(_request(tools=TOOLS), timeout_s=5))

        assert reply.stop_reason == "tool_use"
        assert reply.content == [
            {"type": "text", "text": "Let me look."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9z",
                "name": "read_file",
                "input": {"path": "README.md"},
            },
        ]
        assert fake.requests[0]["tools"] == TOOLS


def test_usage_is_mapped_including_cache_tokens() -> None:
    with FakeAnthropic() as fake:
        fake.script(
            {
                "content": "ok",
                "usage": {
                    "input_tokens": 120,
                    "output_tokens": 34,
                    "cache_read_input_tokens": 5000,
                    "cache_creation_input_tokens": 700,
                },
            }
        )
        reply = _with_model(fake, lambda m: m.complete(_request(), timeout_s=5))
        assert reply.usage == Usage(
            input_tokens=120, output_tokens=34, cache_read_tokens=5000, cache_write_tokens=700
        )


def test_429_then_success_calls_on_retry_once_and_honours_retry_after() -> None:
    retries = _Retries()
    with FakeAnthropic() as fake:
        fake.fail_next(429, retry_after=0.2)
        fake.script({"content": "after the rate limit"})
        started = time.monotonic()
        reply = _with_model(fake, lambda m: m.complete(_request(), timeout_s=5, on_retry=retries))
        elapsed = time.monotonic() - started

    assert reply.content == [{"type": "text", "text": "after the rate limit"}]
    assert len(fake.requests) == 2
    ((attempt, status, error, delay),) = retries.calls
    assert (attempt, status) == (1, 429)
    assert error.startswith("429 rate_limit_error:")
    assert delay >= 0.2  # the header wins over the 1 ms back-off
    assert elapsed >= 0.2


def test_529_twice_then_success() -> None:
    retries = _Retries()
    with FakeAnthropic() as fake:
        fake.fail_next(529, times=2)
        fake.script({"content": "finally"})
        reply = _with_model(fake, lambda m: m.complete(_request(), timeout_s=5, on_retry=retries))

    assert reply.content == [{"type": "text", "text": "finally"}]
    assert [(a, s) for a, s, _, _ in retries.calls] == [(1, 529), (2, 529)]
    assert all("overloaded_error" in error for _, _, error, _ in retries.calls)
    assert all(0 < delay <= 0.01 for _, _, _, delay in retries.calls)


def test_500_until_out_of_retries_raises_retryable_model_error() -> None:
    retries = _Retries()
    with FakeAnthropic() as fake:
        fake.fail_next(500, times=10)
        with pytest.raises(ModelError) as caught:
            _with_model(
                fake,
                lambda m: m.complete(_request(), timeout_s=5, on_retry=retries),
                max_retries=2,
            )

    error = caught.value
    assert error.retryable is True
    assert error.status_code == 500
    assert "\n" not in str(error)
    assert str(error).startswith("model call failed (after 3 attempts): 500 api_error")
    assert len(fake.requests) == 3
    assert [a for a, _, _, _ in retries.calls] == [1, 2]


def test_400_raises_at_once_without_retry() -> None:
    retries = _Retries()
    with FakeAnthropic() as fake:
        fake.script(FakeAnthropic.error(400, "max_tokens: too large"))
        with pytest.raises(ModelError) as caught:
            _with_model(fake, lambda m: m.complete(_request(), timeout_s=5, on_retry=retries))

    assert caught.value.retryable is False
    assert caught.value.status_code == 400
    assert str(caught.value) == (
        "model call failed: 400 invalid_request_error: max_tokens: too large"
    )
    assert len(fake.requests) == 1
    assert retries.calls == []


def test_x_should_retry_false_overrides_the_status_table() -> None:
    with FakeAnthropic() as fake:
        fake.script(ErrorReply(503, headers={"x-should-retry": "false"}))
        with pytest.raises(ModelError) as caught:
            _with_model(fake, lambda m: m.complete(_request(), timeout_s=5))
    assert caught.value.retryable is False
    assert len(fake.requests) == 1


def test_timeout_is_retried_then_raises() -> None:
    retries = _Retries()
    with FakeAnthropic() as fake:
        fake.delay_next(2.0, times=3)
        with pytest.raises(ModelError) as caught:
            _with_model(
                fake,
                lambda m: m.complete(_request(), timeout_s=0.2, on_retry=retries),
                max_retries=2,
            )

    assert caught.value.retryable is True
    assert caught.value.status_code is None
    assert "timed out after 0.2s" in str(caught.value)
    assert len(fake.requests) == 3
    assert [(a, s) for a, s, _, _ in retries.calls] == [(1, None), (2, None)]


def test_timeout_then_success() -> None:
    with FakeAnthropic() as fake:
        fake.delay_next(2.0)
        fake.script({"content": "lost with the timed-out attempt"}, {"content": "second try"})
        reply = _with_model(fake, lambda m: m.complete(_request(), timeout_s=0.2))
    assert reply.content == [{"type": "text", "text": "second try"}]


def test_connection_refused_is_retried_then_raises() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    retries = _Retries()

    async def run() -> None:
        model = AnthropicModel(
            api_key="sk-ant-x", base_url=f"http://127.0.0.1:{port}", max_retries=1, backoff_s=0.001
        )
        try:
            await model.complete(_request(), timeout_s=2, on_retry=retries)
        finally:
            await model.aclose()

    with pytest.raises(ModelError) as caught:
        asyncio.run(run())
    assert caught.value.retryable is True
    assert caught.value.status_code is None
    assert "connection error" in str(caught.value)
    assert len(retries.calls) == 1


def test_unpaired_tool_use_is_a_400_and_not_retried() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Read the README."},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_0123",
                    "name": "read_file",
                    "input": {"path": "a"},
                }
            ],
        },
        {"role": "user", "content": "never mind"},
    ]
    retries = _Retries()
    with FakeAnthropic() as fake, pytest.raises(ModelError) as caught:
        _with_model(
            fake,
            lambda m: m.complete(
                _request(messages=messages, tools=TOOLS), timeout_s=5, on_retry=retries
            ),
        )
    assert caught.value.status_code == 400
    assert caught.value.retryable is False
    assert "toolu_0123" in str(caught.value)
    assert "tool_result" in str(caught.value)
    assert len(fake.requests) == 1
    assert retries.calls == []


def test_env_vars_are_honoured_as_the_sdk_honours_them(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeAnthropic() as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
        fake.script({"content": "via env"})

        async def run() -> ModelReply:
            model = AnthropicModel()
            try:
                return await model.complete(_request(), timeout_s=5)
            finally:
                await model.aclose()

        reply = asyncio.run(run())
    assert reply.content == [{"type": "text", "text": "via env"}]
    assert fake.headers[0]["authorization"] == "Bearer sk-ant-from-env"


def _no_credentials_anywhere(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for name in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_PROFILE",
        "ANTHROPIC_CONFIG_DIR",
        "ANTHROPIC_IDENTITY_TOKEN",
        "ANTHROPIC_IDENTITY_TOKEN_FILE",
        "ANTHROPIC_FEDERATION_RULE_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))  # no profile under ~/.config/anthropic either


def test_no_credentials_is_a_non_retryable_model_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_credentials_anywhere(monkeypatch, tmp_path)

    async def run() -> None:
        model = AnthropicModel(base_url="http://127.0.0.1:9")
        try:
            await model.complete(_request(), timeout_s=1)
        finally:
            await model.aclose()

    with pytest.raises(ModelError, match="no Anthropic credentials") as caught:
        asyncio.run(run())
    assert caught.value.retryable is False


def test_a_broken_credentials_profile_is_a_model_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_credentials_anywhere(monkeypatch, tmp_path)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="cannot set up the Anthropic client") as caught:
        AnthropicModel()
    assert "\n" not in str(caught.value)


# --- the fake itself ------------------------------------------------------------------------


def _post(url: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


def test_fake_speaks_the_real_shapes() -> None:
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    key = {"x-api-key": FakeAnthropic.api_key, "content-type": "application/json"}
    with FakeAnthropic() as fake:
        status, _, payload = _post(fake.base_url + "/v1/messages", body, {})
        assert status == 401
        assert payload["error"]["type"] == "authentication_error"

        fake.fail_next(529, retry_after=3)
        status, headers, payload = _post(fake.base_url + "/v1/messages", body, key)
        assert status == 529
        assert headers["retry-after"] == "3"
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "overloaded_error"

        status, _, payload = _post(fake.base_url + "/v1/messages", body, key)
        assert status == 200
        assert set(payload) == {
            "id",
            "type",
            "role",
            "model",
            "content",
            "stop_reason",
            "stop_sequence",
            "usage",
        }
        assert payload["type"] == "message"
        assert payload["role"] == "assistant"
        assert set(payload["usage"]) == {
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        }
        assert len(fake.requests) == 3


def _use(call_id: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": call_id, "name": "list_dir", "input": {}}],
    }


def _result(call_id: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "ok"}],
    }


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}, "model: Field"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field"),
        ({"model": "m", "max_tokens": 1}, "messages: Field"),
        ({"model": "m", "max_tokens": 1, "messages": []}, "at least one message"),
        (
            {"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": "x"}]},
            'first message must use the "user" role',
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}],
            },
            "roles must alternate",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}, _use("toolu_a")],
            },
            "without `tool_result` blocks immediately after: toolu_a",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": "thinking"},
                    _result("toolu_b"),
                ],
            },
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_b",
        ),
        (
            {
                "model": "m",
                "max_tokens": 1,
                "messages": [
                    {"role": "user", "content": "x"},
                    _use("toolu_c"),
                    _result("toolu_c"),
                ],
            },
            None,
        ),
    ],
)
def test_fake_validates_requests_like_the_api(body: dict[str, Any], problem: str | None) -> None:
    found = validate_request(body)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --- ScriptedModel --------------------------------------------------------------------------

LISTING = "README.md\nsrc/\n.env\ndata.csv\n"


def _tool_result(name: str, tool_input: dict[str, Any], *, approve: bool) -> tuple[str, bool]:
    """What the runtime would answer: safety refusals, schema errors, reviews, outputs."""
    if name == "read_file":
        if not isinstance(tool_input.get("path"), str):
            return "invalid input for read_file: 'path' is required", True
        if tool_input["path"].endswith(".env"):
            return "read_file refused: credential file", True
        return f"# {tool_input['path']}\nSome text.\n", False
    if name == "list_dir":
        return LISTING, False
    if name == "write_file":
        return f"wrote {len(tool_input['content'])} bytes to {tool_input['path']}", False
    if name == "run_shell":
        if "rm -rf" in tool_input["command"]:
            return "run_shell refused: destructive command", True
        return ("2" if "print" in tool_input["command"] else "total 8\nREADME.md"), False
    if name == "send_email":
        return ("sent", False) if approve else ("denied by reviewer: not today", True)
    return f"unknown tool {name}", True


def _drive(
    prompt: str,
    *,
    steps: int = 12,
    tools: list[dict[str, Any]] = TOOLS,
    approve: bool = True,
    listing: str | None = None,
) -> tuple[list[tuple[str, dict[str, Any]]], str | None, list[ModelReply]]:
    """Run a ScriptedModel conversation, feeding back fake tool results."""
    model = ScriptedModel()
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    calls: list[tuple[str, dict[str, Any]]] = []
    replies: list[ModelReply] = []
    for _ in range(steps):
        reply = model.respond(_request(messages=messages, tools=tools))
        replies.append(reply)
        if reply.stop_reason != "tool_use":
            return calls, reply.content[-1]["text"], replies
        (use,) = [b for b in reply.content if b["type"] == "tool_use"]
        assert TOOL_ID.match(use["id"]), use["id"]
        calls.append((use["name"], use["input"]))
        output, is_error = _tool_result(use["name"], use["input"], approve=approve)
        if listing is not None and use["name"] == "list_dir":
            output = listing
        messages.append({"role": "assistant", "content": reply.content})
        messages.append(
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use["id"],
                        "content": output,
                        "is_error": is_error,
                    }
                ],
            }
        )
    return calls, None, replies


def test_scripted_is_deterministic() -> None:
    model = ScriptedModel()
    request = _request(prompt="Summarize the workspace.", tools=TOOLS)
    first = model.respond(request)
    assert model.respond(request) == first
    assert asyncio.run(model.complete(request, timeout_s=1)) == first
    twin = ModelRequest(
        model=request.model,
        system=request.system,
        messages=json.loads(json.dumps(request.messages)),
        tools=json.loads(json.dumps(request.tools)),
    )
    assert model.respond(twin) == first
    other = model.respond(_request(prompt="Summarize the other workspace.", tools=TOOLS))
    assert other.content[1]["id"] != first.content[1]["id"]


def test_scripted_usage_is_plausible() -> None:
    request = _request(prompt="Summarize the workspace.", tools=TOOLS)
    reply = ScriptedModel().respond(request)
    assert reply.usage.input_tokens == estimate_tokens(request)
    content_chars = len(json.dumps(reply.content, separators=(",", ":")))
    assert abs(reply.usage.output_tokens - content_chars / 4) <= 2


def test_scripted_default_flow() -> None:
    calls, final, _ = _drive("Summarize the files in the workspace.")
    assert [name for name, _ in calls] == ["list_dir", "read_file", "write_file"]
    assert calls[1][1] == {"path": "README.md"}  # a file it saw; never the hidden .env
    assert calls[2][1]["path"] == "summary.md"
    assert "README.md" in calls[2][1]["content"]
    assert final is not None
    assert "summary.md" in final


def test_scripted_default_flow_with_an_empty_workspace() -> None:
    calls, final, _ = _drive("Summarize the files in the workspace.", listing="(empty)")
    assert [(n, i.get("path")) for n, i in calls] == [
        ("list_dir", "."),
        ("write_file", "notes.md"),
        ("write_file", "summary.md"),
    ]
    assert final is not None


@pytest.mark.parametrize(("approve", "outcome"), [(True, "emailed"), (False, "did not send")])
def test_scripted_email_flow(approve: bool, outcome: str) -> None:
    calls, final, _ = _drive(
        "Summarize the notes and email them to carol@acme.example.com.", approve=approve
    )
    assert [name for name, _ in calls] == ["list_dir", "read_file", "send_email"]
    assert calls[2][1]["to"] == "carol@acme.example.com"
    assert set(calls[2][1]) == {"to", "subject", "body"}
    assert final is not None
    assert outcome in final


@pytest.mark.parametrize("prompt", ["Print the API secret.", "Show me what is in .env please."])
def test_scripted_secret_flow(prompt: str) -> None:
    calls, final, _ = _drive(prompt)
    assert calls == [("read_file", {"path": ".env"})]
    assert final is not None
    assert "could not read .env" in final


@pytest.mark.parametrize(
    ("prompt", "commands"),
    [
        ("Use the shell to look around.", ["ls -la"]),
        ("Run the tests.", ["python3 -c 'print(1+1)'"]),
        ("Use the shell, then run the test.", ["ls -la", "python3 -c 'print(1+1)'"]),
    ],
)
def test_scripted_shell_flow(prompt: str, commands: list[str]) -> None:
    calls, final, _ = _drive(prompt)
    assert calls == [("run_shell", {"command": c}) for c in commands]
    assert final is not None
    assert final.startswith("Done.")


def test_scripted_dangerous_flow() -> None:
    calls, final, _ = _drive("Do the dangerous cleanup with the shell.")
    assert calls == [("run_shell", {"command": "rm -rf /"})]
    assert final is not None
    assert "did not" in final


def test_scripted_loop_repeats_the_same_call_forever() -> None:
    calls, final, replies = _drive("Check the workspace in a loop.", steps=10)
    assert final is None
    assert calls == [("list_dir", {"path": "."})] * 10
    ids = [r.content[-1]["id"] for r in replies]
    assert len(set(ids)) == len(ids)  # a new tool_use id every time, as the API gives


def test_scripted_long_keeps_working_without_repeating_itself() -> None:
    calls, final, _ = _drive("Do a long review of everything.", steps=30)
    assert final is None
    assert len(calls) == 30
    assert all(a != b for a, b in itertools.pairwise(calls))
    assert {name for name, _ in calls} == {"write_file", "read_file"}


def test_scripted_expensive_reports_huge_usage() -> None:
    _, _, cheap = _drive("Summarize the workspace.", steps=1)
    _, _, costly = _drive("Run an expensive analysis of the workspace.", steps=1)
    usage = costly[0].usage
    assert usage.input_tokens > 100_000
    assert usage.output_tokens > 50_000
    assert cost_usd(usage, 3.0, 15.0) > 1.0  # over the default max_cost_usd
    assert cheap[0].usage.input_tokens < 1_000


def test_scripted_bad_input_then_recovers() -> None:
    calls, final, _ = _drive("Summarize the config; mind the bad input.")
    assert calls[0] == ("read_file", {"file": 3})
    assert [name for name, _ in calls[1:]] == ["list_dir", "read_file", "write_file"]
    assert calls[2][1] == {"path": "README.md"}
    assert final is not None


def test_scripted_never_repeats_a_failing_call() -> None:
    prompts = ["Print the secret.", "Mind the bad input.", "Dangerous: wipe it with the shell."]
    for prompt in prompts:
        calls, final, _ = _drive(prompt)
        assert final is not None
        assert all(a != b for a, b in itertools.pairwise(calls))


def test_scripted_does_not_call_a_tool_it_was_not_offered() -> None:
    tools = [t for t in TOOLS if t["name"] != "send_email"]
    calls, final, _ = _drive("Summarize and email them to bob@example.com.", tools=tools)
    assert "send_email" not in [name for name, _ in calls]
    assert final is not None
    assert "send_email" in final


def test_scripted_latency_and_timeout() -> None:
    request = _request(prompt="Summarize the workspace.")
    slow = ScriptedModel(latency_s=0.05)
    assert asyncio.run(slow.complete(request, timeout_s=1)).stop_reason == "tool_use"
    with pytest.raises(ModelError) as caught:
        asyncio.run(ScriptedModel(latency_s=5).complete(request, timeout_s=0.05))
    assert caught.value.retryable is True


@pytest.mark.parametrize(
    "prompt",
    [
        "Summarize the files in the workspace.",
        "Summarize the notes and email them to dave@globex.example.com.",
        "Find the secret in .env.",
        "Use the shell, then run the tests.",
        "The dangerous cleanup, please.",
        "Poll in a loop.",
        "A long review.",
        "An expensive analysis.",
        "Mind the bad input.",
    ],
)
def test_scripted_conversations_are_valid_messages_api_traffic(prompt: str) -> None:
    """Each behaviour, served over real HTTP by the fake: every request passes its checks."""

    async def converse(model: AnthropicModel) -> list[str]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        names: list[str] = []
        for _ in range(6):
            reply = await model.complete(_request(messages=messages, tools=TOOLS), timeout_s=5)
            if reply.stop_reason != "tool_use":
                break
            (use,) = [b for b in reply.content if b["type"] == "tool_use"]
            names.append(use["name"])
            output, is_error = _tool_result(use["name"], use["input"], approve=True)
            messages.append({"role": "assistant", "content": reply.content})
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": use["id"],
                            "content": output,
                            "is_error": is_error,
                        }
                    ],
                }
            )
        return names

    with FakeAnthropic(responder=scripted_responder) as fake:
        names = _with_model(fake, converse)
        assert names
        assert all(validate_request(body) is None for body in fake.requests)
        assert not fake.server_errors


# --- demo tasks, accounting -----------------------------------------------------------------


def _kind(prompt: str) -> str:
    lowered = prompt.lower()
    for keyword, kind in [
        ("loop", "loop"),
        ("long", "long"),
        ("dangerous", "refused"),
        (".env", "refused"),
        ("bad input", "bad_input"),
        ("email", "email"),
        ("expensive", "expensive"),
    ]:
        if keyword in lowered:
            return kind
    return "ordinary"


def test_demo_tasks_mix() -> None:
    tasks = demo_tasks(1000, seed=7)
    counts: dict[str, int] = {}
    for task in tasks:
        kind = _kind(task["prompt"])
        counts[kind] = counts.get(kind, 0) + 1
    assert counts == {
        "ordinary": 750,
        "email": 60,
        "loop": 50,
        "long": 40,
        "expensive": 30,
        "refused": 40,
        "bad_input": 30,
    }
    assert [t["id"] for t in tasks[:2]] == ["demo-0001", "demo-0002"]
    assert len({t["id"] for t in tasks}) == 1000
    for task in tasks:
        assert set(task) <= {"id", "prompt", "agent", "tenant", "limits"}
        assert task["agent"] in {"coder", "researcher", "ops"}
        assert task["tenant"] in {"acme", "globex", "initech"}
        assert ("limits" in task) == (_kind(task["prompt"]) == "long")
    assert {t["tenant"] for t in tasks} == {"acme", "globex", "initech"}
    assert {t["agent"] for t in tasks} == {"coder", "researcher", "ops"}


def test_demo_tasks_small_runs_still_show_each_headline_behaviour() -> None:
    kinds = {_kind(t["prompt"]) for t in demo_tasks(20)}
    assert {"ordinary", "email", "loop", "long", "refused"} <= kinds


def test_demo_tasks_are_deterministic_per_seed() -> None:
    assert demo_tasks(40, seed=3) == demo_tasks(40, seed=3)
    assert demo_tasks(40, seed=3) != demo_tasks(40, seed=4)
    assert demo_tasks(0) == []


def test_cost_usd() -> None:
    million = 1_000_000
    assert cost_usd(Usage(input_tokens=million), 3.0, 15.0) == pytest.approx(3.0)
    assert cost_usd(Usage(output_tokens=million), 3.0, 15.0) == pytest.approx(15.0)
    assert cost_usd(Usage(cache_read_tokens=million), 3.0, 15.0) == pytest.approx(0.30)
    assert cost_usd(Usage(cache_write_tokens=million), 3.0, 15.0) == pytest.approx(3.75)
    mixed = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=10_000)
    assert cost_usd(mixed, 3.0, 15.0) == pytest.approx((1000 * 3 + 500 * 15 + 1000 * 3) / 1e6)
    assert cost_usd(Usage(), 3.0, 15.0) == 0.0


def test_estimate_tokens_is_about_four_chars_per_token() -> None:
    small = _request(prompt="hi")
    big = _request(prompt="x" * 4000)
    assert 0 < estimate_tokens(small) < 50
    assert 1000 <= estimate_tokens(big) - estimate_tokens(small) <= 1001
