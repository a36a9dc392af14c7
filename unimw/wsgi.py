"""The WSGI door: the gateway's routes in front of a WSGI app (Flask, Django under WSGI, Bottle, ...).

``app.wsgi_app = UnimwWSGIMiddleware(app.wsgi_app, config="policies.yaml")``
in Flask, or ``UnimwWSGIMiddleware(app, gateway=gw)`` around any WSGI app.

The gateway is async, so this door runs the ASGI door (:class:`~unimw.asgi.GatewayApp`)
under WSGI with a2wsgi rather than a bridge of its own: a2wsgi hands the
server each body chunk as the app sends it (a stream streams, one chunk in
flight, so a slow client holds the upstream back), reads the request body
from ``wsgi.input`` as the app asks for it, and puts the WSGI environ in the
scope as ``wsgi_environ``, where a tenancy ``callable`` can read the host
app's session. What this module adds:

* one event loop per process, in a daemon thread started by the first
  request (not at import: a server that forks its workers after importing
  the app, ``gunicorn --preload``, would leave the child a loop with no
  thread), shared by every door in the process and stopped at exit, after
  the gateways the doors built from ``config=`` are closed;
* the client leaving: a WSGI server learns it only when a write fails, and
  then closes the response iterator. a2wsgi stops there without telling the
  app, which would wait on its stream for good; here ``close()`` reaches the
  app as ``http.disconnect``, so the upstream call stops and the call is
  settled at once.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from a2wsgi import ASGIMiddleware
from starlette.types import Receive, Scope, Send

from unimw.asgi import GatewayApp
from unimw.gateway import Gateway

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class UnimwWSGIMiddleware:
    """Serve the gateway's routes under ``prefix``; pass everything else to ``app`` untouched.

    A tenancy ``callable`` gets the ASGI scope, with the request's WSGI
    environ under ``scope["wsgi_environ"]``. It runs on the door's event
    loop, shared by every request of the process: keep it quick (a signed
    session cookie, not a database query), or make it async.
    """

    def __init__(
        self,
        app: WSGIApplication,
        config: str | os.PathLike[str] | None = None,
        gateway: Gateway | None = None,
        prefix: str = "/v1",
    ) -> None:
        if (config is None) == (gateway is None):
            raise TypeError("UnimwWSGIMiddleware needs exactly one of config= or gateway=")
        self.app = app
        self.gateway = gateway if gateway is not None else Gateway.from_yaml(config)  # type: ignore[arg-type]
        if gateway is None:
            _owned.append(self.gateway)  # closed at exit, on the loop it ran on
        self._api = GatewayApp(self.gateway, prefix)
        self._prefix = self._api.prefix + "/"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not environ.get("PATH_INFO", "").startswith(self._prefix):
            return self.app(environ, start_response)
        loop, hangup = event_loop(), asyncio.Event()
        bridge = ASGIMiddleware(partial(self._serve, environ, hangup), loop=loop)
        return _Body(bridge(environ, start_response), loop, hangup)  # type: ignore[arg-type]

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run ``coro`` on the door's event loop and wait for its result: ``door.run(door.gateway.flush())``."""
        return asyncio.run_coroutine_threadsafe(coro, event_loop()).result(timeout)

    async def _serve(
        self, environ: WSGIEnvironment, hangup: asyncio.Event, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The gateway's app for one request, stopped where it is if the server hangs up first.

        Stopping is a cancellation, an ending the pipeline settles like a
        client going away: a stream is closed, a call not yet answered is
        finished as cancelled. It also frees a send that a2wsgi would leave
        waiting for good once the server stopped reading.
        """
        scope.setdefault("wsgi_environ", environ)  # a2wsgi sets it; the door promises it to tenancy callables
        app = asyncio.ensure_future(self._api(scope, receive, send))
        gone = asyncio.ensure_future(hangup.wait())
        try:
            await asyncio.wait((app, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            app.cancel()  # nothing to stop if it is done
        await app


class _Body:
    """a2wsgi's body iterator, whose ``close()`` (the server is done with the response) also hangs up."""

    def __init__(self, chunks: Iterable[bytes], loop: asyncio.AbstractEventLoop, hangup: asyncio.Event) -> None:
        self._chunks = chunks
        self._loop = loop
        self._hangup = hangup

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        try:
            getattr(self._chunks, "close", lambda: None)()
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: the process is exiting
                self._loop.call_soon_threadsafe(self._hangup.set)


# ── the process's event loop ────────────────────────────────────────────────

_lock = threading.Lock()
_loop: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None
_owned: list[Gateway] = []


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop every WSGI door of this process runs on, in its own thread, started on first use."""
    global _loop
    if _loop is None:
        with _lock:
            if _loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="unimw-loop", daemon=True)
                thread.start()
                _loop = (loop, thread)
    return _loop[0]


def _forget_loop() -> None:
    global _loop
    _loop = None  # a forked child has the parent's loop object but not its thread


async def _close_owned() -> None:
    while _owned:
        await _owned.pop().aclose()


@atexit.register
def _shutdown() -> None:
    """Close the gateways built from ``config=`` (queued usage records, upstream connections), then the loop."""
    if _loop is None:
        return
    loop, thread = _loop
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(_close_owned(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    if not thread.is_alive():
        loop.close()


os.register_at_fork(after_in_child=_forget_loop)
