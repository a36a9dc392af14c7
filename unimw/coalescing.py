"""Writes made in one turn of the event loop leave as one ``write``: a response head with its first event,
and stream events that were ready together.

uvicorn writes the status line and headers with one ``transport.write``
and every body part with another, so a streamed answer whose events were
all ready at once reaches the client as dozens of small packets (a syscall,
a wake-up of the client and a read each). :class:`CoalescingTransport`
buffers writes and sends them together once the current turn of the loop
is over: nothing ready is held back waiting for more, since the loop
moves on only when the code that produced the data waits for something.
:func:`coalescing_http` installs it under uvicorn's httptools protocol for
``unimw serve`` (this module needs uvicorn, which ``unimw serve`` does);
apps on their own server are not affected.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from collections.abc import Iterable


class CoalescingTransport(asyncio.Transport):
    """A transport whose writes in one loop turn are sent with one write to ``transport`` when the turn ends.

    Pending bytes count in :meth:`get_write_buffer_size`, and are sent at
    once when they reach the high-water mark of ``transport``, so the
    protocol is paused by ``transport`` where it would have been without
    the buffer. :meth:`flush`, :meth:`close`, :meth:`write_eof` and
    :meth:`set_protocol` send what is pending first; :meth:`abort` drops it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._high_water = transport.get_write_buffer_limits()[1]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._transport.is_closing():
            self._transport.write(data)  # as if unwrapped: asyncio drops it, uvloop raises once closed
            return
        self._pending.append(bytes(data))
        self._size += len(data)
        if self._size >= self._high_water:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_soon)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush_soon(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Send what is pending now, with one write; drop it if ``transport`` is closing (the peer is gone)."""
        if not self._pending:
            return
        pending = self._pending
        self._pending, self._size = [], 0
        if not self._transport.is_closing():
            self._send(pending[0] if len(pending) == 1 else b"".join(pending))

    def _send(self, data: bytes) -> None:
        self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending, self._size = [], 0
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)
        self._high_water = self._transport.get_write_buffer_limits()[1]

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()  # what the old protocol wrote goes out before the new one writes
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`CoalescingTransport` (``wrapper``).

    A response that is complete is sent at once rather than at the end of
    the turn: what the app does after its last ``send`` (finishing the call,
    closing the upstream) does not delay the end of the answer.
    """

    wrapper: type[CoalescingTransport] = CoalescingTransport
    coalescing: CoalescingTransport

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.coalescing = self.wrapper(transport, self.loop)
        super().connection_made(self.coalescing)

    def on_response_complete(self) -> None:
        self.coalescing.flush()
        super().on_response_complete()


def coalescing_http(
    base: type[asyncio.Protocol], wrapper: type[CoalescingTransport] = CoalescingTransport
) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's httptools protocol, or a subclass such as :func:`~unimw.serve_limits.bounded_http`'s)
    writing through ``wrapper``."""
    if not issubclass(base, HttpToolsProtocol):
        raise TypeError(f"{base.__name__} is not uvicorn's httptools protocol")
    protocol: type[asyncio.Protocol] = type(
        f"Coalescing{base.__name__}", (CoalescingHttpToolsProtocol, base), {"wrapper": wrapper}
    )
    return protocol
