"""Vendors' prompt caches through the gateway: markers carried to Anthropic, reads and writes reported and priced.

The loopback Messages API keeps a prompt cache of its own (see
``tests/upstreams/anthropic_app.py``): a marked prefix is written on first
sight and read afterwards. The OpenAI and Gemini servers report implicit
cache reads when a test plans ``cached:N``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
)

from tests.conftest import sdk_http
from tests.otel import Telemetry
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.gemini_app import GeminiUpstream
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5-20250929"
#: USD per 1M tokens: input, cache reads, 5-minute and hour-long cache writes, output.
SONNET_PRICE = {"input": 3, "cached_input": 0.3, "cache_write": 3.75, "cache_write_1h": 6, "output": 15}
HANDBOOK = " ".join(f"rule{i}" for i in range(3000))  # 3000 tokens to the loopback server
ANSWER = f"Hello from {SONNET}! The capital of France is Paris."
ANSWER_TOKENS = 12  #: what the loopback server counts for ANSWER
EPHEMERAL = {"type": "ephemeral"}
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def policy(anthropic: str, gemini: str, openai_url: str, records: Path) -> dict[str, Any]:
    return {
        "providers": {
            "claude": {"kind": "anthropic", "base_url": anthropic, "api_key": "sk-ant-test", "timeout": 5},
            "google": {"kind": "gemini", "base_url": gemini + "/v1beta", "api_key": "g-test", "timeout": 5},
            "openai": {"kind": "openai", "base_url": openai_url, "api_key": "sk-test", "timeout": 5},
        },
        "models": {
            "sonnet": {"provider": "claude", "model": SONNET, "price": SONNET_PRICE},
            "sonnet-auto": {
                "provider": "claude",
                "model": SONNET,
                "price": SONNET_PRICE,
                "prompt_cache": {"breakpoints": ["tools", "system", "last_user"]},
            },
            "sonnet-hour": {
                "provider": "claude",
                "model": SONNET,
                "price": SONNET_PRICE,
                "prompt_cache": {"breakpoints": ["system"], "ttl": "1h"},
            },
            "flash": {
                "provider": "google",
                "model": "gemini-2.5-flash",
                "price": {"input": 0.30, "cached_input": 0.075, "output": 2.50},
            },
            "mini": {
                "provider": "openai",
                "model": "gpt-4.1-mini",
                "price": {"input": 0.40, "cached_input": 0.10, "output": 1.60},
            },
        },
        "usage": {"jsonl": str(records)},
        "dispatch": {"retries": 0, "cooldown": 0},
    }


@pytest.fixture
async def gateway(
    _anthropic_server: tuple[AnthropicUpstream, str],
    _gemini_server: tuple[GeminiUpstream, str],
    upstream_url: str,
    tmp_path: Path,
) -> AsyncIterator[Gateway]:
    gateway = Gateway.from_dict(policy(_anthropic_server[1], _gemini_server[1], upstream_url, tmp_path / "usage.jsonl"))
    yield gateway
    await gateway.aclose()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    async with httpx.AsyncClient(transport=gateway.transport()) as http:
        yield openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key="sk-client", http_client=sdk_http(http), max_retries=0
        )


async def records(gateway: Gateway, tmp_path: Path) -> list[dict[str, Any]]:
    """The usage records written so far: what each call used and cost."""
    await gateway.flush()
    return [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]


def prompt_details(usage: Any) -> dict[str, Any]:
    """``prompt_tokens_details`` as the SDK parsed it, extension fields included."""
    details = usage.prompt_tokens_details
    return {**details.model_dump(exclude_none=True), **(details.model_extra or {})}


# -- the caller's markers ----------------------------------------------------------------------------


async def test_the_callers_markers_reach_anthropic_as_sent(
    client: openai.AsyncOpenAI, claude: AnthropicUpstream
) -> None:
    messages: Any = [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "You answer from the handbook."},
                {"type": "text", "text": HANDBOOK, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
            ],
        },
        {"role": "user", "content": "What is the leave policy?", "cache_control": EPHEMERAL},
    ]
    tools: Any = [{**WEATHER, "cache_control": EPHEMERAL}]
    completion = await client.chat.completions.create(
        model="sonnet", messages=messages, tools=tools, tool_choice="none", extra_body={"cache_control": EPHEMERAL}
    )
    assert completion.choices[0].message.content == ANSWER
    (sent,) = claude.requests
    assert sent["system"] == [
        {"type": "text", "text": "You answer from the handbook."},
        {"type": "text", "text": HANDBOOK, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is the leave policy?", "cache_control": {"type": "ephemeral"}}],
        }
    ]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],
            "cache_control": {"type": "ephemeral"},
        }
    ]
    assert sent["cache_control"] == {"type": "ephemeral"}


async def test_a_write_then_reads_are_reported_and_priced(
    gateway: Gateway, client: openai.AsyncOpenAI, claude: AnthropicUpstream, tmp_path: Path
) -> None:
    def ask(question: str) -> Any:
        system = {"role": "system", "content": [{"type": "text", "text": HANDBOOK, "cache_control": EPHEMERAL}]}
        return [system, {"role": "user", "content": question}]

    first = await client.chat.completions.create(model="sonnet", messages=ask("What is the leave policy?"))
    second = await client.chat.completions.create(model="sonnet", messages=ask("And sick days?"))
    chunks = await client.chat.completions.create(
        model="sonnet", messages=ask("Who approves?"), stream=True, stream_options={"include_usage": True}
    )
    third = [chunk async for chunk in chunks][-1]

    # 20 tokens of framing and the question's words are input; the 3000-token handbook is written, then read.
    assert first.usage is not None and second.usage is not None and third.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (25 + 3000, ANSWER_TOKENS)
    assert prompt_details(first.usage) == {"cached_tokens": 0, "cache_write_tokens": 3000}
    assert second.usage.prompt_tokens == 23 + 3000
    assert prompt_details(second.usage) == {"cached_tokens": 3000, "cache_write_tokens": 0}
    assert third.usage.prompt_tokens == 22 + 3000
    assert prompt_details(third.usage) == {"cached_tokens": 3000, "cache_write_tokens": 0}
    assert [r["system"] for r in claude.requests] == [[{"type": "text", "text": HANDBOOK, "cache_control": {"type": "ephemeral"}}]] * 3  # fmt: skip

    written = await records(gateway, tmp_path)
    assert [(r["input_tokens"], r["cached_tokens"], r["cache_write_tokens"], r["stream"]) for r in written] == [
        (3025, 0, 3000, False),
        (3023, 3000, 0, False),
        (3022, 3000, 0, True),
    ]
    # micro-USD: uncached input x 3, reads x 0.30, writes x 3.75, output x 15
    assert [round(r["cost_usd"] * 1_000_000) for r in written] == [
        25 * 3 + 3000 * 3.75 + 12 * 15,
        23 * 3 + 3000 * 0.3 + 12 * 15,
        22 * 3 + 3000 * 0.3 + 12 * 15,
    ]


async def test_more_than_four_markers_is_a_400_before_any_upstream_call(
    client: openai.AsyncOpenAI, claude: AnthropicUpstream
) -> None:
    parts: Any = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL} for i in range(5)]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": parts}])
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_value",
    }
    assert claude.requests == []


async def test_an_invalid_marker_is_a_400(client: openai.AsyncOpenAI, claude: AnthropicUpstream) -> None:
    parts: Any = [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral", "ttl": "1d"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": parts}])
    assert caught.value.body == {
        "message": "Invalid value for 'messages[0].content[0].cache_control.ttl': '1d'. Supported values are: '5m' and '1h'.",
        "type": "invalid_request_error",
        "param": "messages[0].content[0].cache_control.ttl",
        "code": "invalid_value",
    }
    assert claude.requests == []


# -- breakpoints from the policy ---------------------------------------------------------------------


async def test_policy_breakpoints_cache_a_growing_conversation(
    gateway: Gateway, client: openai.AsyncOpenAI, claude: AnthropicUpstream, tmp_path: Path
) -> None:
    conversation: Any = [
        {"role": "system", "content": HANDBOOK},
        {"role": "user", "content": "What is the leave policy?"},
    ]
    first = await client.chat.completions.create(
        model="sonnet-auto", messages=conversation, tools=[WEATHER], tool_choice="none"
    )
    conversation += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "And sick days?"}]  # fmt: skip
    second = await client.chat.completions.create(
        model="sonnet-auto", messages=conversation, tools=[WEATHER], tool_choice="none"
    )

    marked = {"type": "ephemeral"}
    assert claude.requests[0]["tools"][0]["cache_control"] == marked
    assert claude.requests[0]["system"] == [{"type": "text", "text": HANDBOOK, "cache_control": marked}]
    assert claude.requests[0]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is the leave policy?", "cache_control": marked}]}
    ]
    assert claude.requests[1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is the leave policy?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]},
        {"role": "user", "content": [{"type": "text", "text": "And sick days?", "cache_control": marked}]},
    ]
    # The first call writes tools (50), system (3000) and question (5); the second reads them back and writes
    # the answer (9) and the new question (3).
    assert first.usage is not None and second.usage is not None
    assert (first.usage.prompt_tokens, prompt_details(first.usage)) == (3075, {"cached_tokens": 0, "cache_write_tokens": 3055})  # fmt: skip
    assert (second.usage.prompt_tokens, prompt_details(second.usage)) == (3087, {"cached_tokens": 3055, "cache_write_tokens": 12})  # fmt: skip
    written = await records(gateway, tmp_path)
    # micro-USD, rounded up: 20 x 3 + 3055 x 3.75 + 12 x 15 = 11696.25; 20 x 3 + 3055 x 0.3 + 12 x 3.75 + 12 x 15 = 1201.5
    assert [round(r["cost_usd"] * 1_000_000) for r in written] == [11697, 1202]


async def test_policy_breakpoints_with_an_hour_to_live_are_priced_as_such(
    gateway: Gateway, client: openai.AsyncOpenAI, claude: AnthropicUpstream, tmp_path: Path
) -> None:
    messages: Any = [{"role": "system", "content": HANDBOOK}, {"role": "user", "content": "What is the leave policy?"}]
    completion = await client.chat.completions.create(model="sonnet-hour", messages=messages)
    assert claude.requests[0]["system"] == [
        {"type": "text", "text": HANDBOOK, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    assert completion.usage is not None
    assert prompt_details(completion.usage) == {
        "cached_tokens": 0,
        "cache_write_tokens": 3000,
        "cache_write_1h_tokens": 3000,
    }
    (record,) = await records(gateway, tmp_path)
    assert (record["cache_write_tokens"], round(record["cost_usd"] * 1_000_000)) == (3000, 25 * 3 + 3000 * 6 + 12 * 15)


# -- implicit caches ---------------------------------------------------------------------------------


async def test_gemini_implicit_cache_reads_are_priced_at_the_read_price(
    gateway: Gateway, client: openai.AsyncOpenAI, gemini: GeminiUpstream, tmp_path: Path
) -> None:
    gemini.plan("gemini-2.5-flash", "cached:2048")
    completion = await client.chat.completions.create(
        model="flash", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert completion.usage is not None
    prompt, output = completion.usage.prompt_tokens, completion.usage.completion_tokens
    assert prompt_details(completion.usage) == {"cached_tokens": 2048}
    (record,) = await records(gateway, tmp_path)
    assert (record["input_tokens"], record["cached_tokens"], record["cache_write_tokens"]) == (prompt, 2048, 0)
    # 18 uncached at 0.30, 2048 read at 0.075, 30 out (thoughts included) at 2.50: 5.4 + 153.6 + 75 micro-USD
    assert (prompt, output, round(record["cost_usd"] * 1_000_000)) == (2048 + 18, 30, 234)
    assert gemini.requests[0].get("cachedContent") is None


async def test_openai_implicit_cache_reads_are_priced_at_the_read_price(
    gateway: Gateway, client: openai.AsyncOpenAI, upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    upstream.plan("gpt-4.1-mini", "cached:1024", "cached:1024")
    plain = await client.chat.completions.create(
        model="mini", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    chunks = await client.chat.completions.create(
        model="mini",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [chunk async for chunk in chunks][-1]
    for usage in (plain.usage, streamed.usage):
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens) == (1024 + 14, 14)
        assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 1024
    written = await records(gateway, tmp_path)
    # 14 uncached at 0.40, 1024 read at 0.10, 14 out at 1.60: 5.6 + 102.4 + 22.4 = 130.4, charged 131 micro-USD
    assert [(r["cached_tokens"], round(r["cost_usd"] * 1_000_000)) for r in written] == [(1024, 131), (1024, 131)]


async def test_cache_reads_and_writes_are_on_the_span_by_their_convention_names(
    _anthropic_server: tuple[AnthropicUpstream, str],
    _gemini_server: tuple[GeminiUpstream, str],
    upstream_url: str,
    claude: AnthropicUpstream,
    tmp_path: Path,
) -> None:
    telemetry = Telemetry()
    settings = policy(_anthropic_server[1], _gemini_server[1], upstream_url, tmp_path / "usage.jsonl")
    system = {"role": "system", "content": [{"type": "text", "text": HANDBOOK, "cache_control": EPHEMERAL}]}
    async with Gateway.from_dict(settings, **telemetry.providers) as gateway:
        for question in ("What is the leave policy?", "And sick days?"):
            await gateway.chat_completions(
                {"model": "sonnet", "messages": [system, {"role": "user", "content": question}]}
            )
    written, read = (span["attributes"] for span in telemetry.spans() if span["name"] == "chat sonnet")
    assert (
        written.get(GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS),
        written.get(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
    ) == (3000, None)
    assert (read.get(GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS), read.get(GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)) == (
        None,
        3000,
    )
