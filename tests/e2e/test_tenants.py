"""Tenants, model access, rate limits and budgets, through the official SDK."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Clock, sdk, sdk_http
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.tenants import hash_key

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
ACME_KEY = "sk-acme-0123456789"
GLOBEX_KEY = "sk-globex-9876543210"


def tenancy(**tenants: Any) -> dict[str, Any]:
    return {
        "tenancy": {"resolve": ["api_key", {"header": "X-Tenant-Id"}]},
        "tenants": {
            "acme": {"api_keys": [hash_key(ACME_KEY)], **tenants.get("acme", {})},
            "globex": {"api_keys": [hash_key(GLOBEX_KEY)], "models": ["gpt-backup"], **tenants.get("globex", {})},
        },
    }


async def test_tenant_by_key_hash_and_header(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    gateway = make_gateway(**tenancy())
    completion = await sdk(gateway, ACME_KEY).chat.completions.create(model="gpt-main", messages=HELLO)
    assert completion.model == "up-main"
    by_header = sdk(gateway, "not-a-key", **{"X-Tenant-Id": "globex"})
    assert (await by_header.chat.completions.create(model="gpt-backup", messages=HELLO)).model == "up-backup"


async def test_a_wrong_key_is_401(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    gateway = make_gateway(**tenancy())
    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk(gateway, "sk-wrong").chat.completions.create(model="gpt-main", messages=HELLO)
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong" not in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, "sk-wrong", **{"X-Tenant-Id": "initech"}).models.list()
    assert not upstream.calls


async def test_a_default_tenant_takes_unidentified_callers(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    policy = tenancy()
    policy["tenancy"]["default"] = "globex"
    gateway = make_gateway(**policy)
    client = sdk(gateway, "anything")
    assert [m.id for m in (await client.models.list()).data] == ["gpt-backup"]


async def test_a_callable_names_the_tenant(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    policy = tenancy()
    policy["tenancy"]["resolve"] = [{"callable": "tests.e2e.tenant_hooks:tenant_from_scope"}]
    gateway = make_gateway(**policy)
    client = sdk(gateway, "x", **{"X-User-Org": "globex"})
    assert [m.id for m in (await client.models.list()).data] == ["gpt-backup"]
    with pytest.raises(openai.AuthenticationError):
        await sdk(gateway, "x").models.list()


async def test_models_a_tenant_may_not_use_are_hidden_and_refused(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy())
    globex = sdk(gateway, GLOBEX_KEY)
    assert [m.id for m in (await globex.models.list()).data] == ["gpt-backup"]
    with pytest.raises(openai.NotFoundError) as caught:
        await globex.chat.completions.create(model="gpt-main", messages=HELLO)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await globex.models.retrieve("smart")
    assert not upstream.calls
    acme = sdk(gateway, ACME_KEY)
    assert len((await acme.models.list()).data) == 4


async def test_max_tokens_guard_caps_the_request(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(acme={"max_tokens": 3}))
    client = sdk(gateway, ACME_KEY)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=100)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, max_completion_tokens=2)
    await client.chat.completions.create(model="gpt-main", messages=HELLO)
    assert [(r.get("max_tokens"), r.get("max_completion_tokens")) for r in upstream.requests] == [
        (3, None),
        (None, 2),
        (None, 3),
    ]


async def test_rate_limit_refusal_reaches_the_sdk_with_headers(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    clock = Clock()
    gateway = make_gateway(
        clock=clock, **tenancy(acme={"limits": [{"per": "minute", "requests": 2, "tokens": 100000}]})
    )
    client = sdk(gateway, ACME_KEY)
    raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    assert raw.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.advance(10)
    await client.chat.completions.create(model="gpt-main", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO)
    error = caught.value
    assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
    assert error.response.headers["retry-after"] == "50"  # the first call leaves the window 60 s after it was made
    assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert upstream.calls == {"up-main": 2}
    clock.advance(50)
    await client.chat.completions.create(model="gpt-main", messages=HELLO)


async def test_budget_refusal_is_insufficient_quota(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        **tenancy(acme={"limits": [{"per": "month", "usd": 10}]}),
    )
    client = sdk(gateway, ACME_KEY)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=5)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=5)
    assert (caught.value.code, caught.value.type) == ("insufficient_quota", "insufficient_quota")
    assert upstream.calls == {"up-main": 2}


def priced(**extra: Any) -> dict[str, Any]:
    """gpt-main at 1 USD per output token (and free input), so costs are easy to count."""
    return {
        "models": {"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        **extra,
    }


async def test_exactly_n_of_300_concurrent_calls_fit_the_budget(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    """Each call reserves 5 USD (5 output tokens at most) and uses exactly that; 37 fit in 185 USD."""
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        **priced(usage={"jsonl": str(records)}, **tenancy(acme={"limits": [{"per": "month", "usd": 185}]}))
    )
    async with httpx.AsyncClient(transport=gateway.transport()) as http:
        client = openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key=ACME_KEY, http_client=sdk_http(http), max_retries=0
        )

        async def one() -> str:
            try:
                await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=5)
                return "ok"
            except openai.RateLimitError as error:
                return str(error.code)

        outcomes = await asyncio.gather(*(one() for _ in range(300)))
    assert outcomes.count("ok") == 37
    assert outcomes.count("insufficient_quota") == 263
    assert upstream.calls == {"up-main": 37}
    await gateway.flush()
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 37 and sum(r["cost_usd"] for r in lines) == 185
    spent = await gateway._limiter.store.totals([c for c in (await _acme_counters(gateway))], gateway._limiter._clock())
    assert spent == (185_000_000,)


async def _acme_counters(gateway: Gateway) -> list[Any]:
    from unimw.tenants import Caller

    route = gateway._router.resolve("gpt-main")
    return [c for c, _ in gateway._limiter._counters(Caller("acme"), route)]


async def test_streams_are_charged_from_the_usage_chunk_which_is_stripped(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        **priced(usage={"jsonl": str(records)}, **tenancy(acme={"limits": [{"per": "month", "usd": 100}]}))
    )
    client = sdk(gateway, ACME_KEY)
    stream = await client.chat.completions.create(model="gpt-main", messages=HELLO, stream=True, max_tokens=4)
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)  # the client did not ask for usage, so none is sent
    assert upstream.requests[0]["stream_options"] == {"include_usage": True}  # but unimw asked upstream
    await gateway.flush()
    record = json.loads(records.read_text())
    assert (record["output_tokens"], record["cost_usd"], record["status"], record["stream"]) == (4, 4.0, "ok", True)


async def test_a_client_leaving_mid_stream_is_charged_what_was_produced(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        **priced(usage={"jsonl": str(records)}, **tenancy(acme={"limits": [{"per": "month", "usd": 10_000}]}))
    )
    upstream.plan("up-main", "slow")
    client = sdk(gateway, ACME_KEY)
    stream = await client.chat.completions.create(model="gpt-main", messages=HELLO, stream=True)
    text = ""
    async for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        if text.startswith("Hello from"):
            break
    await stream.close()
    for _ in range(100):
        await gateway.flush()
        if records.exists():
            break
        await asyncio.sleep(0.02)
    record = json.loads(records.read_text())
    assert record["status"] == "cancelled"
    # "Hello", " from" (and maybe the next word in flight): about 10 bytes, 3 tokens, not the whole answer.
    assert 2 <= record["output_tokens"] <= 5
    assert record["cost_usd"] == record["output_tokens"]
    assert upstream.calls == {"up-main": 1}


async def test_an_upstream_failure_mid_stream_charges_only_what_came(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        **priced(usage={"jsonl": str(records)}, **tenancy(acme={"limits": [{"per": "month", "usd": 10_000}]}))
    )
    upstream.plan("up-main", "drop")
    client = sdk(gateway, ACME_KEY)
    stream = await client.chat.completions.create(model="gpt-main", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await gateway.flush()
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert record["status"] == "error"
    assert record["output_tokens"] == 5  # "Hello from up-main!" is 19 bytes
    assert record["cost_usd"] == 5


async def test_a_fallback_is_charged_once_for_the_target_that_answered(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        models={
            "gpt-main": {"provider": "primary", "model": "up-main", "price": {"output": 1_000_000}},
            "gpt-backup": {"provider": "backup", "model": "up-backup", "price": {"output": 2_000_000}},
        },
        usage={"jsonl": str(records)},
        **tenancy(acme={"limits": [{"per": "day", "usd": 100}]}),
    )
    upstream.plan("up-main", "503", "503")
    await sdk(gateway, ACME_KEY).chat.completions.create(model="smart", messages=HELLO, max_tokens=3)
    await gateway.flush()
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert (record["provider"], record["upstream_model"], record["cost_usd"]) == ("backup", "up-backup", 6.0)
    spent = await gateway._limiter.store.totals(await _acme_counters(gateway), gateway._limiter._clock())
    assert spent == (6_000_000,)


async def test_a_failed_call_costs_nothing(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    gateway = make_gateway(**priced(**tenancy(acme={"limits": [{"per": "day", "usd": 10_000, "requests": 10}]})))
    upstream.plan("up-main", "400")
    with pytest.raises(openai.BadRequestError):
        await sdk(gateway, ACME_KEY).chat.completions.create(model="gpt-main", messages=HELLO)
    requests, usd = await gateway._limiter.store.totals(await _acme_counters(gateway), gateway._limiter._clock())
    assert (requests, usd) == (1, 0)


async def test_end_user_limits_are_kept_apart(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    gateway = make_gateway(**tenancy(acme={"limits": [{"per": "hour", "requests": 1, "scope": "end_user"}]}))
    client = sdk(gateway, ACME_KEY)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, user="alice")
    await client.chat.completions.create(model="gpt-main", messages=HELLO, user="bob")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-main", messages=HELLO, user="alice")
    bob_by_header = sdk(gateway, ACME_KEY, **{"X-End-User": "bob"})
    with pytest.raises(openai.RateLimitError):
        await bob_by_header.chat.completions.create(model="gpt-main", messages=HELLO)


async def test_global_limits_on_a_model_apply_to_every_tenant(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(limits=[{"model": "gpt-main", "per": "minute", "requests": 1}], **tenancy())
    await sdk(gateway, ACME_KEY).chat.completions.create(model="gpt-main", messages=HELLO)
    with pytest.raises(openai.RateLimitError):
        await sdk(gateway, "x", **{"X-Tenant-Id": "acme"}).chat.completions.create(model="smart", messages=HELLO)
    await sdk(gateway, GLOBEX_KEY).chat.completions.create(model="gpt-backup", messages=HELLO)


async def test_alerts_fire_once_per_window(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    from tests.e2e import tenant_hooks

    tenant_hooks.alerts.clear()
    policy = priced(**tenancy(acme={"limits": [{"per": "month", "usd": 10}]}))
    policy["tenancy"]["alerts"] = {"at": [0.5, 1.0], "call": "tests.e2e.tenant_hooks:record_alert"}
    gateway = make_gateway(**policy)
    client = sdk(gateway, ACME_KEY)
    for _ in range(2):  # 3 USD, then 6 USD: past 50 % once
        await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=3)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=3)
    assert [(a.threshold, a.used, a.limit, a.quantity, a.tenant) for a in tenant_hooks.alerts] == [
        (0.5, 6.0, 10.0, "usd", "acme")
    ]


async def test_keys_never_appear_in_logs_errors_or_records(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        usage={"jsonl": str(records)}, **tenancy(acme={"limits": [{"per": "minute", "requests": 1}]})
    )
    client = sdk(gateway, ACME_KEY)
    await client.chat.completions.create(model="gpt-main", messages=HELLO)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO)
    await gateway.flush()
    seen = records.read_text() + caplog.text + str(caught.value.body) + repr(gateway.policy)
    assert ACME_KEY not in seen and "sk-primary-secret" not in seen


async def test_an_upstream_without_usage_is_charged_an_estimate(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        **priced(usage={"jsonl": str(records)}, **tenancy(acme={"limits": [{"per": "month", "usd": 10_000}]}))
    )
    upstream.plan("up-main", "nousage")
    await sdk(gateway, ACME_KEY).chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=100)
    await gateway.flush()
    record = json.loads(records.read_text())
    # "Hello from up-main! The capital of France is Paris." is 52 bytes: 13 tokens at 4 bytes a token.
    assert (record["output_tokens"], record["cost_usd"]) == (13, 13.0)
    assert record["input_tokens"] > 0


async def test_an_async_callable_names_the_tenant(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    policy = tenancy()
    policy["tenancy"]["resolve"] = [{"callable": "tests.e2e.tenant_hooks:tenant_from_scope_async"}]
    gateway = make_gateway(**policy)
    client = sdk(gateway, "x", **{"X-User-Org": "globex"})
    assert [m.id for m in (await client.models.list()).data] == ["gpt-backup"]


async def test_the_default_cap_applies_only_to_requests_without_one(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    budget = {"acme": {"limits": [{"per": "day", "tokens": 1_000_000}]}}
    gateway = make_gateway(
        tenancy={"resolve": ["api_key"], "default_max_tokens": 100}, tenants=tenancy(**budget)["tenants"]
    )
    client = sdk(gateway, ACME_KEY)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, max_completion_tokens=500)
    await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=50)
    await client.chat.completions.create(model="gpt-main", messages=HELLO)
    caps = [(r.get("max_completion_tokens"), r.get("max_tokens")) for r in upstream.requests]
    assert caps == [(500, None), (None, 50), (100, None)]


@pytest.mark.parametrize(
    ("limits", "code", "kind"),
    [
        # the request counter refuses; the token and dollar counters beside it fit
        ([{"per": "minute", "requests": 2}, {"per": "minute", "tokens": 100000}, {"per": "day", "usd": 1000}],
         "rate_limit_exceeded", "requests"),
        # the token counter refuses (a call reserves its prompt estimate plus max_tokens)
        ([{"per": "minute", "requests": 100}, {"per": "minute", "tokens": 50}, {"per": "day", "usd": 1000}],
         "rate_limit_exceeded", "tokens"),
        # the dollar counter refuses
        ([{"per": "minute", "requests": 100}, {"per": "minute", "tokens": 100000}, {"per": "day", "usd": 10}],
         "insufficient_quota", "insufficient_quota"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_refusal_among_several_counters_is_429_with_its_code_and_type(
    backend: str,
    make_gateway: Callable[..., Gateway],
    upstream: OpenAIUpstream,
    limits: list[dict[str, Any]],
    code: str,
    kind: str,
) -> None:
    """The counter that refused names the error, as OpenAI's 429s do: type ``requests`` or ``tokens``, or
    ``insufficient_quota`` for a budget (its own code too)."""
    tenant = unique("acme")  # counters on the shared Redis are keyed by tenant: a name of this run's own
    gateway = make_gateway(
        **priced(
            tenancy={
                "resolve": [{"header": "X-Tenant-Id"}],
                "store": "memory://" if backend == "memory" else require_redis(),
            },
            tenants={tenant: {"limits": limits}},
        )
    )
    client = sdk(gateway, **{"X-Tenant-Id": tenant})
    for _ in range(2):
        await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=5)
    assert (caught.value.status_code, caught.value.code, caught.value.type) == (429, code, kind)
    assert upstream.calls == {"up-main": 2}
