"""A client that stops reading a stream holds up the upstream, not the gateway's memory.

``unimw serve`` relays a streamed answer from a loopback upstream that
sends as fast as it is taken (an endless answer, counted byte by byte as
the kernel accepts it) to a client that reads the head and the first
events, then nothing. The relay must apply flow control all the way: once
the socket buffers between them are full, the gateway stops reading the
upstream, so the upstream's count stops growing below :data:`MAX_IN_FLIGHT`
and the gateway's resident memory grows by less than :data:`MAX_RSS_GROWTH`.
When the client reads again, the answer flows again.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_cli_serve_limits import WAIT, start, stop

MiB = 1024 * 1024
#: Bytes the upstream may get into the sockets while the client reads nothing: the kernel buffers on
#: loopback (the upstream's send buffer, the gateway's autotuned receive buffer on the upstream socket,
#: its send buffer towards the client, the client's receive buffer), a few MiB each at most, plus the
#: 64 KiB aiohttp and uvicorn keep. Measured: about 11 MiB. Without flow control it is the whole answer.
MAX_IN_FLIGHT = 48 * MiB
#: Growth of the gateway's resident memory meanwhile (measured: about 17 MiB).
MAX_RSS_GROWTH = 64 * MiB
#: The answer the upstream would give in full: far more than any buffer (and all of it, without flow control:
#: it was seen so, with the gateway's memory grown by 2.6 times as much).
ANSWER_BYTES = 256 * MiB
PIECE = "0123456789" * 400
CHUNK = (
    b"data: "
    + json.dumps(
        {
            "id": "chatcmpl-long",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "up-long",
            "choices": [{"index": 0, "delta": {"content": PIECE}, "finish_reason": None}],
        }
    ).encode()
    + b"\n\n"
)


class EndlessUpstream:
    """An OpenAI-wire upstream on loopback that streams a 256 MiB answer to its first caller, counting what it sent.

    ``sent`` counts the bytes the kernel took from it; ``ended`` is set once
    the gateway closed the connection (or the test stopped it).
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self.sent = 0
        self.ended = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            conn = self.accept()
            if conn is not None:
                with conn:
                    self.answer(conn)
        finally:
            self.ended.set()

    def accept(self) -> socket.socket | None:
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.listener.accept()
                return conn
        return None

    def answer(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        received = b""
        while b"\r\n\r\n" not in received:
            received += conn.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += conn.recv(65536)
        assert json.loads(body)["stream"] is True
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        conn.settimeout(0.2)  # a blocked send wakes up to see whether the test is over
        while self.sent < ANSWER_BYTES and not self.stopping.is_set():
            pending = memoryview(CHUNK)
            while pending and not self.stopping.is_set():
                try:
                    taken = conn.send(pending)
                except TimeoutError:
                    continue
                except OSError:  # the gateway let go of the stream
                    return
                pending = pending[taken:]
                self.sent += taken

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=WAIT)
        self.listener.close()


@pytest.fixture
def upstream() -> Iterator[EndlessUpstream]:
    made = EndlessUpstream()
    yield made
    made.close()


@pytest.fixture
def server(upstream: EndlessUpstream, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """``unimw serve`` with the endless upstream and the mock: (its port, its pid)."""
    config = tmp_path / "policies.yaml"
    config.write_text(
        "providers:\n"
        f"  up: {{kind: openai, base_url: 'http://127.0.0.1:{upstream.port}/v1', api_key: sk-up, timeout: 60}}\n"
        "  mock: {kind: mock}\n"
        "models:\n"
        "  long: {provider: up, model: up-long}\n"
        "  mock-echo: {provider: mock, model: mock-echo}\n"
        # The answer is endless on purpose: flow control, not the output bound, is what is tested here.
        "server: {max_stream_output_bytes: null}\n"
    )
    process, port = start(config=config)
    try:
        yield port, process.pid
    finally:
        stop(process)


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def settled(upstream: EndlessUpstream) -> int:
    """What the upstream sent once it stopped being able to send (no growth for 1 s); fails after 20 s."""
    deadline = time.monotonic() + 20
    last, since = upstream.sent, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if upstream.sent != last:
            last, since = upstream.sent, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return last
    raise AssertionError(f"the upstream never stopped: {upstream.sent / MiB:.0f} MiB sent in 20 s")


def test_a_client_that_stops_reading_stops_the_upstream(server: tuple[int, int], upstream: EndlessUpstream) -> None:
    port, pid = server
    # Warm up the code paths of a stream first, on the mock, so that the baseline is that of a serving process.
    body = {"model": "mock-echo", "stream": True, "messages": [{"role": "user", "content": "ping"}]}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=WAIT) as warm:
        assert warm.status_code == 200 and warm.read().endswith(b"data: [DONE]\n\n")
    baseline = rss(pid)

    request = json.dumps({"model": "long", "stream": True, "messages": [{"role": "user", "content": "ping"}]})
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(request), request.encode())
        )
        first = client.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")

        # The client reads nothing more: the upstream soon cannot send, and the gateway holds little.
        in_flight = settled(upstream)
        grown = rss(pid) - baseline
        assert in_flight < MAX_IN_FLIGHT, f"{in_flight / MiB:.1f} MiB sent to a stalled stream"
        assert grown < MAX_RSS_GROWTH, f"the gateway grew by {grown / MiB:.1f} MiB"
        assert not upstream.ended.is_set()

        # Reading again lets the answer flow: 16 MiB more reach the client, and so leave the upstream.
        received = len(first)
        while received < in_flight + 16 * MiB:
            chunk = client.recv(1 << 20)
            assert chunk, "the stream ended"
            received += len(chunk)
        assert upstream.sent >= in_flight + 8 * MiB

        # The client goes away: the gateway lets go of the upstream.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert upstream.ended.wait(WAIT)
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=WAIT).json() == {"status": "ok"}
