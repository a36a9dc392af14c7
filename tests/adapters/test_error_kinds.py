"""Each vendor's 400s told apart at the adapter boundary: context window overflow, content filter, or plain.

The bodies are the vendors' exact wire formats, in ``tests/fixtures/error_kinds/<vendor>.json``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from unimw.adapters import anthropic, gemini, openai
from unimw.errors import ContentFiltered, ContextLengthExceeded, UpstreamError
from unimw.wire import sse_events

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent.parent / "fixtures"
ToError = Callable[[int, bytes, Mapping[str, str]], UpstreamError]
TO_ERROR: dict[str, ToError] = {"openai": openai.to_error, "anthropic": anthropic.to_error, "gemini": gemini.to_error}

#: (vendor, case) -> (class, status, type, code, param)
EXPECTED: dict[tuple[str, str], tuple[type[UpstreamError], int, str, str | None, str | None]] = {
    ("openai", "context_length"): (
        ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", "messages"
    ),
    # A compatible server (vLLM) with OpenAI's message but its own code: the client gets OpenAI's.
    ("openai", "context_length_compatible"): (
        ContextLengthExceeded, 400, "upstream_error", "context_length_exceeded", "messages"
    ),
    ("openai", "content_filter"): (ContentFiltered, 400, "upstream_error", "content_filter", "prompt"),
    ("openai", "content_policy"): (
        ContentFiltered, 400, "invalid_request_error", "content_policy_violation", None
    ),
    ("openai", "plain"): (
        UpstreamError, 400, "invalid_request_error", "string_above_max_length", "messages[0].content"
    ),
    ("anthropic", "prompt_too_long"): (
        ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", "messages"
    ),
    ("anthropic", "context_limit"): (
        ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", "messages"
    ),
    ("anthropic", "content_filtered"): (ContentFiltered, 400, "invalid_request_error", "content_filter", None),
    ("anthropic", "plain"): (UpstreamError, 400, "invalid_request_error", "invalid_request_error", None),
    ("gemini", "input_too_long"): (
        ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded", "messages"
    ),
    ("gemini", "plain"): (UpstreamError, 400, "invalid_request_error", None, None),
}  # fmt: skip


def cases() -> list[Any]:
    found = []
    for vendor in TO_ERROR:
        for case in json.loads((FIXTURES / "error_kinds" / f"{vendor}.json").read_text()):
            found.append(pytest.param(vendor, case, id=f"{vendor}-{case['id']}"))
    return found


@pytest.mark.parametrize(("vendor", "case"), cases())
def test_each_recorded_400_gets_its_kind(vendor: str, case: dict[str, Any]) -> None:
    error = TO_ERROR[vendor](case["status"], json.dumps(case["body"]).encode(), case["headers"])
    kind, status, type, code, param = EXPECTED[vendor, case["id"]]
    assert (type_of(error), error.status, error.type, error.code, error.param) == (kind, status, type, code, param)
    assert error.retryable is False
    body = case["body"]
    assert error.message == (body["error"]["message"] if "error" in body else body["message"])


def type_of(error: UpstreamError) -> type[UpstreamError]:
    return type(error)


def test_every_recorded_case_is_expected() -> None:
    assert {(p.values[0], p.values[1]["id"]) for p in cases()} == EXPECTED.keys()


@pytest.mark.parametrize(
    ("vendor", "status", "body"),
    [
        # The same words with another status or kind are not a 400 to recover from.
        ("openai", 500, {"error": {"message": "maximum context length is 8192", "type": "server_error", "code": None}}),
        ("openai", 400, {"error": {"message": "Invalid value.", "type": "x", "code": "content_filtered_maybe"}}),
        ("anthropic", 413, {"type": "error", "error": {"type": "request_too_large", "message": "prompt is too long"}}),
        ("anthropic", 400, {"type": "error", "error": {"type": "permission_error", "message": "prompt is too long"}}),
        (
            "gemini",
            400,
            {
                "error": {
                    "code": 400,
                    "message": "The input token count (9) exceeds the maximum number of tokens allowed (8).",
                    "status": "FAILED_PRECONDITION",
                }
            },
        ),
    ],
    ids=["openai-500", "openai-other-code", "anthropic-413", "anthropic-other-type", "gemini-other-status"],
)
def test_only_the_documented_shape_is_recovered(vendor: str, status: int, body: dict[str, Any]) -> None:
    error = TO_ERROR[vendor](status, json.dumps(body).encode(), {})
    assert type(error) is UpstreamError


async def test_an_anthropic_content_filter_event_before_any_output_is_raised_before_the_first_chunk() -> None:
    """The filter also answers inside a 200 stream: before any output, dispatch can still move the call on."""

    recorded = (FIXTURES / "anthropic" / "stream_text.sse").read_bytes()

    async def events() -> AsyncIterator[tuple[str | None, bytes]]:
        async for name, data in sse_events(_lines(recorded)):
            if name == "message_start":
                yield name, data
        yield (
            "error",
            (
                b'{"type":"error","error":{"details":null,"type":"invalid_request_error",'
                b'"message":"Output blocked by content filtering policy"}}'
            ),
        )

    with pytest.raises(ContentFiltered) as caught:
        await anext(anthropic.from_events(events()))
    assert (caught.value.status, caught.value.code) == (400, "content_filter")


async def _lines(data: bytes) -> AsyncIterator[bytes]:
    yield data
