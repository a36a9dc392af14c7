"""Azure OpenAI through a ``kind: openai`` provider with the ``azure`` option, on a loopback Azure-shaped server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import sdk_http
from tests.servers import serve
from unimw import Gateway

pytestmark = pytest.mark.anyio

KEY = "azure-test-key-0123456789"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
FILTERS = {"hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}


class AzureUpstream:
    """Azure's two data-plane routes; it records what each request looked like."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/openai/deployments/{deployment}/chat/completions", self.chat, methods=["POST"]),
                Route("/openai/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(
            {
                "path": request.url.path,
                "query": dict(request.query_params),
                "api-key": request.headers.get("api-key"),
                "authorization": request.headers.get("authorization"),
                "model": body["model"],
            }
        )
        if request.headers.get("api-key") != KEY:
            message = "Access denied due to invalid subscription key or wrong API endpoint."
            return JSONResponse({"error": {"code": "401", "message": message}}, status_code=401)
        if "deployment" in request.path_params and "api-version" not in request.query_params:
            return JSONResponse({"error": {"code": "404", "message": "Resource not found"}}, status_code=404)
        if body["messages"][-1]["content"] == "filtered":
            error = {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
            }
            return JSONResponse({"error": error}, status_code=400)
        model = request.path_params.get("deployment", body["model"])
        if body.get("stream"):
            return StreamingResponse(_stream(model), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "chatcmpl-AzURE1",
                "object": "chat.completion",
                "created": 1741570283,
                "model": "gpt-4o-2024-11-20",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"Paris, from {model}.", "refusal": None},
                        "finish_reason": "stop",
                        "logprobs": None,
                        "content_filter_results": FILTERS,
                    }
                ],
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTERS}],
                "usage": {"prompt_tokens": 14, "completion_tokens": 4, "total_tokens": 18},
                "system_fingerprint": "fp_ee1d74bde0",
            }
        )


async def _stream(model: str) -> AsyncIterator[bytes]:
    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    head = {"id": "chatcmpl-AzURE2", "object": "chat.completion.chunk", "created": 1741570283, "model": "gpt-4o"}
    # Azure's first chunk carries only the prompt's filter results.
    yield event({**head, "id": "", "model": "", "choices": [], "prompt_filter_results": [{"prompt_index": 0}]})
    for delta in ({"role": "assistant", "content": ""}, {"content": "Paris,"}, {"content": f" from {model}."}):
        yield event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    yield b"data: [DONE]\n\n"


@pytest.fixture(scope="module")
def azure() -> Iterator[tuple[AzureUpstream, str]]:
    upstream = AzureUpstream()
    with serve(upstream.app) as url:
        yield upstream, url


MakeClient = Callable[[dict[str, Any]], openai.AsyncOpenAI]


@pytest.fixture
async def make_client(azure: tuple[AzureUpstream, str]) -> AsyncIterator[MakeClient]:
    """An SDK client on a gateway whose one provider is ``provider`` (``{url}`` in its base_url is the server)."""
    upstream, url = azure
    upstream.seen.clear()
    made: list[tuple[Gateway, httpx.AsyncClient]] = []

    def make(provider: dict[str, Any]) -> openai.AsyncOpenAI:
        provider = {"kind": "openai", "api_key": KEY, **provider, "base_url": provider["base_url"].format(url=url)}
        gateway = Gateway.from_dict(
            {
                "providers": {"azure": provider},
                "models": {"gpt-4o": {"provider": "azure", "model": "gpt4o-prod"}},
                "dispatch": {"retries": 0},
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


@pytest.mark.parametrize(
    ("provider", "path", "query"),
    [
        (
            {"base_url": "{url}/openai", "options": {"azure": {"api_version": "2024-10-21"}}},
            "/openai/deployments/gpt4o-prod/chat/completions",
            {"api-version": "2024-10-21"},
        ),
        (
            {"base_url": "{url}/openai", "options": {"azure": {"api_version": "2024-10-21", "deployment": "dep-2"}}},
            "/openai/deployments/dep-2/chat/completions",
            {"api-version": "2024-10-21"},
        ),
        (
            {"base_url": "{url}/openai/deployments/dep-3", "options": {"azure": {"api_version": "2025-04-01-preview"}}},
            "/openai/deployments/dep-3/chat/completions",
            {"api-version": "2025-04-01-preview"},
        ),
        ({"base_url": "{url}/openai/v1", "options": {"azure": True}}, "/openai/v1/chat/completions", {}),
    ],
    ids=["deployment-per-model", "deployment-option", "deployment-in-base-url", "v1"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_azure_urls_and_auth(
    make_client: MakeClient,
    azure: tuple[AzureUpstream, str],
    provider: dict[str, Any],
    path: str,
    query: dict[str, str],
    stream: bool,
) -> None:
    client = make_client(provider)
    deployment = path.split("/")[3] if "/deployments/" in path else "gpt4o-prod"
    if stream:
        chunks = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    else:
        completion = await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        text = completion.choices[0].message.content or ""
    assert text == f"Paris, from {deployment}."
    assert azure[0].seen == [
        {"path": path, "query": query, "api-key": KEY, "authorization": None, "model": "gpt4o-prod"}
    ]


async def test_azure_errors_keep_their_code(make_client: MakeClient) -> None:
    client = make_client({"base_url": "{url}/openai", "options": {"azure": {"api_version": "2024-10-21"}}})
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "filtered"}])
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (400, "content_filter", "prompt")


async def test_without_the_azure_option_the_key_is_a_bearer_token(
    make_client: MakeClient, azure: tuple[AzureUpstream, str]
) -> None:
    client = make_client({"base_url": "{url}/openai/v1"})
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert (azure[0].seen[0]["api-key"], azure[0].seen[0]["authorization"]) == (None, "Bearer " + KEY)


@pytest.mark.parametrize("option", ["yes", {"api_versoin": "2024-10-21"}], ids=["not-a-mapping", "misspelled"])
def test_a_bad_azure_option_is_refused(option: Any) -> None:
    provider = {"kind": "openai", "base_url": "https://r.openai.azure.com/openai", "options": {"azure": option}}
    with pytest.raises(ValueError, match="azure option"):
        Gateway.from_dict({"providers": {"azure": provider}, "models": {"m": {"provider": "azure", "model": "m"}}})
