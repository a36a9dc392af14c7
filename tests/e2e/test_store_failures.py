"""When a store or a hook fails: a clear answer, never a silent bypass of limits, never a lost response."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import sdk
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import AuthenticationFailed, Gateway

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def limited(on_store_error: str) -> dict[str, object]:
    return {
        "tenancy": {"resolve": [{"header": "X-Tenant-Id"}], "store": DOWN, "on_store_error": on_store_error},
        "tenants": {"acme": {"limits": [{"per": "minute", "requests": 10}]}},
    }


async def test_limits_fail_closed_with_503(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    client = sdk(make_gateway(**limited("closed")), **{"X-Tenant-Id": "acme"})
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO)
    assert (caught.value.status_code, caught.value.code) == (503, "limits_unavailable")
    assert not upstream.calls


async def test_limits_can_fail_open(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    client = sdk(make_gateway(**limited("open")), **{"X-Tenant-Id": "acme"})
    completion = await client.chat.completions.create(model="gpt-main", messages=HELLO)
    assert completion.model == "up-main"


async def test_an_unreachable_cache_answers_uncached(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(cache={"enabled": True, "store": DOWN}))
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO)
        assert raw.headers["x-unimw-cache"] == "bypass"
        assert raw.parse().model == "up-main"
    assert upstream.calls == {"up-main": 2}


async def test_a_failing_usage_sink_loses_records_not_responses(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = make_gateway(usage={"call": "tests.e2e.tenant_hooks:broken_sink"})
    completion = await sdk(gateway).chat.completions.create(model="gpt-main", messages=HELLO)
    assert completion.model == "up-main"
    await gateway.flush()
    assert "a usage sink failed; 1 record(s) lost" in caplog.text


async def test_async_alert_hooks_are_awaited(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    from tests.e2e import tenant_hooks

    tenant_hooks.alerts.clear()
    gateway = make_gateway(
        tenancy={
            "resolve": [{"header": "X-Tenant-Id"}],
            "alerts": {"at": [1.0], "call": "tests.e2e.tenant_hooks:record_alert_later"},
        },
        tenants={"acme": {"limits": [{"per": "day", "requests": 1}]}},
    )
    await sdk(gateway, **{"X-Tenant-Id": "acme"}).chat.completions.create(model="gpt-main", messages=HELLO)
    for _ in range(50):
        if tenant_hooks.alerts:
            break
        await asyncio.sleep(0.01)
    assert [(a.quantity, a.used, a.limit) for a in tenant_hooks.alerts] == [("requests", 1.0, 1.0)]


async def test_direct_calls_name_a_known_tenant(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    gateway = make_gateway(tenants={"acme": {}})
    with pytest.raises(AuthenticationFailed, match="Unknown tenant 'initech'"):
        await gateway.chat_completions({"model": "gpt-main", "messages": HELLO}, tenant="initech")
    assert not upstream.calls


async def test_the_cache_extension_must_be_an_object(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(cache={"enabled": True}))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO, extra_body={"unimw_cache": "off"})
    assert caught.value.param == "unimw_cache"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="gpt-main", messages=HELLO, extra_body={"unimw_cache": {"ttl": "soon"}}
        )
    assert caught.value.param == "unimw_cache.ttl"
