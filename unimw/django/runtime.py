"""One gateway per process, on one event loop of its own.

Why a loop thread: under WSGI, Django runs an async view through
``async_to_sync``, which makes a new event loop (in a new thread) for every
request and closes it after. The gateway's state is bound to the loop it
runs on: the pooled aiohttp sessions of the providers, the usage recorder's
queue and task, the alert hooks' tasks, a Redis store's connections. On
per-request loops every call would open new upstream connections (a TCP and
TLS handshake per call, and the old sessions left unclosed) and a record
queued on a loop that is about to close could be lost. So every gateway call
is sent, with ``asyncio.run_coroutine_threadsafe``, to one loop that runs for
the life of the process in a daemon thread; the view awaits the result
(``asyncio.wrap_future``), and a WSGI stream's sync iterator blocks on it
chunk by chunk.

Measured on the development machine: a hop to that loop costs about 0.2 ms
(per call, and per streamed chunk), against about 1 ms for the fresh loop
``async_to_sync`` already makes per WSGI request, and far less than a new
upstream connection. Under ASGI the same hop is paid although the server's
loop would do: one path for every server (WSGI, ASGI, both in one process,
runserver) was chosen over saving it.

The runtime is closed at interpreter exit (``atexit``), or by an ASGI
server's lifespan shutdown when the app is wrapped in :func:`lifespan`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from unimw.django import conf
from unimw.django.sink import DatabaseSink, with_sink
from unimw.gateway import Gateway
from unimw.loader import load_policy

T = TypeVar("T")
ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]],
    Awaitable[None],
]

_lock = threading.Lock()
_current: Runtime | None = None


class Runtime:
    """The process's gateway, its event-loop thread and its usage sink."""

    def __init__(self, settings: conf.Settings) -> None:
        self.settings = settings
        self.sink = DatabaseSink(settings.usage_database) if settings.usage_model else None
        policy = load_policy(settings.policies)
        if self.sink is not None:
            policy = with_sink(policy, self.sink)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="unimw-loop", daemon=True)
        self._thread.start()
        self._closed = False

        async def build() -> Gateway:  # built on its loop, so anything it binds is bound there
            return Gateway(policy)

        self.gateway = self.call(build())

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the gateway's loop; safe from any thread, and without awaiting."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the gateway's loop; cancelling this cancels it there."""
        return await asyncio.wrap_future(self.submit(coro))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the gateway's loop and block this (non-loop) thread for its result."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Runtime.call from the gateway's own loop would wait for ever")
        return self.submit(coro).result(timeout)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every usage record so far is delivered, the database rows included."""
        self.call(self.gateway.flush(), timeout)
        if self.sink is not None:
            self.sink.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.call(self.gateway.aclose(), timeout)
        finally:
            if self.sink is not None:
                self.sink.close(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()


def runtime() -> Runtime:
    """The process's runtime, built on first use from ``settings.UNIMW``."""
    global _current
    current = _current
    if current is not None:
        return current
    with _lock:
        if _current is None:
            _current = Runtime(conf.read())
            atexit.register(_current.close, 5.0)
        return _current


def get_gateway() -> Gateway:
    """The process's gateway. Call its coroutines through ``runtime().call`` / ``runtime().run``."""
    return runtime().gateway


def flush(timeout: float = 10.0) -> None:
    """Deliver every usage record so far (JSONL, the policy's callable, database rows)."""
    if _current is not None:
        _current.flush(timeout)


def close(timeout: float = 10.0) -> None:
    """Close the gateway and its loop; the next request builds a new one (from the settings then)."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None:
        atexit.unregister(current.close)
        current.close(timeout)


def lifespan(app: ASGIApp) -> ASGIApp:
    """``app`` (Django's ASGI application), answering the lifespan protocol: the gateway closes at shutdown.

    Django's ASGI handler refuses lifespan events; wrap it in ``asgi.py``:
    ``application = lifespan(get_asgi_application())``.
    """

    async def wrapped(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(close)  # joins threads: not on the server's loop
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped
