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
``patternProperties``, ``uniqueItems``, tuple ``items``, ...) is dropped;
keywords of an unexpected JSON type are ignored.

Inlining copies a target once per reference, so ``$defs`` that refer to
each other twice per level grow a few KB into millions of nodes. The work is
therefore bounded (:class:`Budget`, :data:`MAX_DEPTH`): past a bound the
schema is refused with a 400 naming it, never converted halfway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unimw.errors import InvalidRequest
from unimw.wire import JSON, dumps

# JSON Schema keywords the OpenAPI-subset Schema has under the same name.
_SCHEMA_KEPT = (
    "title", "description", "nullable", "default", "example", "pattern", "minimum", "maximum",
    "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
)  # fmt: skip
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"}, "INTEGER": {"int32", "int64"}}

#: Schema objects the conversions of one request may produce, a ``$ref`` target counted each time
#: it is inlined (each hop too). Real tool schemas have tens to hundreds of nodes, and OpenAI's
#: structured outputs stop at 5,000 properties; at about 4 us a node the whole bound is some 40 ms.
MAX_NODES = 10_000
#: Characters of text (descriptions, enum values, defaults, property names) plus list items the
#: converted schemas may carry: inlining shares these by reference, but the body sent repeats them.
MAX_TEXT = 1_000_000
#: Nesting of schema objects, ``$ref`` hops included; conversion recurses no deeper than this.
#: The request body itself may nest 64 levels, and real schemas stay under 10.
MAX_DEPTH = 64


class Budget:
    """What the schema conversions of one request have spent; shared by its tools, so that many cannot each spend a full one."""

    def __init__(self, scope: str = "") -> None:
        self.nodes = 0
        self.text = 0
        self._scope = f" ({scope})" if scope else ""

    def spend(self, param: str | None, *, nodes: int = 0, text: int = 0) -> None:
        self.nodes += nodes
        self.text += text
        if self.nodes > MAX_NODES:
            raise _refused(
                param, f"the schema expands to more than {MAX_NODES} nodes once its $refs are inlined" + self._scope
            )
        if self.text > MAX_TEXT:
            raise _refused(
                param,
                f"the schema expands to more than {MAX_TEXT} characters of text once its $refs are inlined"
                + self._scope,
            )


@dataclass(frozen=True, slots=True)
class _Walk:
    """What every step of one conversion needs besides the node."""

    defs: Mapping[str, Any]
    ordered: bool
    param: str | None
    budget: Budget


def to_schema(schema: Any, *, ordered: bool = False, param: str | None = None, budget: Budget | None = None) -> JSON:
    """A JSON Schema as the OpenAPI-subset ``Schema`` Gemini takes (see the module docstring).

    ``ordered`` adds ``propertyOrdering`` so structured output keeps the schema's key order.
    ``param`` names the schema in the 400 raised when it is over a bound; ``budget`` is shared
    by the schemas of one request.
    """
    if not isinstance(schema, dict):
        return {}
    defs = {**_object(schema.get("definitions")), **_object(schema.get("$defs"))}
    return _convert(schema, _Walk(defs, ordered, param, budget or Budget()), (), 1)


def _convert(given: Any, walk: _Walk, seen: tuple[str, ...], depth: int) -> JSON:
    """``given`` converted; ``depth`` is its level (the root's is 1), and each ``$ref`` hop in ``seen`` is one more."""
    if not isinstance(given, dict):
        return {}
    node, seen = _resolve(given, walk, seen, depth)
    if depth + len(seen) > MAX_DEPTH:
        raise _too_deep(walk.param)
    walk.budget.spend(walk.param, nodes=1)
    out: JSON = {}
    for sub in _array(node, "allOf", walk):
        _merge_schema(out, _convert(sub, walk, seen, depth + 1))
    types = _array(node, "type", walk) if isinstance(node.get("type"), list) else [node.get("type")]
    if "null" in types:
        out["nullable"] = True
    types = [t.upper() for t in types if isinstance(t, str) and t != "null"]
    if len(types) == 1:
        out["type"] = types[0]
    elif len(types) > 1:
        out["anyOf"] = [{"type": t} for t in types]
    for key in _SCHEMA_KEPT:
        if key in node:
            out[key] = _kept(node[key], walk)
    if "exclusiveMinimum" in node and "minimum" not in node:
        out["minimum"] = _kept(node["exclusiveMinimum"], walk)
    if "exclusiveMaximum" in node and "maximum" not in node:
        out["maximum"] = _kept(node["exclusiveMaximum"], walk)
    if isinstance(node.get("examples"), list) and node["examples"] and "example" not in node:
        out["example"] = _kept(node["examples"][0], walk)
    _enum(node, out, walk)
    variants = [*_array(node, "anyOf", walk), *_array(node, "oneOf", walk)]
    if any(isinstance(v, dict) and v.get("type") == "null" for v in variants):
        out["nullable"] = True
    subs = [
        _convert(v, walk, seen, depth + 1) for v in variants if not (isinstance(v, dict) and v.get("type") == "null")
    ]
    if len(subs) == 1:
        _merge_schema(out, subs[0])
    elif subs:
        out["anyOf"] = subs
    if "required" in out:  # merged from allOf members: each name once, in order of appearance
        out["required"] = list(dict.fromkeys(out["required"]))
    if isinstance(properties := node.get("properties"), dict):
        walk.budget.spend(walk.param, text=sum(len(name) for name in properties))
        out["properties"] = {name: _convert(sub, walk, seen, depth + 1) for name, sub in properties.items()}
        if walk.ordered and len(properties) > 1:
            out["propertyOrdering"] = list(properties)
    if isinstance(node.get("required"), list):
        declared = out.get("properties") or {}
        required = [r for r in _array(node, "required", walk) if isinstance(r, str) and r in declared]
        if required:
            out["required"] = required
    if isinstance(node.get("items"), dict):
        out["items"] = _convert(node["items"], walk, seen, depth + 1)
    if "type" not in out and "anyOf" not in out:
        out.update(_implied_type(out))
    if isinstance(fmt := node.get("format"), str) and fmt in _FORMATS.get(out.get("type", ""), ()):
        out["format"] = fmt
    return out


def _resolve(node: JSON, walk: _Walk, seen: tuple[str, ...], depth: int) -> tuple[JSON, tuple[str, ...]]:
    """``node`` with its ``$ref`` inlined; sibling keywords (a description, say) win over the target's.

    A loop rather than recursion, so a long chain of references costs depth, not stack.
    """
    layers: list[JSON] = []
    current = node
    while isinstance(ref := current.get("$ref"), str):
        layers.append(current)
        if depth + len(seen) >= MAX_DEPTH:
            raise _too_deep(walk.param)
        walk.budget.spend(walk.param, nodes=1)
        name = ref.rpartition("/")[2]
        if name in seen or not isinstance(walk.defs.get(name), dict):
            current = {"type": "object"}  # recursive or dangling: cannot be inlined
            break
        seen = (*seen, name)
        current = walk.defs[name]
    if not layers:
        return node, seen
    walk.budget.spend(walk.param, text=len(current) + sum(len(layer) for layer in layers))  # the keys copied
    merged = dict(current)
    for layer in reversed(layers):
        merged.update(layer)
    del merged["$ref"]
    return merged, seen


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _array(node: Mapping[str, Any], key: str, walk: _Walk) -> list[Any]:
    """``node[key]`` when it is a list, its items paid for; anything else counts as absent."""
    value = node.get(key)
    if not isinstance(value, list):
        return []
    walk.budget.spend(walk.param, text=len(value))
    return value


def _kept(value: Any, walk: _Walk) -> Any:
    """A keyword's value, carried over as is; its size is paid for, since every inlined copy repeats it."""
    walk.budget.spend(walk.param, text=_size(value, walk.param))
    return value


def _size(value: Any, param: str | None) -> int:
    if isinstance(value, str):
        return len(value)
    if value is None or isinstance(value, (bool, int, float)):
        return 1
    try:
        return len(dumps(value))
    except TypeError as exc:  # nested past what the serialiser takes, or an integer past 64 bits
        raise _refused(param, "the schema holds a value that cannot be sent") from exc


def _too_deep(param: str | None) -> InvalidRequest:
    return _refused(param, f"the schema is nested deeper than {MAX_DEPTH} levels ($ref hops included)")


def _refused(param: str | None, why: str) -> InvalidRequest:
    where = f"Invalid '{param}'" if param else "Invalid schema"
    return InvalidRequest(f"{where}: {why}.", param=param, code="invalid_value")


def _enum(node: Mapping[str, Any], out: JSON, walk: _Walk) -> None:
    values = _array(node, "enum", walk) if isinstance(node.get("enum"), list) else None
    if values is None and "const" in node:
        values = [node["const"]]
    if values is None:
        return
    if None in values:
        out["nullable"] = True
        values = [v for v in values if v is not None]
    if values and all(isinstance(v, str) for v in values):
        walk.budget.spend(walk.param, text=sum(len(v) for v in values))
        out["enum"] = values
        out.setdefault("type", "STRING")
    elif values:  # Gemini enums are strings only: tell the model in words instead
        allowed = "One of: " + ", ".join(_encoded(v, walk.param) for v in values) + "."
        walk.budget.spend(walk.param, text=len(allowed))
        out["description"] = f"{out['description']} {allowed}" if out.get("description") else allowed


def _encoded(value: Any, param: str | None) -> str:
    try:
        return dumps(value).decode()
    except TypeError as exc:
        raise _refused(param, "the schema holds a value that cannot be sent") from exc


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
        elif key == "required":  # made unique once all are merged: repeated here it would cost n² for n members
            out.setdefault("required", []).extend(value)
        else:
            out.setdefault(key, value)
