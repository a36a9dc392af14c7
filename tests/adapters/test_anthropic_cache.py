"""Prompt-cache breakpoints on the Messages API: the caller's ``cache_control`` carried, automatic ones added.

Every body is checked against the SDK's request types (``sdk_errors``), which
declare ``cache_control`` (``CacheControlEphemeralParam``) on system and
message blocks, tool results and tools, and refuse it anywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from tests.upstreams.anthropic_app import sdk_errors
from unimw.adapters.anthropic import from_response, to_usage
from unimw.adapters.anthropic import translate as anthropic_translate
from unimw.adapters.base import Target
from unimw.adapters.gemini import translate as gemini_translate
from unimw.errors import InvalidRequest
from unimw.policy import PromptCache
from unimw.wire import JSON

SONNET = "claude-sonnet-4-5-20250929"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "anthropic"
EPHEMERAL: JSON = {"type": "ephemeral"}
HOUR: JSON = {"type": "ephemeral", "ttl": "1h"}
WEATHER: JSON = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
TIME: JSON = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def translate(chat: JSON, prompt_cache: PromptCache | None = None, **params: Any) -> JSON:
    """The Messages API body for ``chat``, checked against the SDK's request types."""
    target = Target("public", SONNET, "anthropic", params, prompt_cache)
    body, _ = anthropic_translate({"model": "public", **chat}, target)
    assert sdk_errors(body) == []
    return body


def dropped(chat: JSON) -> tuple[str, ...]:
    return anthropic_translate({"model": "public", **chat}, Target("public", SONNET, "anthropic"))[1]


def refused(chat: JSON, prompt_cache: PromptCache | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_translate({"model": "public", **chat}, Target("public", SONNET, "anthropic", {}, prompt_cache))
    return caught.value


# -- the caller's markers ----------------------------------------------------------------------------


def test_markers_on_system_parts_keep_the_system_as_blocks() -> None:
    body = translate(
        {
            "messages": [
                {
                    "role": "system",
                    "content": [
                        {"type": "text", "text": "You answer questions about the handbook."},
                        {"type": "text", "text": "<the handbook>", "cache_control": HOUR},
                    ],
                },
                {"role": "developer", "content": [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}]},
                {"role": "user", "content": "Hi"},
            ]
        }
    )
    assert body["system"] == [
        {"type": "text", "text": "You answer questions about the handbook."},
        {"type": "text", "text": "<the handbook>", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
    ]


def test_a_single_marked_system_string_stays_a_block() -> None:
    body = translate(
        {
            "messages": [
                {"role": "system", "content": "<the handbook>", "cache_control": EPHEMERAL},
                {"role": "user", "content": "Hi"},
            ]
        }
    )
    assert body["system"] == [{"type": "text", "text": "<the handbook>", "cache_control": {"type": "ephemeral"}}]


def test_markers_on_user_assistant_and_tool_turns() -> None:
    body = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look at this:"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/cat.jpg"},
                            "cache_control": EPHEMERAL,
                        },
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBERi0x"},
                            "cache_control": HOUR,
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "A cat. Checking the weather.", "cache_control": EPHEMERAL}],
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": [{"type": "text", "text": "12C", "cache_control": EPHEMERAL}],
                },
            ],
            "tools": [WEATHER],
        }
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look at this:"},
                {
                    "type": "image",
                    "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    "cache_control": {"type": "ephemeral"},
                },
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "A cat. Checking the weather.", "cache_control": {"type": "ephemeral"}},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "12C", "cache_control": {"type": "ephemeral"}}],
                }
            ],
        },
    ]


def test_a_message_level_marker_goes_on_the_last_block_of_its_message() -> None:
    """The form some OpenAI-compatible clients send: ``cache_control`` beside ``role`` and ``content``."""
    body = translate(
        {
            "messages": [
                {"role": "user", "content": "Read this.", "cache_control": EPHEMERAL},
                {
                    "role": "assistant",
                    "content": "Reading.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                    ],
                    "cache_control": EPHEMERAL,
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "noon", "cache_control": HOUR},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
            "tools": [TIME],
        }
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Read this.", "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_time",
                    "input": {},
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": "noon",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b"},
            ],
        },
    ]


def test_a_later_system_message_folded_into_the_user_turn_keeps_its_marker() -> None:
    body = translate(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "system", "content": [{"type": "text", "text": "Now French.", "cache_control": EPHEMERAL}]},
            ]
        }
    )
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "text", "text": "[system] Now French.", "cache_control": {"type": "ephemeral"}}],
    }


def test_markers_on_tools_and_the_whole_request() -> None:
    body = translate(
        {
            "messages": [{"role": "user", "content": "Weather?"}],
            "tools": [WEATHER, {**TIME, "cache_control": HOUR}],
            "cache_control": EPHEMERAL,
        }
    )
    assert body["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]},
        {
            "name": "get_time",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
    ]
    assert body["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in dropped({"messages": [{"role": "user", "content": "Hi"}], "cache_control": EPHEMERAL})


def test_a_marker_is_a_copy_the_translation_owns() -> None:
    marker = {"type": "ephemeral"}
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": marker}]}]}
    body = translate(chat)
    body["messages"][0]["content"][0]["cache_control"]["ttl"] = "1h"
    assert marker == {"type": "ephemeral"}


def test_openai_own_breakpoints_are_reported_as_left_out() -> None:
    """OpenAI's ``prompt_cache_breakpoint`` has no Messages API counterpart: the span says it was not sent."""
    chat = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "prompt_cache_breakpoint": {"mode": "explicit"}}],
            }
        ]
    }
    assert dropped(chat) == ("prompt_cache_breakpoint",)
    assert translate(chat)["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


@pytest.mark.parametrize(
    ("chat", "message", "param"),
    [
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": "ephemeral"}]}]},
            "Invalid type for 'messages[0].content[0].cache_control': expected an object.",
            "messages[0].content[0].cache_control",
            id="not-an-object",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "Hi", "cache_control": {"type": "persistent"}}]},
            "Invalid value for 'messages[0].cache_control.type': 'persistent'. Supported values are: 'ephemeral'.",
            "messages[0].cache_control.type",
            id="type",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "Hi"}], "cache_control": {"type": "ephemeral", "ttl": "10m"}},
            "Invalid value for 'cache_control.ttl': '10m'. Supported values are: '5m' and '1h'.",
            "cache_control.ttl",
            id="ttl",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "Hi"}], "tools": [{**WEATHER, "cache_control": {"type": "ephemeral", "scope": "org"}}]},
            "Unknown parameter: 'tools[0].cache_control.scope'.",
            "tools[0].cache_control.scope",
            id="unknown-field",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "", "cache_control": EPHEMERAL}]}]},
            "'messages[0].content[0].cache_control' marks an empty text part: a breakpoint needs content to cache.",
            "messages[0].content[0].cache_control",
            id="empty-part",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "cache_control": EPHEMERAL}]},
            "'messages[1].cache_control' marks a message with no content: a breakpoint needs content to cache.",
            "messages[1].cache_control",
            id="empty-message",
        ),
    ],
)  # fmt: skip
def test_invalid_markers_are_400(chat: JSON, message: str, param: str) -> None:
    error = refused(chat)
    assert (error.status, error.message, error.param) == (400, message, param)
    assert error.code == ("unknown_parameter" if "Unknown" in message else "invalid_value")


def test_more_than_four_breakpoints_is_400() -> None:
    parts = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL} for i in range(4)]
    chat = {"messages": [{"role": "user", "content": parts}], "cache_control": EPHEMERAL}
    error = refused(chat)
    assert (error.status, error.code, error.param) == (400, "invalid_value", None)
    assert error.message == "A maximum of 4 blocks with cache_control may be provided. Found 5."
    four = translate({"messages": [{"role": "user", "content": parts}]})
    assert sum("cache_control" in block for block in four["messages"][0]["content"]) == 4


# -- breakpoints from the policy ---------------------------------------------------------------------

CONVERSATION: JSON = {
    "messages": [
        {"role": "system", "content": "<the handbook>"},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
        {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "tomorrow?"}]},
    ],
    "tools": [WEATHER, TIME],
}


def test_policy_breakpoints_on_the_last_tool_system_block_and_user_block() -> None:
    body = translate(CONVERSATION, PromptCache(breakpoints=["tools", "system", "last_user"]))
    assert body["tools"][0] == {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
    assert body["tools"][1]["cache_control"] == {"type": "ephemeral"}
    assert body["system"] == [{"type": "text", "text": "<the handbook>", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "12C"},
            {"type": "text", "text": "And"},
            {"type": "text", "text": "tomorrow?", "cache_control": {"type": "ephemeral"}},
        ],
    }
    assert [m for m in body["messages"][:-1] if any("cache_control" in b for b in m["content"])] == []


def test_policy_ttl() -> None:
    body = translate(CONVERSATION, PromptCache(breakpoints=["system"], ttl="1h"))
    assert body["system"] == [{"type": "text", "text": "<the handbook>", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]  # fmt: skip
    assert "cache_control" not in body["tools"][-1]
    assert "cache_control" not in body["messages"][-1]["content"][-1]


def test_policy_leaves_each_place_the_caller_marked_alone() -> None:
    chat = json.loads(json.dumps(CONVERSATION))
    chat["tools"][0]["cache_control"] = HOUR
    chat["messages"][0] = {"role": "system", "content": [{"type": "text", "text": "<the handbook>", "cache_control": HOUR}, {"type": "text", "text": "Be brief."}]}  # fmt: skip
    chat["messages"][4]["content"][0]["cache_control"] = EPHEMERAL
    body = translate(chat, PromptCache(breakpoints=["tools", "system", "last_user"]))
    assert [t.get("cache_control") for t in body["tools"]] == [{"type": "ephemeral", "ttl": "1h"}, None]
    assert [b.get("cache_control") for b in body["system"]] == [{"type": "ephemeral", "ttl": "1h"}, None]
    assert [b.get("cache_control") for b in body["messages"][-1]["content"]] == [None, {"type": "ephemeral"}, None]


def test_policy_needs_a_trailing_user_turn_a_system_and_tools() -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]}
    body = translate(chat, PromptCache(breakpoints=["tools", "system", "last_user"]))
    assert body == translate(chat)
    assert "system" not in body and "tools" not in body


def test_policy_breakpoints_stop_at_four_in_the_order_listed() -> None:
    chat = json.loads(json.dumps(CONVERSATION))
    chat["messages"][1] = {
        "role": "user",
        "content": [{"type": "text", "text": "Weather?", "cache_control": EPHEMERAL}],
    }
    chat["messages"][2]["cache_control"] = EPHEMERAL
    chat["cache_control"] = EPHEMERAL  # the caller's three, and room for one more
    body = translate(chat, PromptCache(breakpoints=["last_user", "system", "tools"]))
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["system"] == "<the handbook>"
    assert all("cache_control" not in tool for tool in body["tools"])


def test_policy_marks_the_forced_structured_output_tool_when_it_is_last() -> None:
    chat = {
        "messages": [{"role": "user", "content": "Answer."}],
        "response_format": {"type": "json_object"},
    }
    body = anthropic_translate(
        {"model": "public", **chat},
        Target("public", "claude-3-5-haiku-20241022", "anthropic", {}, PromptCache(breakpoints=["tools"])),
    )[0]
    assert sdk_errors(body) == []
    assert [t.get("cache_control") for t in body["tools"]] == [{"type": "ephemeral"}]


# -- usage ------------------------------------------------------------------------------------------


def test_usage_reports_reads_and_writes_and_the_hour_long_writes_apart() -> None:
    body = json.loads((FIXTURES / "message_cache_1h.json").read_text())
    completion = from_response(body)
    ChatCompletion.model_validate(completion)
    assert completion["usage"] == {
        "prompt_tokens": 14 + 2048 + 3000,
        "completion_tokens": 9,
        "total_tokens": 14 + 2048 + 3000 + 9,
        "prompt_tokens_details": {"cached_tokens": 2048, "cache_write_tokens": 3000, "cache_write_1h_tokens": 2000},
    }


def test_usage_without_cache_counts() -> None:
    assert to_usage({"input_tokens": 5, "output_tokens": 2}) == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
    }


# -- other wire protocols ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chat", "left_out"),
    [
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": EPHEMERAL}]}]},
            ("cache_control",),
            id="on-a-part",
        ),
        pytest.param(
            {"messages": [{"role": "system", "content": "Be brief.", "cache_control": EPHEMERAL}, {"role": "user", "content": "Hi"}]},
            ("cache_control",),
            id="on-a-message",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "Hi"}], "tools": [{**WEATHER, "cache_control": EPHEMERAL}]},
            ("cache_control",),
            id="on-a-tool",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "Hi"}], "cache_control": EPHEMERAL}, ("cache_control",), id="top-level"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "prompt_cache_breakpoint": {"mode": "explicit"}}]}]},
            ("prompt_cache_breakpoint",),
            id="openai-breakpoint",
        ),
        pytest.param({"messages": [{"role": "user", "content": "Hi"}]}, (), id="none"),
    ],
)  # fmt: skip
def test_gemini_leaves_markers_out_and_says_so(chat: JSON, left_out: tuple[str, ...]) -> None:
    """Gemini caches prefixes by itself and has no per-block marker: the markers are reported as left out."""
    body, dropped_fields = gemini_translate({"model": "public", **chat}, Target("public", "gemini-2.5-flash", "g"))
    assert dropped_fields == left_out
    assert "cache_control" not in json.dumps(body) and "prompt_cache_breakpoint" not in json.dumps(body)
