"""`unimw usage` reads spend from the shared store; `unimw hash-key` prints the stored form of a key."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import policy_for
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.tenants import hash_key

pytestmark = pytest.mark.anyio


def unimw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unimw.cli", *args], capture_output=True, text=True, timeout=60)


def test_hash_key() -> None:
    result = unimw("hash-key", "sk-abc")
    expected = "sha256:" + hashlib.sha256(b"sk-abc").hexdigest()
    assert result.stdout.strip() == expected == hash_key("sk-abc")


async def test_usage_prints_spend_and_remaining(upstream: OpenAIUpstream, upstream_url: str, tmp_path: Path) -> None:
    url = require_redis()
    tenant = unique("acme")
    policy = policy_for(
        upstream_url,
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        tenancy={"store": url},
        tenants={tenant: {"limits": [{"per": "minute", "requests": 10}, {"per": "month", "usd": 50}]}},
    )
    async with Gateway.from_dict(policy) as gateway:
        for _ in range(2):
            await gateway.chat_completions(
                {"model": "gpt-main", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, tenant=tenant
            )
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy))
    result = unimw("usage", "--config", str(config), "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines == [
        tenant,
        "requests per minute used 2 of 10 remaining 8",
        "usd per month used 6 of 50 remaining 44",
    ]
    assert unimw("usage", "--config", str(config), "--tenant", "nobody").returncode == 1
