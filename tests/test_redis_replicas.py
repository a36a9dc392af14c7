"""Budgets hold across replicas: four processes share one Redis and one tenant budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from tests.conftest import policy_for
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from unimw.tenants import hash_key

ROOT = Path(__file__).resolve().parent.parent


def test_four_replicas_never_overspend(upstream: OpenAIUpstream, upstream_url: str) -> None:
    url = require_redis()
    tenant, key = unique("acme"), "sk-" + unique("key")
    policy = policy_for(
        upstream_url,
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        tenancy={"store": url},
        # Each call reserves and spends 5 USD: 41 of the 300 fit in 205 USD.
        tenants={tenant: {"api_keys": [hash_key(key)], "limits": [{"per": "month", "usd": 205}]}},
    )
    start_at = time.time() + 3
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.workers.budget_worker", json.dumps(policy), key, "75", str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["ok"] for r in results) == 41, results
    assert sum(r["refused"] for r in results) == 259, results
    assert sum(r["other"] for r in results) == 0, results
    assert upstream.calls == {"up-main": 41}
    client = redis.Redis.from_url(url)
    spent_key = f"unimw:lim:t:{tenant}:month:usd:" + datetime.now(UTC).strftime("%Y-%m")
    assert int(client.get(spent_key) or 0) == 205_000_000
    assert 0 < client.pttl(spent_key) <= 31 * 86400 * 1000  # the counter expires with its month
    assert client.exists(spent_key + ":alert:1.0")  # and the 100 % alert fired, once for all replicas
    client.close()
