"""``unimw serve`` sends the writes of one loop turn together, and never holds back an event that is ready.

The server is the app and the uvicorn protocol ``unimw serve`` runs, on
loopback in a thread, with a wrapper that records every write it makes to
the socket. The upstream is a raw asyncio server in the test's own loop, so
that it can wait, event by event, until the client has the event before,
and the client reads the raw socket (chunked frames, SSE events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from unimw.coalescing import CoalescingTransport, coalescing_http
from unimw.serve_limits import ServeLimits, bounded_http
from unimw.server import build_app

pytestmark = pytest.mark.anyio

#: Every wait in these tests is bounded by this many seconds.
WAIT = 10.0
EVENTS = 50
CHAT_PATH = "/v1/chat/completions"


def upstream_events() -> list[bytes]:
    """A chat stream of ``EVENTS`` SSE events (role, words, finish), as an OpenAI upstream sends it."""
    events = []
    for i in range(EVENTS):
        delta: dict[str, Any] = {"content": f"tok{i} "}
        if i == 0:
            delta = {"role": "assistant", "content": ""}
        elif i == EVENTS - 1:
            delta = {}
        choice = {"index": 0, "delta": delta, "finish_reason": "stop" if i == EVENTS - 1 else None}
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    return events


UPSTREAM_TEXT = "".join(f"tok{i} " for i in range(1, EVENTS - 1))
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


COMPLETION = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
).encode()
COMPLETION_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


def frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream:
    """Streams ``upstream_events()`` to each streamed chat request: all in one write, or ``paced``: each event
    only once the client has the one before (``arrived[i]`` is set by the client when event ``i`` reached it);
    answers other chat requests with ``COMPLETION``."""

    def __init__(self, *, paced: bool) -> None:
        self.paced = paced
        self.events = upstream_events()
        self.arrived = [asyncio.Event() for _ in self.events]
        self.requests = 0
        self.sent = 0  #: events of the paced stream sent
        self.waited_in_vain: list[int] = []  #: the event whose arrival was waited for in vain
        self.hung_up = asyncio.Event()  #: set when the gateway closes a paced stream's connection before its end

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                self.requests += 1
                if not body.get("stream"):
                    writer.write(COMPLETION_HEAD % len(COMPLETION) + COMPLETION)
                elif self.paced:
                    await self.pace(reader, writer)
                    return  # one paced stream a connection: its end-of-file watch consumed the connection
                else:
                    events = b"".join(frame(e) for e in self.events)
                    writer.write(STREAM_HEAD + events + frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        finally:
            writer.close()

    async def pace(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + frame(self.events[0]))
        self.sent = 1
        closed = asyncio.ensure_future(reader.read(1))  # b"" once the gateway closes the connection
        try:
            for i in range(1, len(self.events) + 1):
                arrived = asyncio.ensure_future(self.arrived[i - 1].wait())
                await asyncio.wait((arrived, closed), timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
                arrived.cancel()
                if not self.arrived[i - 1].is_set():
                    if closed.done():
                        self.hung_up.set()
                    else:
                        self.waited_in_vain.append(i - 1)
                    return
                if i < len(self.events):
                    writer.write(frame(self.events[i]))
                    self.sent += 1
                else:
                    writer.write(frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        finally:
            closed.cancel()
            await asyncio.gather(closed, return_exceptions=True)


@contextlib.asynccontextmanager
async def upstream_server(upstream: Upstream) -> AsyncIterator[str]:
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


def recording(writes: list[bytes]) -> type[CoalescingTransport]:
    """A CoalescingTransport that appends each write it makes to the socket to ``writes``."""

    class Recording(CoalescingTransport):
        def _send(self, data: bytes) -> None:
            writes.append(data)
            super()._send(data)

    return Recording


@contextlib.asynccontextmanager
async def gateway_server(tmp_path: Path, upstream_url: str, writes: list[bytes]) -> AsyncIterator[int]:
    """``unimw serve``'s app and protocol (uvloop, httptools, the connection bounds) on loopback; its port."""
    policy = {
        "providers": {"up": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-test"}},
        "models": {"m": {"provider": "up", "model": "m"}},
    }
    config = tmp_path / "policies.yaml"
    config.write_text(json.dumps(policy))
    limits = ServeLimits()
    protocol = coalescing_http(bounded_http(limits), recording(writes))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(config),
            log_level="warning",
            access_log=False,
            http=protocol,
            ws="none",
            timeout_keep_alive=limits.keep_alive,
            limit_concurrency=limits.limit_concurrency,
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the gateway server did not start")
                await asyncio.sleep(0.005)
        yield port
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, WAIT)
        sock.close()


def request(port: int, body: dict[str, Any], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {CHAT_PATH} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer sk-client\r\ncontent-length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


def split_frames(body: bytes) -> tuple[list[bytes], bytes]:
    """The complete chunked-encoding frames at the start of ``body`` (the last chunk as ``b""``), and the rest."""
    frames = []
    while (end := body.find(b"\r\n")) >= 0:
        size = int(body[:end], 16)
        if len(body) < end + 2 + size + 2:
            break
        frames.append(body[end + 2 : end + 2 + size])
        body = body[end + 4 + size :]
    return frames, body


async def read_stream(
    port: int, on_event: Callable[[int], None], hang_up_after: int | None = None
) -> tuple[bytes, list[bytes]]:
    """POST a streamed chat and read the raw socket to the last chunk, or hang up once ``hang_up_after`` events
    arrived; ``on_event(i)`` as event ``i`` arrives.

    Returns the response head and the SSE events (``[DONE]`` included when the stream ended).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request(port, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        events: list[bytes] = []
        text, rest = b"", b""
        while True:
            data = await asyncio.wait_for(reader.read(65536), WAIT)
            assert data, f"the server closed the connection after {len(events)} events"
            frames, rest = split_frames(rest + data)
            for payload in frames:
                if not payload:
                    assert text == b"" and rest == b""
                    return head, events
                text += payload
                *complete, text = text.split(b"\n\n")
                for event in complete:
                    events.append(event)
                    on_event(len(events) - 1)
                    if len(events) == hang_up_after:
                        return head, events
    finally:
        writer.close()
        await writer.wait_closed()


def content(events: list[bytes]) -> str:
    """The text of a chat stream's events: their ``delta.content`` joined."""
    deltas = [json.loads(e.removeprefix(b"data: "))["choices"][0]["delta"] for e in events if e != b"data: [DONE]"]
    return "".join(d.get("content") or "" for d in deltas)


def first_write(writes: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The head of the first write to the socket, and the chunked frames of its body."""
    head, _, body = writes[0].partition(b"\r\n\r\n")
    frames, rest = split_frames(body)
    assert rest == b""
    return head, frames


async def test_an_event_reaches_the_client_before_the_upstream_sends_the_next(tmp_path: Path) -> None:
    """No event waits for more: the upstream sends each event only once the client has the one before."""
    upstream = Upstream(paced=True)
    writes: list[bytes] = []
    async with upstream_server(upstream) as url, gateway_server(tmp_path, url, writes) as port:
        head, events = await read_stream(port, lambda i: upstream.arrived[i].set() if i < EVENTS else None)
    assert upstream.waited_in_vain == []
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(events) == EVENTS + 1 and events[-1] == b"data: [DONE]"
    assert content(events) == UPSTREAM_TEXT
    assert upstream.requests == 1
    # The head with the first event, each event then as the upstream sent it, and the end.
    assert len(writes) == 1 + (EVENTS - 1) + 1
    write_head, frames = first_write(writes)
    assert write_head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-type: text/event-stream" in write_head
    assert [json.loads(f.removeprefix(b"data: "))["choices"][0]["delta"] for f in frames] == [
        {"role": "assistant", "content": ""}
    ]
    assert writes[-1] == frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"


async def test_a_client_that_hangs_up_mid_stream_stops_the_upstream(tmp_path: Path) -> None:
    """The stream is produced in the request's task, stopped by the watch for the client leaving: the gateway
    closes the upstream's connection rather than waiting for its next event."""
    upstream = Upstream(paced=True)
    async with upstream_server(upstream) as url, gateway_server(tmp_path, url, []) as port:
        _, events = await read_stream(port, lambda i: upstream.arrived[i].set(), hang_up_after=3)
        await asyncio.wait_for(upstream.hung_up.wait(), WAIT)
    assert content(events) == "tok1 tok2 "
    assert upstream.sent == 4  # the fourth event left the upstream before the client hung up
    assert upstream.waited_in_vain == []


async def test_events_ready_together_leave_together(tmp_path: Path) -> None:
    """An upstream stream read at once reaches the client in a few writes, complete and in order.

    The head leaves with the first event (the stream then gives the loop a
    turn, so the first event is not held while the rest is encoded), the
    other events with one write (the upstream's one write arrives with one
    read on loopback), and the end with that write or, if finishing the
    call waits for something, with one more: three writes at most.
    """
    upstream = Upstream(paced=False)
    writes: list[bytes] = []
    async with upstream_server(upstream) as url, gateway_server(tmp_path, url, writes) as port:
        head, events = await read_stream(port, lambda i: None)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(events) == EVENTS + 1 and events[-1] == b"data: [DONE]"
    assert content(events) == UPSTREAM_TEXT
    assert 2 <= len(writes) <= 3
    _, frames = first_write(writes)
    assert len(frames) == 1 and json.loads(frames[0].removeprefix(b"data: "))["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
    }
    assert writes[-1].endswith(frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")


async def test_a_plain_answer_leaves_with_one_write_before_the_connection_closes(tmp_path: Path) -> None:
    """The head and the JSON body of an answer that is not streamed go in one write, sent before the server
    closes a connection the client asked to close."""
    writes: list[bytes] = []
    async with upstream_server(Upstream(paced=False)) as url, gateway_server(tmp_path, url, writes) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        writer.write(request(port, body, extra="connection: close\r\n"))
        answer = await asyncio.wait_for(reader.read(), WAIT)  # to the end of file
        writer.close()
        await writer.wait_closed()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nconnection: close" in head
    assert json.loads(payload)["choices"][0]["message"]["content"] == "Paris."
    assert writes == [answer]


# --- the wrapper on its own, over a real socket pair ------------------------------------------------


class Peer(asyncio.Protocol):
    """The server side's protocol: what flow control it was told."""

    def __init__(self) -> None:
        self.flow: list[str] = []
        self.lost = asyncio.Event()

    def pause_writing(self) -> None:
        self.flow.append("pause")

    def resume_writing(self) -> None:
        self.flow.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


@contextlib.asynccontextmanager
async def wrapped() -> AsyncIterator[tuple[CoalescingTransport, list[bytes], Peer, socket.socket]]:
    """A CoalescingTransport (recording its writes) over one end of a socket pair, and the other end."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, peer = await loop.connect_accepted_socket(Peer, ours)
    assert isinstance(transport, asyncio.Transport)
    writes: list[bytes] = []
    try:
        yield recording(writes)(transport, loop), writes, peer, theirs
    finally:
        transport.abort()
        theirs.close()


async def receive_all(sock: socket.socket) -> bytes:
    """What the peer sent, up to its end of file (or a reset)."""
    loop = asyncio.get_running_loop()
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), WAIT):
            data += chunk
    return data


async def test_writes_in_one_turn_leave_as_one_at_its_end() -> None:
    async with wrapped() as (transport, writes, _, _):
        transport.write(b"head ")
        transport.writelines([b"one ", bytearray(b"two ")])
        transport.write(b"")
        assert writes == [] and transport.get_write_buffer_size() == len(b"head one two ")
        await asyncio.sleep(0)
        assert writes == [b"head one two "] and transport.get_write_buffer_size() == 0
        transport.write(b"three")
        await asyncio.sleep(0)
        assert writes == [b"head one two ", b"three"]


async def test_close_sends_what_is_pending_first() -> None:
    async with wrapped() as (transport, writes, peer, theirs):
        transport.write(b"last words")
        transport.close()
        assert transport.is_closing()
        transport.write(b"after close")  # dropped, as the socket transport drops it
        assert await receive_all(theirs) == b"last words"
        await asyncio.wait_for(peer.lost.wait(), WAIT)
    assert writes == [b"last words"]


async def test_write_eof_sends_what_is_pending_first() -> None:
    async with wrapped() as (transport, writes, _, theirs):
        assert transport.can_write_eof()
        transport.write(b"the answer")
        transport.write_eof()
        assert await receive_all(theirs) == b"the answer"
    assert writes == [b"the answer"]


async def test_abort_drops_what_is_pending() -> None:
    async with wrapped() as (transport, writes, peer, theirs):
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)
        assert await receive_all(theirs) == b""
        await asyncio.wait_for(peer.lost.wait(), WAIT)
    assert writes == []


async def test_reading_is_paused_and_resumed_on_the_socket() -> None:
    async with wrapped() as (transport, _, _, _):
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        transport.resume_reading()
        assert transport.is_reading()


async def test_a_full_buffer_pauses_the_writer_at_once_and_resumes_it_once_drained() -> None:
    """Bytes pending past the high-water mark go to the socket at once, so its flow control still pauses the
    protocol within the turn; the peer reading everything resumes it, and the bytes arrive whole, in order."""
    async with wrapped() as (transport, writes, peer, theirs):
        transport.set_write_buffer_limits(high=64 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        piece = bytes(range(256)) * 64  # 16 KiB
        for _ in range(256):  # 4 MiB in one turn, far more than the socket pair buffers
            transport.write(piece)
        assert peer.flow == ["pause"]
        assert all(len(w) == 64 * 1024 for w in writes) and len(writes) == 64
        assert transport.get_write_buffer_size() > 64 * 1024
        loop = asyncio.get_running_loop()
        received = bytearray()
        while len(received) < 256 * len(piece):
            received += await asyncio.wait_for(loop.sock_recv(theirs, 1 << 20), WAIT)
        await asyncio.sleep(0)
        assert peer.flow == ["pause", "resume"]
        assert received == piece * 256


def test_only_uvicorn_httptools_protocol_can_coalesce() -> None:
    with pytest.raises(TypeError, match="Protocol is not uvicorn's httptools protocol"):
        coalescing_http(asyncio.Protocol)
