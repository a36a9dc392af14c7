"""A fake OpenAI-compatible upstream on raw asyncio: ``python -m bench.upstream --port N``.

It parses only what it must (request line, headers, a ``Content-Length``
body), keeps connections alive, and answers from bytes built once at start:

* ``POST /v1/chat/completions`` — a fixed small ``chat.completion``; with
  ``"stream": true``, a 50-chunk data-only SSE stream in chunked transfer
  encoding (``usage: null`` on each chunk and a trailing usage chunk when
  ``stream_options.include_usage`` is set), then ``data: [DONE]``.
* ``GET /health`` — ``{"status": "ok"}``; ``GET /stats`` — requests answered,
  and connections accepted, so a benchmark can tell a cache hit from a call
  that reached the upstream, and a pooled connection from a new one.

A call costs a few tens of µs here, so the figures measured through it are
the client's and the gateway's, not its own. Once listening it prints the
port alone on a line; it exits on SIGTERM/SIGINT or after ``--lifetime``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

STREAM_CHUNKS = 50
MODEL = "bench-model"
CREATED = 1741570283
_MAX_HEAD = 64 * 1024
_MAX_BODY = 8 * 1024 * 1024


def completion_body() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Hello! Paris is the capital of France.",
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 14, "completion_tokens": 9, "total_tokens": 23},
            "system_fingerprint": "fp_bench",
        }
    )


def stream_events(include_usage: bool) -> list[bytes]:
    """The SSE events of one streamed answer: ``STREAM_CHUNKS`` chunks, maybe usage, ``[DONE]``."""
    events = []
    for i in range(STREAM_CHUNKS):
        if i == 0:
            delta: dict[str, object] = {"role": "assistant", "content": ""}
        elif i == STREAM_CHUNKS - 1:
            delta = {}
        else:
            delta = {"content": f"tok{i} "}
        chunk: dict[str, object] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": "stop" if i == STREAM_CHUNKS - 1 else None,
                }
            ],
        }
        if include_usage:
            chunk["usage"] = None
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    if include_usage:
        usage = {"prompt_tokens": 14, "completion_tokens": STREAM_CHUNKS - 2, "total_tokens": STREAM_CHUNKS + 12}
        last = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}
        events.append(b"data: " + orjson.dumps({**last, "choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (status.encode(), content_type, len(body))
    return head + body


def _chunked(events: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    frames = [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
    return head + b"".join(frames) + b"0\r\n\r\n"


class Answers:
    """Every response, as bytes ready to write, and a count of requests answered."""

    def __init__(self) -> None:
        self.completion = _response("200 OK", b"application/json", completion_body())
        self.stream = _chunked(stream_events(include_usage=False))
        self.stream_usage = _chunked(stream_events(include_usage=True))
        self.health = _response("200 OK", b"application/json", b'{"status":"ok"}')
        self.not_found = _response("404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')
        self.bad = _response("400 Bad Request", b"application/json", b'{"error":{"message":"bad request"}}')
        self.requests = 0
        self.chats = 0
        self.connections = 0

    def answer(self, method: bytes, path: bytes, body: bytes) -> bytes:
        self.requests += 1
        if method == b"POST" and path == b"/v1/chat/completions":
            self.chats += 1
            # Most bodies say nothing about streaming: skip the parse for those.
            if b'"stream"' not in body:
                return self.completion
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError:
                return self.bad
            if not request.get("stream"):
                return self.completion
            options = request.get("stream_options") or {}
            return self.stream_usage if options.get("include_usage") else self.stream
        if method == b"GET" and path == b"/health":
            return self.health
        if method == b"GET" and path == b"/stats":
            stats = {"requests": self.requests, "chats": self.chats, "connections": self.connections}
            return _response("200 OK", b"application/json", orjson.dumps(stats))
        return self.not_found


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; pipelined requests are answered in order."""

    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._answers.connections += 1

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and self._next_request():
            pass

    def _next_request(self) -> bool:
        """Answer the first complete request in the buffer; False when it is not complete yet."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._fail()
            return False
        lines = bytes(buffer[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self._fail()
            return False
        method, path, version = parts
        length, close = 0, version == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value) if value.strip().isdigit() else -1
            elif name == b"connection":
                close = value.strip().lower() != b"keep-alive"
            elif name == b"transfer-encoding":
                length = -1  # chunked request bodies: no benchmark client sends them
        if not 0 <= length <= _MAX_BODY:
            self._fail()
            return False
        total = end + 4 + length
        if len(buffer) < total:
            return False
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        assert self._transport is not None
        self._transport.write(self._answers.answer(method, path.partition(b"?")[0], body))
        if close:
            self._transport.close()
            self._transport = None
            return False
        return True

    def _fail(self) -> None:
        assert self._transport is not None
        self._transport.write(self._answers.bad)
        self._transport.close()
        self._transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(host: str, port: int, lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers()
    server = await loop.create_server(lambda: UpstreamProtocol(answers), host, port, reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(server.sockets[0].getsockname()[1], flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=lifetime)
    except TimeoutError:
        print("bench.upstream: lifetime over, exiting", file=sys.stderr)
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback only (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds (default 3600)")
    args = parser.parse_args(argv)
    if not (args.host.startswith("127.") or args.host in ("::1", "localhost")):
        parser.error("the fake upstream listens on loopback addresses only")
    asyncio.run(serve(args.host, args.port, args.lifetime))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
