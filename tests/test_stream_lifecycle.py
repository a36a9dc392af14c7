"""How a stream is read and let go on the hot path: the first event alone, and closing before any read.

The stream layers hand their items on from generators (no coroutine per
chunk), so what a layer did in its ``__anext__`` now rests on the generator
being started and closed at the right time; these tests pin those points on
real loopback servers. A door marks its status line sent itself (no wrapper
around ``send``), for plain answers as for streams.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from starlette.types import Message

from bench.upstream import MODEL, Answers, UpstreamProtocol, stream_events
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.adapters import adapter_class
from unimw.calls import Call, CallStream
from unimw.dispatch import Dispatcher
from unimw.http import UpstreamClient
from unimw.loader import build_policy
from unimw.operations import CHAT
from unimw.own_keys import OwnKeys
from unimw.routing import Router
from unimw.wire import JSON, chunk

pytestmark = pytest.mark.anyio

KEY_ONE = "sk-tenant-one-0123456789abcdef"
KEY_TWO = "sk-tenant-two-0123456789abcdef"


async def test_a_stream_that_arrived_whole_gives_its_first_http_chunk_alone() -> None:
    # The bench upstream writes a whole 50-event stream with one write: it is all in at the first read.
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(Answers()), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = UpstreamClient(timeout=5, connect_timeout=5)
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True})
    try:
        reply = await client.open_stream(f"http://127.0.0.1:{port}/v1/chat/completions", body, {})
        pieces = [piece async for piece in reply.chunks()]
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    events = stream_events(include_usage=False)
    assert pieces[0] == events[0]  # parsed and sent on before the other 50 pieces are drained
    assert b"".join(pieces) == b"".join(events)


async def test_a_stream_closed_before_its_first_chunk_is_read_releases_its_lease(
    upstream: OpenAIUpstream, upstream_url: str
) -> None:
    policy = build_policy(
        {
            "providers": {"openai": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-policy-0123456789"}},
            "models": {"gpt": {"provider": "openai", "model": "up-lease"}},
        }
    )
    router = Router(policy)
    adapters = {name: adapter_class(p.kind)(p) for name, p in policy.providers.items()}
    own_keys = OwnKeys(policy.providers, max_adapters=1)
    dispatcher = Dispatcher(router, adapters, policy.dispatch, own_keys=own_keys)
    request: JSON = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    try:
        _, chunks = await dispatcher.stream(
            router.resolve("gpt"),
            "chat",
            request,
            lambda adapter, target: adapter.stream(request, target),
            credentials={"openai": KEY_ONE},
        )
        await chunks.aclose()  # type: ignore[attr-defined]  # not one chunk read
        other = await own_keys.acquire("openai", KEY_TWO)  # pushes KEY_ONE's adapter out of the LRU
        # Closed at once only if the stream released its lease: else it would stay open, leased.
        assert own_keys.open == 1
        await other.release()
    finally:
        for adapter in adapters.values():
            await adapter.aclose()
        await own_keys.aclose()
    assert [headers["authorization"] for headers in upstream.headers] == [f"Bearer {KEY_ONE}"]


class _Source:
    """Chunks for ever, counting how often it was closed."""

    def __init__(self) -> None:
        self.closed = 0

    def __aiter__(self) -> _Source:
        return self

    async def __anext__(self) -> JSON:
        return chunk("c1", "m", 0, {"content": "word"})

    async def aclose(self) -> None:
        self.closed += 1


async def test_a_call_stream_closed_before_it_is_read_is_finished_once_and_yields_nothing() -> None:
    finished: list[Call] = []

    async def finish(call: Call) -> None:
        finished.append(call)

    call = Call(CHAT, "req_1", {"model": "m", "messages": []})
    source = _Source()
    stream = CallStream(call, source, CHAT.watch(call.request, assemble=False), finish)
    await stream.aclose()
    await stream.aclose()  # closing twice finishes once
    assert [item async for item in stream] == []
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert finished == [call]
    assert (call.status, type(call.error), source.closed) == ("cancelled", asyncio.CancelledError, 1)


async def test_a_failure_after_a_json_answers_status_line_sends_no_second_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = Gateway.from_dict(
        {"providers": {"m": {"kind": "mock"}}, "models": {"m": {"provider": "m", "model": "m"}}}
    )
    app = gateway.asgi_app()
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    received = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        return next(received)

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise RuntimeError("the server broke while sending")
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "root_path": ""}
    with caplog.at_level(logging.ERROR, logger="unimw"):
        await app(scope, receive, send)
    await gateway.aclose()
    assert [(m["type"], m["status"]) for m in sent] == [("http.response.start", 200)]
    assert "error after the response started in POST /v1/chat/completions" in caplog.text
