"""Every way a call can end settles it once, ends its span once, records it once and releases the cache.

Each case runs one call (after any set-up calls) through a gateway with
limits, the response cache, a usage sink and an SDK tracer, then counts, for
that call alone: settlements in the limit store, finished gateway spans,
usage records, and single-flight entries left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import policy_for
from tests.counting import CountingLimitStore
from tests.e2e import tenant_hooks
from tests.otel import Telemetry
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UnimwError
from unimw.stores.memory import MemoryCacheStore

pytestmark = pytest.mark.anyio

HELLO: Any = [{"role": "user", "content": "What is the capital of France?"}]
BODY: Any = {"model": "gpt-main", "messages": HELLO, "temperature": 0}


class BrokenCacheStore(MemoryCacheStore):
    """The memory cache whose writes fail with an unexpected error (a bug in a store, say)."""

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        raise RuntimeError("the cache store broke")


@dataclass
class Rig:
    gateway: Gateway
    upstream: OpenAIUpstream
    limits: CountingLimitStore
    telemetry: Telemetry

    def counts(self) -> dict[str, int]:
        return {
            "settled": self.limits.settled,
            "spans": sum(1 for s in self.telemetry.spans() if s["name"] == "chat gpt-main"),
            "records": len(tenant_hooks.records),
            "flights": len(self.gateway._cache._flights),
        }

    async def reset(self) -> None:
        """Forget the set-up calls (their records delivered first)."""
        await self.gateway.flush()
        self.limits.settled = 0
        self.telemetry.exporter.clear()
        tenant_hooks.records.clear()


async def drain(chunks: AsyncIterator[Any]) -> None:
    async for _ in chunks:
        pass


async def answered(rig: Rig) -> None:
    await rig.gateway.chat_completions(BODY)


async def upstream_error(rig: Rig) -> None:
    rig.upstream.plan("up-main", "400")
    with pytest.raises(UnimwError):
        await rig.gateway.chat_completions(BODY)


async def refused(rig: Rig) -> None:
    for _ in range(3):
        await rig.gateway.chat_completions({**BODY, "seed": _})
    await rig.reset()
    with pytest.raises(UnimwError):
        await rig.gateway.chat_completions({**BODY, "seed": 99})


async def cache_hit(rig: Rig) -> None:
    await rig.gateway.chat_completions(BODY)
    await rig.reset()
    await rig.gateway.chat_completions(BODY)


async def stream_finished(rig: Rig) -> None:
    await drain(await rig.gateway.stream_chat_completions(BODY))


async def stream_errored(rig: Rig) -> None:
    rig.upstream.plan("up-main", "drop")
    with pytest.raises(UnimwError):
        await drain(await rig.gateway.stream_chat_completions(BODY))


async def stream_closed_unread(rig: Rig) -> None:
    chunks = await rig.gateway.stream_chat_completions(BODY)
    async with aclosing(chunks):  # type: ignore[type-var]
        pass


async def client_cancelled(rig: Rig) -> None:
    rig.upstream.plan("up-main", "delay:5")
    task = asyncio.ensure_future(rig.gateway.chat_completions(BODY))
    for _ in range(500):
        if rig.upstream.calls["up-main"]:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def failing_alert_hook(rig: Rig) -> None:
    await rig.gateway.chat_completions(BODY)  # crosses the 1 % alert threshold: the hook raises


async def failing_usage_sink(rig: Rig) -> None:
    await rig.gateway.chat_completions(BODY)


async def failing_cache_store(rig: Rig) -> None:
    await rig.gateway.chat_completions(BODY)


Ending = Callable[[Rig], Awaitable[None]]
#: (ending, its counts, policy overrides). A refused call reserved nothing, so it is not settled, nor recorded as
#: usage; a free cache hit reserves nothing either.
ENDINGS: dict[str, tuple[Ending, dict[str, int], dict[str, Any]]] = {
    "answered": (answered, {"settled": 1, "spans": 1, "records": 1, "flights": 0}, {}),
    "upstream error": (upstream_error, {"settled": 1, "spans": 1, "records": 1, "flights": 0}, {}),
    "refused by limits": (refused, {"settled": 0, "spans": 1, "records": 0, "flights": 0}, {}),
    "cache hit": (cache_hit, {"settled": 0, "spans": 1, "records": 1, "flights": 0}, {}),  # free: nothing reserved
    "stream finished": (stream_finished, {"settled": 1, "spans": 1, "records": 1, "flights": 0}, {}),
    "stream errored mid-way": (stream_errored, {"settled": 1, "spans": 1, "records": 1, "flights": 0}, {}),
    "stream closed unread": (stream_closed_unread, {"settled": 1, "spans": 1, "records": 1, "flights": 0}, {}),
    "client cancelled": (client_cancelled, {"settled": 1, "spans": 1, "records": 1, "flights": 0}, {}),
    "failing alert hook": (
        failing_alert_hook,
        {"settled": 1, "spans": 1, "records": 1, "flights": 0},
        {"alerts": {"at": [0.01], "call": "tests.e2e.tenant_hooks:broken_alert"}},
    ),
    "failing usage sink": (
        failing_usage_sink,
        {"settled": 1, "spans": 1, "records": 0, "flights": 0},
        {"usage": {"call": "tests.e2e.tenant_hooks:broken_sink"}},
    ),
    "failing cache store": (failing_cache_store, {"settled": 1, "spans": 1, "records": 1, "flights": 0}, {}),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_every_ending_is_finished_once(
    ending: str, upstream: OpenAIUpstream, upstream_url: str, telemetry: Telemetry
) -> None:
    run, expected, overrides = ENDINGS[ending]
    limits = CountingLimitStore()
    tenancy: dict[str, Any] = {"default": "acme", "resolve": []}
    if "alerts" in overrides:
        tenancy["alerts"] = overrides["alerts"]
    policy = policy_for(
        upstream_url,
        tenancy=tenancy,
        tenants={"acme": {"limits": [{"per": "minute", "requests": 3, "tokens": 100_000}]}},
        cache={"enabled": True, "wait": "5s"},
        usage=overrides.get("usage", {"call": "tests.e2e.tenant_hooks:record_usage"}),
    )
    cache = (
        BrokenCacheStore(max_entries=100, max_bytes=1 << 20, clock=lambda: 0.0)
        if ending == "failing cache store"
        else None
    )
    tenant_hooks.records.clear()
    async with Gateway.from_dict(policy, limit_store=limits, cache_store=cache, **telemetry.providers) as gateway:
        rig = Rig(gateway, upstream, limits, telemetry)
        await run(rig)
        await gateway.flush()
        assert rig.counts() == expected
