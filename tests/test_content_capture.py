"""Content capture reads whatever the caller and the vendor sent: any shape is recorded or skipped, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unimw.operations.chat_content import input_messages, output_messages, tool_definitions

HOSTILE_REQUESTS: list[Any] = [
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "http://x/a.png"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": "AAAA"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "file", "file": "file-1"}]}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [5, "x", None]}]},
    {"messages": [{"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "content": 5}]}]},
    {"messages": "not a list", "tools": [5, {"type": "function", "function": "f"}]},
]
HOSTILE_ANSWERS: list[Any] = [
    {"choices": [5, {"message": "text"}, {"message": {"content": 5, "tool_calls": [1, {"function": 2}]}}]},
    {"choices": "none"},
    {"choices": [{"message": {"content": "ok"}, "finish_reason": None}]},
]


@pytest.mark.parametrize("request_body", HOSTILE_REQUESTS)
def test_hostile_requests_are_captured_without_a_crash(request_body: Any) -> None:
    assert isinstance(json.loads(input_messages(request_body)), list)
    definitions = tool_definitions(request_body)
    assert definitions is None or isinstance(json.loads(definitions), list)


@pytest.mark.parametrize("answer", HOSTILE_ANSWERS)
def test_hostile_answers_are_captured_without_a_crash(answer: Any) -> None:
    assert isinstance(json.loads(output_messages(answer)), list)


def test_a_readable_answer_is_captured_exactly() -> None:
    answer = {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}
    assert json.loads(output_messages(answer)) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "ok"}], "finish_reason": "stop"}
    ]
