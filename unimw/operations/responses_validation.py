"""Checking a Responses request before anything is spent on it.

Each field is checked for the shape :mod:`unimw.operations.responses_chat`
reads it in, with the same 400s as chat's checks (``param`` names the
field, ``code`` says what was wrong). What only translation cannot do (a
hosted tool, an item type Chat Completions has no word for, ``background``)
is not refused here: the request may be routed to a native Responses
target, which takes it whole. Translation refuses it, naming the field.
"""

from __future__ import annotations

from typing import Any, Final

from unimw.errors import InvalidRequest
from unimw.operations.chat_validation import MAX_MESSAGES
from unimw.operations.fields import check_body, check_fields, check_length, missing_or_wrong, part_type, wrong
from unimw.wire import JSON

#: Input items one request may carry: as many as chat's messages (OpenAI's spec sets no maximum), since
#: translation makes a message or two of each and a native target takes them whole.
MAX_INPUT_ITEMS: Final = MAX_MESSAGES
MESSAGE_ROLES: Final = frozenset({"user", "assistant", "system", "developer"})
TOOL_CHOICES: Final = frozenset({"none", "auto", "required"})
FORMATS: Final = frozenset({"text", "json_object", "json_schema"})
ALLOWED_TOOLS_MODES: Final = frozenset({"auto", "required"})
TRUNCATIONS: Final = frozenset({"auto", "disabled"})

#: field → (integer only, lowest, highest), as in chat's checks.
_NUMBERS: Final[dict[str, tuple[bool, float | None, float | None]]] = {
    "max_output_tokens": (True, 1, None),
    "temperature": (False, 0, 2),
    "top_p": (False, 0, 1),
    "top_logprobs": (True, 0, 20),
}
#: Top-level fields by the JSON type they must have (numbers are in _NUMBERS).
_TYPED: Final[dict[str, tuple[type, str]]] = {
    **dict.fromkeys(("stream", "store", "background", "parallel_tool_calls"), (bool, "a boolean")),
    **dict.fromkeys(
        ("instructions", "user", "safety_identifier", "previous_response_id", "service_tier", "prompt_cache_key"),
        (str, "a string"),
    ),
    **dict.fromkeys(("metadata", "stream_options", "text", "reasoning"), (dict, "an object")),
}
#: Content part type → its fields that must be strings when present.
_PART_STRINGS: Final[dict[str, tuple[str, ...]]] = {
    "input_text": ("text",),
    "output_text": ("text",),
    "refusal": ("refusal",),
    "input_image": ("image_url", "file_id", "detail"),
    "input_file": ("file_data", "file_id", "file_url", "filename"),
}
#: Content part type → the field it cannot do without (one of several, for images and files).
_PART_PAYLOAD: Final[dict[str, tuple[str, ...]]] = {
    "input_text": ("text",),
    "output_text": ("text",),
    "refusal": ("refusal",),
    "input_image": ("image_url", "file_id"),
    "input_file": ("file_data", "file_id", "file_url"),
}


def validate_responses(body: Any) -> JSON:
    """Return ``body`` if it is a well-formed Responses request, else raise :class:`InvalidRequest`."""
    request = check_body(body)
    check_fields(request, _TYPED, _NUMBERS)
    check_input(request.get("input"), "input")
    _check_tools(request.get("tools"))
    _check_tool_choice(request.get("tool_choice"))
    _check_text(request.get("text"))
    _check_reasoning(request.get("reasoning"))
    _check_strings_list(request.get("include"), "include")
    if (truncation := request.get("truncation")) is not None and truncation not in TRUNCATIONS:
        raise _invalid_value("truncation", truncation, TRUNCATIONS)
    return request


def hosted_tools(request: JSON) -> list[tuple[int, str]]:
    """``(position, type)`` of each tool that is not a function: those only OpenAI's Responses API runs."""
    tools = request.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        (i, str(tool.get("type")))
        for i, tool in enumerate(tools)
        if isinstance(tool, dict) and tool.get("type") != "function"
    ]


def check_input(value: Any, param: str) -> None:
    """``input`` (a string or an array of items), or earlier turns' items under another ``param``."""
    if value is None:
        raise missing_or_wrong(param, value, "a string or an array of input items")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise wrong(param, value, "a string or an array of input items")
    check_length(value, param, MAX_INPUT_ITEMS)
    for i, item in enumerate(value):
        _check_item(item, f"{param}[{i}]")


def _check_item(item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise wrong(param, item, "an object")
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise wrong(f"{param}.type", kind, "a string")
    if kind == "message":
        _check_message(item, param)
    elif kind == "function_call":
        _require_strings(item, param, ("call_id", "name", "arguments"))
    elif kind == "function_call_output":
        _require_strings(item, param, ("call_id",))
        output = item.get("output")
        if isinstance(output, list):
            _check_parts(output, f"{param}.output")
        elif not isinstance(output, str):
            raise missing_or_wrong(f"{param}.output", output, "a string or an array of content parts")
    elif kind == "reasoning":
        _check_reasoning_item(item, param)
    # Any other item type (item_reference, hosted tool calls) is the target's to judge.


def _check_message(item: JSON, param: str) -> None:
    role = item.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        if role is None:
            raise missing_or_wrong(f"{param}.role", role, "a string")
        raise _invalid_value(f"{param}.role", role, MESSAGE_ROLES)
    content = item.get("content")
    if isinstance(content, list):
        _check_parts(content, f"{param}.content")
    elif not isinstance(content, str):
        raise missing_or_wrong(f"{param}.content", content, "a string or an array of content parts")


def _check_parts(parts: list[Any], param: str) -> None:
    for j, part in enumerate(parts):
        where = f"{param}[{j}]"
        kind = part_type(part, where)
        for field in _PART_STRINGS.get(kind, ()):
            if (value := part.get(field)) is not None and not isinstance(value, str):
                raise wrong(f"{where}.{field}", value, "a string")
        payload = _PART_PAYLOAD.get(kind, ())
        if payload and all(part.get(field) is None for field in payload):
            raise InvalidRequest(
                f"Missing required parameter: '{where}.{payload[0]}'"
                + (f" (or {', '.join(repr(f) for f in payload[1:])})." if len(payload) > 1 else "."),
                param=f"{where}.{payload[0]}",
                code="missing_required_parameter",
            )


def _check_reasoning_item(item: JSON, param: str) -> None:
    if (item_id := item.get("id")) is not None and not isinstance(item_id, str):
        raise wrong(f"{param}.id", item_id, "a string")
    if (encrypted := item.get("encrypted_content")) is not None and not isinstance(encrypted, str):
        raise wrong(f"{param}.encrypted_content", encrypted, "a string")
    for field, expected in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = item.get(field)
        if parts is None and field == "content":
            continue
        if not isinstance(parts, list):
            raise missing_or_wrong(f"{param}.{field}", parts, "an array")
        for j, part in enumerate(parts):
            where = f"{param}.{field}[{j}]"
            if not isinstance(part, dict):
                raise wrong(where, part, "an object")
            if part.get("type", expected) != expected:
                raise _invalid_value(f"{where}.type", part.get("type"), frozenset({expected}))
            if not isinstance(text := part.get("text"), str):
                raise missing_or_wrong(f"{where}.text", text, "a string")


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise wrong("tools", tools, "an array")
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise wrong(param, tool, "an object")
        if not isinstance(kind := tool.get("type"), str):
            raise missing_or_wrong(f"{param}.type", kind, "a string")
        if kind != "function":
            continue  # hosted tools: refused by translation, passed whole to native targets
        if not isinstance(name := tool.get("name"), str) or not name:
            raise missing_or_wrong(f"{param}.name", name, "a non-empty string")
        if (parameters := tool.get("parameters")) is not None and not isinstance(parameters, dict):
            raise wrong(f"{param}.parameters", parameters, "an object")
        if (strict := tool.get("strict")) is not None and not isinstance(strict, bool):
            raise wrong(f"{param}.strict", strict, "a boolean")
        if (description := tool.get("description")) is not None and not isinstance(description, str):
            raise wrong(f"{param}.description", description, "a string")


def _check_tool_choice(choice: Any) -> None:
    if choice is None or (isinstance(choice, str) and choice in TOOL_CHOICES):
        return
    if isinstance(choice, str):
        raise _invalid_value("tool_choice", choice, TOOL_CHOICES)
    if not isinstance(choice, dict):
        raise wrong("tool_choice", choice, "a string or an object")
    kind = choice.get("type")
    if not isinstance(kind, str):
        raise missing_or_wrong("tool_choice.type", kind, "a string")
    if kind == "function" and not isinstance(choice.get("name"), str):
        raise missing_or_wrong("tool_choice.name", choice.get("name"), "a string")
    if kind == "allowed_tools":
        if (mode := choice.get("mode")) not in ALLOWED_TOOLS_MODES:
            if mode is None:
                raise missing_or_wrong("tool_choice.mode", mode, "a string")
            raise _invalid_value("tool_choice.mode", mode, ALLOWED_TOOLS_MODES)
        tools = choice.get("tools")
        if not isinstance(tools, list):
            raise missing_or_wrong("tool_choice.tools", tools, "an array")
        for k, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise wrong(f"tool_choice.tools[{k}]", tool, "an object with a 'type'")
            if tool["type"] == "function" and not isinstance(tool.get("name"), str):
                raise missing_or_wrong(f"tool_choice.tools[{k}].name", tool.get("name"), "a string")


def _check_text(text: Any) -> None:
    if text is None:
        return
    if (verbosity := text.get("verbosity")) is not None and not isinstance(verbosity, str):
        raise wrong("text.verbosity", verbosity, "a string")
    fmt = text.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise wrong("text.format", fmt, "an object")
    kind = fmt.get("type")
    if kind not in FORMATS:
        if kind is None:
            raise missing_or_wrong("text.format.type", kind, "a string")
        raise _invalid_value("text.format.type", kind, FORMATS)
    if kind != "json_schema":
        return
    if not isinstance(name := fmt.get("name"), str) or not name:
        raise missing_or_wrong("text.format.name", name, "a non-empty string")
    if not isinstance(schema := fmt.get("schema"), dict):
        raise missing_or_wrong("text.format.schema", schema, "an object")
    if (strict := fmt.get("strict")) is not None and not isinstance(strict, bool):
        raise wrong("text.format.strict", strict, "a boolean")
    if (description := fmt.get("description")) is not None and not isinstance(description, str):
        raise wrong("text.format.description", description, "a string")


def _check_reasoning(reasoning: Any) -> None:
    if reasoning is None:
        return
    for field in ("effort", "summary"):
        if (value := reasoning.get(field)) is not None and not isinstance(value, str):
            raise wrong(f"reasoning.{field}", value, "a string")


def _check_strings_list(value: Any, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise wrong(param, value, "an array of strings")


def _require_strings(item: JSON, param: str, fields: tuple[str, ...]) -> None:
    for field in fields:
        if not isinstance(value := item.get(field), str):
            raise missing_or_wrong(f"{param}.{field}", value, "a string")


def _invalid_value(param: str, value: Any, allowed: frozenset[str]) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value for '{param}': {value!r}. Supported values are: "
        + ", ".join(f"'{v}'" for v in sorted(allowed))
        + ".",
        param=param,
        code="invalid_value",
    )
