"""Circuit breakers, end to end: the official SDK calling a gateway whose loopback upstream goes down.

Time is the gateway's clock, moved by hand: a minute of outage takes no
minute. Cooldown is off (``policy_for``), so what these tests see is the
breaker's doing alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Clock, policy_for, sdk
from tests.otel import Telemetry
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.identity import Identity

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
#: Three failures within 10 s open a breaker for 10 s; retries 1 (two attempts a call), as in policy_for.
BREAKER = {"failures": 3, "window": "10s", "open_for": "10s"}


@pytest.fixture
def clock() -> Clock:
    return Clock(1_790_000_000.0)


@pytest.fixture
async def breaking(
    make_gateway: Callable[..., Gateway], clock: Clock, telemetry: Telemetry
) -> AsyncIterator[tuple[Gateway, openai.AsyncOpenAI]]:
    gateway = make_gateway(clock=clock, telemetry=telemetry, dispatch={"breaker": BREAKER})
    async with sdk(gateway) as client:
        yield gateway, client


async def test_a_target_down_for_a_minute_then_back(
    breaking: tuple[Gateway, openai.AsyncOpenAI], upstream: OpenAIUpstream, clock: Clock, telemetry: Telemetry
) -> None:
    """A call a second for 90 s; the first target is down for the first 60. Every call is answered; the dead
    target gets three failures (which open its breaker) and one probe every 10 s, then its traffic back."""
    _, client = breaking
    upstream.down.add("up-main")
    answered_by: list[str] = []
    for second in range(90):
        if second == 60:
            upstream.down.discard("up-main")
        completion = await client.chat.completions.create(model="smart", messages=HELLO)
        answered_by.append(completion.model)
        clock.advance(1)
    # t=0: two attempts fail; t=1: the third opens it until t=11. Probes at t=11, 21, 31, 41, 51 fail and open
    # it again each time; the probe at t=61 is answered and closes it.
    assert answered_by == ["up-backup"] * 61 + ["up-main"] * 29
    assert dict(upstream.calls) == {"up-main": 3 + 5 + 1 + 28, "up-backup": 61}
    changes = telemetry.metrics()["unimw.breaker.changes"]
    assert sorted((a["unimw.breaker.state"], n) for a, n in changes) == [("closed", 1), ("half_open", 6), ("open", 6)]
    assert {a["unimw.target"] for a, _ in changes} == {"gpt-main"}


async def test_a_call_whose_every_target_is_open_gets_503_at_once(
    breaking: tuple[Gateway, openai.AsyncOpenAI], upstream: OpenAIUpstream, clock: Clock
) -> None:
    _, client = breaking
    upstream.down.add("up-main")
    for _ in range(2):  # two attempts, then one: three failures
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-main", messages=HELLO)
    upstream.calls.clear()
    clock.advance(4)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="gpt-main", messages=HELLO, stream=stream)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "6"
        assert caught.value.body == {
            "message": "Every upstream for this model is failing and is left alone for now (gpt-main); retry in 6 s.",
            "type": "upstream_error",
            "param": None,
            "code": "circuit_open",
        }
    with pytest.raises(openai.InternalServerError) as caught:  # every operation: the breaker is the target's
        await client.embeddings.create(model="gpt-main", input="hi")
    assert (caught.value.status_code, caught.value.code) == (503, "circuit_open")
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model="gpt-main", input="hi")
    assert (caught.value.status_code, caught.value.code) == (503, "circuit_open")
    assert dict(upstream.calls) == {}  # no attempt at all


async def test_the_span_says_which_targets_were_left_out_and_what_changed(
    breaking: tuple[Gateway, openai.AsyncOpenAI], upstream: OpenAIUpstream, telemetry: Telemetry
) -> None:
    _, client = breaking
    upstream.plan("up-main", "503", "503", "503")
    await client.chat.completions.create(model="smart", messages=HELLO)  # two failures, then the backup
    telemetry.exporter.clear()
    await client.chat.completions.create(model="smart", messages=HELLO)  # the third: open
    opening = telemetry.span("chat smart")
    assert opening["events"] == [("unimw.breaker.changed", {"unimw.target": "gpt-main", "unimw.breaker.state": "open"})]
    assert "unimw.breaker.skipped" not in opening["attributes"]
    telemetry.exporter.clear()
    await client.chat.completions.create(model="smart", messages=HELLO)
    skipping = telemetry.span("chat smart")
    assert skipping["attributes"]["unimw.breaker.skipped"] == ("gpt-main",)
    assert skipping["attributes"]["unimw.target"] == "gpt-backup"
    assert skipping["events"] == []
    assert telemetry.tree() == ["chat smart"]  # the one attempt, on the backup, noted on the call's span
    assert dict(upstream.calls) == {"up-main": 3, "up-backup": 3}


async def test_models_show_each_targets_breaker(
    breaking: tuple[Gateway, openai.AsyncOpenAI], upstream: OpenAIUpstream, clock: Clock
) -> None:
    _, client = breaking

    async def states() -> dict[str, Any]:
        listed = (await client.models.list()).data
        return {m.id: (m.model_extra or {})["x_unimw"]["breakers"] for m in listed}

    assert await states() == {
        "gpt-main": {"gpt-main": "closed"},
        "gpt-backup": {"gpt-backup": "closed"},
        "mock-echo": {"mock-echo": "closed"},
        "smart": {"gpt-main": "closed", "gpt-backup": "closed"},
    }
    upstream.plan("up-main", "503", "503", "503")
    await client.chat.completions.create(model="smart", messages=HELLO)
    await client.chat.completions.create(model="smart", messages=HELLO)
    listed = await states()
    assert (listed["gpt-main"], listed["smart"]) == ({"gpt-main": "open"}, {"gpt-main": "open", "gpt-backup": "closed"})
    clock.advance(10)
    assert (await client.models.retrieve("gpt-main")).model_extra == {
        "x_unimw": {
            "operations": ["chat/completions", "responses", "embeddings"],
            "breakers": {"gpt-main": "half_open"},
        }
    }


async def test_a_stream_cut_mid_answer_counts_against_its_target(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, clock: Clock
) -> None:
    gateway = make_gateway(clock=clock, dispatch={"breaker": {**BREAKER, "failures": 1}})
    async with sdk(gateway) as client:
        upstream.plan("up-main", "drop")
        stream = await client.chat.completions.create(model="smart", messages=HELLO, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
        completion = await client.chat.completions.create(model="smart", messages=HELLO)
    assert completion.model == "up-backup"
    assert dict(upstream.calls) == {"up-main": 1, "up-backup": 1}


async def test_breakers_are_shared_by_two_gateways_on_redis(upstream_url: str, upstream: OpenAIUpstream) -> None:
    """Two replicas on one Redis store: what one opened, the other obeys within a second, and the one probe
    (the other's) closes it for both. Model names are this run's own, as the hash is keyed by them."""
    url = require_redis()
    main, backup = unique("main"), unique("backup")
    data = policy_for(
        upstream_url,
        models={
            main: {"provider": "primary", "model": "up-main"},
            backup: {"provider": "backup", "model": "up-backup"},
        },
        aliases={"smart": {"targets": [main, backup], "strategy": "fallback"}},
        dispatch={"breaker": BREAKER},
        tenancy={"store": url},
    )
    clock = Clock()
    one, two = Gateway.from_dict(data, clock=clock), Gateway.from_dict(data, clock=clock)
    try:
        async with sdk(one) as first, sdk(two) as second:
            await second.chat.completions.create(model="smart", messages=HELLO)  # reads the store: all closed
            upstream.down.add("up-main")
            await first.chat.completions.create(model="smart", messages=HELLO)
            await first.chat.completions.create(model="smart", messages=HELLO)  # opened, by the first gateway
            assert dict(upstream.calls) == {"up-main": 1 + 2 + 1, "up-backup": 2}
            upstream.calls.clear()
            clock.advance(1)
            assert (await second.chat.completions.create(model="smart", messages=HELLO)).model == "up-backup"
            assert dict(upstream.calls) == {"up-backup": 1}  # the second gateway never tried the dead target
            upstream.down.discard("up-main")
            clock.advance(10)
            assert (await second.chat.completions.create(model="smart", messages=HELLO)).model == "up-main"  # probe
            clock.advance(1)
            assert (await first.chat.completions.create(model="smart", messages=HELLO)).model == "up-main"
            assert dict(upstream.calls) == {"up-backup": 1, "up-main": 2}
    finally:
        await one.aclose()
        await two.aclose()


async def test_open_breakers_stay_open_across_a_reload(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, upstream_url: str, clock: Clock
) -> None:
    from unimw.loader import build_policy

    gateway = make_gateway(clock=clock, dispatch={"breaker": BREAKER})
    upstream.plan("up-main", "503", "503", "503")
    for _ in range(2):
        await gateway.chat_completions({"model": "smart", "messages": HELLO})
    await gateway.reload(build_policy(policy_for(upstream_url, dispatch={"breaker": {**BREAKER, "open_for": "1h"}})))
    clock.advance(5)
    assert (await gateway.chat_completions({"model": "smart", "messages": HELLO}))["model"] == "up-backup"
    assert dict(upstream.calls) == {"up-main": 3, "up-backup": 3}  # still open: not tried
    clock.advance(15)  # past the old open_for, not the new one's: the new thresholds apply to the next opening only
    assert (await gateway.chat_completions({"model": "smart", "messages": HELLO}))["model"] == "up-main"  # probe
    assert dict(upstream.calls) == {"up-main": 4, "up-backup": 3}


async def test_failures_on_a_tenants_own_key_do_not_count(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, clock: Clock
) -> None:
    """A caller's own key failing says nothing of the target's health for everyone else (as for cooldown)."""
    gateway = make_gateway(clock=clock, dispatch={"breaker": {**BREAKER, "failures": 1}}, tenants={"t1": {}})
    own = Identity("t1", credentials={"primary": "sk-tenant-own-0123456789abcdef"})
    upstream.plan("up-main", "503", "503")
    answer = await gateway.chat_completions({"model": "smart", "messages": HELLO}, tenant=own)
    assert answer["model"] == "up-backup"
    answer = await gateway.chat_completions({"model": "smart", "messages": HELLO})
    assert answer["model"] == "up-main"  # the policy's key: its breaker never opened
    assert dict(upstream.calls) == {"up-main": 3, "up-backup": 1}
