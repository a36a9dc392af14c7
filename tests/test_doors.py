"""Door edge cases that no real server produces on cue: a bug mid-stream, a client leaving mid-body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from starlette.types import Message

from unimw import Gateway
from unimw.asgi import _send_stream, read_body
from unimw.calls import Call, CallStream
from unimw.errors import InvalidRequest
from unimw.operations import CHAT
from unimw.wire import chunk, loads

pytestmark = pytest.mark.anyio


async def test_an_unexpected_error_mid_stream_ends_with_a_server_error_event() -> None:
    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield chunk("c1", "m", 0, {"role": "assistant", "content": ""})
        raise RuntimeError("a bug, not an upstream error")

    finished: list[Call] = []

    async def finish(call: Call) -> None:
        finished.append(call)

    call = Call(CHAT, "req_1", {"model": "m", "messages": []})
    stream = CallStream(call, chunks(), CHAT.watch(call.request, assemble=False), finish)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    await _send_stream(receive, send, stream, "req_1", {})
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert loads(bodies[-1][len(b"data: ") :])["error"]["type"] == "server_error"
    assert sent[-1]["more_body"] is False
    assert finished == [call] and call.status == "error"


async def test_a_client_leaving_mid_body_is_a_400() -> None:
    messages: Iterator[Message] = iter(
        [{"type": "http.request", "body": b'{"model":', "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(messages)

    with pytest.raises(InvalidRequest, match="disconnected"):
        await read_body({"headers": []}, receive, 1000)


async def test_the_transport_raises_what_an_app_raised_before_answering() -> None:
    import httpx

    from unimw.transport import GatewayTransport

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise LookupError("no response at all")

    async with httpx.AsyncClient(transport=GatewayTransport(broken), base_url="http://app") as http:
        with pytest.raises(LookupError):
            await http.get("/")


async def test_a_failure_after_the_status_line_sends_no_second_response(caplog: pytest.LogCaptureFixture) -> None:
    gateway = Gateway.from_dict(
        {"providers": {"m": {"kind": "mock"}}, "models": {"m": {"provider": "m", "model": "m"}}}
    )
    app = gateway.asgi_app()
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    received = iter([{"type": "http.request", "body": body, "more_body": False}])
    sent: list[Message] = []

    async def receive() -> dict[str, Any]:
        try:
            return next(received)
        except StopIteration:
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and len(sent) > 1:
            raise RuntimeError("the server broke while sending")
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "root_path": ""}
    await app(scope, receive, send)
    await gateway.aclose()
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert "error after the response started" in caplog.text
