"""Customers of an app, on three plans, calling through one gateway: how many calls of each got through.

Run by tests as ``python -m tests.workers.plans_worker POLICY_JSON PREFIX CUSTOMERS START_AT REPLICA REPLICAS``;
prints ``{"ok": {tenant: n}, "refused": m, "other": k}``. Each customer sends as many calls as its plan allows
in an hour plus one (:data:`ALLOWED`), spread over the replicas (the i-th call from replica i % REPLICAS); the
tests run it in-process too (:func:`run`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from tests.e2e.tenant_hooks import PLANS
from unimw import Gateway, Inbound, RateLimited
from unimw.operations import CHAT

#: Calls per hour each plan allows; the override (every 1000th customer) allows 5.
ALLOWED = {"free": 1, "pro": 2, "enterprise": 3}
OVERRIDE = 5


def policy(store: str) -> dict[str, Any]:
    return {
        "providers": {"mock": {"kind": "mock"}},
        "models": {"mock-echo": {"provider": "mock", "model": "mock-echo"}},
        "plans": {plan: {"limits": [{"per": "hour", "requests": n}]} for plan, n in ALLOWED.items()},
        "tenancy": {"resolve": [{"callable": "tests.e2e.tenant_hooks:org_identity"}], "store": store},
    }


def allowed(n: int) -> int:
    return OVERRIDE if n % 1000 == 7 else ALLOWED[PLANS[n % 3]]


#: Calls in flight at once in one process: a busy replica, within what its Redis pool (50 connections) serves.
CONCURRENCY = 100


async def run(gateway: Gateway, prefix: str, customers: int, replica: int = 0, replicas: int = 1) -> dict[str, Any]:
    """This replica's share of every customer's calls (one more than it is allowed), ``CONCURRENCY`` at a time,
    in an order that interleaves customers and their own calls, through the pipeline."""
    body = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    ok: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()

    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        scope = {"type": "http", "headers": [(b"x-org", f"{prefix}:{n}".encode())]}
        try:
            async with slots:
                await gateway.handle(CHAT, body, Inbound({}, scope))
        except RateLimited as refused:
            outcomes["refused" if refused.code == "rate_limit_exceeded" else "other"] += 1
        except Exception as error:
            outcomes["other"] += 1
            outcomes[f"{type(error).__name__}: {error} (from {error.__cause__!r})"] += 1
        else:
            ok[f"{prefix}-{n}"] += 1

    rounds = max(allowed(n) + 1 for n in range(customers))
    await asyncio.gather(
        *(one(n) for i in range(replica, rounds, replicas) for n in range(customers) if i < allowed(n) + 1)
    )
    return {"ok": dict(ok), "refused": outcomes["refused"], "other": outcomes["other"], "why": dict(outcomes)}


async def main(policy_data: dict[str, Any], prefix: str, customers: int, start_at: float, replica: int,
               replicas: int) -> dict[str, Any]:  # fmt: skip
    async with Gateway.from_dict(policy_data) as gateway:
        await asyncio.sleep(max(0.0, start_at - time.time()))  # the replicas start together
        return await run(gateway, prefix, customers, replica, replicas)


if __name__ == "__main__":
    data, prefix, customers, start, replica, replicas = sys.argv[1:7]
    outcome = main(json.loads(data), prefix, int(customers), float(start), int(replica), int(replicas))
    print(json.dumps(asyncio.run(outcome)))
