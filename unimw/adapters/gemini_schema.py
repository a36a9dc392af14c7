"""JSON Schema as the OpenAPI-subset ``Schema`` that Gemini takes for tool parameters and ``responseSchema``.

``$ref`` is inlined from ``$defs``/``definitions``, its sibling keywords
winning (a recursive reference becomes an ``OBJECT`` with no properties);
``type`` is upper-cased (several types → ``anyOf``); ``"null"`` as a type,
``anyOf``/``oneOf`` member or ``enum`` value → ``nullable``; ``oneOf`` →
``anyOf``; ``allOf`` is merged into one schema; ``const`` → ``enum``; a
non-string ``enum`` is dropped and its values are listed in the
``description``; ``exclusiveMinimum``/``exclusiveMaximum`` →
``minimum``/``maximum``; ``examples`` → ``example``; ``format`` is kept only
where Gemini knows it (date-time/enum, float/double, int32/int64);
``required`` keeps only declared properties; ``properties``, object
``items``, ``title``, ``description``, ``default``, ``pattern``,
``minimum``, ``maximum`` and the length/item/property counts are kept; every
other keyword (``additionalProperties``, ``$defs``, ``$schema``, ``not``,
``patternProperties``, ``uniqueItems``, tuple ``items``, ...) is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unimw.wire import JSON, dumps

# JSON Schema keywords the OpenAPI-subset Schema has under the same name.
_SCHEMA_KEPT = (
    "title", "description", "nullable", "default", "example", "pattern", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
)  # fmt: skip
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}


def to_schema(schema: Any, *, ordered: bool = False) -> JSON:
    """A JSON Schema as the OpenAPI-subset ``Schema`` Gemini takes (see the module docstring).

    ``ordered`` adds ``propertyOrdering`` so structured output keeps the schema's key order.
    """
    if not isinstance(schema, dict):
        return {}
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return _convert(schema, defs, (), ordered)


def _convert(node: Any, defs: Mapping[str, Any], seen: tuple[str, ...], ordered: bool) -> JSON:
    if not isinstance(node, dict):
        return {}
    node, seen = _resolve(node, defs, seen)
    out: JSON = {}
    for sub in node.get("allOf") or ():
        _merge_schema(out, _convert(sub, defs, seen, ordered))
    types = node.get("type") if isinstance(node.get("type"), list) else [node.get("type")]
    if "null" in types:
        out["nullable"] = True
    types = [t.upper() for t in types if isinstance(t, str) and t != "null"]
    if len(types) == 1:
        out["type"] = types[0]
    elif len(types) > 1:
        out["anyOf"] = [{"type": t} for t in types]
    for key in _SCHEMA_KEPT:
        if key in node:
            out[key] = node[key]
    if "exclusiveMinimum" in node and "minimum" not in node:
        out["minimum"] = node["exclusiveMinimum"]
    if "exclusiveMaximum" in node and "maximum" not in node:
        out["maximum"] = node["exclusiveMaximum"]
    if isinstance(node.get("examples"), list) and node["examples"] and "example" not in node:
        out["example"] = node["examples"][0]
    _enum(node, out)
    variants = [*(node.get("anyOf") or ()), *(node.get("oneOf") or ())]
    if any(isinstance(v, dict) and v.get("type") == "null" for v in variants):
        out["nullable"] = True
    subs = [_convert(v, defs, seen, ordered) for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
    if len(subs) == 1:
        _merge_schema(out, subs[0])
    elif subs:
        out["anyOf"] = subs
    if isinstance(properties := node.get("properties"), dict):
        out["properties"] = {name: _convert(sub, defs, seen, ordered) for name, sub in properties.items()}
        if ordered and len(properties) > 1:
            out["propertyOrdering"] = list(properties)
    if isinstance(node.get("required"), list):
        required = [r for r in node["required"] if r in (out.get("properties") or {})]
        if required:
            out["required"] = required
    if isinstance(node.get("items"), dict):
        out["items"] = _convert(node["items"], defs, seen, ordered)
    if "type" not in out and "anyOf" not in out:
        out.update(_implied_type(out))
    if node.get("format") in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = node["format"]
    return out


def _resolve(node: JSON, defs: Mapping[str, Any], seen: tuple[str, ...]) -> tuple[JSON, tuple[str, ...]]:
    """``node`` with its ``$ref`` inlined; sibling keywords (a description, say) win over the target's."""
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node, seen
    name = ref.rpartition("/")[2]
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    if name in seen or not isinstance(defs.get(name), dict):
        return {"type": "object", **siblings}, seen  # recursive or dangling: cannot be inlined
    target, seen = _resolve(defs[name], defs, (*seen, name))
    return {**target, **siblings}, seen


def _enum(node: JSON, out: JSON) -> None:
    values = node["enum"] if isinstance(node.get("enum"), list) else [node["const"]] if "const" in node else None
    if values is None:
        return
    if None in values:
        out["nullable"] = True
        values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        out["enum"] = values
        out.setdefault("type", "STRING")
    elif values:  # Gemini enums are strings only: tell the model in words instead
        allowed = "One of: " + ", ".join(dumps(v).decode() for v in values) + "."
        out["description"] = f"{out['description']} {allowed}" if out.get("description") else allowed


def _implied_type(out: JSON) -> JSON:
    if "properties" in out:
        return {"type": "OBJECT"}
    if "items" in out:
        return {"type": "ARRAY"}
    return {}


def _merge_schema(out: JSON, sub: JSON) -> None:
    for key, value in sub.items():
        if key == "properties":
            out.setdefault("properties", {}).update(value)
        elif key == "required":
            out["required"] = list(dict.fromkeys([*out.get("required", []), *value]))
        else:
            out.setdefault(key, value)
