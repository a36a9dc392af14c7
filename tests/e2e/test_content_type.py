"""A body declared as anything but JSON gets 415, in OpenAI's envelope, at every ASGI door; JSON in any
spelling, or no Content-Type at all, is served.

The official SDK sends ``application/json``; the header is overridden per
request, as a client that got it wrong would send it. ``unimw serve`` is
covered on a raw socket in ``test_hostile_http.py``, the WSGI and Django
doors in their own suites.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.conftest import sdk, sdk_http
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UnimwMiddleware, UnsupportedMediaType
from unimw.asgi import check_media_type

pytestmark = pytest.mark.anyio

CHAT = b'{"model": "gpt-main", "messages": [{"role": "user", "content": "hi"}]}'
BODIES = {
    "/chat/completions": CHAT,
    "/responses": b'{"model": "gpt-main", "input": "hi"}',
    "/embeddings": b'{"model": "gpt-main", "input": "hi"}',
}
REFUSED = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"]
ACCEPTED = [
    None,
    "",
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON;CHARSET=UTF-8",
    "application/vnd.api+json",
    "application/merge-patch+json; charset=utf-8",
]


@pytest.mark.parametrize("content_type", ACCEPTED)
def test_json_in_any_spelling_or_none_is_accepted(content_type: str | None) -> None:
    check_media_type(content_type)


@pytest.mark.parametrize("content_type", [*REFUSED, "application/jsonx", "application/json-seq", "json"])
def test_anything_else_is_refused(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        check_media_type(content_type)
    assert (caught.value.status, caught.value.code, caught.value.param) == (415, "unsupported_media_type", None)


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("content_type", REFUSED)
async def test_the_transport_answers_415_and_calls_no_upstream(
    gateway: Gateway, upstream: OpenAIUpstream, path: str, content_type: str
) -> None:
    async with httpx.AsyncClient(transport=gateway.transport(), base_url="http://unimw/v1") as http:
        answer = await http.post(path, content=BODIES[path], headers={"content-type": content_type})
    assert (answer.status_code, answer.headers["content-type"]) == (415, "application/json")
    assert answer.json() == {
        "error": {
            "message": f"Unsupported Content-Type '{content_type.split(';')[0]}': the request body must be JSON, "
            "sent as application/json.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unsupported_media_type",
        }
    }
    assert upstream.calls == {}


async def test_the_sdk_gets_a_status_error_of_415(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    """The SDK has no class of its own for 415: it raises its base status error, with the envelope."""
    async with sdk(gateway) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.post(
                "/chat/completions", cast_to=object, content=CHAT, options={"headers": {"Content-Type": "text/plain"}}
            )
    assert (caught.value.status_code, caught.value.code, caught.value.type) == (
        415,
        "unsupported_media_type",
        "invalid_request_error",
    )
    assert upstream.calls == {}


async def test_the_middleware_refuses_the_gateways_routes_only(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    async def notes(request: object) -> PlainTextResponse:
        return PlainTextResponse("host notes")

    app = UnimwMiddleware(Starlette(routes=[Route("/notes", notes, methods=["POST"])]), gateway=gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://host") as http:
        plain = {"content-type": "text/plain"}
        refused = await http.post("/v1/chat/completions", content=CHAT, headers=plain)
        host = await http.post("/notes", content=b"buy milk", headers=plain)
        served = await http.post(
            "/v1/chat/completions", content=CHAT, headers={"content-type": "application/json; charset=utf-8"}
        )
        bare = await http.post("/v1/chat/completions", content=CHAT)
    assert (refused.status_code, refused.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert (host.status_code, host.text) == (200, "host notes")
    assert (served.status_code, bare.status_code) == (200, 200)
    assert "content-type" not in bare.request.headers
    assert upstream.calls == {"up-main": 2}


async def test_the_sdk_with_its_own_headers_is_served(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    async with httpx.AsyncClient(transport=gateway.transport()) as http:
        client = openai.AsyncOpenAI(base_url="http://unimw/v1", api_key="sk", http_client=sdk_http(http), max_retries=0)
        answer = await client.chat.completions.create(model="gpt-main", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert upstream.calls == {"up-main": 1}
