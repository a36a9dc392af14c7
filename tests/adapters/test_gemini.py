"""Gemini translation from fixtures, with every outgoing body checked against Google's own SDK types."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai.types.chat
import pytest
from google.genai import types
from pydantic import BaseModel, ConfigDict, ValidationError

from unimw.adapters.base import Target
from unimw.adapters.gemini import (
    SKIP_SIGNATURE,
    from_events,
    from_response,
    split_call_id,
    to_error,
    to_request,
    to_schema,
    tool_call_id,
)
from unimw.adapters.gemini import translate as gemini_translate
from unimw.errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from unimw.wire import JSON, dumps, loads, sse_events

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gemini"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


class GenerateContentRequest(BaseModel):
    """The ``generateContent`` REST body, built from the SDK's types; unknown or snake_case fields fail."""

    model_config = ConfigDict(extra="forbid")

    contents: list[types.Content]
    systemInstruction: types.Content | None = None
    tools: list[types.Tool] | None = None
    toolConfig: types.ToolConfig | None = None
    safetySettings: list[types.SafetySetting] | None = None
    generationConfig: types.GenerationConfig | None = None
    cachedContent: str | None = None
    serviceTier: types.ServiceTier | None = None


def check_with_sdk(body: JSON) -> None:
    """Parse ``body`` as camelCase JSON only (``by_name=False``); the SDK warns on unknown enum values."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenerateContentRequest.model_validate_json(dumps(body), by_alias=True, by_name=False)


def translate(chat: JSON, model: str = "gemini-2.5-flash", **kwargs: Any) -> JSON:
    params = kwargs.pop("params", {})
    body = to_request({"model": "public", **chat}, Target("public", model, "gemini", params), **kwargs)
    check_with_sdk(body)
    return body


def fixture(name: str) -> JSON:
    result: JSON = loads((FIXTURES / name).read_bytes())
    return result


async def events(name: str) -> AsyncIterator[tuple[str | None, bytes]]:
    """The fixture's SSE events, read the way the adapter reads them, in pieces that split lines."""

    async def pieces() -> AsyncIterator[bytes]:
        raw = (FIXTURES / name).read_bytes()
        for i in range(0, len(raw), 97):
            yield raw[i : i + 97]

    async for event in sse_events(pieces()):
        yield event


async def collect(name: str, **kwargs: Any) -> list[JSON]:
    return [c async for c in from_events(events(name), **kwargs)]


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from keys(item)


# -- the SDK check itself ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"contents": [], "generationConfig": {"maxOutputToken": 5}},
        {"contents": [], "generationConfig": {"max_output_tokens": 5}},
        {"contents": [{"role": "user", "parts": [{"txt": "hi"}]}]},
        {"contents": [], "generationConfig": {"thinkingConfig": {"thinkingLevel": "LOWISH"}}},
        {"contents": [], "systemInstructions": {"parts": [{"text": "be brief"}]}},
    ],
    ids=["misspelled", "snake-case", "unknown-part-field", "unknown-enum", "unknown-top-level"],
)
def test_the_sdk_check_catches_wrong_fields(body: JSON) -> None:
    with pytest.raises((ValidationError, UserWarning)):
        check_with_sdk(body)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_response_fixtures_parse_as_sdk_responses(name: str) -> None:
    types.GenerateContentResponse.model_validate_json((FIXTURES / name).read_bytes(), by_alias=True, by_name=False)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.sse")))
async def test_stream_fixtures_parse_as_sdk_responses(name: str) -> None:
    async for _event, data in events(name):
        if b'"error"' not in data:
            types.GenerateContentResponse.model_validate_json(data, by_alias=True, by_name=False)


# -- request ---------------------------------------------------------------------------


def test_system_and_developer_messages_become_the_system_instruction() -> None:
    body = translate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Capital of France?"},
            ]
        }
    )
    assert body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]},
        "contents": [{"role": "user", "parts": [{"text": "Hi"}, {"text": "Capital of France?"}]}],
    }


def test_roles_alternate_and_same_role_turns_merge() -> None:
    body = translate(
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
                {"role": "user", "content": "d"},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "e"},
            ]
        }
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": [{"text": "b"}, {"text": "c"}]},
        {"role": "user", "parts": [{"text": "d"}, {"text": "e"}]},
    ]


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        ),
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg?size=2", "detail": "low"}},
            {"fileData": {"fileUri": "https://example.com/cat.jpg?size=2", "mimeType": "image/jpeg"}},
        ),
        (
            {"type": "image_url", "image_url": {"url": "https://generativelanguage.googleapis.com/v1beta/files/abc"}},
            {"fileData": {"fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc"}},
        ),
        (
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "mp3"}},
            {"inlineData": {"mimeType": "audio/mp3", "data": "UklGRg=="}},
        ),
        (
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        ),
    ],
    ids=["data-url", "http-url", "files-api-uri", "audio", "pdf"],
)
def test_content_parts(part: JSON, expected: JSON) -> None:
    body = translate({"messages": [{"role": "user", "content": [{"type": "text", "text": "Look:"}, part]}]})
    assert body["contents"][0]["parts"] == [{"text": "Look:"}, expected]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
        {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
        {"type": "video", "video": {}},
    ],
    ids=["not-base64", "ftp", "file-id", "unknown-type"],
)
def test_unusable_content_parts_are_400(part: JSON) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate({"messages": [{"role": "user", "content": [part]}]})
    assert caught.value.param is not None and caught.value.param.startswith("messages[0].content[0]")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "topP": 0.9}),
        ({"max_tokens": 100}, {"maxOutputTokens": 100}),
        ({"max_tokens": 100, "max_completion_tokens": 50}, {"maxOutputTokens": 50}),
        ({"stop": "END"}, {"stopSequences": ["END"]}),
        ({"stop": ["a", "b"]}, {"stopSequences": ["a", "b"]}),
        ({"n": 2, "seed": 7}, {"candidateCount": 2, "seed": 7}),
        ({"presence_penalty": 0.5, "frequency_penalty": -0.5}, {"presencePenalty": 0.5, "frequencyPenalty": -0.5}),
        ({"logprobs": True, "top_logprobs": 3}, {"responseLogprobs": True, "logprobs": 3}),
        ({"response_format": {"type": "text"}}, None),
        ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": {"type": "object"}}}},
            {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
        ),
    ],
    ids=[
        "sampling",
        "max-tokens",
        "max-completion-tokens-wins",
        "stop-string",
        "stop-list",
        "n-seed",
        "penalties",
        "logprobs",
        "text-format",
        "json-object",
        "json-schema",
    ],
)
def test_generation_config(fields: JSON, expected: JSON | None) -> None:
    assert translate({"messages": HELLO, **fields}).get("generationConfig") == expected


def test_json_schema_keeps_refs_and_extra_properties_in_response_json_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"$ref": "#/$defs/City"}},
        "required": ["city"],
        "additionalProperties": False,
        "$defs": {"City": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}}
    assert translate({"messages": HELLO, "response_format": fmt})["generationConfig"]["responseJsonSchema"] == schema


def test_older_models_get_a_converted_response_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema}}
    config = translate({"messages": HELLO, "response_format": fmt}, model="gemini-2.0-flash")["generationConfig"]
    assert config == {
        "responseMimeType": "application/json",
        "responseSchema": {
            "type": "OBJECT",
            "properties": {"answer": {"type": "STRING"}, "confidence": {"type": "NUMBER"}},
            "required": ["answer", "confidence"],
            "propertyOrdering": ["answer", "confidence"],
        },
    }


def test_service_tier_and_params_deep_merge() -> None:
    params: JSON = {
        "generationConfig": {"topK": 40, "temperature": 1.0, "thinkingConfig": {"thinkingBudget": 0}},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
    }
    body = translate(
        {"messages": HELLO, "temperature": 0.3, "reasoning_effort": "high", "service_tier": "flex"},
        model="gemini-3-flash-preview",
        params=params,
    )
    # The caller's fields win; a budget from the policy cannot ride along with the caller's level (that is a 400).
    assert body["generationConfig"] == {"topK": 40, "temperature": 0.3, "thinkingConfig": {"thinkingLevel": "HIGH"}}
    assert body["safetySettings"] == params["safetySettings"]
    assert body["serviceTier"] == "flex"
    assert params["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}  # the policy is not mutated


def test_fields_with_no_equivalent_are_recorded_as_dropped() -> None:
    chat = {"model": "public", "messages": HELLO, "user": "u1", "logit_bias": {"1": 2}, "reasoning_effort": "low"}
    body, dropped = gemini_translate(chat, Target("public", "gemma-3", "gemini"))
    check_with_sdk(body)
    assert dropped == ("logit_bias", "reasoning_effort", "user")


# -- reasoning effort --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "effort", "thinking"),
    [
        ("gemini-3-flash-preview", None, None),
        ("gemini-3-flash-preview", "none", {"thinkingLevel": "MINIMAL"}),
        ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "MINIMAL"}),
        ("gemini-3-flash-preview", "low", {"thinkingLevel": "LOW"}),
        ("gemini-3-flash-preview", "medium", {"thinkingLevel": "MEDIUM"}),
        ("gemini-3-flash-preview", "high", {"thinkingLevel": "HIGH"}),
        ("gemini-3-flash-preview", "xhigh", {"thinkingLevel": "HIGH"}),
        ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "LOW"}),
        ("gemini-3-pro-preview", "medium", {"thinkingLevel": "HIGH"}),
        ("gemini-3.1-pro-preview", "low", {"thinkingLevel": "LOW"}),
        ("models/gemini-3.1-flash-lite-preview", "minimal", {"thinkingLevel": "MINIMAL"}),
        ("gemini-2.5-flash", None, None),
        ("gemini-2.5-flash", "none", {"thinkingBudget": 0}),
        ("gemini-2.5-flash", "minimal", {"thinkingBudget": 1024}),
        ("gemini-2.5-flash", "low", {"thinkingBudget": 1024}),
        ("gemini-2.5-flash", "medium", {"thinkingBudget": 8192}),
        ("gemini-2.5-flash", "high", {"thinkingBudget": 24576}),
        ("gemini-2.5-flash-lite", "xhigh", {"thinkingBudget": 24576}),
        ("gemini-2.5-pro", "none", {"thinkingBudget": 128}),
        ("gemini-2.5-pro", "xhigh", {"thinkingBudget": 32768}),
        ("gemini-2.0-flash", "high", None),
    ],
    ids=lambda v: str(v),
)
def test_reasoning_effort_per_family(model: str, effort: str | None, thinking: JSON | None) -> None:
    fields = {} if effort is None else {"reasoning_effort": effort}
    config = translate({"messages": HELLO, **fields}, model=model).get("generationConfig") or {}
    assert config.get("thinkingConfig") == thinking


def test_thinking_levels_are_configurable_and_thoughts_can_be_asked_for() -> None:
    body = translate(
        {"messages": HELLO, "reasoning_effort": "medium"},
        model="gemini-3-pro-preview",
        thinking_levels={"gemini-3-pro": ("low", "medium", "high")},
        include_thoughts=True,
    )
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "MEDIUM", "includeThoughts": True}


def test_unknown_reasoning_effort_is_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate({"messages": HELLO, "reasoning_effort": "extreme"})
    assert caught.value.param == "reasoning_effort"


# -- tools -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool_choice", "names", "config"),
    [
        (None, ["get_weather", "get_time"], None),
        ("auto", ["get_weather", "get_time"], {"mode": "AUTO"}),
        ("none", ["get_weather", "get_time"], {"mode": "NONE"}),
        ("required", ["get_weather", "get_time"], {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            ["get_weather", "get_time"],
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
        ),
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [TIME]}},
            ["get_time"],
            {"mode": "AUTO"},
        ),
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [WEATHER]}},
            ["get_weather"],
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
    ids=["unset", "auto", "none", "required", "named", "allowed-auto", "allowed-required"],
)
def test_tool_choice(tool_choice: Any, names: list[str], config: JSON | None) -> None:
    fields = {"tools": [WEATHER, TIME]} | ({} if tool_choice is None else {"tool_choice": tool_choice})
    body = translate({"messages": HELLO, **fields})
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == names
    assert body.get("toolConfig") == (None if config is None else {"functionCallingConfig": config})


def test_function_declarations() -> None:
    body = translate({"messages": HELLO, "tools": [WEATHER, TIME], "tool_choice": "auto"})
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city.",
                    "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]},
                },
                {"name": "get_time"},  # Gemini refuses an OBJECT with empty properties
            ]
        }
    ]


def test_non_function_tools_are_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate({"messages": HELLO, "tools": [{"type": "custom", "custom": {"name": "x"}}]})
    assert caught.value.param == "tools[0].type"


PYDANTIC_STYLE = {
    "$defs": {
        "Unit": {"enum": ["celsius", "fahrenheit"], "title": "Unit", "type": "string"},
        "Place": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"city": {"type": "string", "format": "uri"}, "unit": {"$ref": "#/$defs/Unit"}},
            "required": ["city", "unit"],
        },
        "Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}},
    },
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "place": {"$ref": "#/$defs/Place", "description": "Where."},
        "when": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}], "default": None},
        "days": {"type": ["integer", "null"], "exclusiveMinimum": 0, "maximum": 14, "examples": [3]},
        "level": {"enum": [1, 2, 3]},
        "mode": {"const": "fast"},
        "either": {"oneOf": [{"type": "string"}, {"type": "number", "format": "double"}]},
        "both": {"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"b": {"type": "boolean"}}}]},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "maxItems": 5},
        "tree": {"$ref": "#/$defs/Node"},
        "extra": {"type": "object", "patternProperties": {"^x-": {"type": "string"}}},
    },
    "required": ["place", "ghost"],
}


def test_schema_conversion_inlines_refs_and_drops_what_gemini_refuses() -> None:
    schema = to_schema(PYDANTIC_STYLE)
    assert schema["properties"]["place"] == {
        "type": "OBJECT",
        "description": "Where.",
        "properties": {
            "city": {"type": "STRING"},
            "unit": {"type": "STRING", "title": "Unit", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    }
    assert schema["properties"]["when"] == {"nullable": True, "default": None, "type": "STRING", "format": "date-time"}
    assert schema["properties"]["days"] == {
        "nullable": True,
        "type": "INTEGER",
        "minimum": 0,
        "maximum": 14,
        "example": 3,
    }
    assert schema["properties"]["level"] == {"description": "One of: 1, 2, 3."}
    assert schema["properties"]["mode"] == {"enum": ["fast"], "type": "STRING"}
    assert schema["properties"]["either"] == {"anyOf": [{"type": "STRING"}, {"type": "NUMBER", "format": "double"}]}
    assert schema["properties"]["both"] == {
        "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}},
        "type": "OBJECT",
    }
    assert schema["properties"]["tags"] == {"type": "ARRAY", "maxItems": 5, "items": {"type": "STRING"}}
    assert schema["properties"]["tree"] == {"type": "OBJECT", "properties": {"child": {"type": "OBJECT"}}}
    assert schema["properties"]["extra"] == {"type": "OBJECT"}
    assert schema["required"] == ["place"]
    assert not {"$ref", "$defs", "$schema", "additionalProperties", "oneOf", "allOf", "const"} & set(keys(schema))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        types.Schema.model_validate_json(dumps(schema), by_alias=True, by_name=False)
    tool = {"type": "function", "function": {"name": "plan", "parameters": PYDANTIC_STYLE}}
    assert (
        translate({"messages": HELLO, "tools": [tool]})["tools"][0]["functionDeclarations"][0]["parameters"] == schema
    )


# -- tool-call history and thought signatures -------------------------------------------------


def test_tool_call_round_trip_carries_thought_signatures() -> None:
    answer = fixture("function_calls.json")
    signature = answer["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    completion = openai.types.chat.ChatCompletion.model_validate(from_response(answer, "gemini-3-pro-preview"))
    assistant = completion.choices[0].message.model_dump(exclude_none=True)  # what an SDK client sends back
    calls = completion.choices[0].message.tool_calls or []
    messages = [
        *HELLO,
        assistant,
        *({"role": "tool", "tool_call_id": c.id, "content": '{"temp": 21}'} for c in reversed(calls)),
        {"role": "user", "content": "And tomorrow?"},
    ]
    body = translate({"messages": messages, "tools": [WEATHER, TIME]}, model="gemini-3-pro-preview")
    assert body["contents"][1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
                "thoughtSignature": signature,
            },
            {"functionCall": {"name": "get_time", "args": {"city": "Paris"}}},
        ],
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_time", "response": {"result": {"temp": 21}}}},
            {"functionResponse": {"name": "get_weather", "response": {"result": {"temp": 21}}}},
            {"text": "And tomorrow?"},
        ],
    }


@pytest.mark.parametrize(
    ("model", "signed"), [("gemini-3-flash-preview", True), ("gemini-2.5-flash", False)], ids=["gemini-3", "2.5"]
)
def test_foreign_history_gets_the_documented_dummy_signature(model: str, signed: bool) -> None:
    call = {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call, {**call, "id": "call_def"}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_def", "content": "rainy"},
    ]
    body = translate({"messages": messages}, model=model)
    first, second = body["contents"][1]["parts"]
    assert first.get("thoughtSignature") == (SKIP_SIGNATURE if signed else None)
    assert "thoughtSignature" not in second
    # An id Gemini did not make up is handed back to it (it pairs calls with responses).
    assert first["functionCall"]["id"] == "call_abc"
    assert body["contents"][2]["parts"][0]["functionResponse"] == {
        "id": "call_abc",
        "name": "get_weather",
        "response": {"result": "sunny"},
    }


def test_signature_from_googles_compatible_field_and_legacy_function_messages() -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
        "extra_content": {"google": {"thought_signature": "c2lnbmVk"}},
    }
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "assistant", "content": None, "function_call": {"name": "get_time", "arguments": "{}"}},
        {"role": "function", "name": "get_time", "content": "noon"},
    ]
    contents = translate({"messages": messages}, model="gemini-3-flash-preview")["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert contents[1]["parts"][0] == {
        "functionCall": {"id": "call_1", "name": "get_weather", "args": {}},
        "thoughtSignature": "c2lnbmVk",
    }
    assert contents[4]["parts"] == [{"functionResponse": {"name": "get_time", "response": {"result": "noon"}}}]


def test_tool_message_for_an_unknown_call_is_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate({"messages": [*HELLO, {"role": "tool", "tool_call_id": "call_x", "content": "?"}]})
    assert caught.value.param == "messages[1].tool_call_id"


def test_bad_tool_call_arguments_are_400() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}
    with pytest.raises(InvalidRequest) as caught:
        translate({"messages": [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]}]})
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    ("call", "signature", "expected"),
    [
        ({"id": "fc_1", "name": "f", "args": {}}, None, "fc_1"),
        ({"id": "fc_1", "name": "f", "args": {}}, "c2lnbmF0dXJl+/=", "fc_1~c2lnbmF0dXJl+/="),
    ],
    ids=["gemini-id", "gemini-id-signed"],
)
def test_tool_call_ids_keep_geminis_own_id(call: JSON, signature: str | None, expected: str) -> None:
    call_id = tool_call_id(call, signature, "r1", 0, 0)
    assert call_id == expected
    assert split_call_id(call_id) == ("fc_1", signature)


def test_synthesised_ids_are_stable_and_distinct() -> None:
    call = {"name": "f", "args": {"x": 1}}
    first = tool_call_id(call, None, "r1", 0, 0)
    assert first == tool_call_id(dict(call), None, "r1", 0, 0)
    assert len({first, tool_call_id(call, None, "r1", 0, 1), tool_call_id(call, None, "r2", 0, 0)}) == 3
    assert split_call_id(first) == (None, None)
    assert split_call_id(first + "~c2ln") == (None, "c2ln")


# -- response ----------------------------------------------------------------------------


def test_text_response() -> None:
    completion = from_response(fixture("text.json"), "gemini-2.5-flash")
    assert completion["id"] == "chatcmpl-mZ1CaKm7Oeq7nvgPjeTr4Aw"
    assert completion["model"] == "gemini-2.5-flash"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The capital of France is Paris.", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert completion["usage"] == {
        "prompt_tokens": 8,
        "completion_tokens": 7,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    openai.types.chat.ChatCompletion.model_validate(completion)


def test_thoughts_are_reasoning_content_and_counted_as_completion() -> None:
    completion = from_response(fixture("thoughts.json"))
    message = completion["choices"][0]["message"]
    assert message["content"] == "Paris is the capital of France."
    assert message["reasoning_content"].startswith("**Recalling the capital**")
    assert completion["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 149,
        "total_tokens": 1359,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 142},
    }


def test_parallel_function_calls() -> None:
    body = fixture("function_calls.json")
    signature = body["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    choice = from_response(body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("function", "get_time", {"city": "Paris"}),
    ]
    assert [split_call_id(c["id"]) for c in calls] == [(None, signature), (None, None)]
    again = from_response(fixture("function_calls.json"))["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == [c["id"] for c in again]  # a replay gives the same ids


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("LANGUAGE", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("IMAGE_PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ],
    ids=lambda v: str(v),
)
def test_finish_reasons(native: str, expected: str) -> None:
    body = fixture("text.json")
    body["candidates"][0]["finishReason"] = native
    assert from_response(body)["choices"][0]["finish_reason"] == expected


def test_safety_stop_without_content() -> None:
    choice = from_response(fixture("safety.json"))["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["content"] is None


def test_blocked_prompt_is_one_filtered_choice() -> None:
    completion = from_response(fixture("prompt_blocked.json"))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in completion["choices"]] == [
        (0, None, "content_filter")
    ]
    assert completion["usage"]["prompt_tokens"] == 20


def test_candidates_and_logprobs() -> None:
    completion = from_response(fixture("logprobs.json"))
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in completion["choices"]] == [
        (0, "Paris", "length"),
        (1, "The capital", "length"),
    ]
    assert completion["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": "Paris",
                "logprob": -0.0123,
                "bytes": list(b"Paris"),
                "top_logprobs": [
                    {"token": "Paris", "logprob": -0.0123, "bytes": list(b"Paris")},
                    {"token": "The", "logprob": -4.61, "bytes": list(b"The")},
                ],
            }
        ],
        "refusal": None,
    }
    openai.types.chat.ChatCompletion.model_validate(completion)


# -- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "include-usage"])
async def test_stream_text(include_usage: bool) -> None:
    chunks = await collect("stream_text.sse", model="gemini-3-flash-preview", include_usage=include_usage)
    assert {c["id"] for c in chunks} == {"chatcmpl-gqJCaM3yL8-onvgPkq3B6A0"}
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks if c["choices"]]
    assert deltas == [
        ({"role": "assistant", "reasoning_content": "**Answering directly**\n\nA simple fact question."}, None),
        ({"content": "The capital of"}, None),
        ({"content": " France is Paris."}, None),
        ({}, "stop"),
    ]
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 9,
            "completion_tokens": 52,
            "total_tokens": 61,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 45},
        }
    else:
        assert all(c["choices"] for c in chunks)
    for c in chunks:
        openai.types.chat.ChatCompletionChunk.model_validate(c)


async def test_stream_tool_calls_match_the_non_streamed_ids() -> None:
    chunks = await collect("stream_function_calls.sse")
    expected = from_response(fixture("function_calls.json"))["choices"][0]["message"]["tool_calls"]
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "tool_calls": [{"index": i, **call} for i, call in enumerate(expected)],
    }
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_of_a_blocked_prompt() -> None:
    chunks = await collect("stream_blocked.sse")
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ({"role": "assistant"}, "content_filter")
    ]


async def test_stream_cut_before_finish_is_an_error() -> None:
    seen: list[JSON] = []
    with pytest.raises(UpstreamUnavailable):
        async for c in from_events(events("stream_cut.sse"), include_usage=True):
            seen.append(c)
    assert [c["choices"][0]["delta"].get("content") for c in seen] == ["The capital of", " France"]


async def test_error_event_mid_stream() -> None:
    with pytest.raises(UpstreamError) as caught:
        await collect("stream_error.sse")
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (503, "service_unavailable", True)
    assert caught.value.message == "The model is overloaded. Please try again later."


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "status", "type", "code", "retry_after"),
    [
        ("400", 400, "invalid_request_error", None, None),
        ("400_api_key", 401, "invalid_request_error", "invalid_api_key", None),
        ("400_precondition", 400, "invalid_request_error", "failed_precondition", None),
        ("401", 401, "invalid_request_error", "invalid_api_key", None),
        ("403", 403, "invalid_request_error", "permission_denied", None),
        ("404", 404, "invalid_request_error", "model_not_found", None),
        ("429", 429, "requests", "rate_limit_exceeded", 23.0),
        ("500", 500, "server_error", None, None),
        ("503", 503, "server_error", "service_unavailable", None),
        ("504", 504, "server_error", "deadline_exceeded", None),
    ],
    ids=lambda v: str(v),
)
def test_errors(name: str, status: int, type: str, code: str | None, retry_after: float | None) -> None:
    raw = (FIXTURES / "errors" / f"{name}.json").read_bytes()
    error = to_error(int(name[:3]), raw, {})
    assert (error.status, error.type, error.code, error.retry_after) == (status, type, code, retry_after)
    assert error.message == loads(raw)["error"]["message"]
    assert error.retryable == (status in (429, 500, 503, 504))
    assert error.param == ("model" if status == 404 else None)


def test_retry_after_header_wins_over_retry_info() -> None:
    error = to_error(429, (FIXTURES / "errors" / "429.json").read_bytes(), {"retry-after": "2"})
    assert error.retry_after == 2.0


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (502, b"<html>Bad Gateway</html>", (502, "server_error", None)),
        (429, b"", (429, "requests", "rate_limit_exceeded")),
        (
            400,
            b'[{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}]',
            (400, "invalid_request_error", None),
        ),
    ],
    ids=["html", "empty", "list-wrapped"],
)
def test_errors_without_the_usual_body(status: int, body: bytes, expected: tuple[int, str, str | None]) -> None:
    error = to_error(status, body, {})
    assert (error.status, error.type, error.code) == expected
