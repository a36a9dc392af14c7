"""The official openai SDK against the gateway, with a ``kind: gemini`` provider on a loopback Gemini server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)
from pydantic import BaseModel

from tests.conftest import sdk_http
from tests.upstreams.gemini_app import GeminiUpstream, signature
from unimw import Gateway

pytestmark = pytest.mark.anyio

KEY = "gk-test-secret-key"
HELLO: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    },
]
FLASH = "gemini-3-flash-preview"

MakeClient = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def make_client(_gemini_server: tuple[GeminiUpstream, str]) -> AsyncIterator[MakeClient]:
    """SDK clients on gateways with a gemini provider; every gateway and HTTP client is closed after the test."""
    made: list[tuple[Gateway, httpx.AsyncClient]] = []

    def make(retries: int = 0, **options: Any) -> openai.AsyncOpenAI:
        base_url = _gemini_server[1] + "/v1beta"
        provider = {"kind": "gemini", "base_url": base_url, "api_key": KEY, "timeout": 5, "options": options}
        gateway = Gateway.from_dict(
            {
                "providers": {"google": provider},
                "models": {
                    "flash": {"provider": "google", "model": FLASH},
                    "flash-25": {
                        "provider": "google",
                        "model": "gemini-2.5-flash",
                        "params": {"generationConfig": {"topK": 40}},
                    },
                },
                "dispatch": {"retries": retries, "backoff": "10ms", "cooldown": 0},
            }
        )
        http = httpx.AsyncClient(transport=gateway.transport())
        made.append((gateway, http))
        return openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key="sk-client", http_client=sdk_http(http), max_retries=0
        )

    yield make
    for gateway, http in made:
        await http.aclose()
        await gateway.aclose()


async def test_chat(make_client: MakeClient, gemini: GeminiUpstream) -> None:
    client = make_client(include_thoughts=True)
    completion = await client.chat.completions.create(
        model="flash", messages=HELLO, temperature=0.2, max_completion_tokens=200, reasoning_effort="low"
    )
    message = completion.choices[0].message
    assert message.content == f"Hello from {FLASH}! The capital of France is Paris."
    assert (message.model_extra or {})["reasoning_content"] == "**Recalling** The user wants a capital."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == FLASH and completion.id.startswith("chatcmpl-r")
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert gemini.urls == [f"/v1beta/models/{FLASH}:generateContent"]
    assert gemini.headers[0]["x-goog-api-key"] == KEY and "authorization" not in gemini.headers[0]
    assert gemini.requests[0] == {
        "contents": [{"role": "user", "parts": [{"text": "What is the capital of France?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.2,
            "maxOutputTokens": 200,
            "thinkingConfig": {"thinkingLevel": "LOW", "includeThoughts": True},
        },
    }


async def test_model_params_are_merged(make_client: MakeClient, gemini: GeminiUpstream) -> None:
    await make_client().chat.completions.create(model="flash-25", messages=HELLO, reasoning_effort="medium")
    assert gemini.requests[0]["generationConfig"] == {"topK": 40, "thinkingConfig": {"thinkingBudget": 8192}}


@pytest.mark.parametrize("include_usage", [True, False], ids=["include-usage", "no-usage"])
async def test_stream(make_client: MakeClient, gemini: GeminiUpstream, include_usage: bool) -> None:
    stream = await make_client().chat.completions.create(
        model="flash", messages=HELLO, stream=True, stream_options={"include_usage": include_usage}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        f"Hello from {FLASH}! The capital of France is Paris."
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    else:
        assert all(c.usage is None for c in chunks)
    assert gemini.urls == [f"/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"]


async def test_streamed_tool_calls_match_the_plain_ones(make_client: MakeClient, gemini: GeminiUpstream) -> None:
    client = make_client()
    plain = await client.chat.completions.create(model="flash", messages=HELLO, tools=TOOLS)
    async with client.chat.completions.stream(model="flash", messages=HELLO, tools=TOOLS) as stream:
        final = await stream.get_final_completion()
    calls = plain.choices[0].message.tool_calls or []
    expected = [(c.id, c.function.name, c.function.arguments) for c in calls if c.type == "function"]
    got = [(c.id, c.function.name, c.function.arguments) for c in final.choices[0].message.tool_calls or []]
    assert got == expected
    assert [name for _, name, _ in got] == ["get_weather", "get_time"]
    assert got[0][2] == '{"city":"Paris"}'
    assert final.choices[0].finish_reason == plain.choices[0].finish_reason == "tool_calls"
    declared = gemini.requests[0]["tools"][0]["functionDeclarations"][0]
    assert "additionalProperties" not in declared["parameters"]


async def test_tool_call_round_trip_returns_the_thought_signature(
    make_client: MakeClient, gemini: GeminiUpstream
) -> None:
    client = make_client()
    first = await client.chat.completions.create(model="flash", messages=HELLO, tools=TOOLS, tool_choice="required")
    message = first.choices[0].message
    history: list[Any] = [*HELLO, message.model_dump(exclude_none=True)]  # what a client sends back
    history += [{"role": "tool", "tool_call_id": c.id, "content": '{"ok": true}'} for c in message.tool_calls or []]
    second = await client.chat.completions.create(model="flash", messages=history, tools=TOOLS)
    assert second.choices[0].message.content == "It is sunny in Paris, 21 degrees."
    model_turn, responses = gemini.requests[1]["contents"][1:]
    assert model_turn["parts"][0]["thoughtSignature"] == signature(FLASH, "get_weather")
    assert [p["functionResponse"]["name"] for p in responses["parts"]] == ["get_weather", "get_time"]


async def test_a_lost_signature_is_refused_upstream(make_client: MakeClient, gemini: GeminiUpstream) -> None:
    """The server's check is real: a model turn whose signature was replaced is a 400."""
    client = make_client()
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "call_x~c2ln",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    history: list[ChatCompletionMessageParam] = [
        *HELLO,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_x~c2ln", "content": "1"},
    ]
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="flash", messages=history, tools=TOOLS)


class Answer(BaseModel):
    answer: str
    confidence: float


async def test_structured_output(make_client: MakeClient, gemini: GeminiUpstream) -> None:
    completion = await make_client().chat.completions.parse(model="flash", messages=HELLO, response_format=Answer)
    assert completion.choices[0].message.parsed == Answer(answer="Paris", confidence=0.9)
    config = gemini.requests[0]["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["properties"] == {
        "answer": {"title": "Answer", "type": "string"},
        "confidence": {"title": "Confidence", "type": "number"},
    }


@pytest.mark.parametrize(
    ("fault", "error", "status", "code"),
    [
        ("400", openai.BadRequestError, 400, None),
        ("badkey", openai.AuthenticationError, 401, "invalid_api_key"),
        ("403", openai.PermissionDeniedError, 403, "permission_denied"),
        ("404", openai.NotFoundError, 404, "model_not_found"),
        ("429", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("503", openai.InternalServerError, 503, "service_unavailable"),
    ],
    ids=["400", "bad-key", "403", "404", "429", "503"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_errors(
    make_client: MakeClient,
    gemini: GeminiUpstream,
    fault: str,
    error: type[openai.APIStatusError],
    status: int,
    code: str | None,
    stream: bool,
) -> None:
    gemini.plan(FLASH, fault)
    with pytest.raises(error) as caught:
        await make_client().chat.completions.create(model="flash", messages=HELLO, stream=stream)
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert KEY not in str(caught.value.body)


async def test_overloaded_then_ok_is_retried(make_client: MakeClient, gemini: GeminiUpstream) -> None:
    gemini.plan(FLASH, "503", "429")
    completion = await make_client(retries=2).chat.completions.create(model="flash", messages=HELLO)
    assert completion.choices[0].message.content is not None
    assert gemini.calls == {FLASH: 3}


async def test_stream_cut_short_is_an_error(make_client: MakeClient, gemini: GeminiUpstream) -> None:
    gemini.plan(FLASH, "cut")
    stream = await make_client().chat.completions.create(model="flash", messages=HELLO, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text.startswith("Hello from")
    assert "closed the stream" in caught.value.message
