"""Checking a chat request before anything is spent on it.

Only the fields unimw itself reads, that an adapter translates, or that
every vendor would refuse, are checked; everything else is passed through
for the upstream to judge, since vendors add fields all the time. A check
costs a few dict lookups: the body is not copied or re-parsed into models.

Every field is hostile: a shape the steps after this one do not expect
would surface as a 500 after money was spent, so each field they read is
checked here for the shape they read it in. Nesting is bounded too
(:data:`MAX_DEPTH`): JSON deeper than that is refused whole, since the
serialiser gives up at 254 levels and translation recurses through schemas.
"""

from __future__ import annotations

from typing import Any

from unimw.errors import InvalidRequest
from unimw.operations.fields import (
    MAX_DEPTH,
    check_body,
    check_fields,
    check_length,
    missing_or_wrong,
    part_type,
    wrong,
)
from unimw.wire import JSON

__all__ = ["MAX_DEPTH", "MAX_MESSAGES", "MAX_TOOLS", "ROLES", "validate_chat"]

#: Tools one request may offer: OpenAI's own bound ("a max of 128 functions"), so that no vendor's
#: translation of tool definitions is asked to do more than OpenAI itself would.
MAX_TOOLS = 128
#: Messages one request may carry. OpenAI's spec sets no maximum (Azure OpenAI refuses more than 2048);
#: this is five times that, past any real conversation, and bounds the work a request can ask for: each
#: message costs its vendor's translation about 4 us (Anthropic; Gemini 2.5), measured 38 ms for 10,000
#: short messages, where the 8 MiB default body could hold 250,000 of them (about 1.2 s, the event loop
#: held the whole time).
MAX_MESSAGES = 10_000

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
#: Top-level fields by the JSON type they must have (numbers are in _NUMBERS).
_TYPED: dict[str, tuple[type, str]] = {
    **dict.fromkeys(
        ("stream_options", "response_format", "metadata", "logit_bias", "prediction", "audio"), (dict, "an object")
    ),
    **dict.fromkeys(("stream", "parallel_tool_calls", "logprobs", "store"), (bool, "a boolean")),
    **dict.fromkeys(("reasoning_effort", "user", "safety_identifier", "service_tier", "verbosity"), (str, "a string")),
}
#: Roles whose message needs nothing but its text (``tool`` needs its call's id).
_TEXT_ROLES = frozenset({"system", "developer", "user", "assistant"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
#: Content part type → the field holding its payload, and whether that field is text (else an object).
_PARTS: dict[str, tuple[str, bool]] = {
    "text": ("text", True),
    "refusal": ("refusal", True),
    "image_url": ("image_url", False),
    "input_audio": ("input_audio", False),
    "file": ("file", False),
}


def validate_chat(body: Any) -> JSON:
    """Return ``body`` if it is a well-formed chat request, else raise :class:`InvalidRequest`."""
    request = check_body(body)
    _check_messages(request.get("messages"))
    check_fields(request, _TYPED, _NUMBERS)
    if request.get("stream_options") is not None and not request.get("stream"):
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    _check_stop(request.get("stop"))
    _check_tools(request.get("tools"), request.get("tool_choice"))
    if (response_format := request.get("response_format")) is not None:
        _check_response_format(response_format)
    return request


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        if messages == []:
            raise InvalidRequest(
                "Invalid 'messages': empty array. Expected an array with at least one message.",
                param="messages",
                code="empty_array",
            )
        raise missing_or_wrong("messages", messages, "a non-empty array")
    check_length(messages, "messages", MAX_MESSAGES)
    for i, message in enumerate(messages):
        # The common message, {"role": ..., "content": "text"} and nothing else, passes every check below: it
        # is let through on these few lookups (callgrind: 2,200 fewer instructions a message).
        if (
            type(message) is dict
            and len(message) == 2
            and type(message.get("content")) is str
            and type(role := message.get("role")) is str
            and role in _TEXT_ROLES
        ):
            continue
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise wrong(param, message, "an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
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
        elif isinstance(content, list):
            _check_parts(content, f"{param}.content", text_only=role in ("system", "developer", "tool"))
        elif not isinstance(content, str):
            raise wrong(f"{param}.content", content, "a string or an array of content parts")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequest(f"Missing required parameter: '{param}.tool_call_id'.", param=f"{param}.tool_call_id")
        if (name := message.get("name")) is not None and not isinstance(name, str):
            raise wrong(f"{param}.name", name, "a string")
        if (calls := message.get("tool_calls")) is not None:
            _check_tool_calls(calls, f"{param}.tool_calls")


def _check_parts(parts: list[Any], param: str, *, text_only: bool) -> None:
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        kind = part_type(part, where)
        if text_only and kind != "text":
            raise InvalidRequest(
                f"Invalid value for '{where}.type': {kind!r}. Only 'text' parts are supported in this message.",
                param=f"{where}.type",
                code="invalid_value",
            )
        if (known := _PARTS.get(kind)) is not None:
            field, text = known
            value = part.get(field)
            if not isinstance(value, str if text else dict):
                raise missing_or_wrong(f"{where}.{field}", value, "a string" if text else "an object")


def _check_tool_calls(calls: Any, param: str) -> None:
    if not isinstance(calls, list):
        raise wrong(param, calls, "an array")
    for j, call in enumerate(calls):
        where = f"{param}[{j}]"
        if not isinstance(call, dict):
            raise wrong(where, call, "an object")
        if (call_id := call.get("id")) is not None and not isinstance(call_id, str):
            raise wrong(f"{where}.id", call_id, "a string")
        if call.get("type", "function") != "function":
            continue
        function = call.get("function")
        if not isinstance(function, dict):
            raise missing_or_wrong(f"{where}.function", function, "an object")
        for field in ("name", "arguments"):
            if not isinstance(value := function.get(field), str):
                raise missing_or_wrong(f"{where}.function.{field}", value, "a string")


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise wrong("stop", stop, "a string or an array of strings")


def _check_tools(tools: Any, tool_choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise wrong("tools", tools, "an array")
        check_length(tools, "tools", MAX_TOOLS)
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise wrong(f"tools[{i}]", tool, "an object")
            if not isinstance(tool.get("type"), str):
                raise missing_or_wrong(f"tools[{i}].type", tool.get("type"), "a string")
            if tool["type"] == "function":
                _check_function(tool.get("function"), f"tools[{i}].function")
    if tool_choice is None:
        return
    if isinstance(tool_choice, dict):
        if tool_choice.get("type") == "function":
            function = tool_choice.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise missing_or_wrong("tool_choice.function.name", None, "a string")
        return
    if not isinstance(tool_choice, str) or tool_choice not in _TOOL_CHOICES:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': {tool_choice!r}. Supported values are: 'none', 'auto' and 'required'.",
            param="tool_choice",
            code="invalid_value",
        )


def _check_function(function: Any, param: str) -> None:
    if not isinstance(function, dict):
        raise missing_or_wrong(param, function, "an object")
    if not isinstance(function.get("name"), str):
        raise missing_or_wrong(f"{param}.name", function.get("name"), "a string")
    if (parameters := function.get("parameters")) is not None and not isinstance(parameters, dict):
        raise wrong(f"{param}.parameters", parameters, "an object")
    if (description := function.get("description")) is not None and not isinstance(description, str):
        raise wrong(f"{param}.description", description, "a string")


def _check_response_format(response_format: JSON) -> None:
    kind = response_format.get("type")
    if not isinstance(kind, str):
        raise missing_or_wrong("response_format.type", kind, "a string")
    if kind != "json_schema":
        return
    json_schema = response_format.get("json_schema")
    if not isinstance(json_schema, dict):
        raise missing_or_wrong("response_format.json_schema", json_schema, "an object")
    if not isinstance(json_schema.get("name"), str):
        raise missing_or_wrong("response_format.json_schema.name", json_schema.get("name"), "a string")
    if (schema := json_schema.get("schema")) is not None and not isinstance(schema, dict):
        raise wrong("response_format.json_schema.schema", schema, "an object")
