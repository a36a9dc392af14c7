"""Concurrency limits through the official SDK: a tenant's calls in flight, the gateway's, waiting and 429s.

The upstream is the loopback OpenAI server; ``delay:S`` keeps a call in
flight for S seconds, so which calls overlap is set by the test, not by luck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from tests.conftest import sdk
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, Identity
from unimw.errors import RateLimited

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
TENANT_LIMIT = "Too many concurrent requests for this tenant: at most 2 at once. Retry shortly."


def tenancy(max_concurrent: int = 2, **server: Any) -> dict[str, Any]:
    """Two tenants on a plan with ``max_concurrent``, told apart by a header."""
    return {
        "tenancy": {"resolve": [{"header": "X-Tenant-Id"}]},
        "plans": {"small": {"max_concurrent": max_concurrent}},
        "tenants": {"acme": {"plan": "small"}, "globex": {"plan": "small"}},
        "server": server,
    }


def client(gateway: Gateway, tenant: str) -> openai.AsyncOpenAI:
    return sdk(gateway, **{"X-Tenant-Id": tenant})


async def until(condition: Callable[[], bool]) -> None:
    """Wait (5 s at most) until ``condition`` holds: the calls started elsewhere got where the test needs them."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the calls never got there")


async def ask(caller: openai.AsyncOpenAI, model: str = "gpt-main") -> ChatCompletion:
    return await caller.chat.completions.create(model=model, messages=HELLO)


async def test_a_tenant_over_its_limit_gets_429_and_another_tenant_is_not_affected(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy())
    upstream.plan("up-main", "delay:0.5", "delay:0.5", "delay:0.5")
    upstream.plan("up-backup", "delay:0.5")
    acme, globex = client(gateway, "acme"), client(gateway, "globex")
    results = await asyncio.wait_for(
        asyncio.gather(ask(acme), ask(acme), ask(acme), ask(globex, "gpt-backup"), return_exceptions=True), 10
    )
    answered = [r for r in results[:3] if isinstance(r, ChatCompletion)]
    [refusal] = [r for r in results[:3] if not isinstance(r, ChatCompletion)]
    assert len(answered) == 2
    assert isinstance(refusal, openai.RateLimitError)
    assert (refusal.status_code, refusal.code, refusal.type) == (429, "concurrency_limit_exceeded", "requests")
    assert refusal.body == {
        "message": TENANT_LIMIT,
        "type": "requests",
        "param": None,
        "code": "concurrency_limit_exceeded",
    }
    assert refusal.response.headers["retry-after"] == "1"
    assert isinstance(results[3], ChatCompletion) and results[3].model == "up-backup"
    assert upstream.calls == {"up-main": 2, "up-backup": 1}
    assert gateway._slots.active("acme") == gateway._slots.active("globex") == 0
    assert (await ask(acme)).model == "up-main"  # the places are back once the calls are done


async def test_with_a_wait_the_third_call_is_answered_once_a_place_frees(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(concurrency_wait="5s"))
    upstream.plan("up-main", "delay:0.5", "delay:0.5", "ok")
    acme = client(gateway, "acme")
    first = [asyncio.create_task(ask(acme)) for _ in range(2)]
    await until(lambda: gateway._slots.active("acme") == 2)
    third = asyncio.create_task(ask(acme))
    await until(lambda: gateway._slots.waiting == 1 and upstream.calls["up-main"] >= 2)
    assert upstream.calls["up-main"] == 2  # the third waits in the gateway, not at the upstream
    done = await asyncio.wait_for(asyncio.gather(*first, third), 10)
    assert [completion.model for completion in done] == ["up-main"] * 3
    assert upstream.calls["up-main"] == 3
    assert (gateway._slots.active("acme"), gateway._slots.waiting) == (0, 0)


async def test_a_call_whose_wait_runs_out_gets_429(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(max_concurrent=1, concurrency_wait="100ms"))
    upstream.plan("up-main", "delay:0.8")  # under the provider timeout (1 s)
    acme = client(gateway, "acme")
    slow = asyncio.create_task(ask(acme))
    await until(lambda: gateway._slots.active("acme") == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(openai.RateLimitError) as caught:
        await asyncio.wait_for(ask(acme), 5)
    assert loop.time() - started >= 0.1  # it waited before it was refused
    assert caught.value.code == "concurrency_limit_exceeded"
    assert caught.value.body == {
        "message": "Too many concurrent requests for this tenant: at most 1 at once. Retry shortly.",
        "type": "requests",
        "param": None,
        "code": "concurrency_limit_exceeded",
    }
    assert gateway._slots.waiting == 0
    assert (await asyncio.wait_for(slow, 10)).model == "up-main"
    assert upstream.calls["up-main"] == 1


async def test_a_stream_holds_its_place_until_it_is_closed(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(max_concurrent=1))
    acme = client(gateway, "acme")
    stream = await acme.chat.completions.create(model="gpt-main", messages=HELLO, stream=True)
    try:
        first = await asyncio.wait_for(stream.__anext__(), 5)
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.RateLimitError) as caught:
            await asyncio.wait_for(ask(acme), 5)  # the stream is still open: its place is taken
        assert caught.value.code == "concurrency_limit_exceeded"
    finally:
        await asyncio.wait_for(stream.close(), 5)
    # closed early (above): its place is given back
    assert gateway._slots.active("acme") == 0
    assert (await ask(acme)).model == "up-main"
    assert upstream.calls["up-main"] == 2


async def test_a_stream_read_to_its_end_gives_its_place_back(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(max_concurrent=1))
    acme = client(gateway, "acme")
    stream = await acme.chat.completions.create(model="gpt-main", messages=HELLO, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text
    assert gateway._slots.active("acme") == 0
    assert (await ask(acme)).model == "up-main"


async def test_a_cancelled_call_gives_its_place_back(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(max_concurrent=1, concurrency_wait="5s"))
    upstream.plan("up-main", "delay:0.9")
    body = {"model": "gpt-main", "messages": HELLO}
    running = asyncio.create_task(gateway.chat_completions(body, tenant="acme"))
    await until(lambda: upstream.calls["up-main"] == 1)
    waiting = asyncio.create_task(gateway.chat_completions(body, tenant="acme"))
    await until(lambda: gateway._slots.waiting == 1)
    waiting.cancel()  # cancelled while it waits for a place: it leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)
    assert (gateway._slots.active("acme"), gateway._slots.waiting) == (1, 0)
    running.cancel()  # cancelled while the upstream works on it: its place is given back
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
    assert gateway._slots.active("acme") == 0
    answer = await asyncio.wait_for(gateway.chat_completions(body, tenant="acme"), 5)
    assert answer["model"] == "up-main"
    assert upstream.calls["up-main"] == 2


async def test_the_gateway_wide_limit_counts_every_caller(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(server={"max_concurrent_calls": 2})  # no tenants at all
    upstream.plan("up-main", "delay:0.5", "delay:0.5", "delay:0.5")
    caller = sdk(gateway)
    results = await asyncio.wait_for(asyncio.gather(*(ask(caller) for _ in range(3)), return_exceptions=True), 10)
    [refusal] = [r for r in results if not isinstance(r, ChatCompletion)]
    assert isinstance(refusal, openai.RateLimitError)
    assert refusal.body == {
        "message": "Too many concurrent requests: the gateway serves at most 2 at once. Retry shortly.",
        "type": "requests",
        "param": None,
        "code": "concurrency_limit_exceeded",
    }
    assert refusal.response.headers["retry-after"] == "1"
    assert upstream.calls == {"up-main": 2}
    assert gateway._slots.active() == 0


async def test_the_gateway_wide_limit_holds_across_tenants_each_under_its_own(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(max_concurrent=2, max_concurrent_calls=3))
    upstream.plan("up-main", *["delay:0.5"] * 4)
    acme, globex = client(gateway, "acme"), client(gateway, "globex")
    first = [asyncio.create_task(ask(acme)) for _ in range(2)] + [asyncio.create_task(ask(globex))]
    await until(lambda: gateway._slots.active() == 3)
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(globex)  # globex has a place of its own left, the gateway has none
    assert caught.value.code == "concurrency_limit_exceeded"
    assert isinstance(caught.value.body, dict)
    assert (
        caught.value.body["message"]
        == "Too many concurrent requests: the gateway serves at most 3 at once. Retry shortly."
    )
    assert gateway._slots.active("globex") == 1  # the place it took under its own limit was given back
    await asyncio.wait_for(asyncio.gather(*first), 10)
    assert upstream.calls["up-main"] == 3


async def test_an_identity_brings_its_own_limit(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    gateway = make_gateway(**tenancy(max_concurrent=5))
    upstream.plan("up-main", "delay:0.5", "delay:0.5")
    body = {"model": "gpt-main", "messages": HELLO}
    org = Identity("org-42", plan="small", max_concurrent=1)
    results = await asyncio.wait_for(
        asyncio.gather(*(gateway.chat_completions(body, tenant=org) for _ in range(2)), return_exceptions=True), 10
    )
    [refusal] = [r for r in results if isinstance(r, BaseException)]
    assert isinstance(refusal, RateLimited) and refusal.code == "concurrency_limit_exceeded"
    assert upstream.calls["up-main"] == 1


async def test_a_tenants_limit_holds_across_two_gateways_on_redis(upstream_url: str, upstream: OpenAIUpstream) -> None:
    """Two replicas on one Redis store: the tenant's two places are taken on one, so the other refuses a third,
    and gives it one once they are back. Tenant names are this run's own, as the counts are keyed by them."""
    from tests.conftest import policy_for
    from tests.redis_support import require_redis, unique

    tenant = unique("acme")
    data = policy_for(upstream_url, **{**tenancy(), "tenants": {tenant: {"plan": "small"}}})
    data["tenancy"] = {**data["tenancy"], "store": require_redis()}
    one, two = Gateway.from_dict(data), Gateway.from_dict(data)
    try:
        upstream.plan("up-main", "delay:0.5", "delay:0.5")
        first, second = client(one, tenant), client(two, tenant)
        busy = asyncio.gather(ask(first), ask(first))
        await until(lambda: upstream.calls["up-main"] == 2)
        with pytest.raises(openai.RateLimitError) as refused:
            await ask(second)
        assert (refused.value.code, refused.value.body["message"]) == ("concurrency_limit_exceeded", TENANT_LIMIT)  # type: ignore[index]
        await asyncio.wait_for(busy, 10)
        assert (await asyncio.wait_for(ask(second), 10)).model == "up-main"  # the places are back
        assert upstream.calls == {"up-main": 3}
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.parametrize(("on_store_error", "answered"), [("closed", False), ("open", True)])
async def test_a_shared_store_that_is_down_is_answered_as_for_limits(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, on_store_error: str, answered: bool
) -> None:
    limits = tenancy()
    limits["tenancy"] = {**limits["tenancy"], "store": "redis://127.0.0.1:1/0", "on_store_error": on_store_error}
    acme = client(make_gateway(**limits), "acme")
    if answered:
        assert (await ask(acme)).model == "up-main"
        assert upstream.calls == {"up-main": 1}
        return
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(acme)
    assert (caught.value.status_code, caught.value.code) == (503, "limits_unavailable")
    assert caught.value.body["message"] == (  # type: ignore[index]
        "The usage store is unreachable, so concurrency limits cannot be checked. Please try again later."
    )
    assert upstream.calls == {}
