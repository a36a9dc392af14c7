"""Tenants that live in the app, on plans: 10,000 of them, each held to its own plan, on memory and on Redis."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.redis_support import require_redis, unique
from tests.workers.plans_worker import allowed, policy, run
from unimw import Gateway

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = 10_000

pytestmark = pytest.mark.anyio


def expected(prefix: str) -> dict[str, int]:
    return {f"{prefix}-{n}": allowed(n) for n in range(CUSTOMERS)}


@pytest.mark.timeout(120)
async def test_ten_thousand_tenants_from_a_callable_each_get_their_plan_exactly() -> None:
    prefix = unique("org")
    async with Gateway.from_dict(policy("memory://")) as gateway:
        result = await run(gateway, prefix, CUSTOMERS)
    want = expected(prefix)
    assert result["ok"] == want
    # One refusal per customer: each sent one call more than its plan (or its own override) allows.
    assert (result["refused"], result["other"]) == (CUSTOMERS, 0)
    assert sorted(set(want.values())) == [1, 2, 3, 5]  # three plans, and the override that beats its plan


@pytest.mark.timeout(300)
def test_ten_thousand_tenants_on_redis_across_two_processes(tmp_path: Path) -> None:
    url = require_redis()
    prefix = unique("org")
    start_at = time.time() + 4
    # Each replica's log (a budget alert per tenant) goes to a file: a full stderr pipe would stall its loop.
    logs = [tmp_path / f"replica-{replica}.log" for replica in range(2)]
    with contextlib.ExitStack() as files:
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.workers.plans_worker",
                    json.dumps(policy(url)),
                    prefix,
                    str(CUSTOMERS),
                    str(start_at),
                    str(replica),
                    "2",
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=files.enter_context(log.open("w")),
                text=True,
            )
            for replica, log in enumerate(logs)
        ]
        outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log.read_text()[-2000:]
    results = [json.loads(out) for out in outputs]
    ok: dict[str, int] = {}
    for result in results:
        for tenant, n in result["ok"].items():
            ok[tenant] = ok.get(tenant, 0) + n
    want = expected(prefix)
    assert ok == want  # both replicas together let through exactly what each plan allows
    sent = sum(n + 1 for n in want.values())
    outcomes = (sum(r["refused"] for r in results), sum(r["other"] for r in results))
    assert outcomes == (sent - sum(want.values()), 0), [r["why"] for r in results]
    client = redis.Redis.from_url(url)
    # Counters are keyed by the tenant's id (never declared in the policy), and expire with their window.
    key = f"unimw:lim:t:{prefix}-7:hour:requests"
    assert client.zcard(key) == 5
    assert 0 < client.pttl(key) <= 3600 * 1000
    client.close()
