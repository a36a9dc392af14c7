"""An upstream's answer bent anywhere reaches the client as an answer or a 502, never as a 500.

Each vendor's documented answer (the fixtures, and OpenAI's example) is
mutated: one subtree, anywhere in it, replaced by a hostile JSON value
(:mod:`tests.hostile`); a stream has one event's data mutated so. A
loopback server speaking each vendor's wire answers with it, and the
gateway must give an answer or an :class:`UpstreamError` of status 502 (a
translation that cannot read the answer: ``bad_upstream_response``) or
another upstream error: never another exception, which the doors would
turn into a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.hostile import HOSTILE
from tests.servers import serve
from unimw import Gateway, UnimwError
from unimw.errors import UpstreamError
from unimw.wire import JSON, dumps, sse_events

FIXTURES = Path(__file__).parent.parent / "fixtures"
#: OpenAI's documented chat completion example (the API reference), with its usage details.
OPENAI_ANSWER: JSON = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
}
OPENAI_STREAM: list[tuple[str | None, JSON]] = [
    (None, {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
    (None, {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}),
    (None, {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
]  # fmt: skip


def _fixture(vendor: str, name: str) -> JSON:
    loaded: JSON = json.loads((FIXTURES / vendor / name).read_text())
    return loaded


def _sse(vendor: str, name: str) -> list[tuple[str | None, JSON]]:
    """A fixture stream as (event name, data) pairs."""

    async def read() -> list[tuple[str | None, bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield (FIXTURES / vendor / name).read_bytes()

        return [event async for event in sse_events(chunks())]

    return [(event, json.loads(data)) for event, data in asyncio.run(read()) if data.startswith(b"{")]


ANSWERS: dict[str, list[JSON]] = {
    "openai": [OPENAI_ANSWER],
    "anthropic": [_fixture("anthropic", n) for n in ("message_text.json", "message_tool_use.json", "message_thinking.json")],
    "gemini": [_fixture("gemini", n) for n in ("text.json", "function_calls.json", "thoughts.json", "logprobs.json")],
}  # fmt: skip
STREAMS: dict[str, list[list[tuple[str | None, JSON]]]] = {
    "openai": [OPENAI_STREAM],
    "anthropic": [_sse("anthropic", n) for n in ("stream_text.sse", "stream_tools.sse", "stream_thinking.sse")],
    "gemini": [_sse("gemini", n) for n in ("stream_text.sse", "stream_function_calls.sse")],
}


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``value`` a subtree may be swapped, itself first."""
    found = [here]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*here, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found += _paths(inner, (*here, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: JSON) -> JSON:
    """``base`` with one subtree (not the whole) replaced by a hostile value."""
    body = copy.deepcopy(base)
    path = draw(st.sampled_from(_paths(body)[1:]))
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = draw(HOSTILE)
    return body


@st.composite
def replies(draw: st.DrawFn) -> tuple[str, bool, Any]:
    """(vendor, streamed, what its server answers): a mutated answer, or a stream with one event mutated."""
    vendor = draw(st.sampled_from(sorted(ANSWERS)))
    if not draw(st.booleans()):
        return vendor, False, draw(mutated(draw(st.sampled_from(ANSWERS[vendor]))))
    events = copy.deepcopy(draw(st.sampled_from(STREAMS[vendor])))
    i = draw(st.integers(0, len(events) - 1))
    events[i] = (events[i][0], draw(mutated(events[i][1])))
    return vendor, True, events


class Replayer:
    """A loopback server speaking the three wires that answers whatever the test sets, as the vendor frames it."""

    def __init__(self) -> None:
        self.reply: Any = None
        self.app = Starlette(
            routes=[
                Route("/openai/v1/chat/completions", self.answer, methods=["POST"]),
                Route("/anthropic/v1/messages", self.answer, methods=["POST"]),
                Route("/gemini/v1beta/models/{call}", self.answer, methods=["POST"]),
            ]
        )

    async def answer(self, request: Request) -> Response:
        if not isinstance(self.reply, list):
            return Response(dumps(self.reply), media_type="application/json")
        openai = request.url.path.startswith("/openai")

        async def events() -> AsyncIterator[bytes]:
            for name, data in self.reply:
                yield (f"event: {name}\n" if name else "").encode() + b"data: " + dumps(data) + b"\n\n"
            if openai:
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


class Rig:
    """One gateway on its own event loop, kept for all the examples, in front of the replayer."""

    def __init__(self, url: str, replayer: Replayer) -> None:
        self.replayer = replayer
        self.runner = asyncio.Runner()
        policy = {
            "providers": {
                "openai": {"kind": "openai", "base_url": url + "/openai/v1", "api_key": "sk-o", "timeout": 5},
                "anthropic": {"kind": "anthropic", "base_url": url + "/anthropic", "api_key": "sk-a", "timeout": 5},
                "gemini": {"kind": "gemini", "base_url": url + "/gemini/v1beta", "api_key": "g-k", "timeout": 5},
            },
            "models": {
                "openai": {"provider": "openai", "model": "gpt-4o"},
                "anthropic": {"provider": "anthropic", "model": "claude-sonnet-4-5"},
                "gemini": {"provider": "gemini", "model": "gemini-2.5-flash"},
            },
            "dispatch": {"retries": 0, "cooldown": 0},
        }
        self.gateway = self.runner.run(self._build(policy))

    @staticmethod
    async def _build(policy: JSON) -> Gateway:
        return Gateway.from_dict(policy)

    def call(self, vendor: str, stream: bool) -> UnimwError | None:
        return self.runner.run(asyncio.wait_for(self._call(vendor, stream), 30))

    async def _call(self, vendor: str, stream: bool) -> UnimwError | None:
        body = {"model": vendor, "messages": [{"role": "user", "content": "hi"}]}
        try:
            if not stream:
                await self.gateway.chat_completions(body)
                return None
            chunks = await self.gateway.stream_chat_completions({**body, "stream": True})
            async with aclosing(chunks):  # type: ignore[type-var]
                async for _ in chunks:
                    pass
        except UnimwError as error:
            return error
        return None

    def close(self) -> None:
        self.runner.run(self.gateway.aclose())
        self.runner.close()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    replayer = Replayer()
    with serve(replayer.app) as url:
        made = Rig(url, replayer)
        yield made
        made.close()


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(reply=replies())
def test_a_bent_answer_is_read_or_refused_as_an_upstream_error(rig: Rig, reply: tuple[str, bool, Any]) -> None:
    vendor, stream, rig.replayer.reply = reply
    error = rig.call(vendor, stream)
    if error is not None:
        assert isinstance(error, UpstreamError) and error.status >= 400, error


def test_an_answer_of_the_wrong_shape_is_a_502_that_names_no_content(rig: Rig) -> None:
    rig.replayer.reply = {**ANSWERS["anthropic"][0], "content": [{"type": "text", "text": 7}]}
    error = rig.call("anthropic", stream=False)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code, error.message) == (
        502,
        "bad_upstream_response",
        "The upstream's answer could not be read (TypeError).",
    )


def test_a_stream_event_of_the_wrong_shape_is_a_502(rig: Rig) -> None:
    events = copy.deepcopy(STREAMS["anthropic"][0])
    [i] = [n for n, (name, _) in enumerate(events) if name == "content_block_delta"][-1:]
    events[i][1]["delta"] = 7
    rig.replayer.reply = events
    error = rig.call("anthropic", stream=True)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code) == (502, "bad_upstream_response")


def test_a_whole_answer_whose_content_is_parts_is_passed_on_as_it_came(rig: Rig) -> None:
    parts = [{"type": "thinking", "thinking": [{"type": "text", "text": "Hm."}]}, {"type": "text", "text": "Hi!"}]
    answer = copy.deepcopy(OPENAI_ANSWER)
    answer["choices"][0]["message"]["content"] = parts
    rig.replayer.reply = answer
    body = {"model": "openai", "messages": [{"role": "user", "content": "hi"}]}
    got = rig.runner.run(rig.gateway.chat_completions(body))
    assert got["choices"][0]["message"]["content"] == parts


def test_a_streamed_delta_whose_content_is_not_text_is_a_502(rig: Rig) -> None:
    events = copy.deepcopy(OPENAI_STREAM)
    events[1][1]["choices"][0]["delta"]["content"] = [{"type": "text", "text": "Hello"}]
    rig.replayer.reply = events
    error = rig.call("openai", stream=True)
    assert isinstance(error, UpstreamError)
    assert (error.status, error.code, error.message) == (
        502,
        "bad_upstream_response",
        "The upstream's answer has `delta.content` in a shape the API does not document.",
    )
