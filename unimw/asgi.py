"""ASGI doors: the gateway's own app, and middleware that puts it in front of a host app.

Neither holds policy logic: they read the body, call one Gateway method,
and write its answer (JSON, or SSE for streams) or its error (the OpenAI
envelope). Per-request state lives in locals only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from unimw.calls import CallStream
from unimw.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnimwError,
    UnsupportedMediaType,
)
from unimw.gateway import Gateway, Inbound
from unimw.wire import JSON, dumps, loads, request_id, sse_event

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from unimw.operations import Operation

logger = logging.getLogger("unimw")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_SERVER_ERROR: JSON = {
    "error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


class GatewayApp:
    """The OpenAI routes of one gateway under ``prefix`` (``/v1/chat/completions``, ...)."""

    def __init__(self, gateway: Gateway, prefix: str = "/v1") -> None:
        self.gateway = gateway
        self.prefix = prefix.rstrip("/")
        self._max_body = gateway.policy.server.max_body_bytes
        self._operations = {self.prefix + path: op for path, op in gateway.operations.items()}
        self._models = self.prefix + "/models"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        rid = request_id()
        head = _Head()
        try:
            await self._route(scope, receive, send, rid, head)
        except Exception as error:
            if head.started:  # the status line is out: all that is left is to drop the connection
                logger.exception("unimw: error after the response started in %s %s", scope["method"], scope["path"])
            elif isinstance(error, UnimwError):
                await _send_json(send, error.status, error.to_dict(), rid, error.headers)
            else:
                logger.exception("unimw: unexpected error in %s %s", scope["method"], scope["path"])
                await _send_json(send, 500, _SERVER_ERROR, rid)

    async def _route(self, scope: Scope, receive: Receive, send: Send, rid: str, head: _Head) -> None:
        method, path = scope["method"], route_path(scope)
        gateway = self.gateway
        if (operation := self._operations.get(path)) is not None:
            _allow(method, "POST", path)
            check_media_type(_header(scope, b"content-type"))
            body = loads_request(await read_body(scope, receive, self._max_body))
            answer = await gateway.handle(operation, body, Inbound(_headers(scope), scope, rid))
            if isinstance(answer.body, CallStream):
                await _send_stream(receive, send, answer.body, rid, answer.response_headers(), head)
            else:
                await _send_json(send, 200, answer.body, rid, answer.response_headers(), head)
        elif (found := self._resource(path)) is not None:
            operation, rest = found
            inbound = Inbound(_headers(scope), scope, rid)
            await _send_json(send, 200, await gateway.handle_resource(operation, method, rest, inbound), rid, head=head)
        elif path == self._models or path.startswith(self._models + "/"):
            _allow(method, "GET", path)
            name = path[len(self._models) + 1 :] if path != self._models else None
            models = await gateway.handle_models(Inbound(_headers(scope), scope, rid), name)
            await _send_json(send, 200, models, rid, head=head)
        else:
            raise NotFound(f"Invalid URL ({method} {path})")

    def _resource(self, path: str) -> tuple[Operation, str] | None:
        """The operation whose path ``path`` is below (``/v1/responses/{id}``), and the rest of it."""
        for operation_path, operation in self._operations.items():
            if path.startswith(operation_path + "/"):
                return operation, path[len(operation_path) + 1 :]
        return None


class UnimwMiddleware:
    """Serve the gateway's routes under ``prefix``; pass everything else to ``app`` untouched.

    ``app.add_middleware(UnimwMiddleware, config="policies.yaml")`` in
    FastAPI/Starlette, or ``UnimwMiddleware(app, gateway=gw)`` around any
    ASGI app. A gateway the middleware built from ``config`` is closed when
    the host app's lifespan shuts down.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: str | os.PathLike[str] | None = None,
        gateway: Gateway | None = None,
        prefix: str = "/v1",
    ) -> None:
        if (config is None) == (gateway is None):
            raise TypeError("UnimwMiddleware needs exactly one of config= or gateway=")
        self.app = app
        self.gateway = gateway if gateway is not None else Gateway.from_yaml(config)  # type: ignore[arg-type]
        self._owns_gateway = gateway is None
        self._api = GatewayApp(self.gateway, prefix)
        self._prefix = self._api.prefix + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope).startswith(self._prefix):
            await self._api(scope, receive, send)
        elif scope["type"] == "lifespan" and self._owns_gateway:
            await self.app(scope, receive, self._closing_on_shutdown(send))
        else:
            await self.app(scope, receive, send)

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.gateway.aclose()
            await send(message)

        return wrapped


def route_path(scope: Scope) -> str:
    """The path below the app's mount point (``root_path``), as routers see it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("The client disconnected before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def check_media_type(content_type: str | None) -> None:
    """Refuse, with 415, a body whose ``Content-Type`` says it is not JSON: the check every door makes.

    OpenAI's API reads JSON only: a form or ``text/plain`` body is not read
    (it answers 400 "you must provide a model parameter"). Parsing such a
    body as JSON anyway would be lenient in the wrong place: ``text/plain``
    and form posts are what a page on another site can send with the
    visitor's cookies and no CORS preflight, so a door serving logged-in
    users must not act on them. 415 (RFC 9110, Unsupported Media Type) says
    what is wrong where OpenAI's 400 misleads, in the same envelope.

    ``application/json`` and the ``+json`` types (RFC 6839), in any case and
    with any parameters (``; charset=utf-8``), are JSON. An absent or empty
    header is accepted, and the body read as JSON: clients in the wild send
    raw bytes without one (``requests.post(url, data=...)``), and it was
    accepted before. (wsgiref fills in ``text/plain`` for an absent header,
    so there such a client is refused; production WSGI servers do not.)
    """
    if content_type is None or not (value := content_type.strip()):
        return
    media = value.partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType(
        f"Unsupported Content-Type '{media}': the request body must be JSON, sent as application/json."
    )


def loads_request(body: bytes) -> Any:
    try:
        return loads(body)
    except ValueError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON "
            f"({exc.args[0] if exc.args else 'invalid JSON'})."
        ) from exc


def _allow(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"Method {method} is not allowed for {path}; use {allowed}.", headers={"allow": allowed})


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


class _Head:
    """Whether a request's status line has been sent: after it, an error can only drop the connection.

    Set by the two senders rather than by wrapping ``send``, which cost a call per streamed event (callgrind:
    about 900 instructions each, 1.3 % of a 50-event stream in process).
    """

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


async def _send_stream(
    receive: Receive, send: Send, chunks: CallStream, rid: str, extra: dict[str, str], head: _Head | None = None
) -> None:
    """Items as SSE events as they come, framed by the call's operation (chat ends in ``[DONE]``); a failure
    mid-stream as the operation's error event.

    The client going away (``http.disconnect``, or a failed send) stops the
    stream where it is; the stream is closed in every case, so the call is
    settled even if not one chunk was sent.
    """
    headers = [*_SSE_HEADERS, (b"x-request-id", rid.encode()), *_encode(extra)]
    operation = chunks.call.operation

    async def produce() -> None:
        if head is not None:
            head.started = True
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        first = True
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": operation.encode_event(chunk), "more_body": True})
                if first:
                    # A turn of the loop: a server that sends the writes of one turn together (``unimw serve``)
                    # sends the head and the first event now, not after the rest of an already-read stream.
                    first = False
                    await asyncio.sleep(0)
        except UnimwError as error:
            body = operation.error_event(error, chunks.watch)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        except Exception:
            logger.exception("unimw: unexpected error while streaming")
            await send({"type": "http.response.body", "body": sse_event(_SERVER_ERROR), "more_body": False})
            return
        await send({"type": "http.response.body", "body": operation.stream_end, "more_body": False})

    task = asyncio.current_task()
    assert task is not None
    producing, gone = True, False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        if producing:
            gone = True
            task.cancel()  # the stream stops wherever it waits (for the upstream, or to send)

    # The stream is produced in this task, the disconnect watched in another: the head and the first event
    # (which the dispatcher already holds) are sent without waiting for a task to be scheduled.
    watcher = asyncio.ensure_future(watch())
    try:
        await produce()
    except asyncio.CancelledError:
        if not gone or task.uncancel() > 0:
            raise  # cancelled from outside, not (only) by the watcher
    except OSError:
        pass  # the client went away mid-send: nothing left to tell it
    finally:
        producing = False
        watcher.cancel()
        await chunks.aclose()
        await asyncio.gather(watcher, return_exceptions=True)


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def _send_json(
    send: Send, status: int, body: JSON, rid: str, extra: dict[str, str] | None = None, head: _Head | None = None
) -> None:
    payload = dumps(body)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode()), (b"x-request-id", rid.encode())]
    if extra:
        headers.extend(_encode(extra))
    if head is not None:
        head.started = True
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
