"""Spans and metrics: the exact tree and attributes of each kind of call, content capture, secrets, propagation."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import unimw.metrics
from tests.conftest import policy_for, sdk
from tests.otel import Telemetry
from tests.servers import serve
from tests.test_serve import ROOT, free_port, wait_until_up
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.attributes import DURATION_BUCKETS, TOKEN_BUCKETS
from unimw.errors import UpstreamError
from unimw.tenants import hash_key
from unimw.tracing import content_modes, self_hosted
from unimw.wire import JSON

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Hello from up-main! The capital of France is Paris."
RESPONSE_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
CLIENT_KEY = "sk-client-0123456789abcdef"
PRICED = {"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 2, "output": 10}}}
CONTENT_KEYS = {
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "gen_ai.tool.definitions",
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]

Make = Callable[..., Gateway]


def tenancy(**acme: Any) -> dict[str, Any]:
    return {"tenants": {"acme": {"api_keys": [hash_key(CLIENT_KEY)], **acme}}}


def server(upstream_url: str) -> dict[str, Any]:
    parts = urlsplit(upstream_url)
    return {"server.address": parts.hostname, "server.port": parts.port}


def attempt(upstream_url: str, model: str, target: str, provider: str, number: int) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "unimw.target": target,
        "unimw.provider": provider,
        "unimw.attempt": number,
        **server(upstream_url),
    }


def cost(usage: Any, input_price: float, output_price: float) -> float:
    return float(round(usage.prompt_tokens * input_price + usage.completion_tokens * output_price) / 1_000_000)


async def complete(gateway: Gateway, body: JSON) -> JSON:
    return await gateway.chat_completions(body)


async def open_stream(gateway: Gateway, body: JSON) -> AsyncIterator[JSON]:
    return await gateway.stream_chat_completions(body)


async def drain(gateway: Gateway, body: JSON) -> list[JSON]:
    return [chunk async for chunk in await open_stream(gateway, body)]


async def test_plain_call(make_gateway: Make, telemetry: Telemetry, upstream_url: str) -> None:
    gateway = make_gateway(telemetry=telemetry, models=PRICED, **tenancy())
    raw = await sdk(gateway, CLIENT_KEY).chat.completions.with_raw_response.create(
        model="gpt-main",
        messages=HELLO,
        temperature=0,
        top_p=0.5,
        max_tokens=50,
        stop=["\n\n"],
        seed=7,
        frequency_penalty=0.1,
        presence_penalty=0.2,
        user="user-42",
    )
    usage = raw.parse().usage
    assert usage is not None
    assert telemetry.tree() == ["chat gpt-main"], "one attempt: no span of its own"
    call = telemetry.span("chat gpt-main")
    assert (call["kind"], call["parent"], call["status"]) == ("CLIENT", None, "UNSET")
    assert call["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        "gen_ai.request.temperature": 0,
        "gen_ai.request.top_p": 0.5,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.stop_sequences": ("\n\n",),
        "gen_ai.request.seed": 7,
        "gen_ai.request.frequency_penalty": 0.1,
        "gen_ai.request.presence_penalty": 0.2,
        "gen_ai.response.id": RESPONSE_ID,
        "gen_ai.response.model": "up-main",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        **server(upstream_url),
        "unimw.request.id": raw.headers["x-request-id"],
        "unimw.tenant": "acme",
        "unimw.end_user": "user-42",
        "unimw.route.strategy": "single",
        "unimw.target": "gpt-main",
        "unimw.provider": "primary",
        "unimw.status": "ok",
        "unimw.cache.hit": False,
        "unimw.budget.decision": "none",
        "unimw.cost.usd": cost(usage, 2, 10),
    }


async def test_streamed_call(make_gateway: Make, telemetry: Telemetry, upstream_url: str) -> None:
    gateway = make_gateway(telemetry=telemetry)
    chunks = await open_stream(
        gateway, {"model": "gpt-main", "messages": HELLO, "stream_options": {"include_usage": True}}
    )
    assert telemetry.spans() == [], "the call's span is open until the stream ends"
    usage = [chunk async for chunk in chunks][-1]["usage"]
    assert telemetry.tree() == ["chat gpt-main"]
    attributes = telemetry.span("chat gpt-main")["attributes"]
    first_chunk = attributes.pop("gen_ai.response.time_to_first_chunk")
    assert 0 < first_chunk < 5
    assert attributes.pop("unimw.request.id").startswith("req_")
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        "gen_ai.request.stream": True,
        "gen_ai.response.id": RESPONSE_ID,
        "gen_ai.response.model": "up-main",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        **server(upstream_url),
        "unimw.route.strategy": "single",
        "unimw.target": "gpt-main",
        "unimw.provider": "primary",
        "unimw.status": "ok",
        "unimw.cache.hit": False,
        "unimw.budget.decision": "none",
        "unimw.cost.usd": 0.0,
    }
    assert telemetry.metrics()["gen_ai.client.operation.time_to_first_chunk"][0][1][0] == 1


async def test_a_closed_stream_ends_its_span_as_cancelled(make_gateway: Make, telemetry: Telemetry) -> None:
    gateway = make_gateway(telemetry=telemetry)
    chunks = await open_stream(gateway, {"model": "gpt-main", "messages": HELLO})
    await anext(chunks)
    await chunks.aclose()  # type: ignore[attr-defined]
    call = telemetry.span("chat gpt-main")
    assert call["status"] == "UNSET"
    assert call["attributes"]["unimw.status"] == "cancelled"
    assert "error.type" not in call["attributes"]


@pytest.mark.parametrize("mode", ["retries", "always"])
async def test_a_cancelled_call_is_finished_and_traced(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, mode: str
) -> None:
    gateway = make_gateway(telemetry=telemetry, tracing={"attempt_spans": mode})
    upstream.plan("up-main", "delay:2")
    task = asyncio.ensure_future(gateway.chat_completions({"model": "gpt-main", "messages": HELLO}))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if mode == "always":
        assert telemetry.tree() == ["chat gpt-main", "  chat up-main"]
        assert telemetry.span("chat up-main")["attributes"]["unimw.status"] == "cancelled"
    else:
        assert telemetry.tree() == ["chat gpt-main"]
    assert telemetry.span("chat gpt-main")["attributes"]["unimw.status"] == "cancelled"


async def test_budget_refusal(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    gateway = make_gateway(telemetry=telemetry, models=PRICED, **tenancy(limits=[{"per": "month", "usd": 0.0001}]))
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk(gateway, CLIENT_KEY).chat.completions.create(model="gpt-main", messages=HELLO)
    assert caught.value.code == "insufficient_quota"
    assert not upstream.calls
    assert telemetry.tree() == ["chat gpt-main"]
    call = telemetry.span("chat gpt-main")
    assert (call["status"], call["description"]) == ("ERROR", caught.value.body["message"])  # type: ignore[index]
    assert call["attributes"].pop("unimw.request.id").startswith("req_")
    assert call["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        **server(upstream_url),
        "error.type": "insufficient_quota",
        "unimw.tenant": "acme",
        "unimw.route.strategy": "single",
        "unimw.status": "error",
        "unimw.cache.hit": False,
        "unimw.budget.decision": "refused",
        "unimw.cost.usd": 0.0,
    }
    assert telemetry.metrics()["unimw.budget.refusals"] == [
        ({"gen_ai.request.model": "gpt-main", "unimw.tenant": "acme", "error.type": "insufficient_quota"}, 1)
    ]


async def test_a_reservation_is_recorded(make_gateway: Make, telemetry: Telemetry) -> None:
    gateway = make_gateway(telemetry=telemetry, **tenancy(limits=[{"per": "minute", "requests": 10}]))
    await sdk(gateway, CLIENT_KEY).chat.completions.create(model="gpt-main", messages=HELLO)
    assert telemetry.span("chat gpt-main")["attributes"]["unimw.budget.decision"] == "reserved"


async def test_an_unreachable_limit_store_that_fails_open_is_unmetered(telemetry: Telemetry) -> None:
    policy = {
        "providers": {"mock": {"kind": "mock"}},
        "models": {"mock-echo": {"provider": "mock", "model": "mock-echo"}},
        "tenancy": {"store": "redis://127.0.0.1:1/0", "on_store_error": "open"},
        "tenants": {"acme": {"limits": [{"per": "minute", "requests": 1}]}},
    }
    async with Gateway.from_dict(policy, **telemetry.providers) as gateway:
        await gateway.chat_completions({"model": "mock-echo", "messages": HELLO}, tenant="acme")
    assert telemetry.tree() == ["chat mock-echo"]
    assert telemetry.spans()[0]["attributes"]["unimw.budget.decision"] == "unmetered"


@pytest.mark.parametrize("mode", ["retries", "always"])
async def test_retried_then_fallback(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str, mode: str
) -> None:
    gateway = make_gateway(telemetry=telemetry, tracing={"attempt_spans": mode})
    upstream.plan("up-main", "500", "500")
    completion = await complete(gateway, {"model": "smart", "messages": HELLO})
    assert completion["model"] == "up-backup"
    assert telemetry.tree() == ["chat smart", "  chat up-main", "  chat up-main", "  chat up-backup"]
    assert_in_sequence(telemetry)
    spans = telemetry.spans()
    message = "The server had an error while processing your request. Sorry about that!"
    for number, span in enumerate(spans[1:3], start=1):
        assert (span["status"], span["description"]) == ("ERROR", message)
        assert span["attributes"] == {
            **attempt(upstream_url, "up-main", "gpt-main", "primary", number),
            "error.type": "500",
        }
    assert spans[3]["status"] == "UNSET"
    assert spans[3]["attributes"] == attempt(upstream_url, "up-backup", "gpt-backup", "backup", 3)
    call = spans[0]
    assert call["status"] == "UNSET"
    assert call["attributes"].pop("unimw.request.id").startswith("req_")
    assert call["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "smart",
        "gen_ai.response.id": RESPONSE_ID,
        "gen_ai.response.model": "up-backup",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": completion["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": completion["usage"]["completion_tokens"],
        **server(upstream_url),
        "unimw.alias": "smart",
        "unimw.route.strategy": "fallback",
        "unimw.target": "gpt-backup",
        "unimw.provider": "backup",
        "unimw.status": "ok",
        "unimw.cache.hit": False,
        "unimw.budget.decision": "none",
        "unimw.cost.usd": 0.0,
    }


def assert_in_sequence(telemetry: Telemetry) -> None:
    """The call span holds its attempts, each ended (after the backoff, for a retry) before the next began."""
    call, *attempts = sorted(telemetry.finished(), key=lambda s: s.start_time or 0)
    times = [(s.start_time or 0, s.end_time or 0) for s in attempts]
    assert all(start < end for start, end in times)
    assert all(end < next_start for (_, end), (next_start, _) in pairwise(times))
    assert (call.start_time or 0) < times[0][0] and times[-1][1] <= (call.end_time or 0)


async def test_a_retried_call_has_a_span_per_attempt_the_first_at_its_real_times(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    gateway = make_gateway(telemetry=telemetry, dispatch={"backoff": "50ms"})
    upstream.plan("up-main", "500")
    completion = await complete(gateway, {"model": "gpt-main", "messages": HELLO})
    assert upstream.calls == {"up-main": 2}
    assert telemetry.tree() == ["chat gpt-main", "  chat up-main", "  chat up-main"]
    assert_in_sequence(telemetry)
    _, first, second = sorted(telemetry.finished(), key=lambda s: s.start_time or 0)
    # Made when the second began, yet dated when the first really ran: the backoff lies between them.
    assert (second.start_time or 0) - (first.end_time or 0) >= 37_500_000  # 0.75 of 50 ms
    call, failed, answered = telemetry.spans()
    assert (failed["status"], failed["description"], failed["parent"]) == (
        "ERROR",
        "The server had an error while processing your request. Sorry about that!",
        "chat gpt-main",
    )
    assert failed["attributes"] == {**attempt(upstream_url, "up-main", "gpt-main", "primary", 1), "error.type": "500"}
    assert (answered["status"], answered["parent"]) == ("UNSET", "chat gpt-main")
    assert answered["attributes"] == attempt(upstream_url, "up-main", "gpt-main", "primary", 2)
    assert call["status"] == "UNSET"
    assert call["attributes"]["unimw.status"] == "ok"
    assert "unimw.attempt" not in call["attributes"]
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        "gen_ai.response.model": "up-main",
        **server(upstream_url),
    }
    usage = completion["usage"]
    metrics = telemetry.metrics()
    assert [(a, count) for a, (count, _) in metrics["gen_ai.client.operation.duration"]] == [(common, 1)]
    assert sorted(metrics["gen_ai.client.token.usage"], key=lambda p: p[0]["gen_ai.token.type"]) == [
        ({**common, "gen_ai.token.type": "input"}, (1, usage["prompt_tokens"])),
        ({**common, "gen_ai.token.type": "output"}, (1, usage["completion_tokens"])),
    ]


async def test_a_single_attempt_has_its_own_span_when_the_policy_asks(
    make_gateway: Make, telemetry: Telemetry, upstream_url: str
) -> None:
    gateway = make_gateway(telemetry=telemetry, tracing={"attempt_spans": "always"})
    completion = await complete(gateway, {"model": "gpt-main", "messages": HELLO, "temperature": 0})
    assert telemetry.tree() == ["chat gpt-main", "  chat up-main"]
    assert_in_sequence(telemetry)
    call, upstream_call = telemetry.spans()
    assert (upstream_call["kind"], upstream_call["parent"], upstream_call["status"]) == (
        "CLIENT",
        "chat gpt-main",
        "UNSET",
    )
    assert upstream_call["attributes"] == attempt(upstream_url, "up-main", "gpt-main", "primary", 1)
    assert call["attributes"].pop("unimw.request.id").startswith("req_")
    assert call["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        "gen_ai.request.temperature": 0,
        "gen_ai.response.id": RESPONSE_ID,
        "gen_ai.response.model": "up-main",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": completion["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": completion["usage"]["completion_tokens"],
        **server(upstream_url),
        "unimw.route.strategy": "single",
        "unimw.target": "gpt-main",
        "unimw.provider": "primary",
        "unimw.status": "ok",
        "unimw.cache.hit": False,
        "unimw.budget.decision": "none",
        "unimw.cost.usd": 0.0,
    }


async def test_a_single_failed_attempt_is_the_call_span_alone(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(telemetry=telemetry, dispatch={"retries": 0})
    upstream.plan("up-main", "500")
    with pytest.raises(UpstreamError):
        await complete(gateway, {"model": "gpt-main", "messages": HELLO})
    assert upstream.calls == {"up-main": 1}
    [call] = telemetry.spans()
    assert (call["name"], call["status"]) == ("chat gpt-main", "ERROR")
    assert call["attributes"]["error.type"] == "500"
    # Nothing of it is left over for the next call, which fails over to a second attempt.
    upstream.plan("up-main", "500")
    await complete(gateway, {"model": "smart", "messages": HELLO})
    assert telemetry.tree() == ["chat gpt-main", "chat smart", "  chat up-main", "  chat up-backup"]


async def test_a_retried_stream_has_a_span_per_attempt(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    gateway = make_gateway(telemetry=telemetry)
    upstream.plan("up-main", "500")
    chunks = await drain(gateway, {"model": "gpt-main", "messages": HELLO})
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert telemetry.tree() == ["chat gpt-main", "  chat up-main", "  chat up-main"]
    assert_in_sequence(telemetry)
    _, failed, answered = telemetry.spans()
    assert (failed["status"], failed["attributes"]) == (
        "ERROR",
        {**attempt(upstream_url, "up-main", "gpt-main", "primary", 1), "error.type": "500"},
    )
    assert (answered["status"], answered["attributes"]) == (
        "UNSET",
        attempt(upstream_url, "up-main", "gpt-main", "primary", 2),
    )


async def test_a_gateway_that_records_nothing_leaves_the_hosts_span_alone(
    telemetry: Telemetry, claude: AnthropicUpstream, _anthropic_server: tuple[Any, str]
) -> None:
    policy = {
        "providers": {"claude": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-ant-secret"}},
        "models": {"sonnet": {"provider": "claude", "model": "claude-sonnet-4-5-20250929"}},
        "dispatch": {"retries": 1, "backoff": "10ms"},
    }
    host = telemetry.tracer_provider.get_tracer("host-app")
    body = {"model": "sonnet", "messages": HELLO, "service_tier": "flex"}
    async with Gateway.from_dict(policy, tracer_provider=NoOpTracerProvider()) as gateway:
        with host.start_as_current_span("GET /ask"):
            await gateway.chat_completions(dict(body))  # one attempt
            claude.plan("claude-sonnet-4-5-20250929", "500")
            await gateway.chat_completions(dict(body))  # two
    assert claude.calls == {"claude-sonnet-4-5-20250929": 3}
    [span] = telemetry.spans()
    assert (span["name"], span["attributes"]) == ("GET /ask", {})


async def test_upstream_error(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    gateway = make_gateway(telemetry=telemetry)
    upstream.plan("up-main", "400")
    with pytest.raises(openai.BadRequestError):
        await sdk(gateway).chat.completions.create(model="gpt-main", messages=HELLO)
    assert telemetry.tree() == ["chat gpt-main"]
    [call] = telemetry.spans()
    assert (call["status"], call["description"]) == ("ERROR", "Invalid 'messages': too long.")
    assert call["attributes"].pop("unimw.request.id").startswith("req_")
    assert call["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        **server(upstream_url),
        "error.type": "invalid_value",
        "unimw.route.strategy": "single",
        "unimw.status": "error",
        "unimw.cache.hit": False,
        "unimw.budget.decision": "none",
        "unimw.cost.usd": 0.0,
    }
    (attributes, (count, _)), *_ = telemetry.metrics()["gen_ai.client.operation.duration"]
    assert count == 1
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        **server(upstream_url),
        "error.type": "invalid_value",
    }
    assert "gen_ai.client.token.usage" not in telemetry.metrics()


async def test_an_unknown_model_is_traced_without_its_name_in_metrics(make_gateway: Make, telemetry: Telemetry) -> None:
    gateway = make_gateway(telemetry=telemetry)
    with pytest.raises(openai.NotFoundError):
        await sdk(gateway).chat.completions.create(model="no-such-model", messages=HELLO)
    call = telemetry.span("chat")
    assert call["attributes"]["gen_ai.request.model"] == "no-such-model"
    assert call["attributes"]["error.type"] == "model_not_found"
    [(attributes, _)] = telemetry.metrics()["gen_ai.client.operation.duration"]
    assert attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "_OTHER",
        "error.type": "model_not_found",
    }


async def test_cache_hit(make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str) -> None:
    gateway = make_gateway(telemetry=telemetry, cache={"enabled": True})
    request = {"model": "gpt-main", "messages": HELLO}
    first = await complete(gateway, dict(request))
    await complete(gateway, dict(request))
    assert upstream.calls == {"up-main": 1}
    assert telemetry.tree() == ["chat gpt-main", "chat gpt-main"]
    miss, hit = telemetry.spans()
    assert miss["attributes"]["unimw.cache.status"] == "miss"
    assert hit["attributes"].pop("unimw.request.id").startswith("req_")
    assert hit["attributes"] == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        "gen_ai.response.id": RESPONSE_ID,
        "gen_ai.response.model": "up-main",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": first["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": first["usage"]["completion_tokens"],
        **server(upstream_url),
        "unimw.route.strategy": "single",
        "unimw.target": "gpt-main",
        "unimw.provider": "primary",
        "unimw.status": "ok",
        "unimw.cache.hit": True,
        "unimw.cache.status": "hit",
        "unimw.budget.decision": "none",
        "unimw.cost.usd": 0.0,
    }
    metrics = telemetry.metrics()
    assert sorted(metrics["unimw.cache.requests"], key=lambda p: p[0]["unimw.cache.hit"]) == [
        ({"unimw.cache.hit": False, "gen_ai.request.model": "gpt-main"}, 1),
        ({"unimw.cache.hit": True, "gen_ai.request.model": "gpt-main"}, 1),
    ]
    assert [count for _, (count, _) in metrics["gen_ai.client.token.usage"]] == [1, 1], "a hit used no tokens"


async def test_a_manual_server_span_is_the_parent(make_gateway: Make, telemetry: Telemetry) -> None:
    gateway = make_gateway(telemetry=telemetry)
    tracer = telemetry.tracer_provider.get_tracer("host-app")
    with tracer.start_as_current_span("GET /ask", kind=SpanKind.SERVER):
        await drain(gateway, {"model": "gpt-main", "messages": HELLO})
    assert telemetry.tree() == ["GET /ask", "  chat gpt-main"]
    assert len({s["trace_id"] for s in telemetry.spans()}) == 1


async def test_the_parent_is_the_asgi_server_span_in_fastapi(make_gateway: Make, telemetry: Telemetry) -> None:
    import httpx
    from fastapi import FastAPI
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    from unimw import UnimwMiddleware

    gateway = make_gateway(telemetry=telemetry)
    app = FastAPI()

    @app.get("/notes")
    async def notes() -> list[str]:
        return []

    app.add_middleware(UnimwMiddleware, gateway=gateway)
    traced = OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"], **telemetry.providers)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(traced), base_url="http://app") as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-main", "messages": HELLO},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        )
    assert response.status_code == 200
    [root] = [s for s in telemetry.spans() if s["kind"] == "SERVER"]
    assert telemetry.tree() == [root["name"], "  chat gpt-main"]
    assert root["name"].startswith("POST")


# ── content ──────────────────────────────────────────────────────────────────


async def test_content_is_absent_by_default(make_gateway: Make, telemetry: Telemetry) -> None:
    gateway = make_gateway(telemetry=telemetry)
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    await gateway.chat_completions({"model": "gpt-main", "messages": messages, "tools": TOOLS})
    await drain(gateway, {"model": "gpt-main", "messages": messages})
    for span in telemetry.spans():
        assert not CONTENT_KEYS & span["attributes"].keys()
        assert span["events"] == []
    assert "Be brief" not in telemetry.everything()
    assert "capital of France" not in telemetry.everything()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_content_in_the_conventions_form_when_enabled(
    make_gateway: Make, telemetry: Telemetry, stream: bool
) -> None:
    gateway = make_gateway(telemetry=telemetry, tracing={"capture_content": True, "attempt_spans": "always"})
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    body = {"model": "gpt-main", "messages": messages}
    await (drain(gateway, body) if stream else complete(gateway, body))
    attributes = telemetry.span("chat gpt-main")["attributes"]
    assert json.loads(attributes["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Capital of France?"}]},
    ]
    assert json.loads(attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "stop"}
    ]
    assert "gen_ai.tool.definitions" not in attributes
    assert not CONTENT_KEYS & telemetry.span("chat up-main")["attributes"].keys()


async def test_tool_calls_in_captured_content(make_gateway: Make, telemetry: Telemetry) -> None:
    gateway = make_gateway(telemetry=telemetry, tracing={"capture_content": True})
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]  # fmt: skip
    await gateway.chat_completions({"model": "gpt-main", "messages": messages, "tools": TOOLS})
    attributes = telemetry.span("chat gpt-main")["attributes"]
    assert json.loads(attributes["gen_ai.input.messages"])[1:] == [
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "Sunny"}]},
    ]  # fmt: skip
    assert json.loads(attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "call_0get_weather", "name": "get_weather", "arguments": {"city": "Paris", "n": 0}}],
            "finish_reason": "tool_call",
        }
    ]  # fmt: skip
    assert json.loads(attributes["gen_ai.tool.definitions"]) == [{"type": "function", **TOOLS[0]["function"]}]


@pytest.mark.parametrize(
    ("value", "on_span", "in_event"),
    [("true", True, False), ("SPAN_ONLY", True, False), ("event_only", False, True), ("SPAN_AND_EVENT", True, True)],
)
async def test_the_standard_env_var_turns_content_on(
    make_gateway: Make, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, value: str, on_span: bool, in_event: bool
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", value)
    gateway = make_gateway(telemetry=telemetry)
    await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    call = telemetry.span("chat gpt-main")
    assert ("gen_ai.input.messages" in call["attributes"]) is on_span
    events = [attributes for name, attributes in call["events"] if name == "gen_ai.client.inference.operation.details"]
    assert len(events) == int(in_event)
    if in_event:
        assert set(events[0]) == {"gen_ai.input.messages", "gen_ai.output.messages"}


@pytest.mark.parametrize(
    ("value", "policy", "expected"),
    [
        (None, False, (False, False)),
        (None, True, (True, False)),
        ("false", True, (False, False)),
        ("NO_CONTENT", True, (False, False)),
        ("True", False, (True, False)),
        ("span_and_event", False, (True, True)),
        ("bogus", True, (True, False)),
    ],
)
def test_content_modes(value: str | None, policy: bool, expected: tuple[bool, bool]) -> None:
    environ = {} if value is None else {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": value}
    assert content_modes(policy, environ) == expected


# ── secrets ──────────────────────────────────────────────────────────────────


async def test_no_secret_is_ever_exported(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = make_gateway(telemetry=telemetry, tracing={"capture_content": True}, **tenancy())
    client = sdk(gateway, CLIENT_KEY)
    await client.chat.completions.create(model="gpt-main", messages=HELLO)
    stream = await client.chat.completions.create(model="gpt-main", messages=HELLO, stream=True)
    _ = [chunk async for chunk in stream]
    upstream.plan("up-main", "500", "500")
    upstream.plan("up-backup", "401")  # echoes the key it was sent: the adapter blanks it
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="smart", messages=HELLO)
    assert len(telemetry.spans()) == 6  # plain, stream, and the failed-over call with its 3 attempts
    exported = telemetry.everything() + caplog.text
    for secret in (CLIENT_KEY, "sk-primary-secret", "sk-backup-secret", "Bearer", "authorization"):
        assert secret not in exported


# ── metrics ──────────────────────────────────────────────────────────────────


async def test_metrics_match_the_usage(make_gateway: Make, telemetry: Telemetry, upstream_url: str) -> None:
    gateway = make_gateway(telemetry=telemetry, models=PRICED, **tenancy())
    client = sdk(gateway, CLIENT_KEY)
    plain = await client.chat.completions.create(model="gpt-main", messages=HELLO)
    stream = await client.chat.completions.create(
        model="gpt-main",
        messages=[{"role": "user", "content": "And of Italy, please?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = [chunk async for chunk in stream][-1].usage
    assert plain.usage is not None and streamed is not None
    usages = (plain.usage, streamed)
    metrics = telemetry.metrics()
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-main",
        "gen_ai.response.model": "up-main",
        **server(upstream_url),
    }
    tokens = sorted(metrics["gen_ai.client.token.usage"], key=lambda p: p[0]["gen_ai.token.type"])
    assert tokens == [
        ({**common, "gen_ai.token.type": "input"}, (2, sum(u.prompt_tokens for u in usages))),
        ({**common, "gen_ai.token.type": "output"}, (2, sum(u.completion_tokens for u in usages))),
    ]
    [(attributes, (count, _))] = metrics["gen_ai.client.operation.duration"]
    assert (attributes, count) == (common, 2)
    [(attributes, (count, _))] = metrics["gen_ai.client.operation.time_to_first_chunk"]
    assert (attributes, count) == (common, 1)
    [(attributes, total)] = metrics["unimw.cost"]
    assert attributes == {
        "gen_ai.request.model": "gpt-main",
        "unimw.tenant": "acme",
        "gen_ai.provider.name": "openai",
        "unimw.provider": "primary",
    }
    assert total == pytest.approx(sum(cost(u, 2, 10) for u in usages))
    assert telemetry.histogram("gen_ai.client.operation.duration") == {
        "unit": "s",
        "count": 2,
        "bounds": DURATION_BUCKETS,
    }
    assert telemetry.histogram("gen_ai.client.token.usage")["bounds"] == TOKEN_BUCKETS
    assert TOKEN_BUCKETS[-1] == 67108864


async def test_calls_alike_share_their_metric_points_and_each_span_names_its_own_target(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    # Two targets on different providers and servers: the route says neither, each answer says its own.
    gateway = make_gateway(
        telemetry=telemetry, aliases={"mixed": {"targets": ["gpt-main", "mock-echo"], "strategy": "fallback"}}
    )
    first = await complete(gateway, {"model": "mixed", "messages": HELLO})
    upstream.plan("up-main", "500", "500")
    second = await complete(gateway, {"model": "mixed", "messages": HELLO})
    third = await complete(gateway, {"model": "mixed", "messages": HELLO})
    assert [c["model"] for c in (first, second, third)] == ["up-main", "mock-echo", "up-main"]
    calls = [s for s in telemetry.spans() if s["name"] == "chat mixed"]
    answered_by = [
        {k: v for k, v in span["attributes"].items() if k.startswith(("unimw.target", "unimw.provider", "gen_ai.provider", "server."))}
        for span in calls
    ]  # fmt: skip
    by_upstream = {"unimw.target": "gpt-main", "unimw.provider": "primary", "gen_ai.provider.name": "openai"}
    by_mock = {"unimw.target": "mock-echo", "unimw.provider": "mock", "gen_ai.provider.name": "unimw.mock"}
    assert answered_by == [{**by_upstream, **server(upstream_url)}, by_mock, {**by_upstream, **server(upstream_url)}]
    common = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "mixed"}
    via_upstream = {
        **common,
        "gen_ai.provider.name": "openai",
        **server(upstream_url),
        "gen_ai.response.model": "up-main",
    }
    via_mock = {**common, "gen_ai.provider.name": "unimw.mock", "gen_ai.response.model": "mock-echo"}
    metrics = telemetry.metrics()
    assert [(a, count) for a, (count, _) in metrics["gen_ai.client.operation.duration"]] == [
        (via_upstream, 2),
        (via_mock, 1),
    ]
    assert [(a, count) for a, (count, _) in metrics["gen_ai.client.token.usage"]] == [
        ({**via_upstream, "gen_ai.token.type": "input"}, 2),
        ({**via_upstream, "gen_ai.token.type": "output"}, 2),
        ({**via_mock, "gen_ai.token.type": "input"}, 1),
        ({**via_mock, "gen_ai.token.type": "output"}, 1),
    ]


async def test_metric_attributes_are_kept_for_a_bounded_number_of_kinds_of_call(
    make_gateway: Make, telemetry: Telemetry, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unimw.metrics, "MAX_KEPT", 1)  # the response model is the upstream's to name: unbounded
    gateway = make_gateway(telemetry=telemetry)
    for model in ("gpt-main", "gpt-backup", "gpt-backup"):
        await complete(gateway, {"model": model, "messages": HELLO})
    assert len(gateway._tracing._metrics._kept) == 1
    points = [(a["gen_ai.request.model"], a["gen_ai.response.model"], count) for a, (count, _) in
              telemetry.metrics()["gen_ai.client.operation.duration"]]  # fmt: skip
    assert points == [("gpt-main", "up-main", 1), ("gpt-backup", "up-backup", 2)]


async def test_a_sampled_out_call_records_no_span_but_counts_in_metrics(
    telemetry: Telemetry, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    sampled_out = TracerProvider(sampler=ALWAYS_OFF)
    sampled_out.add_span_processor(SimpleSpanProcessor(telemetry.exporter))
    policy = policy_for(upstream_url)
    async with Gateway.from_dict(
        policy, tracer_provider=sampled_out, meter_provider=telemetry.meter_provider
    ) as gateway:
        await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    assert telemetry.spans() == []
    assert telemetry.metrics()["gen_ai.client.operation.duration"][0][1][0] == 1
    assert traceparent(upstream.headers[0])[3] == 0, "a sampled-out trace still propagates, as not sampled"


# ── propagation ──────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("mode", "parent"), [("retries", "chat gpt-main"), ("always", "chat up-main")])
async def test_traceparent_goes_to_a_self_hosted_upstream(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream, mode: str, parent: str
) -> None:
    gateway = make_gateway(telemetry=telemetry, tracing={"attempt_spans": mode})
    await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    span = telemetry.span(parent)  # the attempt's span, or the call's when the attempt has none
    assert traceparent(upstream.headers[0]) == ("00", span["trace_id"], span["span_id"], 1)


async def test_a_retry_carries_its_own_attempt_span_upstream(
    make_gateway: Make, telemetry: Telemetry, upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(telemetry=telemetry)
    upstream.plan("up-main", "500")
    await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    call, first, second = telemetry.spans()
    assert [traceparent(h)[2] for h in upstream.headers] == [call["span_id"], second["span_id"]]
    assert first["parent_id"] == second["parent_id"] == call["span_id"]


def traceparent(headers: dict[str, str]) -> tuple[str, int, int, int]:
    """``(version, trace id, parent span id, sampled bit)`` of a W3C ``traceparent`` header."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    return version, int(trace_id, 16), int(span_id, 16), int(flags, 16) & 1


def with_provider(upstream_url: str, **primary: Any) -> dict[str, Any]:
    providers = policy_for(upstream_url)["providers"]
    return {**providers, "primary": {**providers["primary"], **primary}}


@pytest.mark.parametrize(
    ("provider", "tracing", "sent"),
    [
        ({"propagate_trace": False}, {}, False),
        ({}, {"propagate": False}, False),
        ({"propagate_trace": True}, {"propagate": False}, True),
        ({}, {"propagate": True}, True),
    ],
    ids=["provider-off", "policy-off", "provider-wins", "policy-on"],
)
async def test_traceparent_follows_the_policy(
    make_gateway: Make,
    telemetry: Telemetry,
    upstream: OpenAIUpstream,
    upstream_url: str,
    provider: dict[str, Any],
    tracing: dict[str, Any],
    sent: bool,
) -> None:
    gateway = make_gateway(telemetry=telemetry, providers=with_provider(upstream_url, **provider), tracing=tracing)
    await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    assert ("traceparent" in upstream.headers[0]) is sent


async def test_third_party_vendors_get_no_traceparent_by_default(upstream_url: str) -> None:
    policy = policy_for(upstream_url)
    policy["providers"]["vendor"] = {"kind": "openai", "base_url": "https://api.openai.com/v1"}
    policy["providers"]["claude"] = {"kind": "anthropic"}
    async with Gateway.from_dict(policy) as gateway:
        assert not gateway._tracing.propagates("vendor")
        assert not gateway._tracing.propagates("claude")
        assert gateway._tracing.propagates("primary")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://[::1]:8000", True),
        ("http://10.1.2.3/v1", True),
        ("http://192.168.0.7:8080", True),
        ("http://vllm:8000/v1", True),
        ("http://llm.internal/v1", True),
        ("http://ollama.default.svc.cluster.local:11434", True),
        ("https://api.openai.com/v1", False),
        ("https://8.8.8.8/v1", False),
        ("https://generativelanguage.googleapis.com/v1beta", False),
        (None, False),
    ],
)
def test_self_hosted(url: str | None, expected: bool) -> None:
    assert self_hosted(url) is expected


@pytest.mark.parametrize(
    ("mode", "carrier", "other"),
    [("retries", "chat sonnet", None), ("always", "chat claude-sonnet-4-5-20250929", "chat sonnet")],
    ids=["on-the-call-span", "on-the-attempt-span"],
)
async def test_dropped_params_land_on_the_attempts_span(
    telemetry: Telemetry, _anthropic_server: tuple[Any, str], mode: str, carrier: str, other: str | None
) -> None:
    url = _anthropic_server[1]
    policy = {
        "providers": {"claude": {"kind": "anthropic", "base_url": url, "api_key": "sk-ant-secret"}},
        "models": {"sonnet": {"provider": "claude", "model": "claude-sonnet-4-5-20250929"}},
        "tracing": {"attempt_spans": mode},
    }
    async with Gateway.from_dict(policy, **telemetry.providers) as gateway:
        await gateway.chat_completions({"model": "sonnet", "messages": HELLO, "service_tier": "flex"})
    assert len(telemetry.spans()) == (1 if other is None else 2)
    span = telemetry.span(carrier)
    assert span["attributes"]["unimw.request.dropped_params"] == ("service_tier",)
    assert span["attributes"]["gen_ai.provider.name"] == "anthropic"
    if other is not None:
        assert "unimw.request.dropped_params" not in telemetry.span(other)["attributes"]


async def test_a_single_failed_attempt_leaves_its_dropped_params_on_the_call_span(
    telemetry: Telemetry, claude: AnthropicUpstream, _anthropic_server: tuple[Any, str]
) -> None:
    policy = {
        "providers": {"claude": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-ant-secret"}},
        "models": {"sonnet": {"provider": "claude", "model": "claude-sonnet-4-5-20250929"}},
    }
    claude.plan("claude-sonnet-4-5-20250929", "400")
    async with Gateway.from_dict(policy, **telemetry.providers) as gateway:
        with pytest.raises(UpstreamError) as caught:
            await gateway.chat_completions({"model": "sonnet", "messages": HELLO, "service_tier": "flex"})
    [call] = telemetry.spans()
    assert (call["name"], call["status"], call["description"]) == ("chat sonnet", "ERROR", caught.value.message)
    assert call["attributes"]["unimw.request.dropped_params"] == ("service_tier",)
    assert call["attributes"]["error.type"] == caught.value.code == "invalid_request_error"


# ── unimw serve --otel ───────────────────────────────────────────────────────


def serve_with_otel(exporter: str, env: dict[str, str]) -> str:
    """Run ``unimw serve --otel exporter``, make one call, stop it; its standard output."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "unimw.cli", "serve", "--config", str(ROOT / "policies.yaml"), "--port", str(port), "--otel", exporter],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base + "/health", process)
    with openai.OpenAI(base_url=base + "/v1", api_key="sk-client-secret", max_retries=0) as client:
        client.chat.completions.create(model="mock-echo", messages=HELLO)
    process.terminate()
    output, _ = process.communicate(timeout=15)
    return output.decode()


def test_unimw_serve_prints_spans_to_the_console() -> None:
    output = serve_with_otel("console", {"OTEL_SERVICE_NAME": "notes-app"})
    assert '"name": "chat mock-echo"' in output
    assert '"gen_ai.provider.name": "unimw.mock"' in output
    assert '"service.name": "notes-app"' in output
    assert '"kind": "SpanKind.SERVER"' in output  # the request's own span, the call's parent
    assert "sk-client-secret" not in output


def test_unimw_serve_exports_by_otlp() -> None:
    received: dict[str, list[bytes]] = {"traces": [], "metrics": []}

    async def collect(request: Request) -> Response:
        received[request.path_params["signal"]].append(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    collector = Starlette(routes=[Route("/v1/{signal}", collect, methods=["POST"])])
    with serve(collector) as url:
        serve_with_otel("otlp", {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_BSP_SCHEDULE_DELAY": "50"})
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    names = set()
    for body in received["traces"]:
        export = ExportTraceServiceRequest.FromString(body)
        names |= {s.name for r in export.resource_spans for scope in r.scope_spans for s in scope.spans}
    assert "chat mock-echo" in names
    assert any(name.startswith("POST") for name in names)
    assert received["metrics"], "metrics are flushed at shutdown"


def test_otlp_without_its_exporter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from unimw.cli import configure_otel

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ImportError, match=r"pip install 'unimw\[otel\]'"):
        configure_otel("otlp")


def test_the_tracing_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.tracing import CONFIGS, main

    main(["--calls", "5", "--rounds", "3", "--warmup", "1"])
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in table[3:]] == [
        [call, config] for call in ("plain", "stream") for config in CONFIGS
    ]
    assert CONFIGS == ("absent", "off", "sampled", "sdk", "content", "spans", "metrics", "floor")


def test_the_tracing_bench_takes_the_median_of_the_per_round_differences() -> None:
    from bench.tracing import added

    # Rounds 2 and 3 were each hit by a neighbour's burst on one side only: differences of 70 and 1, which
    # the median leaves out (the medians' own difference would be 52 - 20.5 = 31.5).
    per_round = {"off": [20.0, 21.0, 20.0, 60.0, 20.5], "sdk": [50.0, 52.0, 90.0, 61.0, 50.0]}
    assert added(per_round, "sdk", "off") == 30.0
