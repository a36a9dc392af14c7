"""A fake OpenAI-compatible upstream that fails on purpose: ``python -m bench.faulty --port N --seed S``.

A streamed request that ends with an assistant turn and says
``continue_final_message`` (vLLM's way of asking for a continuation) is
answered from where that turn leaves the text, as vLLM continues it.

Each ``POST /v1/chat/completions`` draws one outcome from a seeded random
generator, weighted by ``FAULTS`` (or answers normally); the draws, and what
was answered, are counted at ``GET /stats``. Every normal answer, plain or
streamed, carries the same text as :mod:`bench.upstream`'s, so a client can
check that an answer it got through a fallback is complete.

The faults are the failure classes a gateway meets in production:

``429``       rate limited, ``Retry-After: 0``
``500``       one internal error
``503``       overloaded
``reset``     the connection closed before any response header
``cut``       a stream closed after half of its chunks, without a final chunk
``malformed`` a stream with one unparseable event in the middle, otherwise whole
``no_done``   a whole stream without its closing ``data: [DONE]``

It is built on aiohttp's server (not raw asyncio like :mod:`bench.upstream`):
here correctness of the faults matters more than the last microsecond.
Once listening it prints the port alone on a line; it exits on SIGTERM/SIGINT
or after ``--lifetime``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import signal
import socket
import sys
from collections import Counter

import orjson
from aiohttp import web

from bench.upstream import STREAM_CHUNKS, completion_body, stream_events

#: Relative weight of each outcome of a chat request.
FAULTS: dict[str, float] = {
    "ok": 50,
    "429": 8,
    "500": 8,
    "503": 8,
    "reset": 6,
    "cut": 10,
    "malformed": 5,
    "no_done": 5,
}


class Faults:
    """The seeded draw and the tally of what was answered."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._names = list(FAULTS)
        self._weights = list(FAULTS.values())
        self.counts: Counter[str] = Counter()

    def draw(self) -> str:
        outcome = self._rng.choices(self._names, self._weights)[0]
        self.counts[outcome] += 1
        return outcome


def _error(status: int, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = orjson.dumps({"error": {"message": f"injected {status}", "type": kind, "param": None, "code": None}})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


async def chat(request: web.Request) -> web.StreamResponse:
    faults: Faults = request.app["faults"]
    body = orjson.loads(await request.read())
    outcome = faults.draw()
    if outcome == "429":
        return _error(429, "rate_limit_exceeded", {"Retry-After": "0"})
    if outcome == "500":
        return _error(500, "server_error")
    if outcome == "503":
        return _error(503, "overloaded")
    if outcome == "reset":
        assert request.transport is not None
        request.transport.close()
        return web.Response()  # never written: the connection is gone
    if not body.get("stream"):
        return web.Response(body=completion_body(), content_type="application/json")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    prefill = _prefill(body)
    events = stream_events(include_usage) if prefill is None else continued_events(prefill, include_usage)
    if outcome == "cut":
        events = events[: len(events) // 2]
    elif outcome == "malformed":
        events.insert(len(events) // 2, b"data: {not json\n\n")
    elif outcome == "no_done":
        events = events[:-1]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for event in events:
        await response.write(event)
    if outcome == "cut":
        assert request.transport is not None
        request.transport.close()  # no terminating chunk: the client sees the body end early
        return response
    await response.write_eof()
    return response


def _prefill(body: dict[str, object]) -> str | None:
    """The final assistant turn a continuation request ends with (vLLM's ``continue_final_message``)."""
    messages = body.get("messages")
    if not body.get("continue_final_message") or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    return last["content"] if last.get("role") == "assistant" and isinstance(last.get("content"), str) else None


def continued_events(prefill: str, include_usage: bool) -> list[bytes]:
    """The stream of :func:`bench.upstream.stream_events` from where ``prefill`` leaves its text: its pieces
    after the prefill, then the finish, usage and ``[DONE]`` as in a whole stream."""
    whole = stream_events(include_usage)
    text = "".join(f"tok{i} " for i in range(1, STREAM_CHUNKS - 1))
    rest = text[len(prefill) :] if text.startswith(prefill) else text
    chunk = orjson.loads(whole[0].removeprefix(b"data: "))
    pieces = []
    for piece in re.findall(r"\s*\S+\s*", rest):
        chunk["choices"][0]["delta"] = {"content": piece}
        pieces.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    return [whole[0], *pieces, *whole[STREAM_CHUNKS - 1 :]]


async def stats(request: web.Request) -> web.Response:
    faults: Faults = request.app["faults"]
    return web.Response(body=orjson.dumps(dict(faults.counts)), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def serve(host: str, port: int, seed: int, lifetime: float) -> None:
    app = web.Application()
    app["faults"] = Faults(seed)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(sock.getsockname()[1], flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=lifetime)
    except TimeoutError:
        print("bench.faulty: lifetime over, exiting", file=sys.stderr)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faulty", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback only (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault draws (default 1)")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds (default 3600)")
    args = parser.parse_args(argv)
    if not (args.host.startswith("127.") or args.host in ("::1", "localhost")):
        parser.error("the fake upstream listens on loopback addresses only")
    asyncio.run(serve(args.host, args.port, args.seed, args.lifetime))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
