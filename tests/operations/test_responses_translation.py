"""Responses ⇄ Chat Completions translation: requests, answers and stream events.

Every output is checked three ways: exact values where the mapping is the
point, the OpenAI SDK's own models (what clients parse with), and the
shared OpenAPI spec's schemas (what the wire is defined as).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.operations import spec
from unimw.adapters.base import Target
from unimw.adapters.mock import MockAdapter
from unimw.errors import InvalidRequest, RateLimited
from unimw.operations.chat_streams import assemble
from unimw.operations.chat_validation import validate_chat
from unimw.operations.responses_chat import THINKING_PREFIX, encrypted_content, from_chat, to_chat
from unimw.operations.responses_events import ResponseEvents, encode
from unimw.operations.responses_validation import check_input, hosted_tools, validate_responses
from unimw.policy import Provider
from unimw.wire import JSON, chunk, loads, usage_chunk

RESPONSE_ID = "resp_0123abcd"
CREATED = 1_700_000_000
EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 10,
    "total_tokens": 30,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 3},
}


def _translate(request: JSON, history: list[JSON] | None = None) -> JSON:
    chat = to_chat(validate_responses(request), history or [])
    assert validate_chat(chat) is chat
    return chat


# ── to_chat ──────────────────────────────────────────────────────────────────

TO_CHAT: list[tuple[str, JSON, list[JSON], JSON]] = [
    (
        "string input, instructions and sampling",
        {
            "model": "m",
            "input": "Hi",
            "instructions": "Be brief.",
            "temperature": 0.5,
            "top_p": 0.9,
            "max_output_tokens": 64,
            "metadata": {"k": "v"},
            "user": "u1",
            "safety_identifier": "s1",
            "store": False,
            "truncation": "auto",
            "include": ["reasoning.encrypted_content"],
            "reasoning": {"effort": "low", "summary": "auto"},
            "text": {"format": {"type": "text"}, "verbosity": "low"},
        },
        [],
        {
            "model": "m",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "temperature": 0.5,
            "top_p": 0.9,
            "metadata": {"k": "v"},
            "user": "u1",
            "safety_identifier": "s1",
            "max_completion_tokens": 64,
            "reasoning_effort": "low",
            "verbosity": "low",
        },
    ),
    (
        "content parts",
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "https://x/i.png", "detail": "low"},
                        {"type": "input_file", "file_data": "data:application/pdf;base64,AA==", "filename": "a.pdf"},
                        {"type": "input_file", "file_id": "file-1"},
                    ],
                },
            ],
        },
        [],
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "rules"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": "low"}},
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,AA==", "filename": "a.pdf"},
                        },
                        {"type": "file", "file": {"file_id": "file-1"}},
                    ],
                },
            ],
        },
    ),
    (
        "an assistant turn folds into one message; tool results",
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "weather?"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
                },
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"city":"A"}'},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"city":"B"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sun"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
            ],
        },
        [],
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"A"}'}},
                        {"id": "c2", "type": "function", "function": {"name": "w", "arguments": '{"city":"B"}'}},
                    ],
                    "reasoning_content": "think",
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sun"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "rain"}]},
            ],
        },
    ),
    (
        "history first, this request's instructions only; a reasoning-only turn is dropped",
        {"model": "m", "input": "and now?", "instructions": "New rules."},
        [
            {"role": "user", "content": "first"},
            {"type": "reasoning", "id": "rs_x", "summary": []},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        ],
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "New rules."},
                {"role": "user", "content": "first"},
                {"role": "user", "content": "second"},
                {"role": "assistant", "content": "", "refusal": "no"},
                {"role": "user", "content": "and now?"},
            ],
        },
    ),
    (
        "tools, tool_choice, structured output, stream",
        {
            "model": "m",
            "input": "go",
            "tools": [
                {"type": "function", "name": "w", "description": "Weather", "parameters": WEATHER, "strict": True},
                {"type": "function", "name": "t", "parameters": None, "strict": None},
            ],
            "tool_choice": {"type": "function", "name": "w"},
            "parallel_tool_calls": False,
            "text": {"format": {"type": "json_schema", "name": "out", "schema": WEATHER, "strict": True}},
            "stream": True,
        },
        [],
        {
            "model": "m",
            "messages": [{"role": "user", "content": "go"}],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "w", "description": "Weather", "parameters": WEATHER, "strict": True},
                },
                {"type": "function", "function": {"name": "t"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "w"}},
            "parallel_tool_calls": False,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "out", "schema": WEATHER, "strict": True},
            },
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "allowed_tools becomes chat's allowed_tools; json_object",
        {
            "model": "m",
            "input": "go",
            "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "b"}],
            "tool_choice": {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "b"}]},
            "text": {"format": {"type": "json_object"}},
        },
        [],
        {
            "model": "m",
            "messages": [{"role": "user", "content": "go"}],
            "tools": [{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "b"}}]},
            },
            "response_format": {"type": "json_object"},
        },
    ),
]


@pytest.mark.parametrize(("request_", "history", "expected"), [c[1:] for c in TO_CHAT], ids=[c[0] for c in TO_CHAT])
def test_to_chat(request_: JSON, history: list[JSON], expected: JSON) -> None:
    assert _translate(request_, history) == expected


def test_signed_thinking_round_trips_through_encrypted_content() -> None:
    blocks = [
        {"type": "thinking", "thinking": "hm", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
    completion = _completion({"content": None, "reasoning_content": "hm", "thinking_blocks": blocks}, "tool_calls")
    completion["choices"][0]["message"]["tool_calls"] = [_call("c1", "w", "{}")]
    out = from_chat(
        completion, {"model": "m", "input": "x"}, response_id=RESPONSE_ID, created_at=CREATED, previous_response_id=None
    )
    _check_response(out)
    reasoning = out["output"][0]
    assert reasoning["encrypted_content"].startswith(THINKING_PREFIX)
    assert reasoning["encrypted_content"] == encrypted_content(blocks)
    chat = _translate(
        {"model": "m", "input": [*out["output"], {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}
    )
    assert chat["messages"][0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [_call("c1", "w", "{}")],
        "reasoning_content": "hm",
        "thinking_blocks": blocks,
    }
    # Another server's encrypted_content is opaque: the reasoning text goes, the blob does not.
    foreign = {"type": "reasoning", "id": "rs_o", "summary": [], "encrypted_content": "gAAAAB..."}
    chat = _translate({"model": "m", "input": [foreign, {"role": "assistant", "content": "x"}]})
    assert chat["messages"] == [{"role": "assistant", "content": "x"}]


# ── refusals and validation ─────────────────────────────────────────────────

REFUSED: list[tuple[str, JSON, str, str]] = [
    (
        "hosted tool",
        {"tools": [{"type": "function", "name": "f"}, {"type": "web_search"}]},
        "tools[1]",
        "unsupported_value",
    ),
    ("mcp tool", {"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0]", "unsupported_value"),
    ("background", {"background": True}, "background", "unsupported_value"),
    (
        "image by file id",
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        "input[0].content[0].file_id",
        "unsupported_value",
    ),
    (
        "file by url",
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x/a.pdf"}]}]},
        "input[0].content[0].file_url",
        "unsupported_value",
    ),
    (
        "image in a tool result",
        {
            "input": [
                {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "u"}]}
            ]
        },
        "input[0].output[0]",
        "unsupported_value",
    ),
    ("item reference", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "unsupported_value"),
    (
        "image in a system message",
        {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}]},
        "input[0].content[0].type",
        "invalid_value",
    ),
    (
        "hosted tool in allowed_tools",
        {"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "web_search"}]}},
        "tool_choice.tools[0]",
        "unsupported_value",
    ),
    ("hosted tool choice", {"tool_choice": {"type": "file_search"}}, "tool_choice", "unsupported_value"),
    ("nothing to send", {"input": []}, "input", "empty_array"),
]


@pytest.mark.parametrize(("fields", "param", "code"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_translation_refuses_what_chat_cannot_say(fields: JSON, param: str, code: str) -> None:
    request = validate_responses({"model": "m", "input": "x", **fields})  # the shape is fine: a native target takes it
    with pytest.raises(InvalidRequest) as caught:
        to_chat(request)
    assert (caught.value.param, caught.value.code, caught.value.status) == (param, code, 400)


def test_hosted_tools_lists_what_only_openai_runs() -> None:
    tools = [{"type": "function", "name": "f"}, {"type": "web_search_preview"}, {"type": "code_interpreter"}]
    assert hosted_tools({"tools": tools}) == [(1, "web_search_preview"), (2, "code_interpreter")]
    assert hosted_tools({"model": "m"}) == []


INVALID: list[tuple[Any, str | None, str | None]] = [
    ([], None, None),
    ({"input": "x"}, "model", "missing_required_parameter"),
    ({"model": "m"}, "input", "missing_required_parameter"),
    ({"model": "m", "input": 3}, "input", "invalid_type"),
    ({"model": "m", "input": [3]}, "input[0]", "invalid_type"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"model": "m", "input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
    (
        {"model": "m", "input": [{"role": "user", "content": [{"text": "x"}]}]},
        "input[0].content[0].type",
        "missing_required_parameter",
    ),
    (
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
        "input[0].content[0].text",
        "missing_required_parameter",
    ),
    (
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "detail": "low"}]}]},
        "input[0].content[0].image_url",
        "missing_required_parameter",
    ),
    (
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "filename": 1}]}]},
        "input[0].content[0].filename",
        "invalid_type",
    ),
    (
        {"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
        "input[0].arguments",
        "missing_required_parameter",
    ),
    (
        {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": 1}]},
        "input[0].output",
        "invalid_type",
    ),
    ({"model": "m", "input": [{"type": "reasoning", "id": "r"}]}, "input[0].summary", "missing_required_parameter"),
    (
        {"model": "m", "input": [{"type": "reasoning", "summary": [{"type": "summary_text"}]}]},
        "input[0].summary[0].text",
        "missing_required_parameter",
    ),
    ({"model": "m", "input": "x", "instructions": ["x"]}, "instructions", "invalid_type"),
    ({"model": "m", "input": "x", "tools": {}}, "tools", "invalid_type"),
    (
        {"model": "m", "input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]},
        "tools[0].name",
        "missing_required_parameter",
    ),
    (
        {"model": "m", "input": "x", "tools": [{"type": "function", "name": "f", "parameters": []}]},
        "tools[0].parameters",
        "invalid_type",
    ),
    (
        {"model": "m", "input": "x", "tools": [{"type": "function", "name": "f", "strict": "yes"}]},
        "tools[0].strict",
        "invalid_type",
    ),
    ({"model": "m", "input": "x", "tool_choice": "any"}, "tool_choice", "invalid_value"),
    (
        {"model": "m", "input": "x", "tool_choice": {"type": "function"}},
        "tool_choice.name",
        "missing_required_parameter",
    ),
    (
        {"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools", "mode": "all", "tools": []}},
        "tool_choice.mode",
        "invalid_value",
    ),
    (
        {"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools", "mode": "auto"}},
        "tool_choice.tools",
        "missing_required_parameter",
    ),
    ({"model": "m", "input": "x", "parallel_tool_calls": 1}, "parallel_tool_calls", "invalid_type"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
    (
        {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}},
        "text.format.name",
        "missing_required_parameter",
    ),
    (
        {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": []}}},
        "text.format.schema",
        "invalid_type",
    ),
    ({"model": "m", "input": "x", "reasoning": {"effort": 1}}, "reasoning.effort", "invalid_type"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ({"model": "m", "input": "x", "max_output_tokens": True}, "max_output_tokens", "invalid_type"),
    ({"model": "m", "input": "x", "temperature": 3}, "temperature", "invalid_value"),
    ({"model": "m", "input": "x", "top_p": "1"}, "top_p", "invalid_type"),
    ({"model": "m", "input": "x", "metadata": []}, "metadata", "invalid_type"),
    ({"model": "m", "input": "x", "store": "no"}, "store", "invalid_type"),
    ({"model": "m", "input": "x", "background": None, "stream": 1}, "stream", "invalid_type"),
    ({"model": "m", "input": "x", "previous_response_id": 5}, "previous_response_id", "invalid_type"),
    ({"model": "m", "input": "x", "include": ["a", 1]}, "include", "invalid_type"),
    ({"model": "m", "input": "x", "truncation": "sometimes"}, "truncation", "invalid_value"),
    (
        {"model": "m", "input": [{"type": "function_call_output", "output": "x"}]},
        "input[0].call_id",
        "missing_required_parameter",
    ),
]


def _nested(levels: int) -> JSON:
    body: JSON = {}
    for _ in range(levels):
        body = {"a": body}
    return body


@pytest.mark.parametrize(("body", "param", "code"), INVALID, ids=[f"{c[1]}-{c[2]}" for c in INVALID])
def test_validation_names_the_param(body: Any, param: str | None, code: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_responses(body)
    assert (caught.value.param, caught.value.code, caught.value.status) == (param, code, 400)


def test_validation_bounds_nesting_like_chat() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_responses({"model": "m", "input": "x", "metadata": _nested(70)})
    assert (caught.value.param, caught.value.code) == (None, "invalid_value")
    assert validate_responses({"model": "m", "input": "x", "metadata": _nested(10)})


# ── from_chat ────────────────────────────────────────────────────────────────


def _call(call_id: str, name: str, arguments: str) -> JSON:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _completion(message: JSON, finish: str = "stop", usage: JSON | None = USAGE) -> JSON:
    out: JSON = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED,
        "model": "vendor-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def _check_response(response: JSON) -> None:
    Response.model_validate(response)
    spec.check(response, "Response")


def test_from_chat_text_answer_exactly() -> None:
    request = {"model": "m", "input": "Hi", "instructions": "Be brief.", "store": False, "metadata": {"k": "v"}}
    out = from_chat(
        _completion({"content": "Hello."}),
        request,
        response_id=RESPONSE_ID,
        created_at=CREATED,
        previous_response_id="resp_prev",
    )
    _check_response(out)
    assert out == {
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": "Be brief.",
        "max_output_tokens": None,
        "model": "vendor-model",
        "output": [
            {
                "id": "msg_0123abcd",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hello.", "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": "resp_prev",
        "reasoning": None,
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "metadata": {"k": "v"},
        "usage": {
            "input_tokens": 20,
            "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
            "output_tokens": 10,
            "output_tokens_details": {"reasoning_tokens": 3},
            "total_tokens": 30,
        },
    }


def test_from_chat_reasoning_and_parallel_calls() -> None:
    tools = [{"type": "function", "name": "w", "parameters": WEATHER, "strict": True}]
    request = {"model": "m", "input": "x", "tools": tools, "tool_choice": "required", "reasoning": {"effort": "high"}}
    message = {
        "content": "Let me check.",
        "reasoning_content": "Two cities.",
        "tool_calls": [_call("c1", "w", '{"city":"A"}'), _call("c2", "w", '{"city":"B"}')],
    }
    out = from_chat(
        _completion(message, "tool_calls"),
        request,
        response_id=RESPONSE_ID,
        created_at=CREATED,
        previous_response_id=None,
    )
    _check_response(out)
    assert [(i["type"], i["id"]) for i in out["output"]] == [
        ("reasoning", "rs_0123abcd"),
        ("message", "msg_0123abcd"),
        ("function_call", "fc_0123abcd_0"),
        ("function_call", "fc_0123abcd_1"),
    ]
    assert out["output"][0] == {
        "id": "rs_0123abcd",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "Two cities."}],
    }
    assert out["output"][3] == {
        "id": "fc_0123abcd_1",
        "type": "function_call",
        "status": "completed",
        "call_id": "c2",
        "name": "w",
        "arguments": '{"city":"B"}',
    }
    assert (out["tools"], out["tool_choice"], out["reasoning"]) == (
        tools,
        "required",
        {"effort": "high", "summary": None},
    )


@pytest.mark.parametrize(
    ("message", "finish", "status", "reason", "content"),
    [
        (
            {"content": None, "refusal": "I can't."},
            "stop",
            "completed",
            None,
            [{"type": "refusal", "refusal": "I can't."}],
        ),
        (
            {"content": "Half"},
            "length",
            "incomplete",
            "max_output_tokens",
            [{"type": "output_text", "text": "Half", "annotations": [], "logprobs": []}],
        ),
        (
            {"content": ""},
            "content_filter",
            "incomplete",
            "content_filter",
            [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}],
        ),
    ],
)
def test_from_chat_refusal_and_incomplete(
    message: JSON, finish: str, status: str, reason: str | None, content: list[JSON]
) -> None:
    out = from_chat(
        _completion(message, finish, usage=None),
        {"model": "m", "input": "x"},
        response_id=RESPONSE_ID,
        created_at=CREATED,
        previous_response_id=None,
    )
    _check_response(out)
    assert (out["status"], out["incomplete_details"], "usage" in out) == (
        status,
        {"reason": reason} if reason else None,
        False,
    )
    assert [i["content"] for i in out["output"]] == [content]
    assert out["output"][0]["status"] == ("incomplete" if reason else "completed")


# ── streams ──────────────────────────────────────────────────────────────────


def _mock_chunks(chat: JSON) -> list[JSON]:
    async def collect() -> list[JSON]:
        adapter = MockAdapter(Provider(kind="mock"))
        return [c async for c in await adapter.stream(chat, Target("m", "mock-echo", "mock"))]

    return asyncio.run(asyncio.wait_for(collect(), timeout=10))


def _stream(deltas: Iterable[JSON], finish: str, usage: JSON | None = USAGE) -> list[JSON]:
    out = [chunk("chatcmpl-s", "vendor-model", CREATED, {"role": "assistant", "content": ""})]
    out += [chunk("chatcmpl-s", "vendor-model", CREATED, delta) for delta in deltas]
    out.append(chunk("chatcmpl-s", "vendor-model", CREATED, finish_reason=finish))
    if usage is not None:
        out.append(usage_chunk("chatcmpl-s", "vendor-model", CREATED, usage))
    return out


def _events(request: JSON, chunks: list[JSON]) -> tuple[list[JSON], ResponseEvents]:
    translator = ResponseEvents(request, response_id=RESPONSE_ID, created_at=CREATED, previous_response_id=None)
    events = [event for piece in chunks for event in translator.feed(piece)]
    events += translator.finish()
    assert translator.finish() == [] and translator.feed(chunks[0]) == []
    return events, translator


def _check_events(events: list[JSON]) -> None:
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        EVENTS.validate_python(event)
        spec.check(event, "ResponseStreamEvent")
        assert loads(encode(event).split(b"\ndata: ", 1)[1]) == event


def _accumulated(events: list[JSON]) -> tuple[JSON, Any]:
    """What the SDK's own stream accumulator makes of ``events``: the completed response, and its snapshot."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    final = None
    for event in events:
        for out in state.handle_event(EVENTS.validate_python(event)):
            if out.type in ("response.completed", "response.incomplete"):
                final = out.response
    assert final is not None
    return _unparsed(final.model_dump(mode="json", exclude_unset=True)), state._ResponseStreamState__current_snapshot  # type: ignore[attr-defined]


def _unparsed(value: Any) -> Any:
    """``value`` without the fields the SDK adds on the client (what it parsed: ``parsed``, ``parsed_arguments``)."""
    if isinstance(value, dict):
        return {k: _unparsed(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments")}
    if isinstance(value, list):
        return [_unparsed(v) for v in value]
    return value


TOOLS = [{"type": "function", "name": "w", "parameters": WEATHER}]
STREAMS: list[tuple[str, JSON, list[JSON]]] = [
    (
        "text (mock adapter)",
        {"model": "m", "input": "Say something rather long so that it comes in many pieces"},
        [],
    ),
    ("tool call (mock adapter)", {"model": "m", "input": "x", "tools": TOOLS, "tool_choice": "required"}, []),
    (
        "two parallel tool calls",
        {"model": "m", "input": "x", "tools": TOOLS},
        _stream(
            [
                {
                    "tool_calls": [
                        {"index": 0, "id": "c1", "type": "function", "function": {"name": "w", "arguments": ""}}
                    ]
                },
                {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"A"}'}}]},
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"city":"B"}'},
                        }
                    ]
                },
            ],
            "tool_calls",
        ),
    ),
    (
        "reasoning, then text",
        {"model": "m", "input": "x", "reasoning": {"effort": "low", "summary": "auto"}},
        _stream(
            [{"reasoning_content": "Let me "}, {"reasoning_content": "think."}, {"content": "Four"}, {"content": "."}],
            "stop",
        ),
    ),
    (
        "reasoning, text and a call",
        {"model": "m", "input": "x", "tools": TOOLS},
        _stream(
            [
                {"reasoning_content": "Need weather."},
                {"content": "Checking."},
                {
                    "tool_calls": [
                        {"index": 0, "id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                    ]
                },
            ],
            "tool_calls",
        ),
    ),
    ("refusal", {"model": "m", "input": "x"}, _stream([{"refusal": "I can't "}, {"refusal": "help."}], "stop")),
    ("cut by the cap", {"model": "m", "input": "x", "max_output_tokens": 2}, _stream([{"content": "Tw"}], "length")),
    ("empty answer, no usage", {"model": "m", "input": "x"}, _stream([], "stop", usage=None)),
]


@pytest.mark.parametrize(("request_", "chunks"), [c[1:] for c in STREAMS], ids=[c[0] for c in STREAMS])
def test_stream_events_match_the_whole_answer(request_: JSON, chunks: list[JSON]) -> None:
    chunks = chunks or _mock_chunks(_translate(request_ | {"stream": True}))
    events, translator = _events(request_, chunks)
    _check_events(events)
    expected = from_chat(
        assemble(chunks), request_, response_id=RESPONSE_ID, created_at=CREATED, previous_response_id=None
    )
    assert translator.response() == expected
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    assert events[-1] == {
        "type": "response.incomplete" if expected["status"] == "incomplete" else "response.completed",
        "sequence_number": len(events) - 1,
        "response": expected,
    }
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == expected["output"]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == list(range(len(expected["output"])))
    final, snapshot = _accumulated(events)
    assert final == expected
    # The snapshot is built from the deltas alone: they spell out the same text and arguments.
    for built, item in zip(snapshot.output, expected["output"], strict=True):
        if item["type"] == "message" and item["content"][0]["type"] == "output_text":
            assert built.content[0].text == item["content"][0]["text"]
        if item["type"] == "function_call":
            assert (built.call_id, built.name, built.arguments) == (item["call_id"], item["name"], item["arguments"])


def test_stream_text_event_order() -> None:
    events, _ = _events({"model": "m", "input": "x"}, _stream([{"content": "He"}, {"content": "llo"}], "stop"))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[4] == {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": "msg_0123abcd",
        "output_index": 0,
        "content_index": 0,
        "delta": "He",
        "logprobs": [],
    }
    assert events[2]["item"] == {
        "id": "msg_0123abcd",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }


def test_stream_reasoning_closes_when_the_answer_begins() -> None:
    chunks = _stream([{"reasoning_content": "Hm."}, {"content": "Ok"}], "stop")
    events, _ = _events({"model": "m", "input": "x"}, chunks)
    assert [e["type"] for e in events[2:9]] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    assert events[5] == {
        "type": "response.reasoning_summary_text.done",
        "sequence_number": 5,
        "item_id": "rs_0123abcd",
        "output_index": 0,
        "summary_index": 0,
        "text": "Hm.",
    }


def test_stream_keeps_signed_thinking() -> None:
    signed = {"index": 0, "type": "thinking", "thinking": "Hm.", "signature": "sig"}
    chunks = _stream([{"reasoning_content": "Hm."}, {"thinking_blocks": [signed]}, {"content": "Ok"}], "stop")
    events, translator = _events({"model": "m", "input": "x"}, chunks)
    _check_events(events)
    reasoning = next(e["item"] for e in events if e["type"] == "response.output_item.done")
    assert reasoning["encrypted_content"] == encrypted_content([signed])
    final = translator.response()
    assert final is not None and final["output"][0] == reasoning


def test_stream_cut_short_or_broken_fails() -> None:
    request = {"model": "m", "input": "x"}
    cut = _stream([{"content": "Hal"}], "stop")[:-2]  # no finish reason, no usage
    events, translator = _events(request, cut)
    _check_events(events)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"] == {
        "code": "server_error",
        "message": "The model's answer ended before it was finished.",
    }
    assert translator.response() == events[-1]["response"]

    translator = ResponseEvents(request, response_id=RESPONSE_ID, created_at=CREATED)
    events = translator.failed(RateLimited("Slow down."))
    _check_events(events)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "Slow down."}
    assert translator.finish() == [] and translator.failed(RateLimited("again")) == []


def test_encode_frames_a_named_event() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 3, "delta": "é"}
    assert (
        encode(event)
        == b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":3,"delta":"\xc3\xa9"}\n\n'
    )


# ── property: whatever validates translates to a valid chat request, or to a 400 ──

_text = st.text(max_size=8)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": _text}),
    st.fixed_dictionaries({"type": st.just("output_text"), "text": _text}),
    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": _text}),
    st.fixed_dictionaries(
        {"type": st.just("input_image")}, optional={"image_url": _text, "file_id": _text, "detail": _text}
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_file")},
        optional={"file_data": _text, "file_id": _text, "file_url": _text, "filename": _text},
    ),
    st.fixed_dictionaries({"type": _text}),
)
_content = st.one_of(_text, st.lists(_part, max_size=3))
_item = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"]), "content": _content},
        optional={"type": st.just("message")},
    ),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": _text, "name": _text, "arguments": _text}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": _text, "output": _content}),
    st.fixed_dictionaries(
        {
            "type": st.just("reasoning"),
            "summary": st.lists(st.fixed_dictionaries({"type": st.just("summary_text"), "text": _text}), max_size=2),
        },
        optional={"encrypted_content": st.one_of(_text, st.just(encrypted_content([{"type": "thinking"}])))},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["item_reference", "web_search_call"])}),
)
_tool = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("function"), "name": st.text(min_size=1, max_size=4)},
        optional={"parameters": st.just(WEATHER), "strict": st.booleans(), "description": _text},
    ),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "mcp", "custom"])}),
)
_choice = st.one_of(
    st.sampled_from(["none", "auto", "required"]),
    st.fixed_dictionaries({"type": st.just("function"), "name": _text}),
    st.fixed_dictionaries(
        {
            "type": st.just("allowed_tools"),
            "mode": st.sampled_from(["auto", "required"]),
            "tools": st.lists(_tool, max_size=2),
        }
    ),
)
_requests = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=4), "input": st.one_of(_text, st.lists(_item, max_size=6))},
    optional={
        "instructions": _text,
        "tools": st.lists(_tool, max_size=3),
        "tool_choice": _choice,
        "parallel_tool_calls": st.booleans(),
        "text": st.fixed_dictionaries(
            {},
            optional={
                "format": st.one_of(
                    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
                    st.fixed_dictionaries(
                        {
                            "type": st.just("json_schema"),
                            "name": st.text(min_size=1, max_size=4),
                            "schema": st.just(WEATHER),
                        }
                    ),
                ),
                "verbosity": _text,
            },
        ),
        "reasoning": st.fixed_dictionaries({}, optional={"effort": _text, "summary": _text}),
        "max_output_tokens": st.integers(1, 1000),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stream": st.booleans(),
        "background": st.booleans(),
        "store": st.booleans(),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests, st.lists(_item, max_size=3))
def test_any_valid_request_translates_or_is_refused_with_a_400(request_: JSON, history: list[JSON]) -> None:
    try:
        check_input(history, "previous_response_id")
    except InvalidRequest:
        assume(False)
    try:
        validate_responses(request_)
        chat = to_chat(request_, history)
    except InvalidRequest as refused:
        assert refused.status == 400 and refused.param
        return
    assert validate_chat(chat) is chat
