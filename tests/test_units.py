"""Pure functions: SSE framing, routing order, the mock's answers, the public API."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from types import ModuleType

import pytest

import unimw
from unimw.adapters.base import retry_after
from unimw.adapters.mock import answer, count_tokens, sample
from unimw.adapters.openai import from_response, to_error
from unimw.errors import ModelNotFound, UpstreamError
from unimw.loader import parse_policy
from unimw.policy import parse_duration
from unimw.routing import Router
from unimw.wire import sse_events


def test_public_api_is_complete_and_sorted() -> None:
    # dir(): names are imported on first use, so vars() holds only those used so far.
    public = {
        name for name in dir(unimw) if not name.startswith("_") and not isinstance(getattr(unimw, name), ModuleType)
    }
    assert set(unimw.__all__) - {"__version__"} == public
    assert unimw.__all__ == sorted(unimw.__all__)


def test_public_names_read_as_unimw_and_every_error_is_exported() -> None:
    public = [getattr(unimw, name) for name in unimw.__all__ if not name.startswith("__")]
    assert {value.__name__: value.__module__ for value in public} == {value.__name__: "unimw" for value in public}

    def subclasses(cls: type[Exception]) -> set[type[Exception]]:
        found: set[type[Exception]] = {cls}
        for sub in cls.__subclasses__():
            found |= subclasses(sub)
        return found

    exported = set(public)
    assert subclasses(unimw.UnimwError) <= exported
    assert {unimw.UsageRecord, unimw.BudgetAlert, unimw.ConfigError} <= exported


async def _lines(*lines: bytes) -> AsyncIterator[bytes]:
    for line in lines:
        yield line


@pytest.mark.anyio
async def test_sse_events_reads_named_multiline_and_comment_events() -> None:
    lines = _lines(
        b": keep-alive\n",
        b"event: message_start\n",
        b'data: {"a":\n',
        b"data: 1}\n",
        b"\n",
        b"data:[DONE]\r\n",
        b"\r\n",
        b"data: tail-without-blank-line\n",
    )
    events = [event async for event in sse_events(lines)]
    assert events == [("message_start", b'{"a":\n1}'), (None, b"[DONE]"), (None, b"tail-without-blank-line")]


@pytest.mark.parametrize(
    ("value", "seconds"), [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), (2.5, 2.5)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


def router(policy: str) -> Router:
    return Router(parse_policy(policy, env={}), random.Random(7))


POLICY = """
providers: {p: {kind: mock}}
models: {a: {provider: p, model: a}, b: {provider: p, model: b}, c: {provider: p, model: c}}
aliases:
  fb: {targets: [a, b, c]}
  nested: {targets: [fb, a]}
  w: {targets: [{model: a, weight: 1}, {model: b, weight: 5}, {model: c, weight: 2}], strategy: weighted}
"""


def test_fallback_order_and_nested_aliases_flatten_without_repeats() -> None:
    r = router(POLICY)
    assert [t.name for t in r.order(r.resolve("fb"))] == ["a", "b", "c"]
    assert [t.name for t in r.order(r.resolve("nested"))] == ["a", "b", "c"]
    assert [t.name for t in r.order(r.resolve("a"))] == ["a"]


def test_weighted_order_draws_first_then_heaviest() -> None:
    r = router(POLICY)
    orders = [tuple(t.name for t in r.order(r.resolve("w"))) for _ in range(800)]
    firsts = [o[0] for o in orders]
    assert 450 < firsts.count("b") < 550  # 5/8 of 800 = 500
    assert all(o[1:] == tuple(n for n in ("b", "c", "a") if n != o[0]) for o in orders)


def test_unknown_names_are_model_not_found() -> None:
    with pytest.raises(ModelNotFound) as caught:
        router(POLICY).resolve("zzz")
    assert caught.value.to_dict() == {
        "error": {
            "message": "The model `zzz` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_mock_samples_a_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["x", "y"]},
            "n": {"type": ["integer", "null"]},
        },
    }
    assert sample(schema) == {"name": "mock", "tags": ["mock"], "kind": "x", "n": 0}


def test_mock_calls_a_tool_named_in_the_question_and_is_deterministic() -> None:
    request = {
        "messages": [{"role": "user", "content": "please get_weather for Paris"}],
        "tools": [
            {"type": "function", "function": {"name": "get_time"}},
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            },
        ],
    }
    message, finish = answer(request)
    assert finish == "tool_calls"
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"mock"}'}
    assert answer(request) == (message, finish)
    assert answer({**request, "tool_choice": "none"})[1] == "stop"
    assert count_tokens("abcdefgh") == 2 and count_tokens("") == 0


def test_openai_errors_keep_vendor_fields_and_retry_hints() -> None:
    body = b'{"error": {"message": "slow down", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}'
    error = to_error(429, body, {"retry-after-ms": "1500"})
    assert isinstance(error, UpstreamError) and error.retryable
    assert (error.status, error.type, error.code, error.retry_after) == (
        429,
        "requests",
        "rate_limit_exceeded",
        1.5,
    )
    assert to_error(502, b"<html>bad gateway</html>", {}).message == "The upstream answered with status 502."
    assert to_error(422, b'{"detail": "field required"}', {}).message == "field required"
    assert not to_error(400, b"{}", {}).retryable
    assert retry_after({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None


def test_compatible_servers_missing_fields_are_filled_in() -> None:
    body = from_response(
        {
            "id": "x",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }
    )
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["refusal"] is None and body["choices"][0]["logprobs"] is None


@pytest.mark.anyio
async def test_the_mock_streams_tool_calls_and_usage() -> None:
    from unimw import Gateway
    from unimw.operations.chat_streams import assemble

    async with Gateway.from_dict(
        {"providers": {"m": {"kind": "mock"}}, "models": {"mock-echo": {"provider": "m", "model": "mock-echo"}}}
    ) as gateway:
        request = {
            "model": "mock-echo",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    },
                }
            ],
            "tool_choice": "required",
        }
        whole = await gateway.chat_completions(request)
        chunks = [
            c
            async for c in await gateway.stream_chat_completions({**request, "stream_options": {"include_usage": True}})
        ]
    assert isinstance(whole, dict)
    assert whole["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "lookup",
        "arguments": '{"q":"mock"}',
    }
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    rebuilt = assemble(chunks)
    assert rebuilt["choices"][0]["message"]["tool_calls"] == whole["choices"][0]["message"]["tool_calls"]
    assert rebuilt["choices"][0]["finish_reason"] == "tool_calls"


def test_signed_thinking_survives_assembly_and_replay() -> None:
    from unimw.operations.chat_streams import assemble, replay

    signed = [{"type": "thinking", "thinking": "Paris.", "signature": "EqQBCgIYAhIM"}]
    completion = {
        "id": "c1",
        "model": "m",
        "created": 1,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": "Paris",
                    "reasoning_content": "Paris.",
                    "thinking_blocks": signed,
                },
            }
        ],
    }
    rebuilt = assemble(replay(completion, include_usage=False))
    assert rebuilt["choices"][0]["message"]["thinking_blocks"] == signed


def test_every_code_unimw_raises_is_a_known_code() -> None:
    import re
    from pathlib import Path

    from unimw.errors import KNOWN_CODES

    package = Path(unimw.__file__).parent
    raised = {code for path in package.rglob("*.py") for code in re.findall(r'code="([a-z_]+)"', path.read_text())}
    assert raised - KNOWN_CODES == set()
