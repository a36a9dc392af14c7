"""The real Redis at 127.0.0.1:6379: required in CI, skipped elsewhere only if it is down."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

REDIS_URL = os.environ.get("UNIMW_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require_redis() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI and is not answering at {REDIS_URL}: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")
    return REDIS_URL


def unique(prefix: str) -> str:
    """A name no other test run uses, so keys never collide."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
