"""``sse_events`` (SSE from network reads of any size) finds exactly what a plain line-by-line reader finds."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from unimw.wire import MAX_SSE_EVENT, sse_events

pytestmark = pytest.mark.anyio

BODIES = {
    "openai": b"".join(b'data: {"i":%d}\n\n' % i for i in range(20)) + b"data: [DONE]\n\n",
    "crlf": b'data: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\ndata: [DONE]\r\n\r\n',
    "named-multiline-comments": (
        b': keep-alive\n\nevent: message_start\ndata: {"a":\ndata: 1}\n\nevent: ping\n\n'
        b"id: 7\nretry: 10\ndata:no-space\n\n\n\ndata: tail-without-blank-line"
    ),
    "crlf-tail": b"event: x\r\ndata: one\r\n\r\ndata: two\r\n",
}


async def _pieces(body: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        yield body[start:end]


async def sse_data(lines: AsyncIterator[bytes]) -> AsyncIterator[tuple[str | None, bytes]]:
    """The reference: the SSE rules applied one line at a time, as the spec states them."""
    event: str | None = None
    data: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data = None, []
        elif line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    if data:
        yield event, b"\n".join(data)


async def _lines(body: bytes) -> AsyncIterator[bytes]:
    for line in body.splitlines(keepends=True):
        yield line


@pytest.mark.parametrize("name", list(BODIES))
async def test_same_events_as_sse_data_however_the_body_is_cut(name: str) -> None:
    body = BODIES[name]
    expected = [event async for event in sse_data(_lines(body))]
    assert expected
    rng = random.Random(name)
    cuttings = [[], list(range(1, len(body)))] + [
        sorted(rng.sample(range(1, len(body)), rng.randint(1, 12))) for _ in range(200)
    ]
    for cuts in cuttings:
        assert [event async for event in sse_events(_pieces(body, cuts))] == expected, cuts


async def test_an_endless_event_is_refused() -> None:
    async def endless() -> AsyncIterator[bytes]:
        for _ in range(MAX_SSE_EVENT // 65536 + 2):
            yield b"x" * 65536

    with pytest.raises(ValueError, match="longer than"):
        async for _ in sse_events(endless()):
            pass
