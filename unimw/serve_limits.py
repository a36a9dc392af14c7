"""What one client connection may hold of ``unimw serve``: time to send its head and body, head size, a share.

uvicorn bounds none of these on its own, so :func:`bounded_http` adds them to
its httptools protocol; :class:`ServeLimits` holds the values ``unimw serve``
takes as flags.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState


@dataclass(frozen=True)
class ServeLimits:
    """What one client connection may hold of the server: time, memory, a share of its capacity."""

    #: Seconds from a connection's start, or from the first byte of a later request, to the end of the head.
    header_timeout: float = 10.0
    #: Bytes of a request head: the request line and the header fields, up to the blank line.
    max_header_bytes: int = 64 * 1024
    #: Seconds from the end of a request's head to the end of its body.
    body_timeout: float = 60.0
    #: Seconds an idle kept-alive connection stays open.
    keep_alive: int = 5
    #: Open connections plus running requests beyond which new requests are answered 503.
    limit_concurrency: int = 1000


#: Seconds a refused connection is kept reading (and discarding) after its 431, so that a client still
#: sending its head sees the answer rather than a reset.
LINGER = 2.0

HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 31\r\nconnection: close\r\n\r\n"
    b"Request header fields too large"
)


def late_body(limits: ServeLimits) -> bytes:
    """The 408 for a body not complete within ``body_timeout``, in OpenAI's error envelope."""
    from unimw.errors import InvalidRequest
    from unimw.wire import dumps

    error = InvalidRequest(
        f"The request body did not arrive in full within {limits.body_timeout:g} s of the request head.",
        code="request_timeout",
    )
    payload = dumps(error.to_dict())
    head = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    return head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(payload) + payload


def bounded_http(limits: ServeLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, with a deadline and a size limit on request heads and a deadline on bodies.

    uvicorn bounds neither: a connection may trickle a head (or send none) for
    ever, and httptools buffers a header of any size. The head is measured on
    the bytes received, before the parser sees them, so an oversized head is
    never buffered; its deadline runs from the connection's start (or from
    the first byte of a later request on it) and is not extended by data.
    A body still incomplete at its deadline gets a 408 in OpenAI's envelope
    (unless its request is already being answered), and the connection is closed.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    body_late = late_body(limits)

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(
            self,
            config: Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            self.head_timer: asyncio.TimerHandle | None = None
            self.body_timer: asyncio.TimerHandle | None = None
            self.awaiting_head = True
            self.head_bytes = 0
            self.head_tail = b""  # the last bytes of the head so far, for a blank line split across reads
            self.refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.head_timer = self.loop.call_later(limits.header_timeout, self.head_timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_timers()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            if self.awaiting_head:
                if self.head_timer is None:
                    self.head_timer = self.loop.call_later(limits.header_timeout, self.head_timed_out)
                if self.head_size(data) > limits.max_header_bytes:
                    self.refuse(HEAD_TOO_LARGE)
                    return
            super().data_received(data)

        def head_size(self, data: bytes) -> int:
            """The size of the head so far, counting ``data`` up to the blank line that ends the head."""
            joint = (self.head_tail + data[:3]).find(b"\r\n\r\n")  # a blank line split across reads
            if joint >= 0:
                counted = joint + 4 - len(self.head_tail)
            elif (end := data.find(b"\r\n\r\n")) >= 0:
                counted = end + 4
            else:
                counted = len(data)
            size = self.head_bytes + counted
            self.head_bytes += len(data)
            self.head_tail = (self.head_tail + data[-3:])[-3:]
            return size

        def on_headers_complete(self) -> None:
            self.awaiting_head = False
            self.stop_timers()
            self.body_timer = self.loop.call_later(limits.body_timeout, self.body_timed_out)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.stop_timers()
            self.awaiting_head, self.head_bytes, self.head_tail = True, 0, b""
            super().on_message_complete()

        def head_timed_out(self) -> None:
            self.head_timer = None
            self.refuse(b"")

        def body_timed_out(self) -> None:
            """Answer 408 to a request whose body is late, unless an answer has begun (then just close)."""
            self.body_timer = None
            cycle = self.cycle
            if cycle is None or cycle.response_started or self.pipeline:
                self.transport.close()
                return
            # The app's wait for the rest of the body ends (http.disconnect), and what it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            self.refused = True
            self.answer_and_close(body_late)

        def refuse(self, answer: bytes) -> None:
            """Stop reading requests; answer and close, or, while answering a pipelined earlier request,
            close once that response is complete."""
            self.refused = True
            self.stop_timers()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False
                return
            if not answer:
                self.transport.close()
                return
            self.answer_and_close(answer)

        def answer_and_close(self, answer: bytes) -> None:
            """Send ``answer``, then keep reading (and discarding) for :data:`LINGER` s before closing."""
            self.transport.write(answer)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)

        def stop_timers(self) -> None:
            for timer in (self.head_timer, self.body_timer):
                if timer is not None:
                    timer.cancel()
            self.head_timer = self.body_timer = None

    return BoundedHttpToolsProtocol
