"""Every error reaches the official SDK as the right exception, with status, type and code."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import sdk_http
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def test_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-nope", messages=HELLO)
    assert (caught.value.status_code, caught.value.type, caught.value.code, caught.value.param) == (
        404,
        "invalid_request_error",
        "model_not_found",
        "model",
    )
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": "gpt-main"}, "messages"),
        ({"model": "gpt-main", "messages": []}, "messages"),
        ({"model": "gpt-main", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-main", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": "gpt-main", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"model": "gpt-main", "messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"model": "gpt-main", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": "gpt-main", "messages": HELLO, "max_tokens": True}, "max_tokens"),
        ({"model": "gpt-main", "messages": HELLO, "stream": "yes"}, "stream"),
        ({"model": "gpt-main", "messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": "gpt-main", "messages": HELLO, "tools": [{"function": {}}]}, "tools[0].type"),
        ({"model": "gpt-main", "messages": HELLO, "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "gpt-main", "messages": HELLO, "stop": [1]}, "stop"),
        ({"model": "gpt-main", "messages": HELLO, "response_format": {"schema": {}}}, "response_format.type"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_invalid_requests_are_400_naming_the_param(
    client: openai.AsyncOpenAI, upstream: OpenAIUpstream, body: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/chat/completions", body=body, cast_to=object)
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == param
    assert not upstream.calls


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, None),
    ],
    ids=["malformed", "not-an-object", "empty"],
)
async def test_malformed_bodies(gateway: Gateway, content: bytes, status: int, code: str | None) -> None:
    async with httpx.AsyncClient(transport=gateway.transport(), base_url="http://unimw") as http:
        response = await http.post("/v1/chat/completions", content=content)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


async def test_oversized_body_is_413(make_gateway: object) -> None:
    gateway = make_gateway(server={"max_body_bytes": 1000})  # type: ignore[operator]
    async with httpx.AsyncClient(transport=gateway.transport(), base_url="http://unimw") as http:
        big = {"model": "gpt-main", "messages": [{"role": "user", "content": "x" * 2000}]}
        response = await http.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


async def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    async with httpx.AsyncClient(transport=gateway.transport(), base_url="http://unimw") as http:
        missing = await http.post("/v1/nothing-here", json={})
        wrong = await http.get("/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Invalid URL (POST /v1/nothing-here)"
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("fault", "exception", "status", "code"),
    [
        ("400", openai.BadRequestError, 400, "invalid_value"),
        ("429", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("500", openai.InternalServerError, 500, None),
        ("badjson", openai.APIStatusError, 502, "bad_upstream_response"),
        ("hang", openai.APIStatusError, 504, "upstream_timeout"),
        ("drop", openai.APIStatusError, 502, "upstream_unreachable"),
    ],
)
async def test_upstream_errors_reach_the_client(
    client: openai.AsyncOpenAI,
    upstream: OpenAIUpstream,
    fault: str,
    exception: type[openai.APIStatusError],
    status: int,
    code: str | None,
) -> None:
    upstream.plan("up-main", fault, fault)  # the first attempt and its one retry
    with pytest.raises(exception) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO)
    assert caught.value.status_code == status
    assert caught.value.code == code


async def test_upstream_is_unreachable(make_gateway: object) -> None:
    gateway = make_gateway(  # type: ignore[operator]
        providers={"primary": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "timeout": 2}}
    )
    async with httpx.AsyncClient(transport=gateway.transport()) as http:
        client = openai.AsyncOpenAI(base_url="http://unimw/v1", api_key="x", http_client=sdk_http(http), max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="gpt-main", messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"


async def test_the_upstream_key_is_never_echoed(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    upstream.plan("up-main", "401")
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO)
    assert upstream.headers[0]["authorization"] == "Bearer sk-primary-secret"
    assert "sk-primary-secret" not in str(caught.value.body) and "sk-primary-secret" not in caught.value.message
    assert "***" in caught.value.message


async def test_an_error_mid_stream_is_an_sse_error_event(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    upstream.plan("up-main", "drop")
    stream = await client.chat.completions.create(model="smart", messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from up-main!"  # what came before the break, and no fallback after it
    assert "closed the connection" in caught.value.message
    assert upstream.calls == {"up-main": 1}
