"""`unimw serve` bounds how long and how large a request head may be, and how long a body may take."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.test_serve import free_port, wait_until_up
from unimw.cli import main

ROOT = Path(__file__).resolve().parent.parent

#: Every wait on the server is bounded by this; the server's own limits in these tests are 1 s.
WAIT = 10.0


#: The mock model, and a slow one whose replies take 2 s.
POLICY = """\
providers:
  mock: {kind: mock}
  slow: {kind: mock, options: {latency: 2}}
models:
  mock-echo: {provider: mock, model: mock-echo}
  slow-echo: {provider: slow, model: mock-echo}
"""


def start(*flags: str, config: Path = ROOT / "policies.yaml") -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, "-m", "unimw.cli", "serve", "--config", str(config), "--port", str(port), *flags]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process)
    except BaseException:
        stop(process)
        raise
    return process, port


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=WAIT)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One server for the module: 1 s for a head, a body and an idle kept-alive connection; 16 KiB for a head."""
    config = tmp_path_factory.mktemp("serve") / "policies.yaml"
    config.write_text(POLICY)
    process, port = start(
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--keep-alive",
        "1",
        "--max-header-bytes",
        "16384",
        config=config,
    )
    try:
        yield port
    finally:
        stop(process)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.settimeout(WAIT)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closing)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def trickle(sock: socket.socket) -> bool:
    """Send a byte every 0.1 s, for at most ``WAIT``; whether the server closed the connection meanwhile."""
    sock.settimeout(0.1)
    for _ in range(int(WAIT / 0.1)):
        try:
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            sock.sendall(b"a")
        except ConnectionResetError:
            return True
    return False


def test_connections_that_stop_before_their_request_ends_are_closed(port: int) -> None:
    """A connection that stops sending, anywhere in a request or between requests, is closed by the server.

    They all run at once, so that the test waits for the server's deadline once.
    """
    stalled = {
        "nothing": b"",
        "request-line": b"GET /health HTTP/1.1\r\n",
        "part-of-a-header": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le",
        "part-of-the-body": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model":',
    }
    sockets = {name: connect(port) for name in [*stalled, "trickled", "kept-alive"]}
    try:
        for name, sent in stalled.items():
            sockets[name].sendall(sent)
        sockets["kept-alive"].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        # The deadline of a head runs from the connection's start: bytes arriving do not extend it.
        sockets["trickled"].sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
        trickled_closed = trickle(sockets["trickled"])
        received = {name: read_all(sockets[name]) for name in stalled}
        answered = read_all(sockets["kept-alive"])
    finally:
        for sock in sockets.values():
            sock.close()
    assert trickled_closed
    # A stalled head is closed unanswered; a stalled body is answered 408 (tests/e2e/test_hostile_http.py), then closed.
    late = received.pop("part-of-the-body")
    assert received == dict.fromkeys(stalled.keys() - {"part-of-the-body"}, b"")
    assert late.split(b"\r\n", 1)[0] == b"HTTP/1.1 408 Request Timeout"
    # Answered, then closed once idle for the keep-alive time.
    assert answered.split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK"
    assert answered.endswith(b'{"status":"ok"}')


def test_a_1_mb_header_gets_431(port: int) -> None:
    with connect(port) as sock:
        # Refused before it was all sent, the answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        response = read_all(sock)
    assert response.split(b"\r\n", 1)[0] == b"HTTP/1.1 431 Request Header Fields Too Large"


def chat_request(head_size: int = 0, model: str = "mock-echo", connection: str = "close") -> tuple[bytes, bytes]:
    """A chat completion's head, padded to ``head_size`` bytes (blank line included) if given, and its body."""
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "ping"}]}' % model.encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Connection: %s\r\nContent-Length: %d\r\nX-Pad: \r\n\r\n" % (connection.encode(), len(body))
    head = head.replace(b"X-Pad: ", b"X-Pad: " + b"a" * max(0, head_size - len(head)))
    assert head_size in (0, len(head))
    return head, body


def assert_pinged(response: bytes) -> None:
    status, _, payload = response.partition(b"\r\n\r\n")
    assert status.split(b"\r\n", 1)[0] == b"HTTP/1.1 200 OK"
    assert (
        json.loads(payload)["choices"][0]["message"]["content"]
        == 'This is a mock reply from unimw (no model was called). You said: "ping"'
    )


def test_a_head_of_exactly_the_limit_is_served(port: int) -> None:
    head, body = chat_request(16384)
    with connect(port) as sock:
        sock.sendall(head + body)
        assert_pinged(read_all(sock))


def test_a_head_one_byte_over_the_limit_gets_431(port: int) -> None:
    head, body = chat_request(16385)
    with connect(port) as sock:
        sock.sendall(head + body)
        response = read_all(sock)
    assert response.split(b"\r\n", 1)[0] == b"HTTP/1.1 431 Request Header Fields Too Large"


def test_a_head_whose_blank_line_is_split_across_reads_is_measured_exactly(port: int) -> None:
    """A head of exactly the limit, its last four bytes sent one by one, the body with the last: served.

    Only the head counts, not the body that comes in the same read as its end.
    """
    head, body = chat_request(16384)
    with connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in [head[:-3], head[-3:-2], head[-2:-1], head[-1:] + body]:
            sock.sendall(piece)
            time.sleep(0.02)
        assert_pinged(read_all(sock))


def test_a_late_pipelined_head_lets_the_response_in_progress_finish(port: int) -> None:
    """The next head's deadline passes while the first request is still being answered: that answer is
    completed, and then the connection is closed."""
    head, body = chat_request(model="slow-echo", connection="keep-alive")
    with connect(port) as sock:
        sock.sendall(head + body)
        time.sleep(0.1)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost")
        assert_pinged(read_all(sock))


def read_response(sock: socket.socket) -> bytes:
    """One response with a ``Content-Length``, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data or len(data) < expected(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server after {data!r}")
        data += chunk
    return data


def expected(data: bytes) -> int:
    """The whole length of the response ``data`` begins, from its head's ``Content-Length``."""
    head, _, _ = data.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    return len(head) + 4 + int(fields[b"content-length"])


def test_each_head_and_body_has_its_own_deadline_whatever_came_before(tmp_path: Path) -> None:
    """A body that takes longer than the head limit is served; the next head, on the same connection, still
    has only the head limit, counted from its first byte (its deadline comes before the body's would have)."""
    config = tmp_path / "policies.yaml"
    config.write_text(POLICY)
    process, port = start("--header-timeout", "1", "--body-timeout", "6", "--keep-alive", "10", config=config)
    try:
        head, body = chat_request(connection="keep-alive")
        with connect(port) as sock:
            sock.sendall(head)
            time.sleep(1.5)  # past the head limit, well within the body's
            sock.sendall(body)
            assert_pinged(read_response(sock))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost")  # a head that never ends
            sent = time.monotonic()
            closed = read_all(sock)
            waited = time.monotonic() - sent
    finally:
        stop(process)
    assert closed == b""
    assert 0.8 < waited < 3.0  # the head limit (1 s), not what was left of the body's (about 4.5 s)


def test_requests_within_the_limits_are_served(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=WAIT) as http:
        # One connection, kept alive across requests.
        assert [http.get("/health").status_code for _ in range(3)] == [200] * 3
    client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=WAIT)
    completion = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "ping"}])
    client.close()
    assert (
        completion.choices[0].message.content
        == 'This is a mock reply from unimw (no model was called). You said: "ping"'
    )


def test_limit_concurrency_answers_503_beyond_it() -> None:
    """With --limit-concurrency 2, a second open connection is the limit: its requests get 503."""
    process, port = start("--limit-concurrency", "2")
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=WAIT) as first, httpx.Client(base_url=base, timeout=WAIT) as second:
            assert first.get("/health").status_code == 200  # and its connection stays open, kept alive
            assert second.get("/health").status_code == 503
    finally:
        stop(process)


def test_the_limits_are_refused_when_not_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--header-timeout", "0"])
    assert exited.value.code == 2
    assert "argument --header-timeout: must be a positive number, not 0" in capsys.readouterr().err
