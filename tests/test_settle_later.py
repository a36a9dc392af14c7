"""Settling after the answer, on the real Redis: a metered call waits for one round trip (its reservation), never
for its settlement, which runs once the answer is out, exactly once per call, and before the gateway (or the
process it lives in) is gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio.connection import AbstractConnection

from tests.conftest import Clock, policy_for, sdk_http
from tests.counting import CountingLimitStore
from tests.e2e import tenant_hooks
from tests.otel import Telemetry
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.calls import CallStream
from unimw.records import UsageRecord
from unimw.stores.base import Counter, Reservation, StoreUnavailable
from unimw.stores.memory import MemoryLimitStore
from unimw.stores.redis import RedisLimitStore
from unimw.usage import estimate_prompt_tokens

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_790_000_000.0  # 2026-09-21 UTC: the month's USD counter is named ...:2026-09
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
BODY: dict[str, Any] = {"model": "gpt-main", "messages": HELLO, "max_tokens": 50}
PRICE = {"input": 10, "output": 20}  # USD per 1M tokens, so micro-USD per token
#: What the loopback upstream answers to HELLO uses: 7 prompt and 12 completion tokens.
ACTUAL = {"requests": 1, "tokens": 7 + 12, "usd": 7 * 10 + 12 * 20}
#: What a call reserves: the prompt estimate plus its output cap, priced.
WORST = {
    "requests": 1,
    "tokens": estimate_prompt_tokens(BODY) + 50,
    "usd": estimate_prompt_tokens(BODY) * 10 + 50 * 20,
}
NOTHING = {"requests": 0, "tokens": 0, "usd": 0}


class WatchedStore(RedisLimitStore):
    """The Redis store, logging each round trip; settlements wait at ``gate`` (open unless a test closes it)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.log: list[str] = []
        self.settles: Tally[str] = Tally()  # settlements per reservation id
        self.gate = asyncio.Event()
        self.gate.set()
        self.reserved = asyncio.Event()  # set once a reservation is back

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> Reservation:
        self.log.append("reserve")
        reservation = await super().reserve(call_id, counters, amounts, now)
        self.reserved.set()
        return reservation

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        await self.gate.wait()
        self.log.append("settle")
        self.settles[call_id] += 1
        return await super().settle(call_id, counters, reserved, actual, now)

    async def once(self, key: str, ttl: float, now: float) -> bool:
        self.log.append("once")
        return await super().once(key, ttl, now)

    async def aclose(self) -> None:
        self.log.append("aclose")
        await super().aclose()


class BrokenLink(WatchedStore):
    """Reserves on Redis, then fails every settlement with ``error``."""

    def __init__(self, url: str, error: Exception) -> None:
        super().__init__(url)
        self.error = error

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        self.log.append("settle")
        raise self.error


class ForeignStore:
    """An app's own limit store that says nothing about when it settles (the memory store underneath)."""

    def __init__(self) -> None:
        self._inner = MemoryLimitStore()
        self.settled = 0

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> Reservation:
        return await self._inner.reserve(call_id, counters, amounts, now)

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        self.settled += 1
        return await self._inner.settle(call_id, counters, reserved, actual, now)

    async def totals(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]:
        return await self._inner.totals(counters, now)

    async def once(self, key: str, ttl: float, now: float) -> bool:
        return await self._inner.once(key, ttl, now)

    async def aclose(self) -> None:
        await self._inner.aclose()


def metered(upstream_url: str, tenant: str, store: str, **overrides: Any) -> dict[str, Any]:
    """A policy whose default tenant has request, token and USD limits no test here reaches."""
    tenancy = {"default": tenant, "resolve": [], "store": store, **overrides.pop("tenancy", {})}
    limits = overrides.pop(
        "limits", [{"per": "minute", "requests": 100, "tokens": 100_000}, {"per": "month", "usd": 1}]
    )
    return policy_for(
        upstream_url,
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": PRICE}},
        tenancy=tenancy,
        tenants={tenant: {"limits": limits}},
        usage={"call": "tests.e2e.tenant_hooks:record_usage", "return_cost": True},
        **overrides,
    )


async def counters(client: redis.asyncio.Redis, tenant: str) -> dict[str, int]:
    """The tenant's counters as Redis holds them."""
    base = f"unimw:lim:t:{tenant}"
    requests = await client.hget(f"{base}:minute:requests:a", "_total")
    tokens = await client.hget(f"{base}:minute:tokens:a", "_total")
    usd = await client.get(f"{base}:month:usd:2026-09")
    return {"requests": int(requests or 0), "tokens": int(tokens or 0), "usd": int(usd or 0)}


def times(n: int, amounts: dict[str, int]) -> dict[str, int]:
    return {quantity: n * amount for quantity, amount in amounts.items()}


def usage_records() -> list[UsageRecord]:
    records = [r for r in tenant_hooks.records if isinstance(r, UsageRecord)]
    assert len(records) == len(tenant_hooks.records)
    return records


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def tenant() -> str:
    tenant_hooks.records.clear()
    tenant_hooks.alerts.clear()
    return unique("acme")


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    """Gateways a test built, closed after it."""
    made: list[Gateway] = []
    yield made
    for gateway in made:
        await gateway.aclose()


@contextlib.asynccontextmanager
async def sdk_on(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK through the gateway's ASGI door, in process."""
    async with httpx.AsyncClient(transport=gateway.transport()) as http:
        yield openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key="sk-client", http_client=sdk_http(http), max_retries=0
        )


async def test_the_answer_waits_for_the_reservation_only(
    upstream: OpenAIUpstream, upstream_url: str, redis_url: str, client: redis.asyncio.Redis, tenant: str
) -> None:
    store = WatchedStore(redis_url)
    store.gate.clear()
    gateway = Gateway.from_dict(metered(upstream_url, tenant, redis_url), limit_store=store, clock=Clock(NOW))
    async with gateway, sdk_on(gateway) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO, max_tokens=50)
        # The answer, with what it cost, is out while its settlement has not even started.
        assert store.log == ["reserve"]
        assert raw.headers["x-unimw-cost"] == "0.000310"
        assert await counters(client, tenant) == WORST
        assert tenant_hooks.records == []
        store.gate.set()
        await gateway.flush()
        assert store.log == ["reserve", "settle"]
        assert await counters(client, tenant) == ACTUAL
        assert [(r.tenant, r.status, r.cost_usd) for r in usage_records()] == [(tenant, "ok", 0.00031)]
    assert upstream.calls == {"up-main": 1}


async def test_one_redis_command_goes_out_before_the_answer(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    client: redis.asyncio.Redis,
    tenant: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted where redis-py writes to its sockets, with the policy's own Redis store."""
    sent = 0
    send = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    async with Gateway.from_dict(metered(upstream_url, tenant, redis_url), clock=Clock(NOW)) as gateway:
        await gateway.chat_completions(BODY)  # the first call connects and loads the scripts
        await gateway.flush()
        sent = 0
        answer = await gateway.chat_completions(BODY)
        assert (answer["usage"]["total_tokens"], sent) == (19, 1)
        await gateway.flush()
        assert sent == 2
    assert await counters(client, tenant) == times(2, ACTUAL)


async def test_every_call_is_settled_exactly_once(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    client: redis.asyncio.Redis,
    tenant: str,
    gateways: list[Gateway],
) -> None:
    store = WatchedStore(redis_url)
    gateway = Gateway.from_dict(metered(upstream_url, tenant, redis_url), limit_store=store, clock=Clock(NOW))
    gateways.append(gateway)

    async def plain(sdk: openai.AsyncOpenAI) -> int | None:
        completion = await sdk.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=50)
        return completion.usage.total_tokens if completion.usage else None

    async def streamed(sdk: openai.AsyncOpenAI) -> int | None:
        stream = await sdk.chat.completions.create(
            model="gpt-main", messages=HELLO, max_tokens=50, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        return chunks[-1].usage.total_tokens if chunks[-1].usage else None

    async with sdk_on(gateway) as sdk:
        tokens = await asyncio.gather(*(plain(sdk) for _ in range(20)), *(streamed(sdk) for _ in range(10)))
    await gateway.flush()
    assert tokens == [19] * 30
    assert (len(store.settles), set(store.settles.values())) == (30, {1})
    assert await counters(client, tenant) == times(30, ACTUAL)
    assert Tally((r.stream, r.status) for r in usage_records()) == {(False, "ok"): 20, (True, "ok"): 10}
    assert upstream.calls == {"up-main": 30}


async def test_a_stream_ends_before_its_settlement(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    client: redis.asyncio.Redis,
    tenant: str,
    gateways: list[Gateway],
) -> None:
    store = WatchedStore(redis_url)
    store.gate.clear()
    gateway = Gateway.from_dict(metered(upstream_url, tenant, redis_url), limit_store=store, clock=Clock(NOW))
    gateways.append(gateway)
    async with sdk_on(gateway) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-main", messages=HELLO, max_tokens=50, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    last = chunks[-1]
    assert (last.usage.total_tokens if last.usage else None, last.model_extra) == (
        19,
        {"x_unimw": {"cost_usd": 0.00031}},
    )
    assert store.log == ["reserve"]  # the stream ended ([DONE] and all) before its settlement
    assert await counters(client, tenant) == WORST
    store.gate.set()
    await gateway.flush()
    assert store.log == ["reserve", "settle"]
    assert await counters(client, tenant) == ACTUAL


async def test_a_reader_that_leaves_mid_stream_is_settled_once_for_what_it_read(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    client: redis.asyncio.Redis,
    tenant: str,
    gateways: list[Gateway],
) -> None:
    store = WatchedStore(redis_url)
    store.gate.clear()
    gateway = Gateway.from_dict(metered(upstream_url, tenant, redis_url), limit_store=store, clock=Clock(NOW))
    gateways.append(gateway)
    chunks = await gateway.stream_chat_completions(BODY)
    assert isinstance(chunks, CallStream)
    read = [await anext(chunks) for _ in range(3)]
    await chunks.aclose()
    assert [c["choices"][0]["delta"].get("content") for c in read] == ["", "Hello", " from"]
    assert store.log == ["reserve"]
    store.gate.set()
    await gateway.flush()
    # Charged for the prompt estimate and the output read ("Hello from": 3 tokens).
    prompt = estimate_prompt_tokens(BODY)
    assert await counters(client, tenant) == {"requests": 1, "tokens": prompt + 3, "usd": prompt * 10 + 3 * 20}
    assert list(store.settles.values()) == [1]
    assert [(r.status, r.input_tokens, r.output_tokens) for r in usage_records()] == [("cancelled", prompt, 3)]


async def test_aclose_settles_what_is_pending_before_closing_the_store(
    upstream: OpenAIUpstream, upstream_url: str, redis_url: str, client: redis.asyncio.Redis, tenant: str
) -> None:
    store = WatchedStore(redis_url)
    store.gate.clear()
    gateway = Gateway.from_dict(metered(upstream_url, tenant, redis_url), limit_store=store, clock=Clock(NOW))
    for _ in range(2):
        await gateway.chat_completions(BODY)
    asyncio.get_running_loop().call_later(0.05, store.gate.set)  # a slow link: aclose must wait for it
    await gateway.aclose()
    assert store.log == ["reserve", "reserve", "settle", "settle", "aclose"]
    assert await counters(client, tenant) == times(2, ACTUAL)
    assert len(usage_records()) == 2  # and the records of the late settlements were delivered


def test_a_process_that_exits_right_after_its_calls_leaves_them_settled(
    upstream: OpenAIUpstream, upstream_url: str, redis_url: str, tenant: str
) -> None:
    policy = metered(upstream_url, tenant, redis_url)
    command = [sys.executable, "-m", "tests.workers.settle_worker", json.dumps(policy), str(NOW), "0.3"]
    worker = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert worker.returncode == 0, worker.stderr
    # Both answers were back before either settlement; the process then closed its gateway and exited.
    assert json.loads(worker.stdout) == {
        "costs": ["0.000310", 0.00031],
        "settled_when_answered": 0,
        "settled_at_exit": 2,
    }
    reader = redis.Redis.from_url(redis_url)
    try:
        base = f"unimw:lim:t:{tenant}"
        totals = (
            int(reader.hget(f"{base}:minute:requests:a", "_total") or 0),
            int(reader.hget(f"{base}:minute:tokens:a", "_total") or 0),
            int(reader.get(f"{base}:month:usd:2026-09") or 0),
        )
    finally:
        reader.close()
    assert totals == (2, 2 * 19, 2 * 310)
    assert upstream.calls == {"up-main": 2}


async def test_a_call_cancelled_mid_way_is_settled_after_its_task_is_gone(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    client: redis.asyncio.Redis,
    tenant: str,
    gateways: list[Gateway],
) -> None:
    store = WatchedStore(redis_url)
    store.gate.clear()
    gateway = Gateway.from_dict(metered(upstream_url, tenant, redis_url), limit_store=store, clock=Clock(NOW))
    gateways.append(gateway)
    upstream.plan("up-main", "delay:1")
    task = asyncio.create_task(gateway.chat_completions(BODY))
    await asyncio.wait_for(store.reserved.wait(), 5)  # the call is past its reservation, waiting on the upstream
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.log == ["reserve"]
    assert await counters(client, tenant) == WORST
    store.gate.set()
    await gateway.flush()
    # The upstream produced nothing: the request counts, its tokens and cost do not.
    assert await counters(client, tenant) == {"requests": 1, "tokens": 0, "usd": 0}
    assert [r.status for r in usage_records()] == ["cancelled"]


async def test_a_settlement_outlives_the_task_of_its_call(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    client: redis.asyncio.Redis,
    tenant: str,
    gateways: list[Gateway],
) -> None:
    """The caller's task goes on after its answer and is cancelled (the client left) before the settlement ran."""
    store = WatchedStore(redis_url)
    store.gate.clear()
    gateway = Gateway.from_dict(metered(upstream_url, tenant, redis_url), limit_store=store, clock=Clock(NOW))
    gateways.append(gateway)
    answered = asyncio.Event()

    async def caller() -> None:
        await gateway.chat_completions(BODY)
        answered.set()
        await asyncio.Event().wait()  # whatever the caller does next, until it is cancelled

    task = asyncio.create_task(caller())
    await asyncio.wait_for(answered.wait(), 5)
    task.cancel()
    assert (await asyncio.gather(task, return_exceptions=True))[0].__class__ is asyncio.CancelledError
    assert store.log == ["reserve"]
    store.gate.set()
    await gateway.flush()
    assert store.log == ["reserve", "settle"]
    assert await counters(client, tenant) == ACTUAL


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (StoreUnavailable("connection refused"), r"unimw: could not settle call \S+: the limit store is unreachable"),
        (RuntimeError("a bug in the store"), r"unimw: settling call \S+ failed"),
    ],
)
async def test_a_store_failing_at_settle_is_logged_and_breaks_nothing(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    client: redis.asyncio.Redis,
    tenant: str,
    gateways: list[Gateway],
    telemetry: Telemetry,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    logged: str,
) -> None:
    store = BrokenLink(redis_url, error)
    policy = metered(upstream_url, tenant, redis_url)
    gateway = Gateway.from_dict(policy, limit_store=store, clock=Clock(NOW), **telemetry.providers)
    gateways.append(gateway)
    async with sdk_on(gateway) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO, max_tokens=50)
    assert (raw.status_code, raw.headers["x-unimw-cost"]) == (200, "0.000310")
    await gateway.flush()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and re.fullmatch(logged, errors[0]), errors
    assert store.log == ["reserve", "settle"]
    # The reservation stays as it was: the tenant is over-counted by the difference, never under.
    assert await counters(client, tenant) == WORST
    assert [(r.status, r.cost_usd) for r in usage_records()] == [("ok", 0.00031)]
    assert [s["name"] for s in telemetry.spans()] == ["chat gpt-main"]
    # The next call is served as usual.
    assert (await gateway.chat_completions(BODY))["usage"]["total_tokens"] == 19


async def test_alerts_and_the_span_follow_the_settlement(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    tenant: str,
    gateways: list[Gateway],
    telemetry: Telemetry,
) -> None:
    store = WatchedStore(redis_url)
    store.gate.clear()
    policy = metered(
        upstream_url,
        tenant,
        redis_url,
        tenancy={"alerts": {"at": [0.5], "call": "tests.e2e.tenant_hooks:record_alert"}},
        limits=[{"per": "minute", "requests": 2}],
    )
    gateway = Gateway.from_dict(policy, limit_store=store, clock=Clock(NOW), **telemetry.providers)
    gateways.append(gateway)
    await gateway.chat_completions(BODY)
    assert (telemetry.spans(), tenant_hooks.alerts) == ([], [])
    store.gate.set()
    await gateway.flush()
    assert store.log == ["reserve", "settle", "once"]
    assert [(a.quantity, a.threshold, a.used, a.limit) for a in tenant_hooks.alerts] == [("requests", 0.5, 1.0, 2.0)]
    span = telemetry.span("chat gpt-main")
    assert [name for name, _ in span["events"]] == ["unimw.budget.alert"]
    assert span["attributes"]["unimw.cost.usd"] == 0.00031


async def test_the_memory_store_settles_before_the_answer(upstream: OpenAIUpstream, upstream_url: str) -> None:
    """Its settlement costs no round trip, so it is not worth a task: counters are exact as the answer returns."""
    assert (MemoryLimitStore.settles_later, RedisLimitStore.settles_later) == (False, True)
    tenant = unique("acme")
    stores: list[CountingLimitStore | ForeignStore] = [CountingLimitStore(), ForeignStore()]
    for store in stores:
        async with Gateway.from_dict(metered(upstream_url, tenant, "memory://"), limit_store=store) as gateway:
            await gateway.chat_completions(BODY)
            assert store.settled == 1
    assert upstream.calls == {"up-main": 2}


async def test_the_span_ends_when_the_answer_was_complete_not_when_it_was_settled(
    upstream: OpenAIUpstream,
    upstream_url: str,
    redis_url: str,
    tenant: str,
    gateways: list[Gateway],
    telemetry: Telemetry,
) -> None:
    store = WatchedStore(redis_url)
    store.gate.clear()
    policy = metered(upstream_url, tenant, redis_url)
    gateway = Gateway.from_dict(policy, limit_store=store, clock=Clock(NOW), **telemetry.providers)
    gateways.append(gateway)
    await gateway.chat_completions(BODY)
    answered = time.time_ns()
    asyncio.get_running_loop().call_later(0.2, store.gate.set)  # the settlement comes 0.2 s later
    await gateway.flush()
    (span,) = telemetry.finished()
    assert span.end_time is not None and span.end_time <= answered
    ((_, (count, seconds)),) = telemetry.metrics()["gen_ai.client.operation.duration"]
    assert count == 1 and seconds < 0.2
