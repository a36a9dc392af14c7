"""Checking a chat request before anything is spent on it.

Only the fields unimw itself reads, or that every vendor would refuse, are
checked; everything else is passed through for the upstream to judge, since
vendors add fields all the time. A check costs a few dict lookups: the body
is not copied or re-parsed into models.
"""

from __future__ import annotations

from typing import Any

from unimw.errors import InvalidRequest
from unimw.wire import JSON

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: field → (integer only, lowest, highest); bool is never accepted as a number.
_NUMBERS: dict[str, tuple[bool, float | None, float | None]] = {
    "temperature": (False, 0, 2),
    "top_p": (False, 0, 1),
    "n": (True, 1, 128),
    "max_tokens": (True, 1, None),
    "max_completion_tokens": (True, 1, None),
    "presence_penalty": (False, -2, 2),
    "frequency_penalty": (False, -2, 2),
    "seed": (True, None, None),
    "top_logprobs": (True, 0, 20),
}
_OBJECTS = ("stream_options", "response_format", "metadata", "logit_bias")
_TOOL_CHOICES = frozenset({"none", "auto", "required"})


def validate_chat(body: Any) -> JSON:
    """Return ``body`` if it is a well-formed chat request, else raise :class:`InvalidRequest`."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _missing_or_wrong("model", model, "a non-empty string")
    _check_messages(body.get("messages"))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _wrong("stream", stream, "a boolean")
    for name, (integer, low, high) in _NUMBERS.items():
        if (value := body.get(name)) is not None:
            _check_number(name, value, integer, low, high)
    for name in _OBJECTS:
        if (value := body.get(name)) is not None and not isinstance(value, dict):
            raise _wrong(name, value, "an object")
    if body.get("stream_options") is not None and not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    _check_stop(body.get("stop"))
    _check_tools(body.get("tools"), body.get("tool_choice"))
    if (response_format := body.get("response_format")) is not None and not isinstance(
        response_format.get("type"), str
    ):
        raise InvalidRequest("'response_format.type' is required.", param="response_format.type")
    return body


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _missing_or_wrong("messages", messages, "a non-empty array")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _wrong(param, message, "an object")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for '{param}.role': {role!r}. Supported values are: "
                + ", ".join(f"'{r}'" for r in sorted(ROLES))
                + ".",
                param=f"{param}.role",
                code="invalid_value",
            )
        content = message.get("content")
        if content is None:
            if role not in ("assistant", "function"):
                raise InvalidRequest(f"Missing required parameter: '{param}.content'.", param=f"{param}.content")
        elif not isinstance(content, (str, list)):
            raise _wrong(f"{param}.content", content, "a string or an array of content parts")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequest(f"Missing required parameter: '{param}.tool_call_id'.", param=f"{param}.tool_call_id")


def _check_number(name: str, value: Any, integer: bool, low: float | None, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise _wrong(name, value, "an integer" if integer else "a number")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(
            f"Invalid value for '{name}': {value!r}. It must be {bounds}.", param=name, code="invalid_value"
        )


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _wrong("stop", stop, "a string or an array of strings")


def _check_tools(tools: Any, tool_choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise _wrong("tools", tools, "an array")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise InvalidRequest(f"Missing required parameter: 'tools[{i}].type'.", param=f"tools[{i}].type")
            if tool["type"] == "function" and not isinstance((tool.get("function") or {}).get("name"), str):
                raise InvalidRequest(
                    f"Missing required parameter: 'tools[{i}].function.name'.", param=f"tools[{i}].function.name"
                )
    if tool_choice is None or isinstance(tool_choice, dict):
        return
    if tool_choice not in _TOOL_CHOICES:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': {tool_choice!r}. Supported values are: 'none', 'auto' and 'required'.",
            param="tool_choice",
            code="invalid_value",
        )


def _wrong(param: str, value: Any, expected: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def _missing_or_wrong(param: str, value: Any, expected: str) -> InvalidRequest:
    if value is None:
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    return _wrong(param, value, expected)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"
