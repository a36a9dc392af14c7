"""Pure translation tests for the Anthropic Messages API adapter, from fixtures in the vendor's wire format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic.types
import pydantic
import pytest
from anthropic.types.shared.error_response import ErrorResponse
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.upstreams.anthropic_app import sdk_errors
from unimw.adapters.anthropic import (
    DEFAULT_MAX_TOKENS,
    JSON_TOOL,
    Traits,
    finish_reason,
    from_events,
    from_response,
    to_error,
    to_request,
    traits,
)
from unimw.adapters.anthropic import translate as anthropic_translate
from unimw.adapters.base import Target
from unimw.errors import InvalidRequest, UpstreamError, UpstreamUnavailable
from unimw.wire import JSON, sse_events

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
LEGACY = "2023-06-01"
SONNET_45 = "claude-sonnet-4-5-20250929"
WEATHER: JSON = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: JSON = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ANSWER_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "where": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    "required": ["answer"],
}
HELLO = [{"role": "user", "content": "Hi"}]


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


async def _lines(name: str) -> AsyncIterator[bytes]:
    for line in (FIXTURES / name).read_bytes().splitlines(keepends=True):
        yield line


async def chunks_of(name: str, **options: Any) -> list[JSON]:
    return [c async for c in from_events(sse_events(_lines(name)), **options)]


def translate(chat: JSON, model: str = SONNET_45, version: str = "2026-10-21", **params: Any) -> JSON:
    """``to_request`` for ``chat``, checked against the SDK's request types (unknown fields fail)."""
    body = to_request({"model": "public", **chat}, Target("public", model, "anthropic", params), version=version)
    assert sdk_errors(body, version) == []
    return body


def dropped(chat: JSON, model: str = SONNET_45, version: str = "2026-10-21", **params: Any) -> list[str]:
    """The fields the translation of ``chat`` leaves out."""
    target = Target("public", model, "anthropic", params)
    return list(anthropic_translate({"model": "public", **chat}, target, version=version)[1])


# -- the fixtures and the type check are what they claim to be -------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("message_*.json")))
def test_message_fixtures_are_sdk_messages(name: str) -> None:
    anthropic.types.Message.model_validate(load(name), strict=True)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("stream_*.sse")))
async def test_stream_fixtures_are_sdk_events(name: str) -> None:
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)
    async for event, data in sse_events(_lines(name)):
        obj = json.loads(data)
        assert obj["type"] == event
        if event == "error":
            ErrorResponse.model_validate(obj)
        elif event != "ping":
            adapter.validate_python(obj)


def test_error_fixtures_are_sdk_errors() -> None:
    for case in load("errors.json"):
        if case["body"]["error"]["type"] == "request_too_large":  # documented (413), not in the SDK's union
            assert set(case["body"]) == {"type", "error", "request_id"}
        else:
            ErrorResponse.model_validate(case["body"])


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(lambda b: b.update(stop_sequence=["x"]), "unknown field 'stop_sequence'", id="top-level"),
        pytest.param(lambda b: b.update(temperature=0.5), "unknown field 'temperature'", id="sampling-in-2026"),
        pytest.param(
            lambda b: b["tools"][0].update(input_shema={}), "unknown field 'input_shema' for ToolParam", id="tool"
        ),
        pytest.param(
            lambda b: b["messages"][0]["content"][0].update(tool_use_idd="x"),
            "unknown field 'tool_use_idd' for ToolResultBlockParam",
            id="nested-block",
        ),
        pytest.param(
            lambda b: b["tool_choice"].update(disable_parallel_tools=True),
            "unknown field 'disable_parallel_tools'",
            id="tool-choice",
        ),
        pytest.param(lambda b: b.pop("max_tokens"), "missing required field 'max_tokens'", id="missing"),
        pytest.param(
            lambda b: b["messages"][0]["content"][0].update(type="tool_results"), "content[0]", id="block-type"
        ),
    ],
)
def test_sdk_check_catches_misspelled_fields(mutate: Any, expected: str) -> None:
    body = {
        "model": SONNET_45,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "1"}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "auto"},
    }
    assert sdk_errors(body) == []
    mutate(body)
    assert any(expected in error for error in sdk_errors(body)), sdk_errors(body)


# -- requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "system", "turns"),
    [
        pytest.param(
            [{"role": "system", "content": "Be brief."}, *HELLO],
            "Be brief.",
            [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            id="system-string",
        ),
        pytest.param(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                *HELLO,
            ],
            [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric."}],
            [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            id="system-and-developer",
        ),
        pytest.param(
            [*HELLO, {"role": "assistant", "content": "Hello"}, {"role": "developer", "content": "Now French."}],
            None,
            [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "user", "content": [{"type": "text", "text": "[system] Now French."}]},
            ],
            id="later-developer-folded-into-user-turn",
        ),
        pytest.param(
            [*HELLO, {"role": "user", "content": [{"type": "text", "text": "There?"}]}, {"role": "assistant", "content": "A"}, {"role": "assistant", "content": [{"type": "text", "text": "B"}]}],
            None,
            [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "There?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
            ],
            id="same-role-turns-merged",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "a.pdf"}},
                    ],
                }
            ],
            None,
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
                    ],
                }
            ],
            id="images-and-pdf",
        ),
        pytest.param(
            [
                *HELLO,
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                        {"id": "call.2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
                {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "user", "content": "And tomorrow?"},
            ],
            None,
            [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "12C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
                        {"type": "text", "text": "And tomorrow?"},
                    ],
                },
            ],
            id="tool-calls-and-results",
        ),
    ],
)  # fmt: skip
def test_messages(messages: list[JSON], system: Any, turns: list[JSON]) -> None:
    body = translate({"messages": messages})
    assert body.get("system") == system
    assert body["messages"] == turns


@pytest.mark.parametrize(
    ("chat", "options", "expected"),
    [
        pytest.param({}, {}, {"max_tokens": DEFAULT_MAX_TOKENS}, id="default-max-tokens"),
        pytest.param({"max_tokens": 50}, {}, {"max_tokens": 50}, id="max-tokens"),
        pytest.param({"max_tokens": 50, "max_completion_tokens": 70}, {}, {"max_tokens": 70}, id="max-completion-wins"),
        pytest.param({}, {"max_tokens": 9000}, {"max_tokens": 9000}, id="per-model-param"),
        pytest.param({"stop": "END"}, {}, {"stop_sequences": ["END"]}, id="stop-string"),
        pytest.param({"stop": ["a", "b"]}, {}, {"stop_sequences": ["a", "b"]}, id="stop-list"),
        pytest.param({"user": "u-1"}, {}, {"metadata": {"user_id": "u-1"}}, id="user"),
        pytest.param({"user": "u-1", "safety_identifier": "s-1"}, {}, {"metadata": {"user_id": "s-1"}}, id="safety-id"),
        pytest.param({}, {"metadata": {"user_id": "policy"}}, {"metadata": {"user_id": "policy"}}, id="param-metadata"),
        pytest.param({"service_tier": "auto"}, {}, {"service_tier": "auto"}, id="tier-auto"),
        pytest.param({"service_tier": "default"}, {}, {"service_tier": "standard_only"}, id="tier-default"),
        pytest.param({"stream": True, "stream_options": {"include_usage": True}}, {}, {"stream": True}, id="stream"),
        pytest.param(
            {"tools": [WEATHER]},
            {},
            {
                "tools": [
                    {
                        "name": "get_weather",
                        "input_schema": WEATHER["function"]["parameters"],
                        "description": "Weather in a city.",
                    }
                ]
            },
            id="tools",
        ),
    ],
)
def test_request_fields(chat: JSON, options: JSON, expected: JSON) -> None:
    body = translate({"messages": HELLO, **chat}, **options)
    assert {k: body.get(k) for k in expected} == expected


def test_default_max_tokens_option_and_params_are_not_mutated() -> None:
    params = {"output_config": {"effort": "low"}}
    chat = {"model": "m", "messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "A"}}}
    body = to_request(chat, Target("m", SONNET_45, "p", params), default_max_tokens=123)
    assert body["max_tokens"] == 123
    assert body["output_config"] == {"effort": "low", "format": {"type": "json_schema", "schema": {"type": "object", "additionalProperties": False}}}  # fmt: skip
    assert params == {"output_config": {"effort": "low"}}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        pytest.param(None, None, None, id="unset"),
        pytest.param("auto", None, {"type": "auto"}, id="auto"),
        pytest.param("none", None, {"type": "none"}, id="none"),
        pytest.param("required", None, {"type": "any"}, id="required"),
        pytest.param(
            {"type": "function", "function": {"name": "get_time"}},
            None,
            {"type": "tool", "name": "get_time"},
            id="named",
        ),
        pytest.param(None, False, {"type": "auto", "disable_parallel_tool_use": True}, id="serial"),
        pytest.param("required", False, {"type": "any", "disable_parallel_tool_use": True}, id="required-serial"),
        pytest.param(None, True, None, id="parallel-is-the-default"),
    ],
)
def test_tool_choice(choice: Any, parallel: bool | None, expected: JSON | None) -> None:
    chat: JSON = {"messages": HELLO, "tools": [WEATHER, TIME]}
    if choice is not None:
        chat["tool_choice"] = choice
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel
    assert translate(chat).get("tool_choice") == expected


def test_allowed_tools_filters_the_list() -> None:
    allowed = {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]}
    body = translate(
        {
            "messages": HELLO,
            "tools": [WEATHER, TIME],
            "tool_choice": {"type": "allowed_tools", "allowed_tools": allowed},
        }
    )
    assert [t["name"] for t in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    ("model", "version", "sent", "left_out"),
    [
        pytest.param("claude-3-haiku-20240307", LEGACY, {"temperature": 1.0, "top_p": 0.5}, [], id="legacy-old-model"),
        pytest.param(SONNET_45, LEGACY, {"temperature": 1.0}, ["top_p"], id="legacy-one-of-temperature-top-p"),
        pytest.param("claude-opus-4-7", LEGACY, {}, ["temperature", "top_p"], id="legacy-opus-4-7-refuses"),
        pytest.param("claude-fable-1", LEGACY, {}, ["temperature", "top_p"], id="legacy-unknown-model"),
        pytest.param("claude-3-haiku-20240307", "2026-10-21", {}, ["temperature", "top_p"], id="2026-version"),
    ],
)
def test_sampling_parameters(model: str, version: str, sent: JSON, left_out: list[str]) -> None:
    chat = {"messages": HELLO, "temperature": 1.7, "top_p": 0.5}  # 1.7 is clamped to the API's maximum
    body = translate(chat, model=model, version=version)
    assert {k: body[k] for k in ("temperature", "top_p") if k in body} == sent
    assert dropped(chat, model=model, version=version) == left_out


def test_unsupported_fields_are_dropped_and_recorded() -> None:
    chat = {"messages": HELLO, "seed": 1, "frequency_penalty": 0.5, "metadata": {"a": "b"}}
    body = translate(chat, top_k=3)
    assert not {"seed", "frequency_penalty", "top_k"} & body.keys() and "metadata" not in body
    assert dropped(chat, top_k=3) == ["frequency_penalty", "metadata", "seed", "top_k"]


def test_top_k_param_is_sent_under_the_legacy_version() -> None:
    assert translate({"messages": HELLO}, model="claude-3-5-haiku-latest", version=LEGACY, top_k=5)["top_k"] == 5


@pytest.mark.parametrize(
    ("model", "response_format", "expected"),
    [
        pytest.param(
            SONNET_45,
            {"type": "json_schema", "json_schema": {"name": "Answer", "schema": ANSWER_SCHEMA, "strict": True}},
            {
                "output_config": {
                    "format": {
                        "type": "json_schema",
                        "schema": {
                            "type": "object",
                            "properties": {
                                "answer": {"type": "string"},
                                "where": {"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": False},
                            },
                            "required": ["answer"],
                            "additionalProperties": False,
                        },
                    }
                },
                "tools": None,
                "tool_choice": None,
            },
            id="native-json-schema",
        ),
        pytest.param(
            "claude-3-7-sonnet-20250219",
            {"type": "json_schema", "json_schema": {"name": "Answer", "schema": ANSWER_SCHEMA}},
            {
                "output_config": None,
                "tools": [{"name": JSON_TOOL, "description": "Give your final answer as this tool's input.", "input_schema": ANSWER_SCHEMA}],
                "tool_choice": {"type": "tool", "name": JSON_TOOL},
            },
            id="forced-tool-json-schema",
        ),
        pytest.param(
            SONNET_45,
            {"type": "json_object"},
            {
                "output_config": None,
                "tools": [{"name": JSON_TOOL, "description": "Give your final answer as this tool's input.", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": JSON_TOOL},
            },
            id="forced-tool-json-object",
        ),
    ],
)  # fmt: skip
def test_response_format(model: str, response_format: JSON, expected: JSON) -> None:
    body = translate({"messages": HELLO, "response_format": response_format}, model=model)
    assert {k: body.get(k) for k in expected} == expected


def test_forced_json_tool_keeps_the_callers_tools_callable() -> None:
    chat = {
        "messages": HELLO,
        "tools": [WEATHER],
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
    }
    body = translate(chat, model="claude-3-7-sonnet-20250219")
    assert [t["name"] for t in body["tools"]] == ["get_weather", JSON_TOOL]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("model", "chat", "expected", "left_out"),
    [
        pytest.param("claude-opus-4-7", {"reasoning_effort": "medium"}, {"thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"}, "max_tokens": 4096}, [], id="adaptive"),
        pytest.param("claude-opus-4-7", {"reasoning_effort": "minimal"}, {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, [], id="adaptive-minimal"),
        pytest.param("claude-sonnet-4-6", {"reasoning_effort": "high", "tool_choice": "required", "tools": [WEATHER]}, {"thinking": None, "output_config": {"effort": "high"}}, [], id="adaptive-forced-tool-keeps-effort"),
        pytest.param(SONNET_45, {"reasoning_effort": "medium"}, {"thinking": {"type": "enabled", "budget_tokens": 8192}, "max_tokens": 4096 + 8192, "output_config": None}, [], id="budget-grows-default-max"),
        pytest.param(SONNET_45, {"reasoning_effort": "high", "max_tokens": 2000}, {"thinking": {"type": "enabled", "budget_tokens": 1999}, "max_tokens": 2000}, [], id="budget-capped"),
        pytest.param(SONNET_45, {"reasoning_effort": "high", "max_tokens": 500}, {"thinking": None}, ["reasoning_effort"], id="budget-too-small"),
        pytest.param(SONNET_45, {"reasoning_effort": "none"}, {"thinking": None, "output_config": None}, [], id="none"),
        pytest.param("claude-3-5-haiku-20241022", {"reasoning_effort": "low"}, {"thinking": None}, ["reasoning_effort"], id="no-thinking-model"),
        pytest.param(SONNET_45, {"reasoning_effort": "low", "tool_choice": "required", "tools": [WEATHER]}, {"thinking": None}, ["reasoning_effort"], id="forced-tool"),
        pytest.param(
            SONNET_45,
            {"reasoning_effort": "low", "messages": [*HELLO, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "1"}]},
            {"thinking": None},
            ["reasoning_effort"],
            id="tool-loop-without-signed-thinking",
        ),
    ],
)  # fmt: skip
def test_reasoning_effort(model: str, chat: JSON, expected: JSON, left_out: list[str]) -> None:
    body = translate({"messages": HELLO, **chat}, model=model, version=LEGACY)
    assert {k: body.get(k) for k in expected} == expected
    assert dropped({"messages": HELLO, **chat}, model=model, version=LEGACY) == left_out


def test_thinking_drops_sampling_under_the_legacy_version() -> None:
    chat = {"messages": HELLO, "reasoning_effort": "low", "temperature": 0.2}
    body = translate(chat, version=LEGACY)
    assert body["thinking"]["type"] == "enabled" and "temperature" not in body
    assert dropped(chat, version=LEGACY) == ["temperature"]


@pytest.mark.parametrize(
    ("chat", "param"),
    [
        pytest.param({"n": 2}, "n", id="n"),
        pytest.param({"logprobs": True}, "logprobs", id="logprobs"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}, "messages[0].content[0]", id="audio"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}]}]}, "messages[0].content[0]", id="image-type"),
        pytest.param({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]}, "messages[0].content[0]", id="file-id"),
        pytest.param({"messages": [{"role": "function", "name": "f", "content": "1"}]}, "messages[0].role", id="function-role"),
        pytest.param({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "messages[0].tool_calls[0].function.arguments", id="bad-arguments"),
        pytest.param({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0].type", id="custom-tool"),
        pytest.param({"tools": [WEATHER], "tool_choice": {"type": "custom", "custom": {"name": "grep"}}}, "tool_choice", id="custom-choice"),
    ],
)  # fmt: skip
def test_unsupported_requests_are_400(chat: JSON, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_request({"model": "m", "messages": HELLO, **chat}, Target("m", SONNET_45, "p"))
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        pytest.param("claude-sonnet-4-5-20250929", Traits("sonnet", (4, 5)), id="dated"),
        pytest.param("claude-opus-4-20250514", Traits("opus", (4, 0)), id="major-only-dated"),
        pytest.param("claude-opus-4-1@20250805", Traits("opus", (4, 1)), id="vertex"),
        pytest.param("anthropic.claude-haiku-4-5-20251001-v1:0", Traits("haiku", (4, 5)), id="bedrock"),
        pytest.param("claude-3-7-sonnet-latest", Traits("sonnet", (3, 7)), id="old-style"),
        pytest.param("claude-3-opus-20240229", Traits("opus", (3, 0)), id="old-style-major-only"),
        pytest.param("claude-mythos-1", Traits(), id="unknown-is-newest"),
    ],
)
def test_traits(model: str, expected: Traits) -> None:
    assert traits(model) == expected


# -- responses ----------------------------------------------------------------------------------------


def completion(name: str) -> JSON:
    result = from_response(load(name))
    ChatCompletion.model_validate(result)
    return result


def test_text_response_and_cache_usage() -> None:
    result = completion("message_text.json")
    assert result["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL" and result["object"] == "chat.completion"
    assert result["model"] == "claude-sonnet-4-5-20250929"
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The capital of France is Paris.", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert result["usage"] == {
        "prompt_tokens": 21 + 1800 + 100,
        "completion_tokens": 12,
        "total_tokens": 21 + 1800 + 100 + 12,
        "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 100},
    }


def test_parallel_tool_use_response() -> None:
    message = completion("message_tool_use.json")["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] == "I'll check the weather and the time in Paris."
    assert message["message"]["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'},
        },
        {
            "id": "toolu_01B18r81rx81mr826724mr8",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"city":"Paris"}'},
        },
    ]


def test_thinking_response_is_reasoning_content_not_content() -> None:
    result = completion("message_thinking.json")
    message = result["choices"][0]["message"]
    assert message["content"] == "27 * 453 = 12,231"
    assert message["reasoning_content"] == "The user asks for 27 * 453. 27 * 453 = 12231."
    assert [b["type"] for b in message["thinking_blocks"]] == ["thinking", "redacted_thinking"]
    assert message["thinking_blocks"][0]["signature"].startswith("EqQB")
    assert result["usage"]["completion_tokens_details"] == {"reasoning_tokens": 280}


def test_structured_output_tool_becomes_content() -> None:
    choice = completion("message_structured_tool.json")["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert json.loads(choice["message"]["content"]) == {"answer": "Paris", "confidence": 0.9}
    assert "tool_calls" not in choice["message"]


def test_refusal_response() -> None:
    choice = completion("message_refusal.json")["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["refusal"] == "The request could enable malware development."


@pytest.mark.parametrize(
    ("stop_reason", "tool_calls", "expected"),
    [
        ("end_turn", False, "stop"),
        ("stop_sequence", False, "stop"),
        ("pause_turn", False, "stop"),
        ("max_tokens", False, "length"),
        ("model_context_window_exceeded", False, "length"),
        ("tool_use", True, "tool_calls"),
        ("tool_use", False, "stop"),
        ("refusal", False, "content_filter"),
        (None, False, "stop"),
    ],
    ids=str,
)
def test_finish_reasons(stop_reason: str | None, tool_calls: bool, expected: str) -> None:
    assert finish_reason(stop_reason, tool_calls) == expected


def test_multi_turn_tool_round_trip() -> None:
    """A tool-use reply sent back with the tool results becomes the turns the API expects."""
    reply = completion("message_tool_use.json")["choices"][0]["message"]
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": f"result {i}"}
        for i, call in enumerate(reply["tool_calls"])
    ]
    body = translate({"messages": [*HELLO, reply, *results], "tools": [WEATHER, TIME]})
    assistant, user = body["messages"][1:]
    assert assistant["content"] == load("message_tool_use.json")["content"]
    assert [(b["type"], b["tool_use_id"]) for b in user["content"]] == [
        ("tool_result", "toolu_01A09q90qw90lq917835lq9"),
        ("tool_result", "toolu_01B18r81rx81mr826724mr8"),
    ]


def test_signed_thinking_is_sent_back_first_and_keeps_thinking_on() -> None:
    raw = load("message_tool_use.json")
    raw["content"] = [*load("message_thinking.json")["content"][:2], *raw["content"][1:]]
    reply = from_response(raw)["choices"][0]["message"]
    results = [{"role": "tool", "tool_call_id": c["id"], "content": "1"} for c in reply["tool_calls"]]
    body = translate({"messages": [*HELLO, reply, *results], "reasoning_effort": "low"})
    assert [b["type"] for b in body["messages"][1]["content"]] == ["thinking", "redacted_thinking", "tool_use", "tool_use"]  # fmt: skip
    assert body["messages"][1]["content"][0] == raw["content"][0]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


# -- streams ------------------------------------------------------------------------------------------


def accumulate(chunks: list[JSON]) -> Any:
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for item in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(item))
    return state.get_final_completion()


async def test_text_stream() -> None:
    chunks = await chunks_of("stream_text.sse")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {"msg_01StreamText"} and {c["model"] for c in chunks} == {SONNET_45}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["Hello", "! The capital", " of France is Paris."]  # fmt: skip
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all("usage" not in c for c in chunks)


async def test_usage_chunk_only_when_asked() -> None:
    chunks = await chunks_of("stream_text.sse", include_usage=True)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 25 + 1200 + 30,
        "completion_tokens": 15,
        "total_tokens": 25 + 1200 + 30 + 15,
        "prompt_tokens_details": {"cached_tokens": 1200, "cache_write_tokens": 30},
    }


async def test_parallel_tool_call_stream() -> None:
    chunks = await chunks_of("stream_tools.sse")
    fragments = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", ())]
    # Tool-call indices count tool_use blocks only (the text block is Anthropic index 0).
    assert [f["index"] for f in fragments] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert [f.get("id") for f in fragments if "id" in f] == [
        "toolu_01A09q90qw90lq917835lq9",
        "toolu_01B18r81rx81mr826724mr8",
        "toolu_01C27s72sy72ns735613ns7",
    ]
    assert all("id" not in f for f in fragments if f["function"].get("arguments"))
    final = accumulate(chunks).choices[0]
    assert final.finish_reason == "tool_calls"
    assert final.message.content == "Let me check both."
    assert [(c.id, c.function.name, c.function.arguments) for c in final.message.tool_calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "get_weather", '{"city": "Paris"}'),
        ("toolu_01B18r81rx81mr826724mr8", "get_time", '{"city": "Paris"}'),
        ("toolu_01C27s72sy72ns735613ns7", "get_date", "{}"),
    ]


async def test_thinking_stream() -> None:
    chunks = await chunks_of("stream_thinking.sse", include_usage=True)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "27 * 453: 27 * 400 = 10800, 27 * 53 = 1431, total 12231."  # fmt: skip
    assert "".join(d.get("content", "") for d in deltas) == "27 * 453 = 12,231"
    signed = [b for d in deltas for b in d.get("thinking_blocks", ())]
    assert [(b["index"], b["type"]) for b in signed] == [(0, "thinking"), (1, "redacted_thinking")]
    assert signed[0]["signature"].startswith("EqQB") and signed[0]["thinking"].endswith("12231.")
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 280}


async def test_structured_stream_is_content() -> None:
    final = accumulate(await chunks_of("stream_structured.sse")).choices[0]
    assert final.finish_reason == "stop" and not final.message.tool_calls
    assert json.loads(final.message.content or "") == {"answer": "Paris", "confidence": 0.9}


async def test_refusal_stream() -> None:
    chunks = await chunks_of("stream_refusal.sse")
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["choices"][0]["delta"]["refusal"] == "The request could enable malware development."


async def test_error_event_raises_after_the_chunks_before_it() -> None:
    seen: list[JSON] = []
    with pytest.raises(UpstreamError) as caught:
        async for item in from_events(sse_events(_lines("stream_error.sse"))):
            seen.append(item)
    assert [c["choices"][0]["delta"].get("content") for c in seen] == ["", "Hello"]
    error = caught.value
    assert (error.status, error.type, error.code, error.retryable) == (503, "server_error", "server_is_overloaded", True)  # fmt: skip


async def test_error_event_before_any_output_comes_before_the_first_chunk() -> None:
    async def events() -> AsyncIterator[tuple[str | None, bytes]]:
        async for name, data in sse_events(_lines("stream_error.sse")):
            if name == "message_start":
                yield name, data
        yield "error", b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'

    stream = from_events(events())
    with pytest.raises(UpstreamError) as caught:
        await anext(stream)
    assert caught.value.retryable


async def test_error_event_raises_the_vendor_error() -> None:
    async def events() -> AsyncIterator[tuple[str | None, bytes]]:
        yield "error", b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}'

    with pytest.raises(UpstreamError) as caught:
        async for _ in from_events(events()):
            pass
    assert (caught.value.message, caught.value.status) == ("Internal server error", 500)


async def test_stream_without_message_stop_is_unavailable() -> None:
    with pytest.raises(UpstreamUnavailable):
        await chunks_of("stream_truncated.sse")


# -- errors -------------------------------------------------------------------------------------------

ERRORS = {
    "invalid_request": (400, "invalid_request_error", "invalid_request_error", False, None),
    "authentication": (401, "invalid_request_error", "invalid_api_key", False, None),
    "billing": (402, "insufficient_quota", "insufficient_quota", False, None),
    "permission": (403, "invalid_request_error", "permission_error", False, None),
    "not_found": (404, "invalid_request_error", "not_found_error", False, None),
    "request_too_large": (413, "invalid_request_error", "request_too_large", False, None),
    "rate_limit": (429, "requests", "rate_limit_exceeded", True, 7.0),
    "spend_limit": (429, "insufficient_quota", "enforced_spend_limit_reached", True, None),
    "api_error": (500, "server_error", "server_error", True, None),
    "timeout": (504, "server_error", "upstream_timeout", True, None),
    "overloaded": (503, "server_error", "server_is_overloaded", True, None),
}


@pytest.mark.parametrize("case", load("errors.json"), ids=lambda case: case["id"])
def test_errors(case: JSON) -> None:
    error = to_error(case["status"], json.dumps(case["body"]).encode(), case["headers"])
    status, type, code, retryable, retry_after = ERRORS[case["id"]]
    assert (error.status, error.type, error.code) == (status, type, code)
    assert (error.retryable, error.retry_after) == (retryable, retry_after)
    assert error.message == case["body"]["error"]["message"]


def test_error_without_a_json_body() -> None:
    error = to_error(502, b"<html>Bad Gateway</html>", {})
    assert (error.status, error.type, error.code, error.retryable) == (502, "server_error", None, True)
    assert error.message == "The upstream answered with status 502."
