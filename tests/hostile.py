"""Hypothesis strategies for hostile requests, shared by the translation and gateway property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from unimw.wire import JSON, dumps

# -- validated but hostile requests ----------------------------------------------------------------
#
# Requests of the shape validation guarantees (an object; a model; messages with a known role and
# string, list or, for assistant and function, null content; content parts that are objects with
# a string type; tools that are objects with a string type, function tools with a named function;
# tool_choice none/auto/required or an object; response_format an object with a string type and an
# object json_schema) and hostile everywhere else: schemas, part fields, tool calls, choice objects.

_WORDS = st.sampled_from(
    [
        "type", "properties", "items", "$ref", "$defs", "definitions", "enum", "const", "anyOf", "oneOf",
        "allOf", "required", "format", "description", "title", "default", "examples", "exclusiveMinimum",
        "object", "string", "integer", "array", "null", "number", "#/$defs/a", "a", "text", "url", "function",
        "name", "arguments", "id", "tools", "mode", "allowed_tools", "file_data", "image_url", "input_audio",
        "data", "schema", "date-time", "double", "thinking", "signature", "https://x.test/a.png",
        "data:image/png;base64,AA==", "{}", '{"a": [1]}', "auto", "none", "extra_content", "google",
        "tool_calls", "function_call", "thinking_blocks", "redacted_thinking", "parameters", "strict",
        "json_schema", "file", "refusal", "tool_call_id", "call_1~c2ln", "thought_signature",
    ]
)  # fmt: skip
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what the door's JSON parser yields as ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | _WORDS
    | st.text(max_size=4)
)
HOSTILE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_WORDS, inner, max_size=4),
    max_leaves=10,
)
_OBJECT = st.dictionaries(_WORDS, HOSTILE, max_size=4)


def _with(extra: JSON, **fields: Any) -> JSON:
    return {**extra, **fields}


_PART = st.builds(
    lambda extra, kind: _with(extra, type=kind),
    _OBJECT,
    st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", "video"]),
)
_CONTENT = st.text(max_size=6) | st.lists(_PART, max_size=3)
_ARGUMENTS = _WORDS | st.builds(lambda value: dumps(value).decode(), HOSTILE) | HOSTILE
_CALL = st.builds(
    lambda extra, kind, function: _with(extra, type=kind, function=function),
    _OBJECT,
    st.sampled_from(["function", "custom"]),
    st.builds(lambda extra, name, arguments: _with(extra, name=name, arguments=arguments), _OBJECT, HOSTILE, _ARGUMENTS)
    | HOSTILE,
)
_ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"])


@st.composite
def _message(draw: st.DrawFn) -> JSON:
    role = draw(_ROLES)
    message = _with(draw(_OBJECT), role=role)
    message["content"] = draw((st.none() | _CONTENT) if role in ("assistant", "function") else _CONTENT)
    if role == "tool":
        message["tool_call_id"] = draw(_WORDS | st.text(max_size=4))
    if role == "assistant" and draw(st.booleans()):
        message["tool_calls"] = draw(st.lists(_CALL, max_size=2) | HOSTILE)
    return message


_TOOL = st.builds(
    lambda extra, function: _with(extra, type="function", function=function),
    _OBJECT,
    st.builds(lambda extra, name, schema: _with(extra, name=name, parameters=schema), _OBJECT, _WORDS, HOSTILE),
) | st.builds(lambda extra, kind: _with(extra, type=kind), _OBJECT, _WORDS.filter(lambda kind: kind != "function"))
_RESPONSE_FORMAT = st.builds(
    # Validation checks json_schema only where the type is json_schema: elsewhere it may be anything.
    lambda extra, kind: _with(
        {k: v for k, v in extra.items() if kind != "json_schema" or k != "json_schema"}, type=kind
    ),
    _OBJECT,
    st.sampled_from(["text", "json_object", "json_schema"]),
) | st.builds(
    lambda extra, kind, spec: _with(extra, type=kind, json_schema=spec),
    _OBJECT,
    st.sampled_from(["json_object", "json_schema", "other"]),
    st.builds(lambda extra, schema: _with(extra, schema=schema), _OBJECT, HOSTILE),
)
_FIELDS = {
    "tools": st.lists(_TOOL, max_size=3),
    "tool_choice": st.sampled_from(["none", "auto", "required"]) | _OBJECT,
    "response_format": _RESPONSE_FORMAT,
    "reasoning_effort": HOSTILE,
    "parallel_tool_calls": HOSTILE,
    "service_tier": HOSTILE,
    "user": HOSTILE,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=3),
    "temperature": st.floats(0, 2),
    "max_tokens": st.integers(1, 2**63),
    "n": st.integers(1, 3),
    "metadata": _OBJECT,
}


@st.composite
def requests(draw: st.DrawFn) -> JSON:
    request: JSON = {"model": "public", "messages": draw(st.lists(_message(), min_size=1, max_size=4))}
    for name in draw(st.sets(st.sampled_from(sorted(_FIELDS)), max_size=5)):
        request[name] = draw(_FIELDS[name])
    return request
