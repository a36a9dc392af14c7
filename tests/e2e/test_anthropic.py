"""The official openai SDK against a gateway whose provider speaks the Anthropic Messages API on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import sdk_http
from tests.upstreams.anthropic_app import AnthropicUpstream
from unimw import Gateway

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5-20250929"
OPUS = "claude-opus-4-7"
HELLO: Any = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    },
]
KEY = "sk-ant-api03-secret-key"


class Answer(BaseModel):
    answer: str
    confidence: float


def calls(message: Any) -> list[tuple[str, str, Any]]:
    """``(id, name, parsed arguments)`` of each tool call in an SDK message."""
    return [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def policy(url: str) -> dict[str, Any]:
    return {
        "providers": {
            "claude": {"kind": "anthropic", "base_url": url, "api_key": KEY, "timeout": 2},
            "claude-legacy": {
                "kind": "anthropic",
                "base_url": url + "/v1",
                "api_key": KEY,
                "timeout": 2,
                "options": {"anthropic_version": "2023-06-01", "default_max_tokens": 512},
            },
            "mock": {"kind": "mock"},
        },
        "models": {
            "sonnet": {"provider": "claude", "model": SONNET},
            "opus": {"provider": "claude", "model": OPUS},
            "old-sonnet": {"provider": "claude", "model": "claude-3-7-sonnet-20250219"},
            "haiku-legacy": {"provider": "claude-legacy", "model": "claude-3-5-haiku-20241022", "params": {"top_k": 5}},
            "mock-echo": {"provider": "mock", "model": "mock-echo"},
        },
        "aliases": {
            "resilient": {"targets": ["sonnet", "opus"], "strategy": "fallback"},
            "to-mock": {"targets": ["sonnet", "mock-echo"], "strategy": "fallback"},
        },
        "dispatch": {"retries": 1, "backoff": "10ms", "cooldown": 0},
    }


@pytest.fixture
async def gateway(_anthropic_server: tuple[AnthropicUpstream, str]) -> AsyncIterator[Gateway]:
    gateway = Gateway.from_dict(policy(_anthropic_server[1]))
    yield gateway
    await gateway.aclose()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with httpx.AsyncClient(transport=gateway.transport()) as http:
        yield openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key="sk-client", http_client=sdk_http(http), max_retries=0
        )


async def test_chat_and_usage(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    completion = await client.chat.completions.create(model="sonnet", messages=HELLO, temperature=0.3)
    assert completion.choices[0].message.content == f"Hello from {SONNET}! The capital of France is Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    # 21 uncached input tokens + 4 written to the cache + 6 read from it.
    assert (completion.usage.prompt_tokens, completion.usage.prompt_tokens_details.cached_tokens) == (31, 6)
    assert completion.usage.total_tokens == 31 + completion.usage.completion_tokens
    sent, headers = claude.requests[0], claude.headers[0]
    assert (headers["x-api-key"], headers["anthropic-version"]) == (KEY, "2026-10-21")
    assert "temperature" not in sent and sent["max_tokens"] == 4096 and sent["model"] == SONNET


async def test_legacy_version_takes_sampling_params(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    completion = await client.chat.completions.create(model="haiku-legacy", messages=HELLO, temperature=0.3)
    assert (
        completion.choices[0].message.content == "Hello from claude-3-5-haiku-20241022! The capital of France is Paris."
    )
    assert claude.headers[0]["anthropic-version"] == "2023-06-01"
    sent = claude.requests[0]
    assert (sent["temperature"], sent["top_k"], sent["max_tokens"]) == (0.3, 5, 512)


async def test_parallel_tool_calls(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    completion = await client.chat.completions.create(model="sonnet", messages=HELLO, tools=TOOLS)
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls(completion.choices[0].message) == [
        ("toolu_00get_weather", "get_weather", {"city": "Paris"}),
        ("toolu_01get_time", "get_time", {"city": "Paris"}),
    ]
    serial = await client.chat.completions.create(
        model="sonnet", messages=HELLO, tools=TOOLS, parallel_tool_calls=False
    )
    assert len(serial.choices[0].message.tool_calls or []) == 1
    assert claude.requests[1]["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_streamed_tool_calls_accumulate(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    async with client.chat.completions.stream(model="sonnet", messages=HELLO, tools=TOOLS) as stream:
        final = await stream.get_final_completion()
    plain = await client.chat.completions.create(model="sonnet", messages=HELLO, tools=TOOLS)
    assert calls(final.choices[0].message) == calls(plain.choices[0].message)
    assert len(calls(plain.choices[0].message)) == 2
    assert final.choices[0].finish_reason == "tool_calls"


async def test_tool_round_trip(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    first = await client.chat.completions.create(model="sonnet", messages=HELLO, tools=TOOLS)
    reply = first.choices[0].message
    results = [{"role": "tool", "tool_call_id": c.id, "content": f"result {c.id}"} for c in reply.tool_calls or []]
    messages = [*HELLO, reply.model_dump(exclude_none=True), *results]
    second = await client.chat.completions.create(model="sonnet", messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == f"I got 2 tool results for {SONNET}."
    assistant, user = claude.requests[1]["messages"][1:]
    uses = [b["id"] for b in assistant["content"] if b["type"] == "tool_use"]
    assert [b["tool_use_id"] for b in user["content"]] == uses == ["toolu_00get_weather", "toolu_01get_time"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_tool_round_trip_with_thinking(
    client: openai.AsyncOpenAI, claude: AnthropicUpstream, stream: bool
) -> None:
    """The signed thinking comes back with the tool results, so thinking can stay on."""
    if stream:
        async with client.chat.completions.stream(
            model="opus", messages=HELLO, tools=TOOLS, reasoning_effort="low"
        ) as s:
            reply: Any = (await s.get_final_completion()).choices[0].message
    else:
        completion = await client.chat.completions.create(
            model="opus", messages=HELLO, tools=TOOLS, reasoning_effort="low"
        )
        reply = completion.choices[0].message
    results = [{"role": "tool", "tool_call_id": c.id, "content": "1"} for c in reply.tool_calls or []]
    messages = [*HELLO, reply.model_dump(exclude_none=True), *results]
    second = await client.chat.completions.create(model="opus", messages=messages, tools=TOOLS, reasoning_effort="low")
    assert second.choices[0].message.content == f"I got 2 tool results for {OPUS}."
    sent = claude.requests[1]
    assert sent["thinking"] == {"type": "adaptive"}
    assert [b["type"] for b in sent["messages"][1]["content"]] == ["thinking", "tool_use", "tool_use"]
    assert sent["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "The user wants Paris.",
        "signature": "EqQBCgIYAhIMsig",
    }


@pytest.mark.parametrize("model", ["sonnet", "old-sonnet"], ids=["native", "forced-tool"])
async def test_structured_output(client: openai.AsyncOpenAI, claude: AnthropicUpstream, model: str) -> None:
    completion = await client.chat.completions.parse(model=model, messages=HELLO, response_format=Answer)
    assert completion.choices[0].message.parsed == Answer(answer="Paris", confidence=0.9)
    assert completion.choices[0].finish_reason == "stop"
    async with client.chat.completions.stream(model=model, messages=HELLO, response_format=Answer) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.parsed == Answer(answer="Paris", confidence=0.9)
    how = [("output_config" in r, "tools" in r) for r in claude.requests]
    assert how == [(model == "sonnet", model != "sonnet")] * 2


async def test_stream_usage_only_when_asked(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    stream = await client.chat.completions.create(
        model="sonnet", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Hello from {SONNET}! The capital of France is Paris."
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 31
    plain = [c async for c in await client.chat.completions.create(model="sonnet", messages=HELLO, stream=True)]
    assert all(c.choices and c.usage is None for c in plain)


async def test_reasoning_is_not_content(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    completion = await client.chat.completions.create(model="opus", messages=HELLO, reasoning_effort="high")
    message = completion.choices[0].message
    assert message.content == f"Hello from {OPUS}! The capital of France is Paris."
    assert (message.model_extra or {})["reasoning_content"] == "The user wants Paris."
    assert claude.requests[0]["thinking"] == {"type": "adaptive"}
    assert claude.requests[0]["output_config"] == {"effort": "high"}
    stream = await client.chat.completions.create(model="opus", messages=HELLO, reasoning_effort="high", stream=True)
    deltas = [c.choices[0].delta for c in [c async for c in stream] if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas) == "The user wants Paris."
    assert "".join(d.content or "" for d in deltas) == message.content


@pytest.mark.parametrize(
    ("faults", "exception", "status"),
    [
        pytest.param(["400"], openai.BadRequestError, 400, id="400"),
        pytest.param(["401"], openai.AuthenticationError, 401, id="401"),
        pytest.param(["429", "429"], openai.RateLimitError, 429, id="429"),
        pytest.param(["529", "529"], openai.InternalServerError, 503, id="529-overloaded"),
        pytest.param(["500", "500"], openai.InternalServerError, 500, id="500"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_errors(
    client: openai.AsyncOpenAI,
    claude: AnthropicUpstream,
    faults: list[str],
    exception: type[openai.APIStatusError],
    status: int,
    stream: bool,
) -> None:
    claude.plan(SONNET, *faults)
    with pytest.raises(exception) as caught:
        await client.chat.completions.create(model="sonnet", messages=HELLO, stream=stream)
    assert caught.value.status_code == status
    assert KEY not in str(caught.value)
    assert claude.calls[SONNET] == len(faults)


async def test_retry_after_is_honoured(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "429:0")
    completion = await client.chat.completions.create(model="sonnet", messages=HELLO)
    assert completion.choices[0].message.content is not None
    assert claude.calls[SONNET] == 2


@pytest.mark.parametrize("fault", ["stream_error", "cut"])
async def test_a_broken_stream_is_continued_after_what_it_sent(
    client: openai.AsyncOpenAI, claude: AnthropicUpstream, fault: str
) -> None:
    """Claude continues a final assistant turn: the words already sent go back as one (tests/e2e/test_stream_continuation.py)."""
    claude.plan(SONNET, fault)
    stream = await client.chat.completions.create(model="sonnet", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == f"Hello from {SONNET}! The capital of France is Paris."
    assert claude.calls[SONNET] == 2


@pytest.mark.parametrize("fault", ["stream_error", "cut"])
async def test_broken_stream_raises_when_not_continued(
    _anthropic_server: tuple[AnthropicUpstream, str], claude: AnthropicUpstream, fault: str
) -> None:
    claude.plan(SONNET, fault)
    settings = {**policy(_anthropic_server[1]), "dispatch": {"stream_resumes": 0}}
    async with Gateway.from_dict(settings) as quiet, httpx.AsyncClient(transport=quiet.transport()) as http:
        client = openai.AsyncOpenAI(base_url="http://unimw/v1", api_key="k", http_client=sdk_http(http), max_retries=0)
        stream = await client.chat.completions.create(model="sonnet", messages=HELLO, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    assert claude.calls[SONNET] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_fallback_after_overload(client: openai.AsyncOpenAI, claude: AnthropicUpstream, stream: bool) -> None:
    claude.plan(SONNET, "529", "529")
    if stream:
        chunks = await client.chat.completions.create(model="resilient", messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    else:
        text = (await client.chat.completions.create(model="resilient", messages=HELLO)).choices[
            0
        ].message.content or ""
    assert text == f"Hello from {OPUS}! The capital of France is Paris."
    assert claude.calls == {SONNET: 2, OPUS: 1}


async def test_overload_before_the_first_output_falls_back(
    client: openai.AsyncOpenAI, claude: AnthropicUpstream
) -> None:
    claude.plan(SONNET, "early_error", "early_error")
    chunks = await client.chat.completions.create(model="resilient", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    assert text == f"Hello from {OPUS}! The capital of France is Paris."
    assert claude.calls == {SONNET: 2, OPUS: 1}


async def test_fallback_to_the_mock(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "529", "529")
    completion = await client.chat.completions.create(model="to-mock", messages=HELLO)
    assert (completion.choices[0].message.content or "").startswith("This is a mock reply from unimw")
    assert claude.calls == {SONNET: 2}
