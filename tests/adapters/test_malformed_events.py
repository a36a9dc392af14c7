"""An unparseable upstream stream event, on each vendor's wire: skipped and counted, or the stream's failure.

Streams come from the vendors' fixtures (an OpenAI one is written out here); a test puts an event whose data
is not a JSON object into one of them and compares what the adapter makes of it with what it makes of the
whole stream. ``created`` is left out of the comparisons: it is the clock's second at translation time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from unimw.adapters import anthropic, gemini, openai
from unimw.adapters.anthropic import LOST_EVENT
from unimw.errors import UpstreamError, UpstreamUnavailable
from unimw.wire import JSON, SKIPPED_EVENTS, dumps, sse_events

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent.parent / "fixtures"
Event = tuple[str | None, bytes]
GARBAGE = b"{not json"


def _chunk(delta: JSON, finish: str | None = None, **extra: Any) -> JSON:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    head = {"id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion.chunk"}
    return {**head, "created": 1741570283, "model": "gpt-4o-2024-08-06", "choices": [choice], **extra}


#: A streamed OpenAI answer with ``include_usage``, as the API documents it.
OPENAI: list[Event] = [
    *[
        (None, dumps(c))
        for c in (
            _chunk({"role": "assistant", "content": ""}, usage=None),
            _chunk({"content": "The capital"}, usage=None),
            _chunk({"content": " of France is Paris."}, usage=None),
            _chunk({}, "stop", usage=None),
            {**_chunk({}), "choices": [], "usage": {"prompt_tokens": 14, "completion_tokens": 8, "total_tokens": 22}},
        )
    ],
    (None, b"[DONE]"),
]


async def fixture(vendor: str, name: str) -> list[Event]:
    """The events of a vendor's SSE fixture."""

    async def body() -> AsyncIterator[bytes]:
        yield (FIXTURES / vendor / name).read_bytes()

    return [event async for event in sse_events(body())]


async def stream_of(vendor: str) -> list[Event]:
    """The whole text stream of ``vendor``, its end marker last."""
    if vendor == "openai":
        return list(OPENAI)
    return await fixture(vendor, "stream_text.sse")


#: Where each vendor's text stream ends: its end marker's position (``[DONE]``, ``message_stop``), or None for
#: Gemini's, whose body just ends.
END = {"openai": -1, "anthropic": -1, "gemini": None}
#: An event between two pieces of text, and the position of the chunk that carries the piece after it.
MIDDLE = {"openai": (2, 2), "anthropic": (4, 2), "gemini": (2, 2)}


async def translate(
    vendor: str,
    events: Sequence[Event],
    *,
    skip: bool = True,
    include_usage: bool = False,
    into: list[JSON] | None = None,
) -> list[JSON]:
    """What ``vendor``'s adapter yields for ``events``, appended to ``into`` as it comes (to see what came
    before an error)."""
    items: list[JSON] = [] if into is None else into

    async def source() -> AsyncIterator[Event]:
        for event in events:
            yield event

    chunks: AsyncIterator[JSON]
    if vendor == "openai":
        chunks = openai.from_events(source(), skip_malformed=skip)
    elif vendor == "anthropic":
        chunks = anthropic.from_events(source(), include_usage=include_usage, skip_malformed=skip)
    else:
        chunks = gemini.from_events(source(), include_usage=include_usage, skip_malformed=skip)
    async for item in chunks:
        items.append(item)
    return items


def timeless(items: list[JSON]) -> list[JSON]:
    return [{k: v for k, v in item.items() if k != "created"} for item in items]


def inserted(events: list[Event], at: int | None, *data: bytes, name: str | None = None) -> list[Event]:
    """``events`` with events carrying ``data`` put in before position ``at`` (None: at the end)."""
    at = len(events) if at is None else at % len(events)
    return [*events[:at], *((name, d) for d in data), *events[at:]]


def text(items: list[JSON]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in items if c.get("choices"))


VENDORS = ["openai", "anthropic", "gemini"]


@pytest.mark.parametrize("vendor", VENDORS)
async def test_with_fail_an_unparseable_event_fails_the_stream(vendor: str) -> None:
    events = await stream_of(vendor)
    at, _ = MIDDLE[vendor]
    whole = await translate(vendor, events, skip=False)
    seen: list[JSON] = []
    with pytest.raises(UpstreamError) as caught:
        await translate(vendor, inserted(events, at, GARBAGE), skip=False, into=seen)
    error = caught.value
    assert (error.status, error.code, error.message) == (
        502,
        "bad_upstream_response",
        "The upstream sent malformed JSON.",
    )
    assert timeless(seen) == timeless(whole[: MIDDLE[vendor][1]])


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("data", [GARBAGE, b"[1, 2]", b'"text"', b"null", b"42", b""], ids=repr)
async def test_with_skip_the_event_is_left_out_and_counted_on_the_next_chunk(vendor: str, data: bytes) -> None:
    events = await stream_of(vendor)
    at, carrier = MIDDLE[vendor]
    expected = timeless(await translate(vendor, events))
    expected[carrier][SKIPPED_EVENTS] = 1
    assert timeless(await translate(vendor, inserted(events, at, data))) == expected


@pytest.mark.parametrize("vendor", VENDORS)
async def test_events_skipped_in_a_row_are_counted_together(vendor: str) -> None:
    events = await stream_of(vendor)
    at, carrier = MIDDLE[vendor]
    expected = timeless(await translate(vendor, events))
    expected[carrier][SKIPPED_EVENTS] = 3
    assert timeless(await translate(vendor, inserted(events, at, GARBAGE, b"[]", GARBAGE))) == expected


@pytest.mark.parametrize("vendor", VENDORS)
async def test_an_event_skipped_last_is_counted_on_an_item_of_its_own(vendor: str) -> None:
    events = await stream_of(vendor)
    whole = await translate(vendor, events)
    broken = await translate(vendor, inserted(events, END[vendor], GARBAGE))
    assert timeless(broken) == [*timeless(whole), {SKIPPED_EVENTS: 1}]


@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_an_event_skipped_last_rides_on_the_usage_chunk(vendor: str) -> None:
    events = await stream_of(vendor)
    whole = await translate(vendor, events, include_usage=True)
    broken = await translate(vendor, inserted(events, END[vendor], GARBAGE), include_usage=True)
    assert whole[-1]["choices"] == [] and whole[-1]["usage"]
    assert timeless(broken) == [*timeless(whole[:-1]), {**timeless(whole[-1:])[0], SKIPPED_EVENTS: 1}]


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_stream_cut_after_a_skipped_event_counts_it_before_its_error(vendor: str) -> None:
    events = await stream_of(vendor)
    at, carrier = MIDDLE[vendor]
    whole = await translate(vendor, events)
    seen: list[JSON] = []
    with pytest.raises(UpstreamUnavailable):
        await translate(vendor, [*events[:at], (None, GARBAGE)], into=seen)
    assert timeless(seen) == [*timeless(whole[:carrier]), {SKIPPED_EVENTS: 1}]


ERROR_EVENTS: dict[str, Event] = {
    "openai": (None, b'{"error": {"message": "The server is overloaded.", "type": "server_error", "code": null}}'),
    "anthropic": ("error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
    "gemini": (None, b'{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}'),
}


@pytest.mark.parametrize("vendor", VENDORS)
async def test_an_error_event_after_a_skipped_event_stays_the_error_and_the_count_comes_first(vendor: str) -> None:
    events = await stream_of(vendor)
    at, carrier = MIDDLE[vendor]
    whole = await translate(vendor, events)
    seen: list[JSON] = []
    with pytest.raises(UpstreamError) as caught:
        await translate(vendor, [*events[:at], (None, GARBAGE), ERROR_EVENTS[vendor]], into=seen)
    assert caught.value.status in (500, 503) and caught.value.retryable
    assert timeless(seen) == [*timeless(whole[:carrier]), {SKIPPED_EVENTS: 1}]


@pytest.mark.parametrize("vendor", ["openai", "gemini"])
async def test_a_stream_of_nothing_but_unparseable_events_yields_no_count_alone(vendor: str) -> None:
    events: list[Event] = [(None, GARBAGE), (None, GARBAGE), *([(None, b"[DONE]")] if vendor == "openai" else [])]
    if vendor == "openai":
        assert await translate(vendor, events) == []  # the dispatcher makes an empty stream a 502
        return
    seen: list[JSON] = []
    with pytest.raises(UpstreamUnavailable):
        await translate(vendor, events, into=seen)
    assert seen == []


# -- Anthropic: events that carry state the translation needs -----------------------------------------


def replaced(events: list[Event], at: int, data: bytes = GARBAGE) -> list[Event]:
    """``events`` with the data of the event at ``at`` made unparseable (its name kept)."""
    return [*events[:at], (events[at][0], data), *events[at + 1 :]]


def position(events: list[Event], name: str, nth: int = 0) -> int:
    return [i for i, (n, _) in enumerate(events) if n == name][nth]


async def test_anthropic_usage_survives_a_skipped_content_event() -> None:
    events = await stream_of("anthropic")
    whole = await translate("anthropic", events, include_usage=True)
    broken = await translate(
        "anthropic", replaced(events, position(events, "content_block_delta", 1)), include_usage=True
    )
    assert text(broken) == "Hello of France is Paris."
    assert (
        broken[-1]["usage"]
        == whole[-1]["usage"]
        == {
            "prompt_tokens": 25 + 1200 + 30,
            "completion_tokens": 15,
            "total_tokens": 25 + 1200 + 30 + 15,
            "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 30},
        }
    )


async def test_anthropic_text_whose_block_start_was_skipped_still_arrives() -> None:
    events = await stream_of("anthropic")
    whole = await translate("anthropic", events)
    broken = await translate("anthropic", replaced(events, position(events, "content_block_start")))
    assert text(broken) == text(whole) == "Hello! The capital of France is Paris."
    assert broken[0][SKIPPED_EVENTS] == 1  # on the role chunk, which the first delta brings


async def test_anthropic_thinking_whose_block_start_was_skipped_still_arrives_signed() -> None:
    events = await fixture("anthropic", "stream_thinking.sse")
    expected = timeless(await translate("anthropic", events))
    expected[0][SKIPPED_EVENTS] = 1  # on the role chunk, which the first thinking delta brings
    broken = await translate("anthropic", replaced(events, position(events, "content_block_start")))
    assert timeless(broken) == expected
    signed = [b for c in broken for b in c["choices"][0]["delta"].get("thinking_blocks", ())]
    assert [(b["type"], b.get("signature", "")[:4]) for b in signed] == [
        ("thinking", "EqQB"),
        ("redacted_thinking", ""),
    ]


async def test_anthropic_a_tool_call_whose_start_was_skipped_fails_the_stream_at_its_arguments() -> None:
    # Its id and name were in the lost event: the call cannot be delivered, and leaving it out would hand
    # the client an answer with a call missing.
    events = await fixture("anthropic", "stream_tools.sse")
    seen: list[JSON] = []
    with pytest.raises(UpstreamError) as caught:
        await translate("anthropic", replaced(events, position(events, "content_block_start", 1)), into=seen)
    error = caught.value
    assert (error.message, error.status, error.code, error.retryable) == (
        LOST_EVENT,
        502,
        "bad_upstream_response",
        True,
    )
    assert text(seen) == "Let me check both."
    assert seen[-1] == {SKIPPED_EVENTS: 1}
    assert not any(c["choices"][0]["delta"].get("tool_calls") for c in seen[:-1])


async def test_anthropic_a_lost_structured_answer_start_fails_before_any_chunk() -> None:
    events = await fixture("anthropic", "stream_structured.sse")
    seen: list[JSON] = []
    with pytest.raises(UpstreamError) as caught:
        await translate("anthropic", replaced(events, position(events, "content_block_start")), into=seen)
    assert (caught.value.message, caught.value.retryable) == (LOST_EVENT, True)
    assert seen == []  # nothing delivered: retried or fallen back


@pytest.mark.parametrize("name", ["message_start", "ping"])
async def test_anthropic_an_unparseable_event_before_message_start_fails_before_any_chunk(name: str) -> None:
    events = await stream_of("anthropic")
    broken = replaced(events, 0) if name == "message_start" else [("ping", GARBAGE), *events]
    seen: list[JSON] = []
    with pytest.raises(UpstreamError) as caught:
        await translate("anthropic", broken, into=seen)
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (502, "bad_upstream_response", True)
    assert seen == []  # nothing delivered: retried or fallen back


async def test_anthropic_an_unparseable_error_event_is_still_an_error() -> None:
    events = await stream_of("anthropic")
    seen: list[JSON] = []
    with pytest.raises(UpstreamError) as caught:
        await translate("anthropic", [*events[:4], ("error", GARBAGE)], into=seen)
    assert (caught.value.status, caught.value.code) == (502, "bad_upstream_response")
    assert text(seen) == "Hello"


async def test_anthropic_a_lost_message_delta_makes_the_stream_incomplete() -> None:
    # Its stop reason and output count are gone: ending cleanly would charge the output of message_start.
    events = await stream_of("anthropic")
    seen: list[JSON] = []
    broken = replaced(events, position(events, "message_delta"))
    with pytest.raises(UpstreamError) as caught:
        await translate("anthropic", broken, include_usage=True, into=seen)
    assert (caught.value.message, caught.value.retryable) == (LOST_EVENT, True)
    assert text(seen) == "Hello! The capital of France is Paris."
    assert all(c["choices"][0]["finish_reason"] is None for c in seen[:-1])
    assert seen[-1] == {SKIPPED_EVENTS: 1}  # no finish reason, no usage chunk: the cut's own estimate counts


async def test_anthropic_only_a_skipped_event_is_taken_for_a_lost_one() -> None:
    # No event was skipped: a stream without message_delta is what the upstream sent, not a lost event.
    events = await stream_of("anthropic")
    at = position(events, "message_delta")
    chunks = await translate("anthropic", [*events[:at], *events[at + 1 :]])
    assert text(chunks) == "Hello! The capital of France is Paris."
    assert all(SKIPPED_EVENTS not in c for c in chunks)
