"""What a long stream leaves in memory: the watches count its output instead of keeping it, and a
continuation keeps at most :data:`~unimw.continuation.MAX_PREFILL` characters of it.

Memory is read with tracemalloc around feeding ten megabytes of distinct
text through; the margin allowed is a tenth of that, so the bound shows
whatever the allocator does.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from unimw.adapters.base import Target
from unimw.continuation import MAX_PREFILL, ContinuedStream, Resumed
from unimw.errors import UpstreamError
from unimw.operations.chat import ChatStreamWatch
from unimw.operations.responses import ResponsesWatch
from unimw.usage import estimate_text_tokens
from unimw.wire import JSON, chunk

pytestmark = pytest.mark.anyio

PIECES = 5_000
PIECE = 2_000  # bytes: 10 MB in all
TARGET = Target("claude", "claude-sonnet-4-5", "anthropic")


def pieces() -> Iterator[str]:
    """Distinct strings (a kept one cannot share memory with the next), ASCII and not."""
    for i in range(PIECES):
        yield f"{i:08d}" + ("é" if i % 2 else "e") * (PIECE - 8)


def retained(feed: Callable[[], Any]) -> int:
    """Bytes still allocated once ``feed`` returned, less what it returns being collected."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = feed()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return after - before


def test_the_chat_watch_keeps_no_text_of_a_long_stream() -> None:
    def feed() -> ChatStreamWatch:
        watch = ChatStreamWatch(wants_usage=False, assemble=False)
        for text in pieces():
            watch.see(chunk("c", "m", 0, {"content": text}))
        return watch

    assert retained(feed) < PIECES * PIECE // 10


def test_the_responses_watch_keeps_no_text_of_a_long_stream() -> None:
    def feed() -> ResponsesWatch:
        watch = ResponsesWatch()
        for i, text in enumerate(pieces()):
            watch.see({"type": "response.output_text.delta", "sequence_number": i, "delta": text})
        return watch

    assert retained(feed) < PIECES * PIECE // 10


def test_the_chat_watch_estimates_what_it_counted_as_the_whole_text_would_be() -> None:
    watch = ChatStreamWatch(wants_usage=False, assemble=False)
    texts = list(pieces())[:100]
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": "ü"}'}}
    for text in texts:
        watch.see(chunk("c", "m", 0, {"content": text}))
    watch.see(chunk("c", "m", 0, {"tool_calls": [call]}))
    watch.see(chunk("c", "m", 0, {"reasoning_content": "thinking…", "refusal": "no"}))
    answer = "".join(texts) + 'f{"a": "ü"}'
    assert watch.produced_tokens() == estimate_text_tokens(answer)
    assert watch.output_bytes() == len(answer.encode()) + len("thinking…".encode()) + 2


def test_the_responses_watch_estimates_text_and_arguments_and_bounds_every_text_delta() -> None:
    watch = ResponsesWatch()
    events = [
        ("response.output_text.delta", "Grüße"),
        ("response.function_call_arguments.delta", '{"a": 1}'),
        ("response.reasoning_summary_text.delta", "hmm"),
        ("response.refusal.delta", "no"),
        ("response.audio.delta", "UklGRg=="),  # audio, base64: not text
    ]
    for i, (kind, delta) in enumerate(events):
        watch.see({"type": kind, "sequence_number": i, "delta": delta})
    assert watch.produced_tokens() == estimate_text_tokens('Grüße{"a": 1}')
    assert watch.output_bytes() == len('Grüße{"a": 1}hmmno'.encode())


# ── a continuation keeps what it can prefill, and no more ─────────────────────


def continued(texts: list[str], resumed: list[str]) -> ContinuedStream:
    """A stream of ``texts`` that then fails as a 502 would; a resume records that it was asked, and answers."""

    async def chunks() -> AsyncIterator[JSON]:
        yield chunk("c", "m", 0, {"role": "assistant", "content": ""})
        for text in texts:
            yield chunk("c", "m", 0, {"content": text})
        raise UpstreamError("The upstream broke the connection.", status=502)

    async def more() -> AsyncIterator[JSON]:
        yield chunk("c2", "m", 0, {"content": " and the rest."}, finish_reason="stop")

    async def resume(request_for: Callable[[Target], JSON], targets: tuple[Target, ...]) -> tuple[Target, Any]:
        prefill = request_for(targets[0])["messages"][-1]["content"]
        resumed.append(prefill)
        return targets[0], more()

    def heard(switch: Resumed) -> None:
        pass

    return ContinuedStream(
        chunks(),
        TARGET,
        {"model": "claude", "messages": [{"role": "user", "content": "Go on."}]},
        wants_usage=False,
        targets=(TARGET,),
        prefill={"claude": True},
        params={},
        resumes=1,
        resume=resume,
        prompt_tokens=lambda request: 5,
        on_resume=heard,
    )


async def test_a_stream_of_max_prefill_characters_is_continued_with_all_of_them() -> None:
    texts = ["x" * 1000] * (MAX_PREFILL // 1000)
    resumed: list[str] = []
    seen = [c async for c in continued(texts, resumed)]
    assert [len(p) for p in resumed] == [MAX_PREFILL]
    assert seen[-1]["choices"][0]["delta"]["content"] == " and the rest."


async def test_a_stream_past_max_prefill_characters_gives_up_with_the_original_error() -> None:
    texts = ["x" * 1000] * (MAX_PREFILL // 1000) + ["y"]
    resumed: list[str] = []
    stream = continued(texts, resumed)
    with pytest.raises(UpstreamError) as caught:
        async for _ in stream:
            pass
    assert (caught.value.status, caught.value.message, resumed) == (502, "The upstream broke the connection.", [])


async def test_a_continued_stream_lets_go_of_its_text_past_max_prefill() -> None:
    resumed: list[str] = []
    stream = continued(list(pieces()), resumed)

    async def feed() -> ContinuedStream:
        for _ in range(PIECES + 1):
            await anext(stream)
        return stream

    kept: list[ContinuedStream] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept.append(await feed())
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < PIECES * PIECE // 10
    with pytest.raises(UpstreamError):
        await anext(stream)
    assert resumed == []
