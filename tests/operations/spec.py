"""Validating JSON values against the schemas of OpenAI's OpenAPI spec (the shared copy).

The spec is OpenAPI 3.1, whose schemas are JSON Schema 2020-12 (``x-*``
and ``discriminator`` are annotations a validator ignores). It is parsed
once per test session: the file is 3 MB of YAML.
"""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path("/work/shared/spec/openai-openapi.yaml")
_URI = "urn:openai-openapi"


@lru_cache(maxsize=1)
def _registry() -> Registry[Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open(encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=loader)
    resource: Resource[Any] = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_URI, resource)
    return registry


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"{_URI}#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def errors(value: Any, name: str) -> list[str]:
    """What is wrong with ``value`` as the spec's schema ``name`` (empty when it fits)."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(name).iter_errors(value)]


def check(value: Any, name: str) -> None:
    """Fail the test unless ``value`` fits the spec's schema ``name``."""
    found = errors(value, name)
    assert not found, f"not a valid {name}: {found[:5]}"
