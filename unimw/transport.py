"""An httpx transport that calls the gateway in process, with no socket.

``openai.AsyncOpenAI(base_url="http://unimw/v1", api_key="x",
http_client=httpx.AsyncClient(transport=gw.transport()))`` then talks to the
gateway directly. Unlike ``httpx.ASGITransport``, the response body streams:
the transport returns as soon as the status line is sent, and each body
chunk is handed over as the app produces it, through a queue of one so a
slow reader holds the producer back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.types import ASGIApp, Message

_END = object()


class GatewayTransport(httpx.AsyncBaseTransport):
    """Send each request to an ASGI app (the gateway's) in this event loop."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "client": ("127.0.0.1", 0),
            "server": (request.url.host, request.url.port or 80),
        }
        started: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        chunks: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set_result(message)
            elif message["type"] == "http.response.body" and not disconnected.is_set() and message.get("body"):
                await chunks.put(message["body"])

        async def run() -> None:
            try:
                await self._app(scope, receive, send)
            finally:
                await chunks.put(_END)

        task = asyncio.create_task(run())
        waiter = asyncio.ensure_future(started)
        await asyncio.wait((waiter, task), return_when=asyncio.FIRST_COMPLETED)
        if not started.done():
            task.result()  # the app failed before answering: raise its error here
            raise RuntimeError("the ASGI app returned without sending a response")
        start = started.result()
        stream = _BodyStream(chunks, task, disconnected)
        return httpx.Response(start["status"], headers=start.get("headers", []), stream=stream, request=request)


class _BodyStream(httpx.AsyncByteStream):
    def __init__(self, chunks: asyncio.Queue[object], task: asyncio.Task[None], disconnected: asyncio.Event) -> None:
        self._chunks = chunks
        self._task = task
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not _END:
            assert isinstance(chunk, bytes)
            yield chunk
        await self._task  # surface an error the app raised after answering

    async def aclose(self) -> None:
        # The reader is gone: like a client dropping its connection, which
        # stops the app (and its upstream call) where it is.
        self._disconnected.set()
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
