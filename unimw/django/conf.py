"""The ``UNIMW`` setting, read with its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_KEYS = {"POLICIES", "IDENTITY", "PREFIX", "USAGE_MODEL", "USAGE_DATABASE"}


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``settings.UNIMW`` says, with defaults filled in."""

    policies: Path  #: the policy file, made absolute against BASE_DIR when relative
    identity: str | None  #: ``"module:function"`` giving a session user's identity
    prefix: str  #: URL prefix of the OpenAI routes, without slashes (``v1``)
    usage_model: bool  #: write a UsageRecord row per call
    usage_database: str  #: the database alias the rows go to


def read() -> Settings:
    raw: dict[str, Any] = dict(getattr(settings, "UNIMW", None) or {})
    unknown = set(raw) - _KEYS
    if unknown:
        raise ImproperlyConfigured(f"UNIMW has unknown keys: {', '.join(sorted(unknown))}")
    policies = Path(raw.get("POLICIES", "policies.yaml"))
    base = getattr(settings, "BASE_DIR", None)
    if not policies.is_absolute() and base is not None:
        policies = Path(base) / policies
    return Settings(
        policies=policies,
        identity=raw.get("IDENTITY") or None,
        prefix=str(raw.get("PREFIX", "v1")).strip("/"),
        usage_model=bool(raw.get("USAGE_MODEL", False)),
        usage_database=str(raw.get("USAGE_DATABASE", "default")),
    )
