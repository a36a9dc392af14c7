"""The policy's JSON Schema, and docs/policy.md, whose field tables are rendered from it.

Run this file as a script to rewrite the tables in docs/policy.md after a
field changes: ``python tests/test_policy_schema.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import pytest
import yaml

from unimw.adapters import ADAPTERS
from unimw.loader import parse_policy, policy_schema
from unimw.policy import DURATION_HELP, Policy, parse_duration

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "policy.md"
#: A table rendered from the schema: ``<!-- fields: GROUP -->``, the table, ``<!-- end fields -->``.
BLOCK = re.compile(r"<!-- fields: (\S+) -->\n(.*?)<!-- end fields -->\n", re.S)
#: A field as the doc writes it: the first cell of a table row, in backticks.
DOC_FIELD = re.compile(r"^\| `([^`]+)` \|", re.M)


class Row(NamedTuple):
    path: str
    schema: dict[str, Any]
    required: bool
    #: The table it goes in: a section of the file, or ``options:<kind>``.
    group: str


def rows(schema: dict[str, Any]) -> list[Row]:
    """Every field of a policy file, in schema order: ``providers.*.timeout``, ``limits[].per``, ..."""
    seen: dict[str, Row] = {}
    for row in _fields(schema, schema, "", ""):
        seen.setdefault(row.path, row)
    return list(seen.values())


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
    return node


def _fields(root: dict[str, Any], node: dict[str, Any], path: str, group: str) -> Iterator[Row]:
    node = _resolve(root, node)
    required = node.get("required", [])
    for name, prop in node.get("properties", {}).items():
        child = f"{path}.{name}" if path else name
        yield Row(child, prop, name in required, group or name)
        yield from _inside(root, prop, child, group or name)
    for rule in node.get("allOf", []):
        kind = rule["if"]["properties"]["kind"]["const"]
        yield from _fields(root, rule["then"]["properties"]["options"], f"{path}.options", f"options:{kind}")


def _inside(root: dict[str, Any], node: dict[str, Any], path: str, group: str) -> Iterator[Row]:
    node = _resolve(root, node)
    for member in node.get("anyOf", []) + node.get("oneOf", []):
        yield from _inside(root, member, path, group)
    if "properties" in node:
        yield from _fields(root, node, path, group)
    if isinstance(node.get("additionalProperties"), dict):
        yield from _inside(root, node["additionalProperties"], path + ".*", group)
    if "items" in node:
        yield from _inside(root, node["items"], path + "[]", group)


def _is_duration(node: dict[str, Any]) -> bool:
    return [member.get("type") for member in node.get("anyOf", [])] == ["number", "string"] and "pattern" in str(node)


def type_of(root: dict[str, Any], node: dict[str, Any]) -> str:
    """A short name for the values a field takes."""
    if _is_duration(node):
        return "duration"
    if "$ref" in node:
        return "mapping"
    if "const" in node or "enum" in node:
        return " or ".join(f"`{value}`" for value in node.get("enum", [node.get("const")]))
    members = node.get("anyOf", []) + node.get("oneOf", [])
    if members:
        names = [type_of(root, m) for m in members if m.get("type") != "null"]
        return " or ".join(dict.fromkeys(names))
    kind = node.get("type")
    if kind == "array":
        return "list of " + type_of(root, node["items"])
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map of " + type_of(root, node["additionalProperties"])
    if kind == "object":
        return "mapping"
    if node.get("format") == "password":
        return "string (secret)"
    return str(kind)


def default_of(row: Row) -> str:
    if row.required:
        return "required"
    if "default" not in row.schema:
        return ""
    default = row.schema["default"]
    if default is None:
        return "unset"
    if isinstance(default, dict) and default:
        return "see below"
    if _is_duration(row.schema) and isinstance(default, float):
        return f"`{_duration(default)}`"
    return f"`{json.dumps(default)}`"


def _duration(seconds: float) -> str:
    if seconds and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    return f"{seconds * 1000:g}ms" if 0 < seconds < 1 else f"{seconds:g}s"


def table(schema: dict[str, Any], group: str) -> str:
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for row in rows(schema):
        if row.group == group:
            meaning = row.schema["description"].replace("|", "\\|")
            lines.append(f"| `{row.path}` | {type_of(schema, row.schema)} | {default_of(row)} | {meaning} |")
    return "\n".join(lines) + "\n"


def render(doc: str, schema: dict[str, Any]) -> str:
    """``doc`` with each marked table rendered again from ``schema``."""
    return BLOCK.sub(lambda m: f"<!-- fields: {m[1]} -->\n{table(schema, m[1])}<!-- end fields -->\n", doc)


# -- the schema -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return policy_schema()


def test_the_schema_is_a_json_schema_with_a_title(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert (schema["$schema"], schema["title"], schema["description"]) == (
        "https://json-schema.org/draft/2020-12/schema",
        "unimw policy",
        Policy.__doc__,
    )


def test_the_repository_policy_is_valid_by_the_schema(schema: dict[str, Any]) -> None:
    """As an editor sees the file: before ``${VAR}`` is replaced."""
    document = yaml.safe_load((ROOT / "policies.yaml").read_text())
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(document)) == []


def test_every_field_says_what_it_is(schema: dict[str, Any]) -> None:
    assert [row.path for row in rows(schema) if not row.schema.get("description")] == []
    assert len(rows(schema)) > 90  # the walk reaches nested sections, options and list items


def test_durations_are_published_as_numbers_or_strings(schema: dict[str, Any]) -> None:
    durations = {row.path: row.schema for row in rows(schema) if "duration such as" in row.schema["description"]}
    assert sorted(durations) == [
        "aliases.*.probe_after",
        "cache.models.*.ttl",
        "cache.ttl",
        "cache.wait",
        "dispatch.backoff",
        "dispatch.breaker.open_for",
        "dispatch.breaker.window",
        "dispatch.cooldown",
        "dispatch.max_backoff",
        "dispatch.max_retry_after",
        "dispatch.retry_after_same_target_up_to",
        "models.*.first_token_timeout",
        "models.*.stall_timeout",
        "providers.*.connect_timeout",
        "providers.*.first_token_timeout",
        "providers.*.options.chunk_delay",
        "providers.*.options.latency",
        "providers.*.stall_timeout",
        "providers.*.timeout",
        "responses.ttl",
        "server.concurrency_wait",
        "tenancy.resolve[].negative_ttl",
        "tenancy.resolve[].timeout",
        "tenancy.resolve[].ttl",
    ]
    pattern = re.compile(durations["cache.ttl"]["anyOf"][1]["pattern"])
    for path, node in durations.items():
        assert DURATION_HELP in node["description"], path
        unset_allowed = path == "cache.models.*.ttl" or path.endswith(("first_token_timeout", "stall_timeout"))
        choices = node["anyOf"][0]["anyOf"] if unset_allowed else node["anyOf"]
        assert choices == [
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": pattern.pattern},
        ], path
    for text in ("250ms", "30s", "5m", "1h", "1d", "1.5h", "60"):
        assert pattern.match(text) and isinstance(parse_duration(text), float), text
    assert not pattern.match("soon")


@pytest.mark.parametrize(
    ("document", "wrong"),
    [
        ({"providers": {"p": {"kind": "openia"}}}, "'openia' is not one of"),
        ({"providers": {"a": {"kind": "anthropic", "options": {"anthropic_verison": "x"}}}}, "anthropic_verison"),
        ({"providers": {"m": {"kind": "mock", "options": {"latency": "soon"}}}}, "'soon'"),
        ({"providers": {"o": {"kind": "openai", "options": {"azure": {"api_verison": "x"}}}}}, "api_verison"),
        ({"dispatch": {"backoff": -1}}, "-1"),
        ({"tenants": {"t": {"api_keys": ["sk-plain"]}}}, "'sk-plain' does not match"),
        ({"aliases": {"a": {"targets": []}}}, "should be non-empty"),
    ],
    ids=["kind", "anthropic-option", "mock-latency", "azure-option", "negative-backoff", "plain-key", "no-targets"],
)
def test_editors_see_what_the_loader_refuses(schema: dict[str, Any], document: Any, wrong: str) -> None:
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
    assert errors, document
    assert any(wrong in str(error.message) or wrong in json.dumps(error.instance) for error in errors), [
        e.message for e in errors
    ]


def test_each_kind_publishes_its_options(schema: dict[str, Any]) -> None:
    options = {row.path for row in rows(schema) if row.group.startswith("options:")}
    assert options == {
        f"providers.*.options.{name}" for kind in ADAPTERS.values() for name in kind.options_model().model_fields
    } | {"providers.*.options.azure.api_version", "providers.*.options.azure.deployment"}


def test_the_gemini_levels_are_those_the_adapter_ranks() -> None:
    from typing import get_args

    from unimw.adapters import gemini_thinking
    from unimw.adapters.options import ThinkingLevel

    assert get_args(ThinkingLevel) == gemini_thinking._LEVELS


def test_unimw_schema_prints_it(schema: dict[str, Any]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "unimw.cli", "schema"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == schema


# -- docs/policy.md ---------------------------------------------------------------------------------


def test_the_doc_names_every_field_and_no_other(schema: dict[str, Any]) -> None:
    documented = DOC_FIELD.findall(DOC.read_text())
    assert len(documented) == len(set(documented)), "a field is documented twice"
    assert set(documented) == {row.path for row in rows(schema)}


def test_the_doc_tables_are_rendered_from_the_schema(schema: dict[str, Any]) -> None:
    """Types, defaults and meanings as the schema says; ``python tests/test_policy_schema.py`` renders them."""
    doc = DOC.read_text()
    assert sorted(m[1] for m in BLOCK.finditer(doc)) == sorted({row.group for row in rows(schema)})
    assert render(doc, schema) == doc


def test_the_doc_examples_are_valid_policies(schema: dict[str, Any]) -> None:
    examples = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert len(examples) >= 5
    for example in examples:
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(example))) == [], example
        parse_policy(example, env={"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-test"})


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text(), policy_schema()))
