"""The calls being timed: the same chat request through each client, direct or via the gateway.

Every non-streaming call goes from a request dict to a response dict
(serialise, send, read, parse with orjson) so that the direct baselines do
the same work a gateway call does, and the difference is the gateway's.
Streamed calls read the whole stream: lines for the direct clients, chunk
dicts from the gateway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import httpx
import orjson

from bench.measure import Call, Probe
from bench.upstream import STREAM_CHUNKS
from unimw import Gateway

MODEL = "bench-model"
API_KEY = "sk-bench"
CHAT: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0,
}
STREAM: dict[str, Any] = {**CHAT, "stream": True}
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}


def policy(base_url: str, **sections: Any) -> dict[str, Any]:
    """One ``kind: openai`` provider on the fake upstream, serving ``bench-model``."""
    return {
        "providers": {"upstream": {"kind": "openai", "base_url": base_url, "api_key": API_KEY}},
        "models": {MODEL: {"provider": "upstream", "model": MODEL, "price": {"input": 1, "output": 2}}},
        **sections,
    }


class RawClient:
    """HTTP/1.1 over one asyncio stream: the least a Python client can do per call."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        return self._reader, self._writer

    async def post(self, path: str, body: bytes) -> bytes:
        """The response body; chunked bodies are de-chunked."""
        reader, writer = await self._connection()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self._host}:{self._port}\r\n"
            f"content-type: application/json\r\nauthorization: Bearer {API_KEY}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        headers = (await reader.readuntil(b"\r\n\r\n")).lower()
        if b"transfer-encoding: chunked" not in headers:
            start = headers.index(b"content-length:") + 15
            return await reader.readexactly(int(headers[start : headers.index(b"\r\n", start)]))
        parts = []
        while size := int(await reader.readuntil(b"\r\n"), 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        await reader.readexactly(2)
        return b"".join(parts)

    async def post_reads(self, path: str, body: bytes) -> int:
        """Send, then take network reads as they come until a chunked body's last frame; SSE events seen.

        No de-chunking and no line splitting: the least any client can do
        to read a stream, so the strictest baseline for a streamed call.
        """
        reader, writer = await self._connection()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self._host}:{self._port}\r\n"
            f"content-type: application/json\r\nauthorization: Bearer {API_KEY}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        events = 0
        tail = b""  # the last bytes seen, for a final frame split across two reads
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("the upstream closed the connection mid-stream")
            events += data.count(b"\n\n")
            tail = (tail + data)[-7:]
        return events

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
        self._reader = self._writer = None


def raw_chat(client: RawClient, path: str) -> Call:
    async def call() -> object:
        return orjson.loads(await client.post(path, orjson.dumps(CHAT)))

    return call


def raw_stream(client: RawClient, path: str) -> Call:
    async def call() -> object:
        return (await client.post(path, orjson.dumps(STREAM))).count(b"\n\n")

    return call


def raw_stream_chunks(client: RawClient, path: str) -> Call:
    async def call() -> object:
        return await client.post_reads(path, orjson.dumps(STREAM))

    return call


def aiohttp_chat(session: aiohttp.ClientSession, url: str) -> Call:
    async def call() -> object:
        async with session.post(url, data=orjson.dumps(CHAT), headers=HEADERS) as response:
            return orjson.loads(await response.read())

    return call


def aiohttp_stream(session: aiohttp.ClientSession, url: str) -> Call:
    async def call() -> object:
        lines = 0
        async with session.post(url, data=orjson.dumps(STREAM), headers=HEADERS) as response:
            async for _ in response.content:
                lines += 1
        return lines

    return call


def aiohttp_stream_chunks(session: aiohttp.ClientSession, url: str) -> Call:
    """The cheapest way aiohttp reads a stream: network reads as they come, no line splitting."""

    async def call() -> object:
        events = 0
        async with session.post(url, data=orjson.dumps(STREAM), headers=HEADERS) as response:
            async for chunk in response.content.iter_any():
                events += chunk.count(b"\n\n")
        return events

    return call


def aiohttp_ttfb(session: aiohttp.ClientSession, url: str) -> Probe:
    """µs from sending a streamed request to its first body bytes; the rest is read untimed."""

    async def probe() -> float:
        start = time.perf_counter_ns()
        async with session.post(url, data=orjson.dumps(STREAM), headers=HEADERS) as response:
            first = await response.content.readany()
            elapsed = (time.perf_counter_ns() - start) / 1000
            if response.status != 200 or not first:
                raise RuntimeError(f"{url} answered {response.status} with {first[:200]!r}")
            await response.content.read()
        return elapsed

    return probe


def httpx_chat(client: httpx.AsyncClient, url: str) -> Call:
    async def call() -> object:
        response = await client.post(url, content=orjson.dumps(CHAT), headers=HEADERS)
        return orjson.loads(response.content)

    return call


def httpx_stream(client: httpx.AsyncClient, url: str) -> Call:
    async def call() -> object:
        lines = 0
        async with client.stream("POST", url, content=orjson.dumps(STREAM), headers=HEADERS) as response:
            async for _ in response.aiter_lines():
                lines += 1
        return lines

    return call


def gateway_chat(gateway: Gateway, body: dict[str, Any] = CHAT, **kwargs: Any) -> Call:
    async def call() -> object:
        # A fresh top-level dict per call, as the HTTP door hands over a freshly parsed body.
        return await gateway.chat_completions(dict(body), **kwargs)

    return call


def gateway_stream(gateway: Gateway, **kwargs: Any) -> Call:
    async def call() -> object:
        chunks = await gateway.stream_chat_completions(dict(STREAM), **kwargs)
        count = 0
        async for _ in chunks:
            count += 1
        return count

    return call


async def check_stream(call: Call, expected: int = STREAM_CHUNKS) -> None:
    """Fail loudly if a streamed call does not see the whole stream (a bench bug, not a figure)."""
    seen = await call()
    if not isinstance(seen, int) or seen < expected:
        raise RuntimeError(f"a streamed call saw {seen!r} chunks/lines, expected at least {expected}")


async def aiohttp_load(url: str, connections: int, seconds: float, max_requests: int) -> tuple[int, float, int]:
    """``connections`` concurrent keep-alive clients posting the chat request for ``seconds``.

    The load client when ``wrk`` is not installed: (requests answered, elapsed seconds, non-200 answers).
    """
    done = errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        body = orjson.dumps(CHAT)
        start = time.monotonic()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal done, errors
            while done < max_requests and time.monotonic() < deadline:
                async with session.post(url, data=body, headers=HEADERS) as response:
                    await response.read()
                    errors += response.status != 200
                done += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        return done, time.monotonic() - start, errors
