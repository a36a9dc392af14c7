"""The floor under ``unimw serve``'s throughput: a bare ASGI app that forwards each request's body to the
fake upstream with one shared aiohttp session, and answers with the bytes it got back.

    UNIMW_BENCH_UPSTREAM=http://127.0.0.1:PORT python -m uvicorn bench.passthrough:app --http httptools

No routing, no JSON, no gateway: what it costs is uvicorn (httptools,
uvloop) serving and aiohttp calling, the stack ``unimw serve`` runs on, so
``unimw serve``'s requests/s over this app's, loaded alike, is what unimw
itself leaves of what that stack allows. The caller's ``Authorization``
header goes along (unimw sends its provider's key in one). The session is
made as unimw's is (no connection limit, DNS cached), at startup, and
closed at shutdown. ``GET /health`` answers without calling the upstream,
for the bench to wait on.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ["UNIMW_BENCH_UPSTREAM"]
HEALTH = b'{"status":"ok"}'

_session: aiohttp.ClientSession | None = None

Message = dict[str, Any]


async def app(scope: Message, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http":
        if scope["path"] == "/health":
            await _answer(send, 200, b"application/json", HEALTH)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert _session is not None, "the lifespan made the session"
        headers = {"content-type": "application/json"}
        for name, value in scope["headers"]:
            if name == b"authorization":
                headers["authorization"] = value.decode("latin-1")
        async with _session.post(UPSTREAM + scope["path"], data=body, headers=headers) as response:
            payload = await response.read()
            kind = response.headers.get("content-type", "application/json").encode()
        await _answer(send, response.status, kind, payload)


async def _answer(send: Any, status: int, kind: bytes, body: bytes) -> None:
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    global _session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
