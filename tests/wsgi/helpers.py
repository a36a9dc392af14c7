"""What the WSGI tests share: a threaded wsgiref server on loopback, a tiny host app, counting stores, a gated upstream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tests.servers import serve_wsgi
from tests.upstreams.openai_app import answer, stream
from unimw import Gateway
from unimw.wsgi import UnimwWSGIMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

HELLO: Any = [{"role": "user", "content": "What is the capital of France?"}]


def host_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The host app's own routes: its path and method, and its body echoed back."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(size) if size else b""
    reply = f"host {environ['REQUEST_METHOD']} {environ['PATH_INFO']} ".encode() + body
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", str(len(reply)))])
    return [reply]


class GatedUpstream:
    """An OpenAI-wire upstream that streams its first chunk, then holds the rest until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.sent = 0
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> StreamingResponse:
        body = await request.json()
        message, finish = answer(body)

        async def chunks() -> Any:
            async for event in stream(body, message, finish, drop=False, delay=0.0):
                if self.sent == 1:
                    await self._opened()
                self.sent += 1
                yield event

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def _opened(self) -> None:
        for _ in range(500):  # bounded: 5 s at most
            if self.gate.is_set():
                return
            await asyncio.sleep(0.01)


def wait_until(done: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll ``done()`` until it is true or ``seconds`` have passed; whether it became true."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextmanager
def running(policy: dict[str, Any], **options: Any) -> Iterator[tuple[str, UnimwWSGIMiddleware]]:
    """``host_app`` behind the WSGI door on a gateway for ``policy``, served on loopback; all closed after."""
    door = UnimwWSGIMiddleware(host_app, gateway=Gateway.from_dict(policy, **options))
    try:
        with serve_wsgi(door) as url:
            yield url, door
    finally:
        door.run(door.gateway.aclose())


def sdk(url: str, api_key: str = "sk-client") -> openai.OpenAI:
    """The official sync SDK over the socket."""
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=10)
