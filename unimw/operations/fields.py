"""Checks every operation's validation is made of: a 400 naming the param, in OpenAI's words.

A request body is an object, nested at most :data:`MAX_DEPTH` levels, that
names a model; each top-level field the body has is checked against the type
(or number range) the operation declares for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unimw.errors import InvalidRequest
from unimw.wire import JSON

#: Deepest nesting of arrays and objects a request may have. Real requests stay far below it
#: (OpenAI's structured outputs allow 10 levels of schema nesting); the serialiser stops at 254.
MAX_DEPTH = 64
#: field → (integer only, lowest, highest); bool is never accepted as a number.
Numbers = Mapping[str, tuple[bool, float | None, float | None]]


def check_body(body: Any) -> JSON:
    """``body`` if it is a JSON object, not nested too deep, that names a model."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    check_depth(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise missing_or_wrong("model", model, "a non-empty string")
    return body


def check_fields(body: JSON, typed: Mapping[str, tuple[type, str]], numbers: Numbers) -> None:
    """Each field ``body`` has that ``typed`` (JSON type and its name) or ``numbers`` (range) declares."""
    # Only the fields the body has: a request sets a handful of the dozens checked (measured: 71 dict
    # lookups a call when every known field was looked up, for a two-field body).
    for name, value in body.items():
        if value is None:
            continue
        if (kind := typed.get(name)) is not None:
            if not isinstance(value, kind[0]):
                raise wrong(name, value, kind[1])
        elif (bounds := numbers.get(name)) is not None:
            check_number(name, value, *bounds)


def part_type(part: Any, where: str) -> str:
    """The ``type`` of a content part, which must be an object with a string ``type``."""
    if not isinstance(part, dict):
        raise wrong(where, part, "an object")
    kind = part.get("type")
    if not isinstance(kind, str):
        raise missing_or_wrong(f"{where}.type", kind, "a string")
    return kind


def check_depth(body: JSON) -> None:
    """Refuse a body whose arrays and objects nest deeper than :data:`MAX_DEPTH`."""
    try:
        _descend(body, MAX_DEPTH - 1)
    except _TooDeep:
        raise InvalidRequest(
            f"The request body is nested deeper than {MAX_DEPTH} levels.", code="invalid_value"
        ) from None


class _TooDeep(Exception):
    pass


def _descend(node: dict[str, Any] | list[Any], levels_left: int) -> None:
    # Recursion is bounded by MAX_DEPTH; measured ~0.8 us for a one-message body, ~6 us with tools.
    for child in node.values() if type(node) is dict else node:
        if type(child) is dict or type(child) is list:
            if not levels_left:
                raise _TooDeep
            _descend(child, levels_left - 1)


def check_length(items: list[Any], param: str, limit: int) -> None:
    """Refuse an array of more than ``limit`` items, as OpenAI refuses one past a schema's ``maxItems``."""
    if len(items) > limit:
        raise InvalidRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(items)} instead.",
            param=param,
            code="array_above_max_length",
        )


def check_number(name: str, value: Any, integer: bool, low: float | None, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise wrong(name, value, "an integer" if integer else "a number")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(
            f"Invalid value for '{name}': {value!r}. It must be {bounds}.", param=name, code="invalid_value"
        )


def wrong(param: str, value: Any, expected: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def missing_or_wrong(param: str, value: Any, expected: str) -> InvalidRequest:
    if value is None:
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    return wrong(param, value, expected)


def json_type(value: Any) -> str:
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
