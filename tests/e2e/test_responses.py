"""``/v1/responses`` through the official SDK, for models served by translation and natively.

Anthropic-wire and Gemini-wire loopback servers stand behind translated
models, an OpenAI-wire one with a Responses route behind a native one. The
conversation state is unimw's: stored responses chain across turns, across
vendors (a fallback mid-conversation) and across gateways sharing Redis.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio
from pydantic import BaseModel

from tests.conftest import sdk_http
from tests.operations import spec
from tests.otel import Telemetry
from tests.redis_support import require_redis, unique
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.gemini_app import GeminiUpstream
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.tenants import hash_key

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5-20250929"
FLASH = "gemini-2.5-flash"
ACME, GLOBEX = "sk-acme-responses-0001", "sk-globex-responses-0002"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class Answer(BaseModel):
    answer: str
    confidence: float


def policy(anthropic_url: str, gemini_url: str, openai_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "claude": {"kind": "anthropic", "base_url": anthropic_url, "api_key": "sk-ant-k", "timeout": 5},
            "google": {"kind": "gemini", "base_url": gemini_url + "/v1beta", "api_key": "g-key", "timeout": 5},
            "native": {
                "kind": "openai",
                "base_url": openai_url + "/v1",
                "api_key": "sk-o",
                "timeout": 5,
                "options": {"responses": True},
            },
            "mock": {"kind": "mock"},
        },
        "models": {
            "sonnet": {"provider": "claude", "model": SONNET},
            "flash": {"provider": "google", "model": FLASH},
            "native": {"provider": "native", "model": "up-main"},
            "mock": {"provider": "mock", "model": "mock-echo"},
        },
        "aliases": {"claude-then-gemini": {"targets": ["sonnet", "flash"], "strategy": "fallback"}},
        "dispatch": {"retries": 0, "cooldown": 0},
        "tenancy": {"resolve": ["api_key"]},
        "tenants": {"acme": {"api_keys": [hash_key(ACME)]}, "globex": {"api_keys": [hash_key(GLOBEX)]}},
        **extra,
    }


Clients = Callable[..., openai.AsyncOpenAI]


def wire(items: Any) -> list[dict[str, Any]]:
    """Output items as sent, without their ids and the ``parsed`` field the SDK's stream helper adds."""
    dumped = [item.model_dump(exclude={"id"}) for item in items]
    for item in dumped:
        for part in item.get("content") or ():
            part.pop("parsed", None)
    return dumped


@pytest.fixture
async def clients(
    _anthropic_server: tuple[AnthropicUpstream, str],
    _gemini_server: tuple[GeminiUpstream, str],
    _openai_server: tuple[OpenAIUpstream, str],
) -> AsyncIterator[Clients]:
    """SDK clients on gateways for the three loopback vendors; all closed after the test."""
    gateways: list[Gateway] = []
    https: list[httpx.AsyncClient] = []
    built: dict[str, Gateway] = {}

    def make(key: str = ACME, *, gateway: str = "main", **extra: Any) -> openai.AsyncOpenAI:
        if gateway not in built:
            data = policy(_anthropic_server[1], _gemini_server[1], _openai_server[1], **extra)
            built[gateway] = Gateway.from_dict(data)
            gateways.append(built[gateway])
        http = httpx.AsyncClient(transport=built[gateway].transport())
        https.append(http)
        return openai.AsyncOpenAI(base_url="http://unimw/v1", api_key=key, http_client=sdk_http(http), max_retries=0)

    yield make
    for http in https:
        await http.aclose()
    for made in gateways:
        await made.aclose()


@pytest.mark.parametrize(
    ("model", "text"),
    [
        ("sonnet", f"Hello from {SONNET}! The capital of France is Paris."),
        ("flash", f"Hello from {FLASH}! The capital of France is Paris."),
        ("native", "Hello from up-main! The capital of France is Paris."),
    ],
)
async def test_plain_and_streamed_answers_agree(clients: Clients, model: str, text: str) -> None:
    client = clients()
    whole = await client.responses.create(model=model, input="What is the capital of France?", instructions="Be brief.")
    assert (whole.status, whole.output_text) == ("completed", text)
    assert whole.usage is not None and whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    async with client.responses.stream(
        model=model, input="What is the capital of France?", instructions="Be brief."
    ) as stream:
        kinds = [event.type async for event in stream]
        streamed = await stream.get_final_response()
    assert streamed.output_text == text
    # The same answer, but for the ids a new response gets.
    assert wire(streamed.output) == wire(whole.output)
    assert streamed.usage == whole.usage
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds


@pytest.mark.parametrize("model", ["sonnet", "flash"])
async def test_function_tools_over_two_turns(
    clients: Clients, model: str, claude: AnthropicUpstream, gemini: GeminiUpstream
) -> None:
    client = clients()
    first = await client.responses.create(model=model, input="What's the weather in Paris?", tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)["city"]) for c in calls][:1] == [("get_weather", "Paris")]
    second = await client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 degrees and sunny"}],
        tools=[WEATHER],
    )
    assert second.status == "completed" and second.output_text
    sent = (claude.requests or gemini.requests)[-1]
    assert "21 degrees and sunny" in json.dumps(sent)  # the earlier turns went upstream with the tool result


@pytest.mark.parametrize("model", ["sonnet", "flash"])
async def test_parse_with_a_pydantic_model(clients: Clients, model: str) -> None:
    parsed = await clients().responses.parse(model=model, input="Capital of France?", text_format=Answer)
    assert parsed.output_parsed == Answer(answer="Paris", confidence=0.9)


async def test_reasoning_effort_gives_a_reasoning_item(
    clients: Clients, claude: AnthropicUpstream, gemini: GeminiUpstream
) -> None:
    response = await clients().responses.create(model="sonnet", input="Capital of France?", reasoning={"effort": "low"})
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert claude.requests[-1]["thinking"]["type"] in ("enabled", "adaptive")
    await clients().responses.create(model="flash", input="Capital of France?", reasoning={"effort": "high"})
    assert gemini.requests[-1]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 24576}


async def test_limits_and_the_cache_apply(clients: Clients, claude: AnthropicUpstream) -> None:
    limited = {"acme": {"api_keys": [hash_key(ACME)], "limits": [{"per": "minute", "requests": 2}]}}
    client = clients(gateway="limited", tenants=limited, cache={"enabled": True})
    first = await client.responses.create(model="sonnet", input="Capital of France?", store=False)
    again = await client.responses.with_raw_response.create(model="sonnet", input="Capital of France?", store=False)
    assert (again.headers["x-unimw-cache"], again.parse().output_text) == ("hit", first.output_text)
    await client.responses.create(model="sonnet", input="Something else?", store=False)
    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="sonnet", input="And a third?", store=False)
    assert claude.calls[SONNET] == 2  # the hit and the refusal reached no upstream


async def test_stored_responses_are_per_tenant_and_can_be_read_listed_and_deleted(clients: Clients) -> None:
    acme, globex = clients(ACME), clients(GLOBEX)
    response = await acme.responses.create(model="mock", input="hello")
    assert (await acme.responses.retrieve(response.id)).output_text == response.output_text
    items = await acme.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    with pytest.raises(openai.NotFoundError):
        await globex.responses.retrieve(response.id)  # another tenant's id is an unknown id
    with pytest.raises(openai.BadRequestError) as caught:
        await globex.responses.create(model="mock", input="again", previous_response_id=response.id)
    assert caught.value.param == "previous_response_id"
    await acme.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await acme.responses.retrieve(response.id)


async def test_store_false_keeps_nothing(clients: Clients) -> None:
    client = clients()
    response = await client.responses.create(model="mock", input="hello", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)


async def test_a_fallback_mid_conversation_keeps_the_chain(
    clients: Clients, claude: AnthropicUpstream, gemini: GeminiUpstream
) -> None:
    client = clients()
    first = await client.responses.create(model="claude-then-gemini", input="My name is Ada.")
    assert first.model.startswith("claude")
    claude.plan(SONNET, "529")
    second = await client.responses.create(
        model="claude-then-gemini", input="What is my name?", previous_response_id=first.id
    )
    assert second.status == "completed" and gemini.calls[FLASH] == 1
    contents = json.dumps(gemini.requests[-1]["contents"])
    assert "My name is Ada." in contents and first.output_text in contents


async def test_stored_responses_survive_a_second_gateway_on_redis(clients: Clients) -> None:
    url = require_redis()
    store = {"responses": {"store": url, "ttl": "1h"}}
    one, two = clients(gateway="one", **store), clients(gateway="two", **store)
    first = await one.responses.create(model="mock", input=unique("hello"))
    again = await two.responses.retrieve(first.id)
    assert again.output_text == first.output_text
    follow = await two.responses.create(model="mock", input="and then?", previous_response_id=first.id)
    assert follow.status == "completed"
    client = redis.asyncio.Redis.from_url(url)
    try:
        ttl_ms = await client.pttl(f"unimw:responses:acme:{first.id}")
    finally:
        await client.aclose()
    assert 0 < ttl_ms <= 3_600_000


async def test_a_cache_hit_is_this_call_s_own_response(clients: Clients, claude: AnthropicUpstream) -> None:
    client = clients(gateway="cached", cache={"enabled": True})
    first = await client.responses.create(model="sonnet", input="Capital of France?")
    hit = await client.responses.with_raw_response.create(model="sonnet", input="Capital of France?")
    again = hit.parse()
    assert (hit.headers["x-unimw-cache"], claude.calls[SONNET]) == ("hit", 1)
    assert again.id != first.id and again.output_text == first.output_text
    assert [item.id for item in again.output] != [item.id for item in first.output]
    assert (await client.responses.retrieve(again.id)).id == again.id  # kept under its own id
    follow = await client.responses.create(model="sonnet", input="And of Italy?", previous_response_id=again.id)
    assert follow.status == "completed" and claude.calls[SONNET] == 2


async def test_an_unreachable_response_store_is_a_503_and_answers_still_go_out(clients: Clients) -> None:
    client = clients(gateway="down", responses={"store": "redis://127.0.0.1:1/0?socket_connect_timeout=0.2"})
    answered = await client.responses.create(model="mock", input="hello")  # storing it fails off the response path
    assert answered.status == "completed"
    for attempt in (
        client.responses.retrieve(answered.id),
        client.responses.delete(answered.id),
        client.responses.create(model="mock", input="again", previous_response_id=answered.id),
    ):
        with pytest.raises(openai.InternalServerError) as caught:
            await attempt
        assert (caught.value.status_code, caught.value.code) == (503, "responses_unavailable")


async def test_hosted_tools_and_background_are_refused_off_openai(clients: Clients) -> None:
    client = clients()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="sonnet", input="news?", tools=[{"type": "web_search"}])
    assert caught.value.param == "tools[0]" and "web_search" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="sonnet", input="hi", background=True)
    assert caught.value.param == "background"


async def test_the_native_target_gets_the_whole_conversation_unstored(
    clients: Clients, upstream: OpenAIUpstream
) -> None:
    client = clients()
    first = await client.responses.create(model="native", input="Remember 42.")
    await client.responses.create(model="native", input="What did I say?", previous_response_id=first.id)
    sent = upstream.requests[-1]
    assert sent["store"] is False and "previous_response_id" not in sent
    assert [item.get("type", "message") for item in sent["input"]] == ["message", "message", "message"]


@pytest.mark.parametrize("model", ["sonnet", "flash", "native"])
async def test_every_event_and_response_on_the_wire_fits_the_spec(
    _anthropic_server: tuple[AnthropicUpstream, str],
    _gemini_server: tuple[GeminiUpstream, str],
    _openai_server: tuple[OpenAIUpstream, str],
    model: str,
) -> None:
    data = policy(_anthropic_server[1], _gemini_server[1], _openai_server[1])
    async with (
        Gateway.from_dict(data) as gateway,
        httpx.AsyncClient(
            transport=gateway.transport(), base_url="http://unimw/v1", headers={"authorization": f"Bearer {ACME}"}
        ) as http,
    ):
        body = {"model": model, "input": "What is the capital of France?", "tools": [WEATHER], "tool_choice": "none"}
        whole = await http.post("/responses", json=body)
        streamed = await http.post("/responses", json={**body, "stream": True})
    assert (whole.status_code, streamed.status_code) == (200, 200)
    assert spec.errors(whole.json(), "Response") == []
    blocks = [block for block in streamed.text.split("\n\n") if block]
    events = [json.loads(block.split("\ndata: ", 1)[1]) for block in blocks]
    assert [block.split("\n", 1)[0] for block in blocks] == [f"event: {e['type']}" for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [spec.errors(e, "ResponseStreamEvent") for e in events] == [[]] * len(events)
    assert events[-1]["type"] == "response.completed"


async def test_a_stream_that_breaks_mid_way_ends_with_response_failed(
    _anthropic_server: tuple[AnthropicUpstream, str],
    _gemini_server: tuple[GeminiUpstream, str],
    _openai_server: tuple[OpenAIUpstream, str],
    claude: AnthropicUpstream,
) -> None:
    # Not continued (stream_resumes 0; tests/e2e/test_responses_continuation.py continues them).
    data = policy(
        _anthropic_server[1], _gemini_server[1], _openai_server[1],
        dispatch={"retries": 0, "cooldown": 0, "stream_resumes": 0},
    )  # fmt: skip
    claude.plan(SONNET, "stream_error")  # an error event after the first words
    async with (
        Gateway.from_dict(data) as gateway,
        httpx.AsyncClient(
            transport=gateway.transport(), base_url="http://unimw/v1", headers={"authorization": f"Bearer {ACME}"}
        ) as http,
    ):
        streamed = await http.post("/responses", json={"model": "sonnet", "input": "Hi", "stream": True})
    events = [json.loads(block.split("\ndata: ", 1)[1]) for block in streamed.text.split("\n\n") if block]
    assert "response.output_text.delta" in [e["type"] for e in events]
    last = events[-1]
    assert (last["type"], last["response"]["status"], last["sequence_number"]) == (
        "response.failed",
        "failed",
        len(events) - 1,
    )
    assert spec.errors(last, "ResponseStreamEvent") == []


async def test_a_traced_call_on_a_translated_target_is_answered(
    _anthropic_server: tuple[AnthropicUpstream, str],
    _gemini_server: tuple[GeminiUpstream, str],
    _openai_server: tuple[OpenAIUpstream, str],
    telemetry: Telemetry,
) -> None:
    # The attempt's span asks the adapter which chat fields it leaves out: a Responses request has none to say.
    data = policy(_anthropic_server[1], _gemini_server[1], _openai_server[1])
    async with (
        Gateway.from_dict(data, **telemetry.providers) as gateway,
        httpx.AsyncClient(transport=gateway.transport()) as http,
    ):
        client = openai.AsyncOpenAI(base_url="http://unimw/v1", api_key=ACME, http_client=sdk_http(http), max_retries=0)
        response = await client.responses.create(model="sonnet", input="What is the capital of France?")
        await gateway.flush()
    assert response.output_text == f"Hello from {SONNET}! The capital of France is Paris."
    assert telemetry.span("chat sonnet")["attributes"]["gen_ai.response.model"] == SONNET
