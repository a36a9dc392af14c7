"""The fields unimw reads of an OpenAI-wire answer, checked once where the answer comes in.

unimw passes an OpenAI-compatible server's answer on almost as it came, but
reads a few of its fields to count, continue, cache and trace it: the
choices and their message or delta, its content, tool calls and finish
reason, and the usage counts. A server that sends one of them in another
shape than the API documents (a number for content, a string for choices,
a list for a token count) is refused here with a 502
``bad_upstream_response``, so that nothing downstream has to doubt them.
Every other field passes as it came.

The check is a handful of ``isinstance`` calls per choice (well under a
microsecond a chunk); the shapes are ``ChatCompletion`` and
``ChatCompletionChunk`` in the ``openai`` SDK's types, but for one leniency:
a whole answer's ``content`` may be a list of part objects, as some
compatible servers send for reasoning models, and is passed on as it came
(a streamed delta's is text, which a continuation and the output count read).
"""

from __future__ import annotations

from typing import Any

from unimw.errors import UpstreamError
from unimw.wire import JSON

_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
#: The details unimw reads (:meth:`unimw.usage.Usage.from_openai`); others pass as they came.
_DETAILS = {
    "prompt_tokens_details": ("cached_tokens", "cache_write_tokens", "cache_write_1h_tokens"),
    "completion_tokens_details": ("reasoning_tokens",),
}


def check_completion(body: JSON) -> JSON:
    """``body`` (a ``chat.completion``) if the fields unimw reads have their documented shapes."""
    for choice in _list(body.get("choices"), "choices"):
        _object(choice, "choices[]")
        _message(choice.get("message"), "message")
        _text(choice.get("finish_reason"), "finish_reason")
    check_usage(body.get("usage"))
    return body


def check_chunk(chunk: JSON) -> JSON:
    """``chunk`` (a ``chat.completion.chunk``) if the fields unimw reads have their documented shapes."""
    for choice in _list(chunk.get("choices"), "choices"):
        _object(choice, "choices[]")
        _message(choice.get("delta"), "delta")
        _text(choice.get("finish_reason"), "finish_reason")
    if (usage := chunk.get("usage")) is not None:
        check_usage(usage)
    return chunk


def check_delta(delta: JSON) -> JSON:
    """A chunk's ``delta`` made by a translation, if the vendor's values it carries have the shapes unimw reads."""
    _message(delta, "delta")
    return delta


def _message(message: Any, name: str) -> None:
    if message is None:
        return
    _object(message, name)
    content = message.get("content")
    if name == "message" and isinstance(content, list):  # parts, as some compatible servers answer: passed on
        for part in content:
            _object(part, f"{name}.content[]")
    else:
        _text(content, f"{name}.content")
    _text(message.get("refusal"), f"{name}.refusal")
    _text(message.get("reasoning_content"), f"{name}.reasoning_content")
    for call in _list(message.get("tool_calls"), f"{name}.tool_calls"):
        _object(call, f"{name}.tool_calls[]")
        if (function := call.get("function")) is not None:
            _object(function, f"{name}.tool_calls[].function")
            _text(function.get("name"), f"{name}.tool_calls[].function.name")
            _text(function.get("arguments"), f"{name}.tool_calls[].function.arguments")


def check_usage(usage: Any) -> Any:
    """``usage`` (a ``CompletionUsage``, or None) if its counts unimw reads are counts."""
    if usage is None:
        return None
    _object(usage, "usage")
    for field in _COUNTS:
        _count(usage.get(field), f"usage.{field}")
    for part, fields in _DETAILS.items():
        if (details := usage.get(part)) is not None:
            _object(details, f"usage.{part}")
            for field in fields:
                _count(details.get(field), f"usage.{part}.{field}")
    return usage


def _list(value: Any, name: str) -> list[Any] | tuple[()]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _misshapen(name)
    return value


def _object(value: Any, name: str) -> None:
    if not isinstance(value, dict):
        raise _misshapen(name)


def _text(value: Any, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise _misshapen(name)


def _count(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise _misshapen(name)


def _misshapen(name: str) -> UpstreamError:
    return UpstreamError(
        f"The upstream's answer has `{name}` in a shape the API does not document.",
        status=502,
        code="bad_upstream_response",
    )
