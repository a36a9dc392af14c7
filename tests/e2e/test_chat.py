"""The official openai SDK against the gateway, in process and over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel
from starlette.applications import Starlette

from tests.conftest import policy_for
from tests.servers import serve
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UnimwMiddleware

pytestmark = pytest.mark.anyio

TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    },
]
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


async def test_chat_completion(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    completion = await client.chat.completions.create(model="gpt-main", messages=HELLO, temperature=0)
    assert completion.choices[0].message.content == "Hello from up-main! The capital of France is Paris."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert upstream.calls == {"up-main": 1}
    assert upstream.requests[0]["temperature"] == 0


async def test_unknown_fields_reach_the_upstream_untouched(
    client: openai.AsyncOpenAI, upstream: OpenAIUpstream
) -> None:
    await client.chat.completions.create(
        model="gpt-main", messages=HELLO, extra_body={"vendor_knob": {"a": [1, 2]}, "top_k": 5}
    )
    assert upstream.requests[0]["vendor_knob"] == {"a": [1, 2]}
    assert upstream.requests[0]["top_k"] == 5
    assert upstream.requests[0]["model"] == "up-main"


async def test_stream_with_usage(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    stream = await client.chat.completions.create(
        model="gpt-main", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from up-main! The capital of France is Paris."
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_stream_ends_with_done(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    async with httpx.AsyncClient(transport=gateway.transport(), base_url="http://unimw") as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": "gpt-main", "messages": HELLO, "stream": True}
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"].startswith("req_")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


async def test_tool_calls_pass_through(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    completion = await client.chat.completions.create(model="gpt-main", messages=HELLO, tools=TOOLS)
    calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls is not None and [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert upstream.requests[0]["tools"] == TOOLS


async def test_streamed_tool_calls_accumulate(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    async with client.chat.completions.stream(model="gpt-main", messages=HELLO, tools=TOOLS) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_0get_weather", "get_weather", '{"city": "Paris", "n": 0}'),
        ("call_1get_time", "get_time", '{"city": "Paris", "n": 1}'),
    ]


class Answer(BaseModel):
    answer: str
    confidence: float


async def test_structured_output_passes_through(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    completion = await client.chat.completions.parse(model="gpt-main", messages=HELLO, response_format=Answer)
    assert completion.choices[0].message.parsed == Answer(answer="Paris", confidence=0.9)
    sent = upstream.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Answer"


async def test_models_list_and_get(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-main", "gpt-backup", "mock-echo", "smart"]
    assert {m.id: m.owned_by for m in models.data}["smart"] == "unimw"
    model = await client.models.retrieve("gpt-backup")
    assert model.id == "gpt-backup" and model.owned_by == "backup"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("nope")
    assert caught.value.code == "model_not_found"


@pytest.fixture
def served_gateway(upstream_url: str, tmp_path: Path) -> Iterator[str]:
    """The middleware over a bare Starlette app, served by uvicorn; it closes its gateway at shutdown."""
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy_for(upstream_url)))
    with serve(UnimwMiddleware(Starlette(), config=config)) as url:
        yield url


def test_sync_sdk_over_a_real_socket(served_gateway: str, upstream: OpenAIUpstream) -> None:
    client = openai.OpenAI(base_url=served_gateway + "/v1", api_key="sk-client", max_retries=0)
    completion = client.chat.completions.create(model="smart", messages=HELLO)
    assert completion.choices[0].message.content == "Hello from up-main! The capital of France is Paris."
    with client.chat.completions.create(model="smart", messages=HELLO, stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == completion.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=HELLO)
    client.close()


async def test_async_sdk_over_a_real_socket(served_gateway: str, upstream: OpenAIUpstream) -> None:
    async with openai.AsyncOpenAI(base_url=served_gateway + "/v1", api_key="sk-client", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-main",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            tools=TOOLS,
        )
        chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    names = [
        tc.function.name
        for c in chunks
        if c.choices
        for tc in c.choices[0].delta.tool_calls or []
        if tc.function and tc.function.name
    ]
    assert names == ["get_weather", "get_time"]
