"""Hostile HTTP, written by hand on a raw socket, against a running ``unimw serve``.

Each kind of bad request gets a 4xx in OpenAI's error envelope from the
gateway, or, where the HTTP parser refuses the request before any app sees
it (a malformed chunk size, a NUL in a header, a bad Content-Length), the
protocol layer's plain-text ``400 Invalid HTTP request received.`` and a
closed connection. Never a 5xx, never a hang: every exchange is bounded by
:data:`WAIT`, and after each test the server still answers ``/health``.

Heads that are too slow or too large are tested in ``tests/test_cli_serve_limits.py``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.test_cli_serve_limits import WAIT, connect, read_all, start, stop

MODEL = "mock-echo"
MAX_BODY = 1024 * 1024
BODY_TIMEOUT = 1.0
POLICY = f"""\
providers:
  mock: {{kind: mock}}
models:
  {MODEL}: {{provider: mock, model: mock-echo}}
server: {{max_body_bytes: {MAX_BODY}}}
"""
CHAT = b"/v1/chat/completions"
GOOD = b'{"model": "mock-echo", "messages": [{"role": "user", "content": "ping"}]}'
#: The protocol layer's answer to a request it cannot parse (uvicorn's, before any app sees the request).
UNPARSEABLE = b"Invalid HTTP request received."


@dataclass
class Answer:
    status: int
    reason: bytes
    headers: dict[bytes, bytes]
    body: bytes

    def error(self) -> dict[str, Any]:
        """The OpenAI error envelope this answer must be, less nothing: exactly its four fields."""
        assert self.headers[b"content-type"] == b"application/json", self
        envelope = json.loads(self.body)
        assert set(envelope) == {"error"}
        error: dict[str, Any] = envelope["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]
        return error


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    _, status, reason = status_line.split(b" ", 2)
    headers = {name.lower(): value for name, _, value in (line.partition(b": ") for line in lines)}
    return Answer(int(status), reason, headers, body)


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One server: the mock, bodies of 1 MiB at most, 1 s for a body."""
    config = tmp_path_factory.mktemp("hostile") / "policies.yaml"
    config.write_text(POLICY)
    process, port = start("--body-timeout", str(BODY_TIMEOUT), config=config)
    try:
        yield port
    finally:
        stop(process)


@pytest.fixture(autouse=True)
def still_up(port: int) -> Iterator[None]:
    """After each test, the server answers as before."""
    yield
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=WAIT).json() == {"status": "ok"}


def exchange(port: int, request: bytes) -> Answer:
    """Send ``request`` on a fresh connection; the whole answer, up to the server closing the connection."""
    with connect(port) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            sock.sendall(request)
        return parse(read_all(sock))


def post(body: bytes, path: bytes = CHAT, content_type: bytes = b"application/json", extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: %s\r\n" % (path, content_type)
    return head + b"Content-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def request(method: bytes, path: bytes, extra: bytes = b"") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n" % (method, path, extra)


def assert_unparseable(answer: Answer) -> None:
    assert (answer.status, answer.headers[b"content-type"], answer.body) == (
        400,
        b"text/plain; charset=utf-8",
        UNPARSEABLE,
    )


def test_a_body_that_is_not_utf_8_gets_400(port: int) -> None:
    answer = exchange(port, post(b'{"model": "mock-echo", "messages": [{"role": "user", "content": "\xff\xfe"}]}'))
    assert answer.status == 400
    error = answer.error()
    assert error["message"].startswith("We could not parse the JSON body of your request.")
    assert "not valid UTF-8" in error["message"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)


@pytest.mark.parametrize("path", [CHAT, b"/v1/responses", b"/v1/embeddings"])
@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b"42", b"-0.5", b'"a string"', b"null", b"true"])
def test_a_body_that_is_not_an_object_gets_400(port: int, path: bytes, body: bytes) -> None:
    answer = exchange(port, post(body, path))
    assert answer.status == 400
    assert answer.error() == {
        "message": "The request body must be a JSON object.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"[" * 100_000],
    ids=["arrays", "objects", "unclosed"],
)
def test_a_body_nested_100000_deep_gets_400(port: int, body: bytes) -> None:
    answer = exchange(port, post(body))
    assert answer.status == 400
    assert answer.error()["message"].startswith("We could not parse the JSON body of your request.")


def test_a_body_nested_just_past_the_gateway_bound_gets_400_naming_it(port: int) -> None:
    """The JSON parser takes more levels than the gateway does: 65 levels are parsed, then refused."""
    messages = [{"role": "user", "content": "ping", "extra": json.loads("[" * 62 + "]" * 62)}]
    answer = exchange(port, post(json.dumps({"model": MODEL, "messages": messages}).encode()))
    assert answer.status == 400
    assert answer.error() == {
        "message": "The request body is nested deeper than 64 levels.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_value",
    }


@pytest.mark.parametrize("literal", [b"9" * 5000, b"1e999999", b"-1e400"], ids=["5000-digits", "1e999999", "-1e400"])
def test_a_number_too_large_for_a_double_gets_400(port: int, literal: bytes) -> None:
    body = b'{"model": "mock-echo", "max_tokens": %s, "messages": [{"role": "user", "content": "ping"}]}' % literal
    answer = exchange(port, post(body))
    assert answer.status == 400
    assert "number is infinity when parsed as double" in answer.error()["message"]


def test_an_integer_past_64_bits_is_a_number_and_gets_400_naming_the_field(port: int) -> None:
    body = b'{"model": "mock-echo", "seed": 123456789012345678901234567890, "messages": [{"role": "user", "content": "ping"}]}'
    answer = exchange(port, post(body))
    assert answer.status == 400
    assert answer.error() == {
        "message": "Invalid type for 'seed': expected an integer, but got a number instead.",
        "type": "invalid_request_error",
        "param": "seed",
        "code": "invalid_type",
    }


def test_of_duplicate_keys_the_last_counts(port: int) -> None:
    """As in Python's ``json`` and OpenAI's SDKs: one reading, so the upstream can never see another model."""
    known_last = b'{"model": "nope", "model": "mock-echo", "messages": [{"role": "user", "content": "ping"}]}'
    unknown_last = b'{"model": "mock-echo", "model": "nope", "messages": [{"role": "user", "content": "ping"}]}'
    served, refused = exchange(port, post(known_last)), exchange(port, post(unknown_last))
    assert served.status == 200 and json.loads(served.body)["model"] == MODEL
    assert refused.status == 404
    assert refused.error()["message"] == "The model `nope` does not exist or you do not have access to it."


@pytest.mark.parametrize("path", [CHAT, b"/v1/responses", b"/v1/embeddings"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"application/x-www-form-urlencoded", b"model=mock-echo&messages=ping"),
        (b"text/plain;charset=UTF-8", GOOD),
        (b"multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--x--'),
    ],
    ids=["form", "text", "multipart"],
)
def test_a_body_declared_as_anything_but_json_gets_415(
    port: int, path: bytes, content_type: bytes, body: bytes
) -> None:
    answer = exchange(port, post(body, path, content_type=content_type))
    assert answer.status == 415
    media = content_type.split(b";")[0].decode()
    assert answer.error() == {
        "message": f"Unsupported Content-Type '{media}': the request body must be JSON, sent as application/json.",
        "type": "invalid_request_error",
        "param": None,
        "code": "unsupported_media_type",
    }


@pytest.mark.parametrize(
    "content_type",
    [b"application/json; charset=utf-8", b"Application/JSON", b"application/vnd.api+json", b"application/json ;q=1"],
)
def test_a_body_declared_as_json_in_any_spelling_is_served(port: int, content_type: bytes) -> None:
    answer = exchange(port, post(GOOD, content_type=content_type))
    assert (answer.status, json.loads(answer.body)["model"]) == (200, MODEL)


def test_a_body_without_a_content_type_is_read_as_json(port: int) -> None:
    raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    answer = exchange(port, raw + b"Content-Length: %d\r\n\r\n" % len(GOOD) + GOOD)
    assert (answer.status, json.loads(answer.body)["model"]) == (200, MODEL)


def test_a_body_over_the_limit_is_refused_before_it_is_sent(port: int) -> None:
    """The Content-Length says too much: 413 comes back with only the head sent."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % (100 * 1024 * 1024)
    with connect(port) as sock:
        sock.sendall(head)
        answer = parse(read_all(sock))
    assert answer.status == 413
    assert answer.error() == {
        "message": f"The request body is larger than the limit of {MAX_BODY} bytes.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }


def test_a_chunked_body_over_the_limit_gets_413(port: int) -> None:
    """Without a Content-Length the body is counted as it comes, and refused once past the limit."""
    chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    answer = exchange(port, head + chunk * (MAX_BODY // 16384 + 1) + b"0\r\n\r\n")
    assert answer.status == 413
    assert answer.error()["code"] == "request_too_large"


def test_a_body_trickled_past_the_body_timeout_gets_408(port: int) -> None:
    """A byte every 0.1 s, for a body of 100: the deadline (1 s from the head) passes first."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    started = time.monotonic()
    with connect(port) as sock:
        sock.sendall(head)
        sock.settimeout(0.1)
        received = b""
        for _ in range(int(WAIT / 0.1)):
            try:
                received = sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(b" ")
        sock.settimeout(WAIT)
        answer = parse(received + read_all(sock))
    assert BODY_TIMEOUT <= time.monotonic() - started < BODY_TIMEOUT + 2
    assert_late_body(answer)


def test_a_chunked_body_shorter_than_its_chunk_size_gets_408(port: int) -> None:
    """The chunk says 16 bytes, 3 come: the server waits for the rest until the body timeout, then answers."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    started = time.monotonic()
    answer = exchange(port, head + b"10\r\nabc\r\n")
    assert BODY_TIMEOUT <= time.monotonic() - started < BODY_TIMEOUT + 2
    assert_late_body(answer)


def assert_late_body(answer: Answer) -> None:
    assert (answer.status, answer.headers[b"connection"]) == (408, b"close")
    assert answer.error() == {
        "message": f"The request body did not arrive in full within {BODY_TIMEOUT:g} s of the request head.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", b"-3\r\nabc\r\n0\r\n\r\n"],
    ids=["not-hex", "past-64-bits", "negative"],
)
def test_a_chunk_size_that_is_not_one_gets_the_protocol_400(port: int, chunks: bytes) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert_unparseable(exchange(port, head + chunks))


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: abc\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
    ],
    ids=["length-and-chunked", "not-a-number", "negative", "two-lengths"],
)
def test_a_body_length_that_is_ambiguous_gets_the_protocol_400(port: int, header: bytes) -> None:
    """Nothing a proxy in front could read differently (request smuggling) reaches the gateway."""
    assert_unparseable(exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n" + GOOD))


@pytest.mark.parametrize(
    "value", [b"a\x00b", b"Bearer sk-\x00x", b"a\x01b", b"a\x7fb"], ids=["nul", "nul-in-key", "soh", "del"]
)
def test_a_control_byte_in_a_header_value_gets_the_protocol_400(port: int, value: bytes) -> None:
    assert_unparseable(exchange(port, post(GOOD, extra=b"Authorization: " + value + b"\r\n")))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"POST", b"/v1/nothing"),
        (b"GET", b"/v1"),
        (b"GET", b"/nothing"),
        (b"POST", b"/chat/completions"),
        (b"GET", b"/v1/../health"),
    ],
)
def test_an_unknown_path_gets_404(port: int, method: bytes, path: bytes) -> None:
    answer = exchange(port, request(method, path, b"Content-Length: 0\r\n"))
    assert answer.status == 404
    assert answer.error() == {
        "message": f"Invalid URL ({method.decode()} {path.decode()})",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        (b"GET", CHAT, b"POST"),
        (b"PUT", b"/v1/responses", b"POST"),
        (b"DELETE", b"/v1/embeddings", b"POST"),
        (b"POST", b"/v1/models", b"GET"),
        (b"PATCH", b"/v1/models/mock-echo", b"GET"),
        (b"OPTIONS", CHAT, b"POST"),
        (b"POST", b"/health", b"GET, HEAD"),
    ],
)
def test_a_wrong_method_gets_405_with_allow(port: int, method: bytes, path: bytes, allowed: bytes) -> None:
    answer = exchange(port, request(method, path, b"Content-Length: 0\r\n"))
    assert (answer.status, answer.headers[b"allow"]) == (405, allowed)
    assert answer.error() == {
        "message": f"Method {method.decode()} is not allowed for {path.decode()}; use {allowed.decode()}.",
        "type": "invalid_request_error",
        "param": None,
        "code": "method_not_allowed",
    }


@pytest.mark.parametrize(("path", "allowed"), [(CHAT, b"POST"), (b"/v1/models", b"GET")])
def test_head_gets_405_with_allow_and_no_body(port: int, path: bytes, allowed: bytes) -> None:
    """A HEAD answer never has a body; its length is the one a GET of the error would have."""
    answer = exchange(port, request(b"HEAD", path))
    assert (answer.status, answer.headers[b"allow"], answer.body) == (405, allowed, b"")
    assert int(answer.headers[b"content-length"]) > 0


def test_a_query_string_changes_nothing(port: int) -> None:
    """Query parameters are not read: junk in them (bad escapes, NUL, empty names) does not change the answer."""
    plain = exchange(port, post(GOOD))
    junk = exchange(port, post(GOOD, path=CHAT + b"?model=nope&stream=true&%ff=%00&&=&a"))
    assert (plain.status, junk.status) == (200, 200)
    assert json.loads(junk.body) == json.loads(plain.body)
    models = exchange(port, request(b"GET", b"/v1/models?limit=-1&after=%00&order=%zz"))
    assert models.status == 200 and [m["id"] for m in json.loads(models.body)["data"]] == [MODEL]


def test_a_nul_in_the_path_is_a_model_that_does_not_exist(port: int) -> None:
    answer = exchange(port, request(b"GET", b"/v1/models/%00"))
    assert answer.status == 404
    assert answer.error()["message"] == "The model `\x00` does not exist or you do not have access to it."


def test_bad_requests_pipelined_on_one_connection_get_one_answer_each(port: int) -> None:
    """Three bad requests then a good one, pipelined on one kept-alive connection: each its own answer."""
    keep = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    )
    bodies = [b"[]", b"{bad", b'{"model": "nope", "messages": [{"role": "user", "content": "ping"}]}', GOOD]
    pipelined = b"".join(keep % len(body) + body for body in bodies[:-1])
    pipelined += post(GOOD)  # the last one closes the connection
    with connect(port) as sock:
        sock.sendall(pipelined)
        raw = read_all(sock)
    statuses = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == [400, 400, 404, 200]


def test_a_connection_dropped_mid_body_leaves_the_server_serving(port: int) -> None:
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model":')
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
        sock.close()
    assert exchange(port, post(GOOD)).status == 200
