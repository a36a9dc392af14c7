"""Malformed chat requests are refused with a 400 naming the field, before anything is spent.

Each case was a 500 (or a crash after the upstream answered) before the
field's shape was checked: the table is the regression suite for them.
"""

from __future__ import annotations

from typing import Any

import pytest

from unimw import Gateway
from unimw.errors import InvalidRequest
from unimw.operations.chat_validation import MAX_MESSAGES, MAX_TOOLS, validate_chat
from unimw.operations.embeddings import EMBEDDINGS, MAX_INPUTS
from unimw.operations.fields import MAX_DEPTH
from unimw.operations.responses_validation import MAX_INPUT_ITEMS, validate_responses

pytestmark = pytest.mark.anyio

USER: Any = {"role": "user", "content": "Hi"}
TOOL: Any = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def nested(depth: int) -> Any:
    """A value whose arrays nest ``depth`` levels deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


#: (id, fields merged into a valid body, the param named, the code)
CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("role-object", {"messages": [{"role": {"x": 1}, "content": "Hi"}]}, "messages[0].role", "invalid_value"),
    ("role-array", {"messages": [{"role": ["user"], "content": "Hi"}]}, "messages[0].role", "invalid_value"),
    ("tool-choice-array", {"tools": [TOOL], "tool_choice": ["auto"]}, "tool_choice", "invalid_value"),
    (
        "tool-choice-function-missing",
        {"tools": [TOOL], "tool_choice": {"type": "function"}},
        "tool_choice.function.name",
        "missing_required_parameter",
    ),
    ("tool-function-string", {"tools": [{"type": "function", "function": "f"}]}, "tools[0].function", "invalid_type"),
    ("tool-not-object", {"tools": ["f"]}, "tools[0]", "invalid_type"),
    (
        "tool-parameters-array",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
        "tools[0].function.parameters",
        "invalid_type",
    ),
    ("reasoning-effort-number", {"reasoning_effort": 3}, "reasoning_effort", "invalid_type"),
    ("reasoning-effort-object", {"reasoning_effort": {"level": "high"}}, "reasoning_effort", "invalid_type"),
    (
        "json-schema-string",
        {"response_format": {"type": "json_schema", "json_schema": "x"}},
        "response_format.json_schema",
        "invalid_type",
    ),
    (
        "json-schema-schema-array",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": [1]}}},
        "response_format.json_schema.schema",
        "invalid_type",
    ),
    (
        "system-part-string",
        {"messages": [{"role": "system", "content": ["be brief"]}, USER]},
        "messages[0].content[0]",
        "invalid_type",
    ),
    (
        "system-part-image",
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}, USER]},
        "messages[0].content[0].type",
        "invalid_value",
    ),
    ("user-part-string", {"messages": [{"role": "user", "content": ["Hi"]}]}, "messages[0].content[0]", "invalid_type"),
    (
        "image-url-string",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "http://x/y.png"}]}]},
        "messages[0].content[0].image_url",
        "invalid_type",
    ),
    (
        "input-audio-string",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "AAAA"}]}]},
        "messages[0].content[0].input_audio",
        "invalid_type",
    ),
    (
        "file-string",
        {"messages": [{"role": "user", "content": [{"type": "file", "file": "file-1"}]}]},
        "messages[0].content[0].file",
        "invalid_type",
    ),
    (
        "text-part-number",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[0].content[0].text",
        "invalid_type",
    ),
    (
        "tool-calls-number",
        {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [5]}]},
        "messages[1].tool_calls[0]",
        "invalid_type",
    ),
    (
        "tool-calls-not-array",
        {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": {"id": "c"}}]},
        "messages[1].tool_calls",
        "invalid_type",
    ),
    (
        "tool-call-function-string",
        {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": "f"}]}]},
        "messages[1].tool_calls[0].function",
        "invalid_type",
    ),
    (
        "tool-call-arguments-object",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "invalid_type",
    ),
    ("name-number", {"messages": [{"role": "user", "content": "Hi", "name": 5}]}, "messages[0].name", "invalid_type"),
    ("user-number", {"user": 5}, "user", "invalid_type"),
    ("parallel-tool-calls-string", {"parallel_tool_calls": "yes"}, "parallel_tool_calls", "invalid_type"),
    (
        "too-many-tools",
        {"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(MAX_TOOLS + 1)]},
        "tools",
        "array_above_max_length",
    ),
    ("too-deep-metadata", {"metadata": {"a": nested(MAX_DEPTH)}}, None, "invalid_value"),
    ("too-deep-unknown-field", {"extra": nested(300)}, None, "invalid_value"),
    (
        "too-deep-schema",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": nested(MAX_DEPTH)}}}]},
        None,
        "invalid_value",
    ),
]


@pytest.mark.parametrize(("fields", "param", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_the_param(fields: dict[str, Any], param: str | None, code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_chat({"model": "m", "messages": [USER], **fields})
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, code)


def test_a_tool_result_of_role_and_text_alone_is_still_refused_without_its_call_id() -> None:
    # Two keys, role and text, as the common message has: the check of such messages must not let this one by.
    with pytest.raises(InvalidRequest) as caught:
        validate_chat({"model": "m", "messages": [USER, {"role": "tool", "content": "ok"}]})
    assert (caught.value.status, caught.value.param, caught.value.message) == (
        400,
        "messages[1].tool_call_id",
        "Missing required parameter: 'messages[1].tool_call_id'.",
    )


def test_depth_just_inside_the_bound_is_accepted() -> None:
    body = {"model": "m", "messages": [USER], "metadata": {"a": nested(MAX_DEPTH - 2)}}  # body + metadata + arrays
    assert validate_chat(body) is body


def test_well_formed_rich_request_is_accepted() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                    {"type": "some_new_part", "payload": 1},
                ],
                "name": "ann",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}},
        "reasoning_effort": "low",
        "parallel_tool_calls": False,
        "user": "u-1",
    }
    assert validate_chat(body) is body


@pytest.mark.parametrize(("fields", "param", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_the_gateway_answers_400(fields: dict[str, Any], param: str | None, code: str) -> None:
    policy = {"providers": {"m": {"kind": "mock"}}, "models": {"m": {"provider": "m", "model": "m"}}}
    async with Gateway.from_dict(policy) as gateway:
        with pytest.raises(InvalidRequest) as caught:
            await gateway.chat_completions({"model": "m", "messages": [USER], **fields})
    assert (caught.value.param, caught.value.code) == (param, code)


def test_as_many_tools_as_openai_takes_are_accepted() -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(MAX_TOOLS)]
    assert validate_chat({"model": "m", "messages": [USER], "tools": tools})["tools"] == tools


# ── how many items an array may hold ──────────────────────────────────────────


def _items(count: int) -> list[Any]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(count)]


#: (id, the check, the body for ``count`` items, the bound, the field named)
BOUNDS = [
    pytest.param(validate_chat, lambda n: {"model": "m", "messages": _items(n)}, MAX_MESSAGES, "messages", id="chat"),
    pytest.param(
        validate_responses, lambda n: {"model": "m", "input": _items(n)}, MAX_INPUT_ITEMS, "input", id="responses"
    ),
    pytest.param(EMBEDDINGS.validate, lambda n: {"model": "m", "input": ["x"] * n}, MAX_INPUTS, "input", id="embed"),
    pytest.param(
        EMBEDDINGS.validate, lambda n: {"model": "m", "input": [[1]] * n}, MAX_INPUTS, "input", id="embed-token-arrays"
    ),
]


@pytest.mark.parametrize(("check", "body", "bound", "param"), BOUNDS)
def test_an_array_at_its_bound_is_accepted(check: Any, body: Any, bound: int, param: str) -> None:
    request = body(bound)
    assert check(request) is request


@pytest.mark.parametrize(("check", "body", "bound", "param"), BOUNDS)
def test_an_array_one_past_its_bound_is_refused_in_openai_words(check: Any, body: Any, bound: int, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check(body(bound + 1))
    assert (caught.value.status, caught.value.param, caught.value.code, caught.value.message) == (
        400,
        param,
        "array_above_max_length",
        f"Invalid '{param}': array too long. Expected an array with maximum length {bound}, "
        f"but got an array with length {bound + 1} instead.",
    )


def test_the_bounds_are_openais_where_its_spec_gives_one() -> None:
    # Embeddings: maxItems 2048 on each array form of ``input``; tools: 128. Messages and input items: none.
    assert (MAX_INPUTS, MAX_TOOLS, MAX_MESSAGES, MAX_INPUT_ITEMS) == (2048, 128, 10_000, 10_000)
