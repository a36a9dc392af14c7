"""Servers and policies for the Django tests: a threaded WSGI server, the policy file, records to compare."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from django.core.handlers.wsgi import WSGIHandler

from tests.conftest import policy_for
from tests.django.conftest import POLICY
from tests.servers import serve_wsgi
from unimw.django.models import UsageRecord as Row
from unimw.tenants import hash_key

ACME_KEY = "sk-acme-django"
TIGHT_KEY = "sk-tight-django"
THRIFTY_KEY = "sk-thrifty-django"


def write_policy(upstream_url: str, records: Path) -> None:
    """The tests' policy: acme (plan pro), tight and thrifty (plan saver) by API key, web (the default) and
    globex for logged-in users.

    ``gpt-priced`` costs $0.01 per input token, so one call spends more than 1% of saver's $1 a day and the
    next is rerouted to ``gpt-backup`` by saver's ``on_budget``.
    """
    policy = policy_for(
        upstream_url,
        models={"gpt-priced": {"provider": "primary", "model": "up-main", "price": {"input": 10_000}}},
        usage={"jsonl": str(records)},
        plans={
            "pro": {},
            "saver": {"limits": [{"per": "day", "usd": 1}], "on_budget": [{"at": 0.01, "use": "gpt-backup"}]},
        },
        tenants={
            "acme": {"plan": "pro", "api_keys": [hash_key(ACME_KEY)]},
            "tight": {"api_keys": [hash_key(TIGHT_KEY)], "limits": [{"per": "minute", "requests": 1}]},
            "thrifty": {"plan": "saver", "api_keys": [hash_key(THRIFTY_KEY)]},
            "web": {},
            "globex": {},
        },
        tenancy={"default": "web"},
    )
    POLICY.write_text(yaml.safe_dump(policy))


@contextmanager
def wsgi_server() -> Iterator[str]:
    """Django's WSGI application on a threaded wsgiref server on loopback; stopped on exit."""
    with serve_wsgi(WSGIHandler()) as url:
        yield url


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def row_records(database: str = "default") -> list[dict[str, Any]]:
    """The rows as UsageRecord dicts (what the JSONL sink wrote for the same calls), in request order."""
    rows = Row.objects.using(database).order_by("timestamp", "request_id")
    return [{name: getattr(row, name) for name in Row.RECORD_FIELDS} for row in rows]


def by_request(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["request_id"]: record for record in records}


def record_fields() -> tuple[str, ...]:
    from unimw.records import UsageRecord

    return tuple(field.name for field in dataclasses.fields(UsageRecord))
