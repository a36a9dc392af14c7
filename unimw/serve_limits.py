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
    from collections.abc import Callable

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
    #: Seconds a stopping server (SIGTERM, Ctrl-C) lets calls and streams in flight finish; past it they
    #: are cancelled, and each is settled for what it produced before the process exits.
    shutdown_grace: float = 30.0


#: Allocations between the collector's young collections in ``unimw serve`` (the interpreter's default: 700).
#: A request's objects are freed by reference counting (no cycles were found over thousands of calls), so
#: at 700 a young collection ran every ~10 requests, walking the objects of every request in flight:
#: wrk -c32 measured 158 -> 128 µs of CPU a plain call and 410 -> 380 a stream at 10,000.
GC_THRESHOLD = 10_000


def tune_gc() -> None:
    """Set :data:`GC_THRESHOLD` for this server process (and each worker's)."""
    import gc

    gc.set_threshold(GC_THRESHOLD)


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

    Each connection has one timer for these deadlines, not one per head and
    body: a deadline that moves later leaves the timer where it is, and the
    timer re-arms itself for the current deadline when it fires early. Two
    timers made and cancelled per request cost 10,000 instructions, 1.3 % of
    a plain call through ``unimw serve`` (callgrind).

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
            #: When the head or the body now being received must be in (``loop.time()``), and what then.
            self.deadline: float | None = None
            self.expire: Callable[[], object] | None = None
            #: One timer for the connection, armed at ``timer_at``: a deadline that moves later leaves it
            #: be (it re-arms itself when it fires early), so a request costs no timer of its own.
            self.timer: asyncio.TimerHandle | None = None
            self.timer_at = 0.0
            self.awaiting_head = True
            self.head_bytes = 0
            self.head_tail = b""  # the last bytes of the head so far, for a blank line split across reads
            self.refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.limit(limits.header_timeout, self.head_timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            self.stop_limits()
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            if self.awaiting_head:
                if self.deadline is None:
                    self.limit(limits.header_timeout, self.head_timed_out)
                if self.head_size(data) > limits.max_header_bytes:
                    self.refuse(HEAD_TOO_LARGE)
                    return
            super().data_received(data)

        def head_size(self, data: bytes) -> int:
            """The size of the head so far, counting ``data`` up to the blank line that ends the head."""
            tail = self.head_tail
            # A blank line split across reads (three bytes of ``data`` cannot hold one on their own).
            joint = (tail + data[:3]).find(b"\r\n\r\n") if tail else -1
            if joint >= 0:
                counted = joint + 4 - len(tail)
            elif (end := data.find(b"\r\n\r\n")) >= 0:
                counted = end + 4
            else:
                counted = len(data)
            size = self.head_bytes + counted
            self.head_bytes += len(data)
            self.head_tail = (tail + data[-3:])[-3:]
            return size

        def on_headers_complete(self) -> None:
            self.awaiting_head = False
            self.limit(limits.body_timeout, self.body_timed_out)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.stop_limits()
            self.awaiting_head, self.head_bytes, self.head_tail = True, 0, b""
            super().on_message_complete()

        def head_timed_out(self) -> None:
            self.refuse(b"")

        def body_timed_out(self) -> None:
            """Answer 408 to a request whose body is late, unless an answer has begun (then just close)."""
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
            self.stop_limits()
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

        def limit(self, seconds: float, expire: Callable[[], object]) -> None:
            """Call ``expire`` in ``seconds`` unless another limit or :meth:`stop_limits` comes first."""
            self.deadline = deadline = self.loop.time() + seconds
            self.expire = expire
            if self.timer is None or deadline < self.timer_at:
                self.arm(deadline)

        def arm(self, when: float) -> None:
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = self.loop.call_at(when, self.timer_fired), when

        def timer_fired(self) -> None:
            self.timer = None
            deadline, expire = self.deadline, self.expire
            if deadline is None or expire is None:
                return  # nothing is being waited for: the next limit arms it again
            if self.loop.time() < deadline:
                self.arm(deadline)  # the deadline moved on since the timer was armed
                return
            self.deadline = self.expire = None
            expire()

        def stop_limits(self) -> None:
            self.deadline = self.expire = None

    return BoundedHttpToolsProtocol
