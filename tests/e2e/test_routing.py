"""Routing end to end: least_latency against loopback upstreams whose delays change at run time, cheapest,
cooling targets skipped by both, when rules through the openai SDK, sticky arms on records and spans, and the
latency figures shared by two gateways through the real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam
from starlette.requests import Request
from starlette.responses import Response

from tests.conftest import Clock, collect, policy_for, sdk
from tests.otel import Telemetry
from tests.redis_support import require_redis, unique
from tests.servers import serve
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.routing import stable_point
from unimw.stores.latency import RedisLatency

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


class TimedUpstream(OpenAIUpstream):
    """The OpenAI-wire upstream, answering each model after the delay the test sets for it now."""

    def __init__(self) -> None:
        self.delays: dict[str, float] = {}
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self.delays = {}

    async def chat(self, request: Request) -> Response:
        model = (await request.json())["model"]  # starlette keeps the body: the app reads it again
        await asyncio.sleep(self.delays.get(model, 0.0))
        return await super().chat(request)


@pytest.fixture(scope="module")
def _timed_server() -> Iterator[tuple[TimedUpstream, str]]:
    upstream = TimedUpstream()
    with serve(upstream.app) as url:
        yield upstream, url + "/v1"


@pytest.fixture
def timed(_timed_server: tuple[TimedUpstream, str]) -> Iterator[tuple[TimedUpstream, str]]:
    _timed_server[0].reset()
    yield _timed_server
    _timed_server[0].reset()


def latency_policy(
    url: str, a: str = "up-a", b: str = "up-b", names: tuple[str, str] = ("ma", "mb"), **overrides: Any
) -> dict[str, Any]:
    """``quick``: least_latency over two models, on upstream models ``a`` and ``b``."""
    ma, mb = names
    return policy_for(
        url,
        models={ma: {"provider": "primary", "model": a}, mb: {"provider": "backup", "model": b}},
        aliases={"quick": {"targets": [ma, mb], "strategy": "least_latency", "probe_after": "60s"}},
        **{"dispatch": {"retries": 0, "cooldown": 0}, **overrides},
    )


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def make(policy: dict[str, Any], **options: Any) -> Gateway:
        gateway = Gateway.from_dict(policy, **options)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.aclose()


async def answered_by(gateway: Gateway, calls: int, model: str = "quick") -> list[str]:
    return [(await gateway.chat_completions({"model": model, "messages": HELLO}))["model"] for _ in range(calls)]


async def test_least_latency_follows_the_faster_upstream_as_delays_change(
    timed: tuple[TimedUpstream, str], gateways: Callable[..., Gateway]
) -> None:
    upstream, url = timed
    clock = Clock()
    gateway = gateways(latency_policy(url), clock=clock)
    upstream.delays = {"up-a": 0.3, "up-b": 0.0}
    # Each is tried once (in the written order), then the faster keeps the calls.
    assert await answered_by(gateway, 5) == ["up-a", "up-b", "up-b", "up-b", "up-b"]

    upstream.delays["up-b"] = 0.8  # b slows down: its average passes a's (0.3 s) within two slow calls
    moved = await answered_by(gateway, 5)
    assert moved[:1] == ["up-b"] and moved[-3:] == ["up-a"] * 3 and moved.count("up-b") <= 2, moved

    upstream.delays["up-b"] = 0.0  # b recovers, but nothing tries it while a is first ...
    assert await answered_by(gateway, 3) == ["up-a"] * 3
    probes = 0
    while True:  # each probe_after, one call tries b first, and its average comes down
        probes += 1
        clock.advance(30)
        await answered_by(gateway, 1)  # a, the first, was tried lately: only b is due a probe
        clock.advance(30)
        if await answered_by(gateway, 2) == ["up-b", "up-b"]:  # the probe, then a call that finds b the faster
            break
        assert probes < 2, "b is not back after two probes"
    assert await answered_by(gateway, 3) == ["up-b"] * 3


async def test_a_stream_is_timed_to_its_first_chunk(
    timed: tuple[TimedUpstream, str], gateways: Callable[..., Gateway]
) -> None:
    upstream, url = timed
    gateway = gateways(latency_policy(url))
    upstream.delays = {"up-a": 0.25}
    upstream.plan("up-b", "slow", "slow")  # 0.2 s between chunks, the first at once
    for _ in range(2):
        chunks = await collect(await gateway.stream_chat_completions({"model": "quick", "messages": HELLO}))
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert upstream.calls == {"up-a": 1, "up-b": 1}
    book = gateway._router.latency
    assert book is not None and book.figures["ma"].average >= 0.25 and book.figures["mb"].average < 0.1
    # The stream that took over 0.4 s to end counts as fast: it is b that gets the next call.
    assert await answered_by(gateway, 1) == ["up-b"]


async def test_least_latency_skips_a_cooling_target_and_counts_its_failure(
    timed: tuple[TimedUpstream, str], gateways: Callable[..., Gateway]
) -> None:
    upstream, url = timed
    gateway = gateways(latency_policy(url, dispatch={"retries": 0, "cooldown": "60s"}))
    upstream.delays = {"up-a": 0.05}
    assert await answered_by(gateway, 3) == ["up-a", "up-b", "up-b"]
    upstream.plan("up-b", "500")
    assert await answered_by(gateway, 3) == ["up-a", "up-a", "up-a"]  # the 500 fell back to a; b is cooling
    assert upstream.calls == {"up-a": 4, "up-b": 3}
    book = gateway._router.latency
    assert book is not None and book.figures["mb"].failed_at is not None


CHEAP_MODELS = {
    "dear": {"provider": "primary", "model": "up-dear", "price": {"input": 10, "output": 30}},
    "thrifty": {"provider": "backup", "model": "up-thrifty", "price": {"input": 0.1, "output": 0.4}},
    "middling": {"provider": "primary", "model": "up-middling", "price": {"input": 1, "output": 4}},
}


async def test_cheapest_picks_by_price_and_skips_a_cooling_target(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(
        models=CHEAP_MODELS,
        aliases={"cheap": {"targets": ["dear", "thrifty", "middling"], "strategy": "cheapest"}},
        dispatch={"retries": 0, "cooldown": "60s"},
    )
    client = sdk(gateway)
    first = await client.chat.completions.create(model="cheap", messages=HELLO, max_tokens=50)
    assert first.model == "up-thrifty"
    upstream.plan("up-thrifty", "503")
    second = await client.chat.completions.create(model="cheap", messages=HELLO)  # falls back to the next cheapest
    third = await client.chat.completions.create(model="cheap", messages=HELLO)  # thrifty is cooling: skipped
    assert (second.model, third.model) == ("up-middling", "up-middling")
    assert upstream.calls == {"up-thrifty": 2, "up-middling": 2}


# ── when rules through the SDK ──────────────────────────────────────────────

RULE_MODELS = {
    name: {"provider": "primary", "model": f"up-{name}"}
    for name in ("tenant", "plan", "tag", "header", "tools", "images", "structured", "tokens")
}
RULED = {
    "targets": ["gpt-main"],
    "when": [
        {"tenant": "acme", "targets": ["tenant"]},
        {"plan": "pro", "targets": ["plan"]},
        {"tags": {"feature": "search"}, "targets": ["tag"]},
        {"headers": {"X-Team": "core"}, "targets": ["header"]},
        {"tools": True, "targets": ["tools"]},
        {"images": True, "targets": ["images"]},
        {"structured": True, "targets": ["structured"]},
        {"tokens_over": 1000, "targets": ["tokens"]},
    ],
}
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
PICTURE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
]


@pytest.mark.parametrize(
    ("headers", "call", "expected"),
    [
        ({}, {}, "up-main"),
        ({"X-Org": "acme", "X-Plan": "pro"}, {}, "up-tenant"),
        ({"X-Org": "globex", "X-Plan": "pro"}, {}, "up-plan"),
        ({}, {"metadata": {"feature": "search"}}, "up-tag"),
        ({"X-Unimw-Tags": "feature=search"}, {}, "up-tag"),
        ({"X-Team": "core"}, {}, "up-header"),
        ({}, {"tools": [TOOL]}, "up-tools"),
        ({}, {"messages": PICTURE}, "up-images"),
        ({}, {"response_format": {"type": "json_object"}}, "up-structured"),
        ({}, {"messages": [{"role": "user", "content": "word " * 1000}]}, "up-tokens"),
        ({"X-Team": "core"}, {"tools": [TOOL], "messages": PICTURE}, "up-header"),  # the first match wins
    ],
    ids=["default", "tenant", "plan", "metadata-tag", "header-tag", "header", "tools", "images", "structured",
         "tokens", "first-wins"],
)  # fmt: skip
async def test_each_when_rule_selects_its_targets(
    make_gateway: Callable[..., Gateway],
    upstream: OpenAIUpstream,
    headers: dict[str, str],
    call: dict[str, Any],
    expected: str,
) -> None:
    gateway = make_gateway(
        models=RULE_MODELS,
        aliases={"routed": RULED},
        plans={"pro": {}, "free": {}},
        tenants={"anon": {"plan": "free"}},
        tenancy={"resolve": [{"header": "X-Org", "plan_header": "X-Plan"}], "default": "anon"},
    )
    completion = await sdk(gateway, **headers).chat.completions.create(model="routed", **{"messages": HELLO, **call})
    assert completion.model == expected
    assert upstream.calls == {expected: 1}


async def test_the_response_cache_keeps_each_rules_answers_apart(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    """The same request placed by different rules went to different targets: one's answer is not the other's."""
    gateway = make_gateway(
        models=RULE_MODELS,
        aliases={"routed": RULED},
        plans={"pro": {}, "free": {}},
        tenants={"anon": {"plan": "free"}},
        tenancy={"resolve": [{"header": "X-Org", "plan_header": "X-Plan"}], "default": "anon"},
        cache={"enabled": True, "scope": "global"},
    )
    for headers, expected in [({"X-Team": "core"}, "up-header"), ({}, "up-main"), ({"X-Team": "core"}, "up-header")]:
        completion = await sdk(gateway, **headers).chat.completions.create(model="routed", messages=HELLO)
        assert completion.model == expected
    assert upstream.calls == {"up-header": 1, "up-main": 1}  # the third was the first one's cached answer


# ── sticky arms ─────────────────────────────────────────────────────────────


async def test_sticky_arms_stay_per_user_and_reach_records_and_spans(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path, telemetry: Telemetry
) -> None:
    path = tmp_path / "usage.jsonl"
    sticky = {"exp": {"targets": ["gpt-main", "gpt-backup"], "strategy": "weighted", "sticky": "end_user"}}
    gateway = make_gateway(
        telemetry=telemetry,
        aliases=sticky,
        usage={"jsonl": str(path)},
        plans={"free": {}},
        tenancy={"default_plan": "free", "resolve": [{"header": "X-Org"}]},
    )
    client = sdk(gateway, **{"X-Org": "acme"})
    users = [f"user-{i}" for i in range(12)]
    expected = {u: "gpt-main" if stable_point("exp", u) < 0.5 else "gpt-backup" for u in users}
    assert set(expected.values()) == {"gpt-main", "gpt-backup"}  # these users fall on both arms
    for _ in range(2):
        for user in users:
            completion = await client.chat.completions.create(model="exp", messages=HELLO, user=user)
            assert completion.model == {"gpt-main": "up-main", "gpt-backup": "up-backup"}[expected[user]]
    await gateway.flush()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["end_user"], r["arm"]) for r in lines] == [(u, expected[u]) for u in users] * 2
    spans = [s for s in telemetry.spans() if s["name"] == "chat exp"]
    assert [(s["attributes"]["unimw.end_user"], s["attributes"]["unimw.route.arm"]) for s in spans] == [
        (u, expected[u]) for u in users
    ] * 2
    # A policy that tells no tenants apart has no end users: the request's user field keeps the arm all the same.
    plain = sdk(make_gateway(aliases=sticky))
    for user in users:
        completion = await plain.chat.completions.create(model="exp", messages=HELLO, user=user)
        assert completion.model == {"gpt-main": "up-main", "gpt-backup": "up-backup"}[expected[user]]


async def test_a_sticky_arm_that_fails_falls_back_and_keeps_the_arm_on_the_record(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        aliases={"exp": {"targets": ["gpt-main", "gpt-backup"], "strategy": "weighted", "sticky": "tenant"}},
        usage={"jsonl": str(path)},
        plans={"free": {}},
        tenancy={"default_plan": "free"},
    )
    arm = "gpt-main" if stable_point("exp", "t-1") < 0.5 else "gpt-backup"
    other = {"gpt-main": "gpt-backup", "gpt-backup": "gpt-main"}[arm]
    upstream.plan({"gpt-main": "up-main", "gpt-backup": "up-backup"}[arm], "503", "503")
    await gateway.chat_completions({"model": "exp", "messages": HELLO}, tenant="t-1")
    await gateway.flush()
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["arm"], record["upstream_model"]) == (arm, {"gpt-main": "up-main", "gpt-backup": "up-backup"}[other])


async def test_a_plain_alias_has_no_arm(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path, telemetry: Telemetry
) -> None:
    path = tmp_path / "usage.jsonl"
    gateway = make_gateway(telemetry=telemetry, usage={"jsonl": str(path)})
    await gateway.chat_completions({"model": "smart", "messages": HELLO})
    await gateway.flush()
    [record] = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["arm"] is None and "unimw.route.arm" not in telemetry.span("chat smart")["attributes"]


# ── shared through Redis ────────────────────────────────────────────────────


async def test_replicas_share_latency_figures_through_redis(
    timed: tuple[TimedUpstream, str], gateways: Callable[..., Gateway]
) -> None:
    redis_url = require_redis()
    upstream, url = timed
    a, b = unique("up-a"), unique("up-b")
    ma, mb = unique("ma"), unique("mb")  # model names no other run shares: the hash is keyed by them
    policy = latency_policy(url, a, b, (ma, mb), tenancy={"store": redis_url})
    upstream.delays = {a: 0.2}
    first = gateways(policy)
    assert await answered_by(first, 3) == [a, b, b]
    await first.flush()  # its samples are in Redis now
    shared = RedisLatency(redis_url)
    try:
        figures = await shared.read()
    finally:
        await shared.aclose()
    assert (figures[ma].samples, figures[mb].samples) == (1, 2)
    assert figures[ma].average >= 0.2 > 0.1 > figures[mb].average and figures[mb].failed_at is None
    # A second replica has measured nothing: its first call goes by the written order, and its push brings back
    # what the first replica saw, so its next calls go to the faster one it never tried.
    second = gateways(policy)
    assert await answered_by(second, 1) == [a]
    await second.flush()
    assert await answered_by(second, 2) == [b, b]
    await second.flush()
    shared = RedisLatency(redis_url)
    try:
        assert {name: f.samples for name, f in (await shared.read()).items() if name in (ma, mb)} == {ma: 2, mb: 4}
    finally:
        await shared.aclose()


async def test_an_unreachable_latency_store_leaves_the_figures_per_process(
    timed: tuple[TimedUpstream, str], gateways: Callable[..., Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    upstream, url = timed
    gateway = gateways(latency_policy(url, tenancy={"store": "redis://127.0.0.1:1/0?socket_connect_timeout=0.2"}))
    upstream.delays = {"up-a": 0.2}
    assert await answered_by(gateway, 3) == ["up-a", "up-b", "up-b"]
    await gateway.flush()
    assert await answered_by(gateway, 2) == ["up-b", "up-b"]
    await gateway.flush()
    warnings = [r.getMessage() for r in caplog.records if r.name == "unimw.latency"]
    assert len(warnings) == 1, warnings  # once while the store stays down
    assert warnings[0].startswith("unimw: latency figures not shared (StoreUnavailable: Redis is unreachable")
