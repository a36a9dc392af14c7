"""What the WSGI door adds per call over the ASGI door, on the same policy, measured in one run.

    python -m bench.wsgi            # a few seconds
    python -m bench.wsgi --quick    # tiny counts

Each door is called as its server calls it, with no socket, so the figures
are the doors' own: the ASGI door (``GatewayApp``) with a scope and
receive/send on this process's event loop; the WSGI door with an environ
and ``start_response`` from this thread, its body iterated to the end and
closed, while the gateway runs on the door's own loop thread. The
difference is what running the gateway under WSGI costs: a2wsgi's hand-offs
between the server's thread and the loop (one per message each way) and
the hang-up watch. The policy is the offline mock provider, for a whole
answer and for a stream; interleaved rounds, p50 over all calls.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from collections.abc import Iterable
from typing import Any

import orjson
from a2wsgi import ASGIMiddleware

from bench.measure import Plan, Stats, contest
from unimw import Gateway, GatewayApp
from unimw.wsgi import UnimwWSGIMiddleware, event_loop

POLICY: dict[str, Any] = {
    "providers": {"mock": {"kind": "mock"}},
    "models": {"mock-echo": {"provider": "mock", "model": "mock-echo"}},
}
CHAT: dict[str, Any] = {
    "model": "mock-echo",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}
PATH = "/v1/chat/completions"


def _scope(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def _environ(body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def asgi_call(app: Any, body: bytes) -> Any:
    """One call through the ASGI door; checks it was answered 200."""

    async def call() -> None:
        sent = False
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client stays until the answer is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(_scope(body), receive, send)
        if statuses != [200]:
            raise RuntimeError(f"the ASGI door answered {statuses}")

    return call


def wsgi_call(door: Any, body: bytes) -> Any:
    """One call through the WSGI door, as a WSGI server makes it; checks it was answered 200."""

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if not status.startswith("200"):
            raise RuntimeError(f"the WSGI door answered {status}")
        return None

    async def call() -> None:
        chunks: Iterable[bytes] = door(_environ(body), start_response)
        try:
            for _ in chunks:
                pass
        finally:
            getattr(chunks, "close", lambda: None)()

    return call


async def empty_app(scope: Any, receive: Any, send: Any) -> None:
    """The least an ASGI app answers: the bridge's own cost, with no gateway behind it."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def measure(plan: Plan) -> dict[str, dict[str, Stats]]:
    async with Gateway.from_dict(POLICY) as asgi_gateway:
        door = UnimwWSGIMiddleware(lambda environ, start_response: [], gateway=Gateway.from_dict(POLICY))
        try:
            app = GatewayApp(asgi_gateway)
            results = {}
            for kind, request in (("chat", CHAT), ("stream", {**CHAT, "stream": True})):
                body = orjson.dumps(request)
                calls = {"asgi": asgi_call(app, body), "wsgi": wsgi_call(door, body)}
                results[kind] = await contest(calls, plan)
            empty = orjson.dumps({})
            bridge = ASGIMiddleware(empty_app, loop=event_loop())
            calls = {"asgi": asgi_call(empty_app, empty), "wsgi": wsgi_call(bridge, empty)}
            results["a2wsgi alone, empty app"] = await contest(calls, plan)
        finally:
            door.run(door.gateway.aclose())
    return results


def report(results: dict[str, dict[str, Stats]]) -> str:
    lines = ["per call, in process, p50 over all calls (chat, stream: the mock provider through each door):"]
    for kind, stats in results.items():
        asgi, wsgi = stats["asgi"].p50, stats["wsgi"].p50
        lines.append(
            f"  {kind:<24}  asgi {asgi:8.1f} µs   wsgi {wsgi:8.1f} µs   "
            f"added {wsgi - asgi:+8.1f} µs   ratio wsgi/asgi {wsgi / asgi:5.2f}   (n={stats['wsgi'].n} each)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wsgi", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    args = parser.parse_args(argv)
    plan = (
        Plan(rounds=2, count=20, warmup=5, seconds=2)
        if args.quick
        else Plan(rounds=6, count=1000, warmup=200, seconds=5)
    )
    print(report(asyncio.run(measure(plan))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
