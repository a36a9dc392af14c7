"""The OpenAI routes as async Django views, working under ASGI and WSGI alike.

Each view turns the HttpRequest into one gateway call on the gateway's own
loop (:mod:`unimw.django.runtime`) and writes the answer: JSON, or SSE for a
stream, which goes out chunk by chunk. Under ASGI the stream is an async
iterator; under WSGI a sync one, since Django would otherwise read an async
stream to its end before sending a byte. However a stream ends (its last
chunk, an error, the client leaving), the call's stream is closed, so it is
settled at once. Every error is the OpenAI envelope with its status.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from unimw.asgi import check_media_type, loads_request
from unimw.calls import CallStream
from unimw.django.identity import inbound
from unimw.django.runtime import Runtime, runtime
from unimw.errors import MethodNotAllowed, NotFound, PayloadTooLarge, UnimwError
from unimw.gateway import Answer
from unimw.wire import JSON, SSE_DONE, dumps, request_id, sse_event

logger = logging.getLogger("unimw.django")

SERVER_ERROR: JSON = {
    "error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]  # (request, request_id, **url_kwargs)


def _answering(view: View) -> Callable[..., Coroutine[Any, Any, HttpResponseBase]]:
    """``view`` with a request id, and every error as the OpenAI envelope."""

    async def wrapped(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        rid = request_id()
        try:
            return await view(request, rid, **kwargs)
        except UnimwError as error:
            return json_response(error.status, error.to_dict(), rid, error.headers)
        except Exception:
            logger.exception("unimw: unexpected error in %s %s", request.method, request.path)
            return json_response(500, SERVER_ERROR, rid)

    # CSRF is checked by the identity step, for session-authenticated callers only.
    return csrf_exempt(wrapped)


async def _operation(request: HttpRequest, rid: str, *, operation_path: str) -> HttpResponseBase:
    _allow(request, "POST")
    rt = runtime()
    gateway = rt.gateway
    who = await inbound(request, gateway, rid)
    check_media_type(request.META.get("CONTENT_TYPE"))
    body = loads_request(_read_body(request, gateway.policy.server.max_body_bytes))
    answer: Answer = await rt.run(gateway.handle(gateway.operations[operation_path], body, who))
    if not isinstance(answer.body, CallStream):
        return json_response(200, answer.body, rid, answer.response_headers())
    # Under WSGI, Django would read an async iterator to its end before sending a byte.
    asgi = isinstance(request, ASGIRequest)
    events: Iterator[bytes] | AsyncIterator[bytes] = (
        _async_events(rt, answer.body) if asgi else SyncEvents(rt, answer.body)
    )
    response = StreamingHttpResponse(events, content_type="text/event-stream; charset=utf-8")
    for name, value in {"cache-control": "no-cache", "x-accel-buffering": "no", "x-request-id": rid}.items():
        response[name] = value
    for name, value in answer.response_headers().items():
        response[name] = value
    return response


async def _models(request: HttpRequest, rid: str, *, name: str | None = None) -> HttpResponseBase:
    _allow(request, "GET")
    rt = runtime()
    who = await inbound(request, rt.gateway, rid)
    return json_response(200, await rt.run(rt.gateway.handle_models(who, name)), rid)


async def _not_found(request: HttpRequest, rid: str) -> HttpResponseBase:
    raise NotFound(f"Invalid URL ({request.method} {request.path})")


operation = _answering(_operation)
models = _answering(_models)
not_found = _answering(_not_found)


def json_response(status: int, body: JSON, rid: str, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(dumps(body), status=status, content_type="application/json")
    response["x-request-id"] = rid
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _allow(request: HttpRequest, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.path}; use {method}.", headers={"allow": method}
        )


def _read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, up to ``limit`` bytes (the policy's bound, not DATA_UPLOAD_MAX_MEMORY_SIZE); 413 past it."""
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    try:
        data = request.read(limit + 1)
    except RequestDataTooBig as exc:
        raise _too_large(limit) from exc
    if len(data) > limit:
        raise _too_large(limit)
    return data


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


async def next_event(stream: CallStream) -> tuple[bytes, bool]:
    """The stream's next SSE event and whether it is the last; runs on the gateway's loop."""
    try:
        chunk = await anext(stream)
    except StopAsyncIteration:
        return SSE_DONE, True
    except UnimwError as error:
        return sse_event(error.to_dict()), True
    except Exception:
        logger.exception("unimw: unexpected error while streaming")
        return sse_event(SERVER_ERROR), True
    return sse_event(chunk), False


async def _async_events(rt: Runtime, stream: CallStream) -> AsyncIterator[bytes]:
    """SSE for ASGI. Closed however it ends: a client that left cancels the pending chunk, then this closes."""
    try:
        last = False
        while not last:
            data, last = await rt.run(next_event(stream))
            yield data
    finally:
        rt.submit(stream.aclose())  # not awaited: this may run while cancelled, or from a finalizer


class SyncEvents:
    """SSE for WSGI, one chunk per ``next``; ``close`` (the server's, when the client left) settles the call.

    A class, not a generator: closing a generator that never started runs
    none of its code, and the call would stay open.
    """

    def __init__(self, rt: Runtime, stream: CallStream) -> None:
        self._runtime = rt
        self._stream = stream
        self._last = False
        self._closed = False

    def __iter__(self) -> SyncEvents:
        return self

    def __next__(self) -> bytes:
        if self._last or self._closed:
            self.close()
            raise StopIteration
        data, self._last = self._runtime.call(next_event(self._stream))
        return data

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._runtime.submit(self._stream.aclose())
