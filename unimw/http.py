"""The upstream HTTP client: the one seam between adapters and the network.

Adapters post bytes and read bytes or lines; they never see the client
library. We use one pooled ``aiohttp.ClientSession`` per provider because,
measured on the bench (see docs/performance.md), it costs a half to a third of what
``httpx.AsyncClient`` does per call and per streamed chunk. Client errors
are mapped to :class:`UpstreamUnavailable` / :class:`UpstreamTimeout` here
and nowhere else.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import context

from unimw.errors import UpstreamTimeout, UpstreamUnavailable
from unimw.wire import aclose

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")

#: True in the OpenTelemetry context while an attempt to a provider that gets the
#: trace runs (:mod:`unimw.tracing` sets it): requests then carry ``traceparent``.
PROPAGATE_TRACE = context.create_key("unimw.propagate_trace")


def with_trace(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers``, plus the current trace context (W3C ``traceparent``) when it is to go upstream."""
    if not context.get_value(PROPAGATE_TRACE):
        return headers
    carrier = dict(headers)
    _inject()(carrier)
    return carrier


@functools.cache
def _inject() -> Callable[[dict[str, str]], None]:
    """OpenTelemetry's ``propagate.inject``, imported once: the module loads the configured propagators, so
    only when first needed; an ``import`` statement in every call cost 3,500 instructions a call (callgrind)."""
    from opentelemetry import propagate

    return propagate.inject


@dataclass(slots=True)
class Reply:
    """A complete upstream answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class StreamReply:
    """An upstream answer whose body is still arriving."""

    status: int
    headers: Mapping[str, str]
    _response: aiohttp.ClientResponse

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _client_errors() as exc:
            raise _map_error(exc) from exc

    def close(self) -> None:
        """Give the connection back to the pool (or drop it, if unread)."""
        self._response.release()

    async def guard(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield ``items``; close them and this reply however the loop ends."""
        try:
            async for item in items:
                yield item
        finally:
            await aclose(items)
            self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive, for parsers that frame it themselves.

        The first piece is the first HTTP chunk alone (an SSE stream's first event, as vendors frame
        them), so that it is parsed and sent on before the rest of a stream that arrived whole is
        drained; after it, one piece per network read. ``readany`` joins every piece already in, and
        aiohttp's work per piece then put the whole stream's on the path to the first byte (callgrind,
        the bench upstream's 50-event stream: 37 % fewer instructions to the first byte, 0.8 % more
        over the whole stream).

        The reply is closed when they end or are closed: a parser that closes its source however it ends
        needs no :meth:`guard`, a layer that cost 1,000 instructions a chunk (callgrind).
        """
        content = self._response.content
        try:
            chunk, _ = await content.readchunk()
            while chunk or not content.at_eof():  # readany's b"" is the end; readchunk's may be a chunk's
                if chunk:
                    yield chunk
                chunk = await content.readany()
        except _client_errors() as exc:
            raise _map_error(exc) from exc
        finally:
            self.close()


class UpstreamClient:
    """A pooled HTTP client for one provider."""

    def __init__(self, *, timeout: float, connect_timeout: float, headers: Mapping[str, str] | None = None) -> None:
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            import aiohttp  # imported on first call: it is the heaviest import we have

            self._loop = loop
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout, sock_read=self._timeout),
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        # Awaited and released by hand: the ``async with`` form's enter and exit coroutines (and its wait
        # for a request writer that ``read`` already waited for) cost 2.7 % of an aiohttp call (callgrind,
        # bench upstream). ``read`` closes the response itself if it fails.
        try:
            response = await self._client().post(url, data=body, headers=with_trace(headers))
            try:
                return Reply(response.status, response.headers, await response.read())
            finally:
                response.release()
        except _client_errors() as exc:
            raise _map_error(exc) from exc

    async def open_stream(self, url: str, body: bytes, headers: Mapping[str, str]) -> StreamReply:
        """Send the request and return once the status line and headers are in."""
        try:
            response = await self._client().post(url, data=body, headers=with_trace(headers))
        except _client_errors() as exc:
            raise _map_error(exc) from exc
        return StreamReply(response.status, response.headers, response)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


@functools.cache
def _client_errors() -> tuple[type[BaseException], ...]:
    import aiohttp

    return (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def _map_error(exc: BaseException) -> UpstreamTimeout | UpstreamUnavailable:
    import aiohttp

    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("The upstream did not answer in time.")
    return UpstreamUnavailable(f"The upstream could not be reached or closed the connection ({type(exc).__name__}).")
