"""OpenAI wire format: JSON codec, SSE framing, and object builders.

Request and response bodies stay plain dicts end to end: they are parsed
once by orjson at the door, translated by adapters, and serialised once on
the way out. Building pydantic objects for every chunk would cost more than
the rest of the gateway together.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

import orjson

JSON = dict[str, Any]

SSE_DONE = b"data: [DONE]\n\n"
#: On a chunk, unimw's own: how many upstream events before it could not be parsed and were skipped. The
#: operation's stream watch takes it off before the chunk goes on (the span counts them).
SKIPPED_EVENTS = "unimw_skipped_events"


def skipped_only(count: int) -> JSON:
    """An item with no chunk, only the count of events skipped since the last chunk: the stream ended (or
    failed) before another chunk came to carry it. Never the first item of a stream (the dispatcher would
    take it for the first chunk); the stream watch counts it and passes nothing on."""
    return {SKIPPED_EVENTS: count}


# orjson's own functions rather than wrappers: they run once per call and once per streamed chunk.
dumps: Callable[[Any], bytes] = orjson.dumps
loads: Callable[[bytes | bytearray | memoryview | str], Any] = orjson.loads


def sse_event(obj: Any) -> bytes:
    """One data-only SSE event, as OpenAI frames chat chunks."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def aclose(iterable: AsyncIterable[Any]) -> None:
    """Close ``iterable`` now if it is an async generator (or anything with ``aclose``).

    A reader that stops early (at ``[DONE]``) leaves the generators under it
    suspended; unclosed, each is finalised later by the event loop through a
    thread-safe callback (a self-pipe write and an extra task per generator,
    on every stream).
    """
    close = getattr(iterable, "aclose", None)
    if close is not None:
        await close()


async def aiter_of(items: Iterable[Any]) -> AsyncIterator[Any]:
    """``items`` as an async iterator (a cached answer replayed as a stream)."""
    for item in items:
        yield item


#: Longest SSE event ``sse_events`` buffers before giving up on the stream.
MAX_SSE_EVENT = 16 * 1024 * 1024


async def sse_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[str | None, bytes]]:
    """Yield ``(event, data)`` for each SSE event in a body read in pieces of any size.

    Handles multi-line ``data:`` fields, ``event:`` names and comments, so
    one reader serves data-only and named-event streams alike. One ``await`` per network read rather than one per line: a fast upstream's
    stream often arrives whole in one read, and per-line reads then cost
    about as much as the rest of the gateway's work on each chunk.
    """
    buffer = bytearray()
    held = b""  # a trailing "\r" whose "\n" may come with the next read
    try:
        async for chunk in chunks:
            if held or b"\r" in chunk:
                chunk, held = held + chunk, b""
                if chunk.endswith(b"\r"):
                    chunk, held = chunk[:-1], b"\r"
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            scan = max(len(buffer) - 1, 0)  # only new bytes can complete a separator
            buffer += chunk
            if buffer.find(b"\n\n", scan) < 0:
                if len(buffer) > MAX_SSE_EVENT:
                    raise ValueError(f"an SSE event is longer than {MAX_SSE_EVENT} bytes")
                continue
            last = buffer.rfind(b"\n\n")
            blocks = bytes(buffer[:last]).split(b"\n\n")
            del buffer[: last + 2]
            for block in blocks:
                if item := _sse_block(block):
                    yield item
    finally:
        await aclose(chunks)
    if buffer and (item := _sse_block(bytes(buffer))):
        yield item


def _sse_block(block: bytes) -> tuple[str | None, bytes] | None:
    """The event in the lines between two blank lines, or ``None`` if it carries no data."""
    if block.startswith(b"data: ") and b"\n" not in block:
        return None, block[6:]  # nearly every OpenAI-style event: one data line
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    return (event, b"\n".join(data)) if data else None


def completion_id() -> str:
    return "chatcmpl-" + _random_hex()


def request_id() -> str:
    return "req_" + _random_hex()


def _random_hex() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex at a third of its cost (no UUID object).
    return os.urandom(16).hex()


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, **details: Any) -> JSON:
    """A ``CompletionUsage`` object."""
    out: JSON = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    out.update(details)
    return out


def chunk(
    id: str,
    model: str,
    created: int,
    delta: JSON | None = None,
    *,
    finish_reason: str | None = None,
    index: int = 0,
) -> JSON:
    """A ``chat.completion.chunk`` with one choice."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "delta": delta if delta is not None else {},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }


def usage_chunk(id: str, model: str, created: int, usage: JSON) -> JSON:
    """The trailing chunk ``stream_options.include_usage`` asks for."""
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def model_object(id: str, owned_by: str, created: int = 0) -> JSON:
    return {"id": id, "object": "model", "created": created, "owned_by": owned_by}
