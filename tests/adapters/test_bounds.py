"""Bounded work in the vendor translations: schemas whose ``$ref``s fan out, deep nesting, and hostile field types.

Every translation is a pure function run inside the event loop, so none may
do work that grows faster than its input, recurse as deep as its input, or
fail with anything but a :class:`UnimwError` on a request that passed
validation.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.hostile import requests
from unimw.adapters import anthropic, gemini, mock
from unimw.adapters.anthropic_models import closed_schema
from unimw.adapters.base import Target
from unimw.adapters.gemini_schema import MAX_DEPTH, MAX_NODES, MAX_TEXT, Budget, to_schema
from unimw.errors import InvalidRequest, UnimwError
from unimw.wire import JSON, dumps

HELLO = [{"role": "user", "content": "hi"}]
PLAIN: JSON = {"type": "function", "function": {"name": "plain", "parameters": {"type": "object", "properties": {}}}}
GEMINI = Target("public", "gemini-2.5-flash", "gemini")
GEMINI_2 = Target("public", "gemini-2.0-flash", "gemini")  # before 2.5: the response schema is converted
CLAUDE = Target("public", "claude-sonnet-4-5", "anthropic")


def doubling(depth: int) -> JSON:
    """``$defs`` where each level refers to the next twice: 2**depth leaves once inlined, from a few KB."""
    defs: JSON = {
        f"d{i}": {
            "type": "object",
            "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}, "b": {"$ref": f"#/$defs/d{i + 1}"}},
        }
        for i in range(depth)
    }
    defs[f"d{depth}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def chain(length: int, *, nested: bool) -> JSON:
    """``d0 → d1 → ... → d{length-1}``: each a property holding the next, or (not nested) a bare alias of it."""
    defs: JSON = {
        f"d{i}": {"type": "object", "properties": {"next": {"$ref": f"#/$defs/d{i + 1}"}}}
        if nested
        else {"$ref": f"#/$defs/d{i + 1}"}
        for i in range(length - 1)
    }
    defs[f"d{length - 1}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def nested(depth: int) -> JSON:
    schema: JSON = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def tool(name: str, parameters: Any) -> JSON:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# -- Gemini schema conversion ----------------------------------------------------------------------


def test_doubling_refs_in_a_tool_are_refused_after_a_bounded_number_of_nodes() -> None:
    chat = {"model": "public", "messages": HELLO, "tools": [PLAIN, PLAIN, PLAIN, tool("fan", doubling(30))]}
    with pytest.raises(InvalidRequest) as caught:
        gemini.to_request(chat, GEMINI)
    assert caught.value.param == "tools[3].function.parameters"
    assert caught.value.message == (
        f"Invalid 'tools[3].function.parameters': the schema expands to more than {MAX_NODES} nodes "
        "once its $refs are inlined (the tools of a request count together)."
    )
    assert caught.value.to_dict()["error"]["code"] == "invalid_value"
    budget = Budget()
    with pytest.raises(InvalidRequest):
        to_schema(doubling(30), param="p", budget=budget)
    assert budget.nodes == MAX_NODES + 1  # the work stopped at the first node over the bound


def test_doubling_refs_in_a_response_schema_are_refused() -> None:
    chat = {
        "model": "public",
        "messages": HELLO,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": doubling(30)}},
    }
    with pytest.raises(InvalidRequest) as caught:
        gemini.to_request(chat, GEMINI_2)
    assert caught.value.param == "response_format.json_schema.schema"


def test_tools_share_one_budget() -> None:
    # Each tool alone is well under the bound (2**8 leaves); together they are over it.
    tools = [tool(f"t{i}", doubling(8)) for i in range(40)]
    assert to_schema(doubling(8))["type"] == "OBJECT"
    with pytest.raises(InvalidRequest) as caught:
        gemini.to_request({"model": "public", "messages": HELLO, "tools": tools}, GEMINI)
    # 2**9 - 1 schema objects, each reached through one $ref hop: 1,022 nodes a tool; the 10th crosses 10,000.
    assert caught.value.param == "tools[9].function.parameters"


@pytest.mark.parametrize(
    "schema",
    [chain(3000, nested=True), chain(3000, nested=False), nested(200), nested(MAX_DEPTH)],
    ids=["ref-chain", "alias-chain", "plain-200", "plain-just-over"],
)
def test_deep_schemas_are_refused_without_recursing_as_deep(schema: JSON) -> None:
    with pytest.raises(InvalidRequest) as caught:
        gemini.to_request({"model": "public", "messages": HELLO, "tools": [tool("deep", schema)]}, GEMINI)
    assert caught.value.param == "tools[0].function.parameters"
    assert caught.value.message == (
        f"Invalid 'tools[0].function.parameters': the schema is nested deeper than {MAX_DEPTH} levels "
        "($ref hops included)."
    )


def test_a_schema_at_the_depth_bound_converts() -> None:
    schema = to_schema(nested(MAX_DEPTH - 1))
    for _ in range(MAX_DEPTH - 1):
        schema = schema["properties"]["x"]
    assert schema == {"type": "STRING"}


def test_text_inlined_many_times_is_refused() -> None:
    big = {"$defs": {"t": {"type": "string", "description": "x" * 100_000}}, "type": "object"}
    big["properties"] = {f"p{i}": {"$ref": "#/$defs/t"} for i in range(20)}
    with pytest.raises(InvalidRequest) as caught:
        to_schema(big, param="response_format.json_schema.schema")
    assert caught.value.message == (
        "Invalid 'response_format.json_schema.schema': the schema expands to more than "
        f"{MAX_TEXT} characters of text once its $refs are inlined."
    )


def test_shared_refs_within_the_bounds_convert_as_before() -> None:
    schema = {
        "$defs": {
            "Point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}},
            "Alias": {"$ref": "#/$defs/Point", "description": "alias"},
        },
        "type": "object",
        "properties": {
            "start": {"$ref": "#/$defs/Point"},
            "end": {"$ref": "#/$defs/Alias", "title": "End"},
            "both": {
                "allOf": [
                    {"required": ["a"], "properties": {"a": {}}},
                    {"required": ["b", "a"], "properties": {"b": {}}},
                ]
            },
        },
        "required": ["start", "end"],
    }
    point = {"type": "OBJECT", "properties": {"x": {"type": "NUMBER"}, "y": {"type": "NUMBER"}}}
    assert to_schema(schema) == {
        "type": "OBJECT",
        "properties": {
            "start": point,
            "end": {**point, "title": "End", "description": "alias"},
            "both": {"properties": {"a": {}, "b": {}}, "required": ["a", "b"], "type": "OBJECT"},
        },
        "required": ["start", "end"],
    }


def test_wide_all_of_merges_in_linear_work() -> None:
    parts = [{"properties": {f"p{i}": {"type": "string"}}, "required": [f"p{i}"]} for i in range(4000)]
    schema = to_schema({"allOf": parts})
    assert schema["required"] == [f"p{i}" for i in range(4000)]
    assert len(schema["properties"]) == 4000


# -- Anthropic and the mock ------------------------------------------------------------------------


def test_anthropic_closed_schema_is_depth_bounded() -> None:
    chat = {
        "model": "public",
        "messages": HELLO,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": nested(200)}},
    }
    with pytest.raises(InvalidRequest) as caught:
        anthropic.to_request(chat, CLAUDE)
    assert caught.value.param == "response_format.json_schema.schema"
    assert closed_schema(nested(10))["additionalProperties"] is False


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        ({"tools": [PLAIN, tool("deep", nested(200))], "tool_choice": "required"}, "tools[0].function.parameters"),
        (
            {"tools": [PLAIN, tool("deep", nested(200))], "tool_choice": {"function": {"name": "deep"}}},
            "tools[1].function.parameters",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": nested(200)}}},
            "response_format.json_schema.schema",
        ),
    ],
    ids=["required", "named", "response-format"],
)
def test_mock_sample_is_depth_bounded(request_: JSON, param: str) -> None:
    if param.startswith("tools[0]"):
        request_["tools"][0] = tool("plain", nested(200))
    with pytest.raises(InvalidRequest) as caught:
        mock.answer({"model": "m", "messages": HELLO, **request_})
    assert caught.value.param == param


def test_mock_samples_a_wide_schema() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}}
    message, _ = mock.answer(
        {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    )
    assert message["content"] == dumps({f"p{i}": 0 for i in range(5000)}).decode()


@pytest.mark.parametrize("target", [GEMINI, CLAUDE], ids=["gemini", "anthropic"])
def test_tool_call_arguments_nested_past_what_can_be_sent_are_400(target: Target) -> None:
    arguments = "[" * 300 + "]" * 300
    arguments = '{"a": ' + arguments + "}"
    call = {"id": "call_1", "type": "function", "function": {"name": "plain", "arguments": arguments}}
    chat = {"model": "public", "messages": [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]}]}
    translate = gemini.to_request if target is GEMINI else anthropic.to_request
    with pytest.raises(InvalidRequest) as caught:
        translate(chat, target)
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def returns_or_refuses(translate: Any, *args: Any) -> None:
    """``translate`` answers something that can be sent, or refuses with a unimw error; nothing else."""
    try:
        result = translate(*args)
    except UnimwError:
        return
    dumps(result)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_translations_of_validated_hostile_requests_return_or_refuse(request: JSON) -> None:
    returns_or_refuses(mock.answer, copy.deepcopy(request))
    for model in ("gemini-2.0-flash", "gemini-2.5-pro", "gemini-3-pro-preview"):
        returns_or_refuses(gemini.to_request, copy.deepcopy(request), Target("public", model, "gemini"))
    for model in ("claude-3-5-sonnet-latest", "claude-sonnet-4-5", "claude-opus-4-7"):
        returns_or_refuses(anthropic.to_request, copy.deepcopy(request), Target("public", model, "anthropic"))
