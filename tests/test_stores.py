"""Limit stores under load and over time: exact admissions at high concurrency, bounded memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Clock
from tests.redis_support import require_redis, unique
from unimw import Gateway
from unimw.errors import RateLimited, ServiceUnavailable, UnimwError
from unimw.limits import Hold, Limiter
from unimw.loader import build_policy
from unimw.routing import Router
from unimw.stores import limit_store
from unimw.stores.base import Counter, StoreUnavailable
from unimw.stores.memory import MemoryLimitStore
from unimw.tenants import Caller
from unimw.usage import Usage

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
WORST = (8, 10)  #: a call's (prompt estimate, output cap) in tokens


def tenant_policy(store: str, limits: list[dict[str, Any]], **tenancy: Any) -> tuple[str, dict[str, Any]]:
    """A policy with one mock model and one tenant with ``limits``; returns (tenant, policy)."""
    tenant = unique("t")
    return tenant, {
        "providers": {"p": {"kind": "mock"}},
        "models": {"m": {"provider": "p", "model": "mock-echo"}},
        "tenancy": {"store": store, **tenancy},
        "tenants": {tenant: {"limits": limits}},
    }


def outcome(result: object) -> str:
    """What one concurrent call ended as: admitted, refused (429), or anything else by name."""
    if isinstance(result, RateLimited):
        return "429"
    if isinstance(result, BaseException):
        return type(result).__name__
    return "ok"


def tally(results: list[object]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[outcome(result)] = counts.get(outcome(result), 0) + 1
    return counts


# --- Redis: a busy connection pool waits, it is not a dead server -------------------------------


@pytest.mark.parametrize("query", ["", "?max_connections=5"])
async def test_1000_concurrent_reservations_admit_exactly_the_limit(query: str) -> None:
    tenant, data = tenant_policy(require_redis() + query, [{"per": "minute", "requests": 10}])
    policy = build_policy(data)
    limiter = Limiter(policy, limit_store(policy.tenancy.store), Clock())
    route = Router(policy).resolve("m")
    try:
        async with asyncio.timeout(60):
            results = await asyncio.gather(
                *(limiter.reserve(Caller(tenant), route, *WORST) for _ in range(1000)), return_exceptions=True
            )
    finally:
        await limiter.aclose()
    assert tally(list(results)) == {"ok": 10, "429": 990}


@pytest.mark.parametrize("query", ["", "?max_connections=5"])
async def test_1000_concurrent_gateway_calls_answer_10_completions_and_990_429s(query: str) -> None:
    tenant, data = tenant_policy(require_redis() + query, [{"per": "minute", "requests": 10}])
    async with Gateway.from_dict(data) as gateway:
        async with asyncio.timeout(60):
            results = await asyncio.gather(
                *(gateway.chat_completions({"model": "m", "messages": HELLO}, tenant=tenant) for _ in range(1000)),
                return_exceptions=True,
            )
    assert tally(list(results)) == {"ok": 10, "429": 990}
    assert {r.status for r in results if isinstance(r, UnimwError)} == {429}


async def silent_server() -> tuple[asyncio.Server, int]:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_pool_wait_past_its_timeout_is_told_apart_from_a_silent_server() -> None:
    server, port = await silent_server()
    # One connection: the first call holds it until its socket timeout, the second waits for it.
    store = limit_store(f"redis://127.0.0.1:{port}/0?max_connections=1&timeout=0.2&socket_timeout=1")
    counter = Counter(unique("c"), 10, 60, True)
    try:
        async with asyncio.timeout(10):
            first = asyncio.ensure_future(store.reserve("c1", [counter], [1], 0.0))
            await asyncio.sleep(0.05)  # the first call has the connection
            with pytest.raises(StoreUnavailable) as waited:
                await store.reserve("c2", [counter], [1], 0.0)
            with pytest.raises(StoreUnavailable) as silent:
                await first
    finally:
        await store.aclose()
        server.close()
    assert str(waited.value) == "Redis connection pool busy: no connection free within 0.2 s (max_connections=1)"
    assert str(silent.value).startswith("Redis did not answer in time (TimeoutError: ")


async def test_a_refused_connection_says_unreachable() -> None:
    store = limit_store("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.reserve("c1", [Counter(unique("c"), 10, 60, True)], [1], 0.0)
    finally:
        await store.aclose()
    assert str(caught.value).startswith("Redis is unreachable (ConnectionError: ")


# --- Memory: expired counters are swept, and the store is bounded ------------------------------


async def call(limiter: Limiter, caller: Caller, route: Any) -> Hold:
    """One call through the limiter: reserve, then settle at 5 + 5 tokens."""
    hold = await limiter.reserve(caller, route, *WORST)
    assert hold is not None
    await limiter.settle(hold, Usage(5, 5), 0, answered=True)
    return hold


async def test_end_user_counters_are_swept_once_their_windows_pass() -> None:
    clock = Clock()
    end_user_limits = [
        {"per": "minute", "requests": 5, "scope": "end_user"},
        {"per": "day", "tokens": 100_000, "scope": "end_user"},
    ]
    tenant, data = tenant_policy(
        "memory://", [*end_user_limits, {"per": "hour", "requests": 1_000_000}], alerts={"at": [0.1]}
    )
    policy = build_policy(data)
    store = limit_store(policy.tenancy.store)
    assert isinstance(store, MemoryLimitStore)
    limiter = Limiter(policy, store, clock)
    route = Router(policy).resolve("m")
    for i in range(20_000):
        await call(limiter, Caller(tenant, f"user-{i}"), route)
    # Every user: a minute log, a day counter, and the once-key of its 20 % alert; plus the tenant's hour log.
    assert store.sizes() == {"sliding": 20_001, "fixed": 20_000, "once": 20_000, "entries": 40_000}
    clock.advance(2 * 86400)  # past every window, the day included
    await call(limiter, Caller(tenant, "user-0"), route)
    assert store.sizes() == {"sliding": 2, "fixed": 1, "once": 1, "entries": 2}


async def test_a_full_store_refuses_new_counters_and_keeps_counting_live_ones() -> None:
    store = limit_store("memory://?max_counters=3")
    counters = [Counter(unique("c"), 2, 60, True) for _ in range(4)]
    for i, counter in enumerate(counters[:3]):
        assert (await store.reserve(f"a{i}", [counter], [1], 0.0)).ok
    with pytest.raises(StoreUnavailable) as caught:
        await store.reserve("b", [counters[0], counters[3]], [1, 1], 1.0)
    assert str(caught.value) == "the memory limit store is full: 3 live counters (max_counters=3)"
    assert await store.totals(counters, 1.0) == (1, 1, 1, 0)  # the refused call took nothing
    assert (await store.reserve("c", [counters[0]], [1], 2.0)).ok  # live counters still count
    assert not (await store.reserve("d", [counters[0]], [1], 3.0)).ok
    assert (await store.reserve("e", [counters[3]], [1], 62.0)).ok  # the first three expired: room again


async def test_a_full_store_answers_new_end_users_as_the_policy_says() -> None:
    clock = Clock()
    tenant, data = tenant_policy("memory://?max_counters=2", [{"per": "minute", "requests": 5, "scope": "end_user"}])
    policy = build_policy(data)
    limiter = Limiter(policy, limit_store(policy.tenancy.store), clock)
    route = Router(policy).resolve("m")
    await call(limiter, Caller(tenant, "alice"), route)
    await call(limiter, Caller(tenant, "bob"), route)
    with pytest.raises(ServiceUnavailable) as caught:
        await call(limiter, Caller(tenant, "carol"), route)
    assert (caught.value.status, caught.value.code) == (503, "limits_unavailable")
    assert await call(limiter, Caller(tenant, "alice"), route) is not None
    clock.advance(61)
    assert await call(limiter, Caller(tenant, "carol"), route) is not None


async def test_once_keys_are_bounded_and_evict_the_soonest_to_expire() -> None:
    store = MemoryLimitStore(max_counters=2)
    assert await store.once("a", 10, 0.0)
    assert await store.once("b", 20, 0.0)
    assert await store.once("c", 30, 0.0)
    assert store.sizes()["once"] == 2
    assert await store.once("a", 10, 1.0)  # evicted: an alert may repeat, never go missing
    assert not await store.once("c", 30, 1.0)


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryLimitStore]:
    store = MemoryLimitStore()
    yield store
    await store.aclose()


async def test_a_log_still_in_its_window_is_kept(memory_store: MemoryLimitStore) -> None:
    minute, hour = Counter(unique("m"), 5, 60, True), Counter(unique("h"), 5, 3600, True)
    await memory_store.reserve("c1", [minute, hour], [1, 1], 0.0)
    await memory_store.reserve("c2", [minute], [1], 50.0)
    await memory_store.reserve("c3", [Counter(unique("x"), 5, 60, True)], [1], 100.0)
    # At 100 s: the minute log's newest entry (50 s) is live, the hour log is live; the old entry is dropped.
    assert memory_store.sizes() == {"sliding": 3, "fixed": 0, "once": 0, "entries": 3}
    await memory_store.reserve("c4", [Counter(unique("y"), 5, 60, True)], [1], 111.0)
    assert memory_store.sizes() == {"sliding": 3, "fixed": 0, "once": 0, "entries": 3}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://?max=3", "unknown memory:// store option 'max': the only one is max_counters"),
        ("memory://?max_counters=0", "max_counters must be a positive integer, got '0'"),
        ("memory://?max_counters=lots", "max_counters must be a positive integer, got 'lots'"),
    ],
)
def test_memory_store_options_are_checked(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        limit_store(url)
    assert str(caught.value) == message
