"""An upstream stream event that cannot be parsed, on each vendor's wire, as the official SDK sees it.

With ``malformed_events: skip`` (the default) the event is left out and counted on the call's span; the
client's chunks are those of a clean stream. With ``fail`` it fails the stream like a cut: continued where
the target accepts a prefill, else the client's stream ends with the error. The upstreams are the loopback
OpenAI, Anthropic and Gemini servers; each fault adds one unparseable event to an otherwise whole stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.conftest import sdk
from tests.otel import Telemetry
from tests.upstreams import full
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.gemini_app import GeminiUpstream
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.attributes import STREAM_SKIPPED_EVENTS
from unimw.wire import SKIPPED_EVENTS

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5-20250929"
FLASH = "gemini-3-flash-preview"
HELLO: Any = [{"role": "user", "content": "What is the capital of France?"}]
#: public model → the upstream's model id
MODELS = {"gpt-main": "up-main", "sonnet": SONNET, "flash": FLASH}


@pytest.fixture
def make(
    make_gateway: Callable[..., Gateway],
    upstream_url: str,
    _anthropic_server: tuple[AnthropicUpstream, str],
    _gemini_server: tuple[GeminiUpstream, str],
) -> Callable[..., Gateway]:
    """Gateways with an OpenAI-wire, an Anthropic and a Gemini provider, each with ``malformed_events`` if
    given (unset: the default)."""

    def build(malformed: str | None = None, **overrides: Any) -> Gateway:
        setting = {} if malformed is None else {"malformed_events": malformed}
        providers = {
            "primary": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-primary-secret", "timeout": 2},
            "claude": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-ant-x", "timeout": 2},
            "gem": {"kind": "gemini", "base_url": _gemini_server[1] + "/v1beta", "api_key": "gk-x", "timeout": 2},
        }
        models = {
            "sonnet": {"provider": "claude", "model": SONNET, "price": {"input": 3, "output": 15}},
            "flash": {"provider": "gem", "model": FLASH, "price": {"input": 1, "output": 4}},
            "gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 2, "output": 8}},
        }
        for provider in providers.values():
            provider.update(setting)
        return make_gateway(providers=providers, models=models, **overrides)

    return build


async def chunks_of(client: openai.AsyncOpenAI, model: str) -> list[ChatCompletionChunk]:
    stream = await client.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    return [chunk async for chunk in stream]


def plan(fault: str, model: str, upstreams: dict[str, Any]) -> None:
    """Plan ``fault`` for ``model``'s next call on its upstream."""
    upstreams[model].plan(MODELS[model], fault)


CASES = [
    ("gpt-main", "malformed"),
    ("gpt-main", "malformed:end"),  # after the usage chunk, before [DONE]: counted on an item of its own
    ("sonnet", "malformed"),
    ("sonnet", "malformed:start"),  # the text block's start: its text still arrives
    ("sonnet", "malformed:end"),  # between message_delta and message_stop
    ("flash", "malformed"),
]


@pytest.mark.parametrize(("model", "fault"), CASES, ids=[f"{m}-{f}" for m, f in CASES])
async def test_with_skip_the_client_gets_the_clean_stream_and_the_span_counts_the_event(
    make: Callable[..., Gateway],
    upstream: OpenAIUpstream,
    claude: AnthropicUpstream,
    gemini: GeminiUpstream,
    telemetry: Telemetry,
    tmp_path: Path,
    model: str,
    fault: str,
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make(telemetry=telemetry, usage={"jsonl": str(records)})  # the default: skip
    client = sdk(gateway)
    clean = await chunks_of(client, model)
    plan(fault, model, {"gpt-main": upstream, "sonnet": claude, "flash": gemini})
    skipped = await chunks_of(client, model)

    def seen(chunks: list[ChatCompletionChunk]) -> list[dict[str, Any]]:
        return [c.model_dump(exclude={"created"}) for c in chunks]

    assert seen(skipped) == seen(clean)
    assert "".join(c.choices[0].delta.content or "" for c in skipped if c.choices) == full(MODELS[model])
    assert all(SKIPPED_EVENTS not in (c.model_extra or {}) for c in skipped)
    assert {"gpt-main": upstream, "sonnet": claude, "flash": gemini}[model].calls[MODELS[model]] == 2
    await gateway.flush()
    spans = [s["attributes"] for s in telemetry.spans() if s["name"] == f"chat {model}"]
    assert [a.get(STREAM_SKIPPED_EVENTS) for a in spans] == [None, 1]
    # The usage record is the vendor's own count, as for the clean call, at the same price.
    (usage,) = [c.usage for c in skipped if c.usage is not None]
    first, second = [json.loads(line) for line in records.read_text().splitlines()]
    fields = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "cost_usd", "status")
    assert {k: second[k] for k in fields} == {k: first[k] for k in fields}
    assert (second["input_tokens"], second["output_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)


async def test_with_fail_an_anthropic_stream_is_continued_like_a_cut(
    make: Callable[..., Gateway], claude: AnthropicUpstream, telemetry: Telemetry
) -> None:
    gateway = make("fail", telemetry=telemetry)
    claude.plan(SONNET, "malformed")  # after the first word, "Hello"
    chunks = await chunks_of(sdk(gateway), "sonnet")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full(SONNET)
    assert claude.calls[SONNET] == 2
    assert claude.requests[1]["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}
    await gateway.flush()
    attributes = telemetry.span("chat sonnet")["attributes"]
    assert (attributes["unimw.stream.resumes"], STREAM_SKIPPED_EVENTS in attributes) == (1, False)


@pytest.mark.parametrize("model", ["gpt-main", "flash"])
async def test_with_fail_a_stream_that_cannot_be_continued_ends_with_the_error(
    make: Callable[..., Gateway],
    upstream: OpenAIUpstream,
    gemini: GeminiUpstream,
    telemetry: Telemetry,
    model: str,
) -> None:
    gateway = make("fail", telemetry=telemetry)
    upstreams: dict[str, Any] = {"gpt-main": upstream, "flash": gemini}
    plan("malformed", model, upstreams)
    delivered: list[ChatCompletionChunk] = []
    stream = await sdk(gateway).chat.completions.create(model=model, messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match=r"^The upstream sent malformed JSON\.$"):
        async for chunk in stream:
            delivered.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in delivered if c.choices)
    assert full(MODELS[model]).startswith(text) and text  # what came before the event, nothing after it
    assert upstreams[model].calls[MODELS[model]] == 1  # neither wire continues a turn: not asked again
    await gateway.flush()
    attributes = telemetry.span(f"chat {model}")["attributes"]
    assert (attributes["error.type"], STREAM_SKIPPED_EVENTS in attributes) == ("bad_upstream_response", False)


async def test_a_tool_call_whose_start_was_skipped_is_asked_again_before_anything_reached_the_client(
    make: Callable[..., Gateway], claude: AnthropicUpstream, telemetry: Telemetry
) -> None:
    gateway = make(telemetry=telemetry)
    claude.plan(SONNET, "malformed:start")  # the first block is the first tool call: its id and name are lost
    tools: Any = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
        for n in ("get_weather", "get_time")
    ]
    stream = await sdk(gateway).chat.completions.create(model="sonnet", messages=HELLO, tools=tools, stream=True)
    chunks = [chunk async for chunk in stream]
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or ()]
    heads = [(t.index, t.id, t.function.name if t.function else None) for t in calls if t.id]
    assert heads == [(0, "toolu_00get_weather", "get_weather"), (1, "toolu_01get_time", "get_time")]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert claude.calls[SONNET] == 2  # the first attempt failed before its first chunk: retried
    await gateway.flush()
    assert STREAM_SKIPPED_EVENTS not in telemetry.span("chat sonnet")["attributes"]


@pytest.mark.parametrize(("model", "fault"), CASES, ids=[f"{m}-{f}" for m, f in CASES])
async def test_a_responses_stream_served_by_translation_counts_the_skipped_event_too(
    make: Callable[..., Gateway],
    upstream: OpenAIUpstream,
    claude: AnthropicUpstream,
    gemini: GeminiUpstream,
    telemetry: Telemetry,
    model: str,
    fault: str,
) -> None:
    gateway = make(telemetry=telemetry)
    plan(fault, model, {"gpt-main": upstream, "sonnet": claude, "flash": gemini})
    events = [e async for e in await sdk(gateway).responses.create(model=model, input="Hi", stream=True)]
    assert [e.type for e in events][-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == full(MODELS[model])
    assert all(SKIPPED_EVENTS not in (e.model_extra or {}) for e in events)
    await gateway.flush()
    assert telemetry.span(f"chat {model}")["attributes"][STREAM_SKIPPED_EVENTS] == 1
