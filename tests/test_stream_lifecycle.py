"""How a stream is read and let go on the hot path: the first event alone, and closing before any read.

The stream layers hand their items on from generators (no coroutine per
chunk), so what a layer did in its ``__anext__`` now rests on the generator
being started and closed at the right time; these tests pin those points on
real loopback servers. A door marks its status line sent itself (no wrapper
around ``send``), for plain answers as for streams.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from starlette.types import Message

from unimw import Gateway

pytestmark = pytest.mark.anyio


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
