"""Capability rules for Claude models, read from the model id, and the request fields they decide.

* ``response_format`` uses native ``output_config.format`` on Claude 4.5 and
  later, and on older models a forced tool whose input is returned as the
  message content. ``json_object`` always uses the forced tool, so the answer
  is a JSON object whatever the model.
* ``reasoning_effort`` is adaptive thinking plus ``output_config.effort`` on
  Claude 4.6 and later, a thinking budget on 3.7 to 4.5. Thinking comes back
  as ``reasoning_content`` (and the signed blocks as ``thinking_blocks``, which
  a client may send back on the assistant message), never in ``content``.
* ``temperature``/``top_p``/``top_k`` are only sent with ``anthropic-version:
  2023-06-01`` and to models that still take them; the default version,
  ``2026-10-21``, refuses them outright.

Model ids the capability rules cannot read are taken to be the newest models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from unimw.errors import InvalidRequest
from unimw.wire import JSON

LEGACY_VERSION = "2023-06-01"  #: the only version that still takes sampling parameters
#: The forced tool that carries structured output on models without native support.
JSON_TOOL = "unimw_structured_output"

_SAMPLING = ("temperature", "top_p", "top_k")
_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768}
_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "max"}
#: Nesting :func:`closed_schema` follows, lists and objects alike; it recurses no deeper. The request
#: body itself may nest 64 levels, and real schemas stay under 10.
MAX_DEPTH = 64
_SCHEMA_PARAM = "response_format.json_schema.schema"


@dataclass(frozen=True, slots=True)
class Traits:
    """What a model id says about the features the model accepts."""

    family: str | None = None  #: ``opus``, ``sonnet``, ``haiku``; None when unknown
    version: tuple[int, int] = (99, 0)  #: unknown ids count as the newest

    @property
    def native_json(self) -> bool:
        return self.version >= (4, 5)

    @property
    def thinking(self) -> bool:
        return self.version >= (3, 7)

    @property
    def adaptive(self) -> bool:
        return self.version >= (4, 6)

    def sampling(self, api_version: str) -> frozenset[str]:
        """The sampling parameters this model takes under ``api_version``."""
        if api_version != LEGACY_VERSION or self.version >= (5, 0):
            return frozenset()
        if self.family == "opus" and self.version >= (4, 7):
            return frozenset()
        return frozenset(_SAMPLING)

    @property
    def one_of_temperature_top_p(self) -> bool:
        return self.version >= (4, 1)


_NEW_ID = re.compile(r"claude-(opus|sonnet|haiku)-(\d+)(?:-(\d{1,2})(?!\d))?")
_OLD_ID = re.compile(r"claude-(\d)(?:-(\d))?-(opus|sonnet|haiku)")


def traits(model: str) -> Traits:
    """Read family and version from ids like ``claude-sonnet-4-5-20250929`` or ``claude-3-7-sonnet-latest``."""
    if match := _NEW_ID.search(model):
        return Traits(match[1], (int(match[2]), int(match[3] or 0)))
    if match := _OLD_ID.search(model):
        return Traits(match[3], (int(match[1]), int(match[2] or 0)))
    return Traits()


# -- structured output -----------------------------------------------------------------------------


def add_structured_output(body: JSON, response_format: JSON | None, model: Traits) -> None:
    """Ask for ``response_format`` in ``body``: native ``output_config.format``, or the forced :data:`JSON_TOOL`."""
    kind = (response_format or {}).get("type")
    if kind not in ("json_schema", "json_object"):
        return
    spec = (response_format or {}).get("json_schema")
    given = (spec.get("schema") if isinstance(spec, dict) else None) or {"type": "object"}
    if not isinstance(given, dict):
        raise InvalidRequest(f"Invalid type for '{_SCHEMA_PARAM}': expected an object.", param=_SCHEMA_PARAM)
    if kind == "json_schema" and model.native_json:
        schema = closed_schema(given, param=_SCHEMA_PARAM)
        body.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": schema}
        return
    asked = spec.get("description") if isinstance(spec, dict) else None
    description = ("Give your final answer as this tool's input. " + str(asked or "")).strip()
    tool = {"name": JSON_TOOL, "description": description, "input_schema": {"type": "object", **given}}
    choice = body.get("tool_choice") or {"type": "auto"}
    if "tools" not in body or choice["type"] == "none":
        body["tools"], forced = [tool], {"type": "tool", "name": JSON_TOOL}
    else:  # the caller's tools stay callable; the answer comes through ours
        body["tools"], forced = [*body["tools"], tool], {"type": "any"}
    if choice["type"] == "tool":
        return
    if "disable_parallel_tool_use" in choice:
        forced["disable_parallel_tool_use"] = choice["disable_parallel_tool_use"]
    body["tool_choice"] = forced


def closed_schema(schema: Any, *, param: str | None = None, depth: int = 1) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object, as native structured output requires.

    One pass over the schema as given (``$ref`` is left to the API), refused past :data:`MAX_DEPTH`
    levels with a 400 naming ``param``.
    """
    if not isinstance(schema, (dict, list)):
        return schema
    if depth > MAX_DEPTH:
        where = f"Invalid '{param}'" if param else "Invalid schema"
        raise InvalidRequest(
            f"{where}: the schema is nested deeper than {MAX_DEPTH} levels.", param=param, code="invalid_value"
        )
    if isinstance(schema, list):
        return [closed_schema(s, param=param, depth=depth + 1) for s in schema]
    out = {
        k: closed_schema(v, param=param, depth=depth + 1) if k != "properties" else _closed_properties(v, param, depth)
        for k, v in schema.items()
    }
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def _closed_properties(properties: Any, param: str | None, depth: int) -> Any:
    if not isinstance(properties, dict):
        return properties
    return {name: closed_schema(sub, param=param, depth=depth + 2) for name, sub in properties.items()}


# -- thinking and sampling -------------------------------------------------------------------------


def add_thinking(body: JSON, effort: str | None, model: Traits, dropped: list[str], *, grow: bool) -> None:
    """Turn ``reasoning_effort`` into thinking the model takes; ``grow`` puts a budget on top of ``max_tokens``."""
    if effort is None or effort == "none":
        return
    forced = body.get("tool_choice", {}).get("type") in ("any", "tool")
    if not model.thinking or not isinstance(effort, str) or effort not in _EFFORTS:
        dropped.append("reasoning_effort")
        return
    if model.adaptive:
        body.setdefault("output_config", {})["effort"] = _EFFORTS[effort]
        if not forced and _thinking_fits(body):
            body["thinking"] = {"type": "adaptive"}
        return
    budget = _BUDGETS[effort] if grow else min(_BUDGETS[effort], body["max_tokens"] - 1)
    if forced or budget < 1024 or not _thinking_fits(body):
        dropped.append("reasoning_effort")
    else:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if grow:
            body["max_tokens"] += budget


def _thinking_fits(body: JSON) -> bool:
    """False when the last assistant turn used tools without its signed thinking, which the API would refuse."""
    for turn in reversed(body["messages"]):
        if turn["role"] == "assistant":
            blocks = turn["content"]
            uses_tools = any(b["type"] == "tool_use" for b in blocks)
            return not uses_tools or blocks[0]["type"] in ("thinking", "redacted_thinking")
    return True


def drop_sampling(body: JSON, accepted: frozenset[str], model: Traits, dropped: list[str]) -> None:
    """Remove from ``body`` the sampling parameters the model will not take with these settings."""
    if body.get("thinking", {}).get("type") in ("enabled", "adaptive"):  # thinking fixes its own sampling
        accepted = frozenset()
    elif model.one_of_temperature_top_p and "temperature" in body:
        accepted -= {"top_p"}
    for name in _SAMPLING:
        if name in body and name not in accepted:
            del body[name]
            dropped.append(name)
