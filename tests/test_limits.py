"""Limit stores and windows, on memory and on the real Redis, with a clock moved by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Clock
from tests.redis_support import require_redis, unique
from unimw.errors import BudgetExceeded, RateLimited, ServiceUnavailable
from unimw.limits import Limiter, go_duration
from unimw.loader import build_policy
from unimw.policy import Price
from unimw.routing import Router
from unimw.stores import limit_store
from unimw.stores.base import Counter, LimitStore
from unimw.tenants import Caller
from unimw.usage import Usage, cost_micros, estimate_prompt_tokens

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    url = "memory://" if request.param == "memory" else require_redis()
    made = limit_store(url)
    yield made
    await made.aclose()


async def test_reserve_is_all_or_nothing(store: LimitStore) -> None:
    a, b = Counter(unique("a"), 10, 60, True), Counter(unique("b"), 5, 3600, False, ends=3700.0)
    assert (await store.reserve("c1", [a, b], [4, 4], 100.0)).ok
    refused = await store.reserve("c2", [a, b], [4, 4], 101.0)
    assert (refused.ok, refused.refused, refused.totals) == (False, 1, (4, 4))
    assert await store.totals([a, b], 102.0) == (4, 4)  # nothing was taken on `a` either


async def test_a_refusal_reports_every_counters_total(store: LimitStore) -> None:
    a, b, c = (Counter(unique(n), 2, 60, True) for n in "abc")
    assert (await store.reserve("c1", [a, b, c], [2, 1, 1], 100.0)).ok
    refused = await store.reserve("c2", [a, b, c], [1, 1, 1], 101.0)
    assert (refused.ok, refused.refused, refused.totals) == (False, 0, (2, 1, 1))


async def test_sliding_window_frees_exactly_at_the_boundary(store: LimitStore) -> None:
    counter = Counter(unique("s"), 3, 60, True)
    for i, t in enumerate((0.0, 10.0, 20.0)):
        assert (await store.reserve(f"c{i}", [counter], [1], 1000 + t)).ok
    refused = await store.reserve("c3", [counter], [1], 1059.0)
    assert not refused.ok and refused.retry_after == pytest.approx(1.0)
    # A fixed window would have let 3 more through at 1060; the sliding one frees one call at a time.
    assert (await store.reserve("c4", [counter], [1], 1060.001)).ok
    assert not (await store.reserve("c5", [counter], [1], 1060.002)).ok
    assert (await store.reserve("c6", [counter], [1], 1070.001)).ok


async def test_settle_replaces_the_reserved_amount(store: LimitStore) -> None:
    sliding, fixed = Counter(unique("s"), 100, 60, True), Counter(unique("f"), 100, 60, False, ends=60.0)
    await store.reserve("c1", [sliding, fixed], [50, 50], 0.0)
    assert await store.settle("c1", [sliding, fixed], [50, 50], [7, 7], 1.0) == (7, 7)
    assert await store.settle("c1", [sliding, fixed], [7, 7], [7, 7], 1.0) == (7, 7)
    assert (await store.reserve("c2", [sliding, fixed], [93, 93], 2.0)).ok


async def test_an_amount_larger_than_the_limit_never_fits(store: LimitStore) -> None:
    counter = Counter(unique("x"), 5, 60, True)
    refused = await store.reserve("c1", [counter], [6], 0.0)
    assert not refused.ok and refused.retry_after is None


async def test_once_is_once_per_ttl(store: LimitStore) -> None:
    key = unique("once")
    assert await store.once(key, 60, 0.0)
    assert not await store.once(key, 60, 1.0)


def limiter(store_url: str, clock: Clock, limits: list[dict[str, Any]], zone: str = "UTC") -> tuple[Limiter, Any]:
    tenant = unique("t")
    policy = build_policy(
        {
            "providers": {"p": {"kind": "mock"}},
            "models": {"m": {"provider": "p", "model": "m", "price": {"input": 1, "output": 2}}},
            "tenancy": {"store": store_url, "reset_timezone": zone},
            "tenants": {tenant: {"limits": limits}},
        }
    )
    return Limiter(policy, limit_store(store_url), clock), (Caller(tenant), Router(policy).resolve("m"))


REQUEST = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def worst(request: dict[str, Any]) -> tuple[int, int]:
    """The (prompt estimate, output cap) the gateway reserves for ``request``."""
    return estimate_prompt_tokens(request), int(request["max_tokens"])


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_daily_budget_resets_at_midnight_in_the_reset_zone(backend: str) -> None:
    url = "memory://" if backend == "memory" else require_redis()
    clock = Clock(1_790_000_000.0)  # 2026-09-21 14:13:20 UTC
    # Tokyo is UTC+9: its day ends at 15:00 UTC, 46 min 40 s after the start.
    lim, (caller, route) = limiter(url, clock, [{"per": "day", "requests": 2}], zone="Asia/Tokyo")
    try:
        for _ in range(2):
            hold = await lim.reserve(caller, route, *worst(REQUEST))
            assert hold is not None
            await lim.settle(hold, Usage(5, 5), 0, answered=True)
        with pytest.raises(BudgetExceeded) as caught:
            await lim.reserve(caller, route, *worst(REQUEST))
        assert caught.value.headers["retry-after"] == "2800"
        clock.advance(2799)
        with pytest.raises(BudgetExceeded):
            await lim.reserve(caller, route, *worst(REQUEST))
        clock.advance(2)
        assert await lim.reserve(caller, route, *worst(REQUEST)) is not None
    finally:
        await lim.aclose()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_refusal_with_two_limits_is_429_with_its_headers(backend: str) -> None:
    url = "memory://" if backend == "memory" else require_redis()
    limits = [{"per": "minute", "requests": 2}, {"per": "minute", "tokens": 1000}]
    lim, (caller, route) = limiter(url, Clock(), limits)
    try:
        for _ in range(2):
            hold = await lim.reserve(caller, route, *worst(REQUEST))
            assert hold is not None
            await lim.settle(hold, Usage(5, 5), 0, answered=True)
        with pytest.raises(RateLimited) as caught:
            await lim.reserve(caller, route, *worst(REQUEST))
        assert caught.value.headers == {
            "x-ratelimit-limit-requests": "2",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m0s",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "980",
            "x-ratelimit-reset-tokens": "1m0s",
            "retry-after": "60",
        }
    finally:
        await lim.aclose()


async def test_monthly_budget_resets_on_the_first() -> None:
    clock = Clock(1_793_491_200.0 - 10)  # 10 s before 2026-11-01 00:00 UTC
    lim, (caller, route) = limiter("memory://", clock, [{"per": "month", "usd": 0.0001}])
    hold = await lim.reserve(caller, route, *worst({**REQUEST, "max_tokens": 5}))
    assert hold is not None
    await lim.settle(hold, Usage(40, 5), cost_micros(Price(input=1, output=2), Usage(40, 5)), answered=True)
    with pytest.raises(BudgetExceeded):
        await lim.reserve(caller, route, *worst({**REQUEST, "max_tokens": 30}))
    clock.advance(11)
    assert await lim.reserve(caller, route, *worst({**REQUEST, "max_tokens": 30})) is not None


async def test_rate_limits_are_rate_limited_not_quota() -> None:
    lim, (caller, route) = limiter("memory://", Clock(), [{"per": "minute", "tokens": 100}])
    with pytest.raises(RateLimited) as caught:
        await lim.reserve(caller, route, *worst({**REQUEST, "max_tokens": 500}))
    assert caught.value.code == "rate_limit_exceeded" and "retry-after" not in caught.value.headers


async def test_an_unreachable_store_fails_closed_by_default() -> None:
    clock = Clock()
    lim, (caller, route) = limiter("redis://127.0.0.1:1/0", clock, [{"per": "minute", "requests": 5}])
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await lim.reserve(caller, route, *worst(REQUEST))
        assert caught.value.status == 503 and caught.value.code == "limits_unavailable"
    finally:
        await lim.aclose()


async def test_an_unreachable_store_can_fail_open() -> None:
    tenant = unique("t")
    policy = build_policy(
        {
            "providers": {"p": {"kind": "mock"}},
            "models": {"m": {"provider": "p", "model": "m"}},
            "tenancy": {"store": "redis://127.0.0.1:1/0", "on_store_error": "open"},
            "tenants": {tenant: {"limits": [{"per": "minute", "requests": 1}]}},
        }
    )
    lim = Limiter(policy, limit_store(policy.tenancy.store))
    try:
        hold = await lim.reserve(Caller(tenant), Router(policy).resolve("m"), *worst(REQUEST))
        assert hold is not None and not hold.metered
        await lim.settle(hold, Usage(1, 1), 0, answered=True)
    finally:
        await lim.aclose()


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.012, "12ms"), (1, "1s"), (60, "1m0s"), (360, "6m0s"), (3600, "1h0m0s")]
)
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_costs_are_exact_micro_dollars() -> None:
    price = Price(input=0.40, cached_input=0.10, output=1.60)
    assert cost_micros(price, Usage(input_tokens=1000, output_tokens=1000, cached_tokens=500)) == 200 + 50 + 1600
