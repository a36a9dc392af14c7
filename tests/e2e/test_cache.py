"""The response cache through the official SDK; the upstream's call count is the assertion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Clock, sdk
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UpstreamError
from unimw.tenants import hash_key

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "Hello from up-main! The capital of France is Paris."
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def cached(**cache: Any) -> dict[str, Any]:
    return {"cache": {"enabled": True, **cache}}


async def create(client: openai.AsyncOpenAI, **kwargs: Any) -> tuple[str | None, Any]:
    """One call; returns the x-unimw-cache header and the parsed completion."""
    raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO, **kwargs)
    return raw.headers.get("x-unimw-cache"), raw.parse()


async def stream_text(client: openai.AsyncOpenAI, **kwargs: Any) -> tuple[str | None, str, list[Any]]:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-main", messages=HELLO, stream=True, **kwargs
    )
    chunks = [chunk async for chunk in raw.parse()]
    return (
        raw.headers.get("x-unimw-cache"),
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        chunks,
    )


async def test_miss_then_hit(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    client = sdk(make_gateway(**cached()))
    status, first = await create(client)
    assert (status, first.choices[0].message.content) == ("miss", ANSWER)
    status, second = await create(client)
    assert status == "hit"
    assert second.model_dump() == first.model_dump()  # the original usage included
    assert upstream.calls == {"up-main": 1}


async def test_key_order_and_ignored_fields_do_not_split_the_cache(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached()))
    await create(client, temperature=0, user="alice", metadata={"run": "1"})
    status, _ = await create(client, user="bob", temperature=0, metadata={"run": "2"})
    assert status == "hit"
    status, _ = await create(client, temperature=0.5)
    assert status == "miss"
    assert upstream.calls == {"up-main": 2}


async def test_streams_and_plain_requests_share_entries(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached()))
    status, text, _ = await stream_text(client)
    assert (status, text) == ("miss", ANSWER)
    status, completion = await create(client)  # plain, from the streamed entry
    assert (status, completion.choices[0].message.content) == ("hit", ANSWER)
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    status, text, chunks = await stream_text(client, stream_options={"include_usage": True})  # replayed
    assert (status, text) == ("hit", ANSWER)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert upstream.calls == {"up-main": 1}


async def test_a_plain_entry_replays_as_a_stream(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached()))
    await create(client)
    status, text, chunks = await stream_text(client)
    assert (status, text) == ("hit", ANSWER)
    assert all(c.choices for c in chunks)  # no usage chunk unless asked
    assert upstream.calls == {"up-main": 1}


async def test_replayed_tool_calls_accumulate_in_the_sdk(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached()))
    tools = [*TOOLS, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    async with client.chat.completions.stream(model="gpt-main", messages=HELLO, tools=tools) as stream:  # type: ignore[arg-type]
        live = await stream.get_final_completion()
    async with client.chat.completions.stream(model="gpt-main", messages=HELLO, tools=tools) as stream:  # type: ignore[arg-type]
        replayed = await stream.get_final_completion()
    calls = [(c.id, c.function.name, c.function.arguments) for c in replayed.choices[0].message.tool_calls or []]
    assert calls == [(c.id, c.function.name, c.function.arguments) for c in live.choices[0].message.tool_calls or []]
    assert [name for _, name, _ in calls] == ["get_weather", "get_time"]
    assert replayed.choices[0].finish_reason == "tool_calls"
    assert upstream.calls == {"up-main": 1}


async def test_cache_control_and_the_body_extension(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**cached())
    plain = sdk(gateway)
    assert (await create(sdk(gateway, **{"Cache-Control": "no-store"})))[0] == "bypass"
    assert (await create(plain))[0] == "miss"  # no-store stored nothing
    assert (await create(sdk(gateway, **{"Cache-Control": "no-cache"})))[0] == "bypass"  # skips the lookup
    assert (await create(plain, extra_body={"unimw_cache": {"mode": "no-cache"}}))[0] == "bypass"
    assert (await create(plain))[0] == "hit"
    assert upstream.calls == {"up-main": 4}
    assert all("unimw_cache" not in r for r in upstream.requests)  # never sent upstream
    with pytest.raises(openai.BadRequestError) as caught:
        await create(plain, extra_body={"unimw_cache": {"mode": "sometimes"}})
    assert caught.value.param == "unimw_cache.mode"


async def test_ttl_per_request_and_expiry(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    clock = Clock()
    client = sdk(make_gateway(clock=clock, **cached(ttl="1h")))
    await create(client, extra_body={"unimw_cache": {"ttl": "10s"}})
    clock.advance(9)
    assert (await create(client))[0] == "hit"
    clock.advance(2)
    assert (await create(client))[0] == "miss"  # expired after 10 s, stored again for 1 h
    clock.advance(3599)
    assert (await create(client))[0] == "hit"
    assert upstream.calls == {"up-main": 2}


async def test_entries_are_per_tenant_unless_global(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    tenants = {
        "tenancy": {"resolve": ["api_key"]},
        "tenants": {"a": {"api_keys": [hash_key("sk-a")]}, "b": {"api_keys": [hash_key("sk-b")]}},
    }
    gateway = make_gateway(**cached(models={"gpt-backup": {"scope": "global"}}), **tenants)
    a, b = sdk(gateway, "sk-a"), sdk(gateway, "sk-b")
    assert (await create(a))[0] == "miss"
    assert (await create(b))[0] == "miss"  # B never gets A's entry
    assert (await create(a))[0] == "hit"
    await a.chat.completions.create(model="gpt-backup", messages=HELLO)
    raw = await b.chat.completions.with_raw_response.create(model="gpt-backup", messages=HELLO)
    assert raw.headers["x-unimw-cache"] == "hit"
    assert upstream.calls == {"up-main": 2, "up-backup": 1}


async def test_only_temperature_zero_when_the_policy_says_so(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached(when="temperature_zero")))
    assert (await create(client))[0] == "bypass"
    assert (await create(client))[0] == "bypass"
    assert (await create(client, temperature=0))[0] == "miss"
    assert (await create(client, temperature=0))[0] == "hit"
    assert upstream.calls == {"up-main": 3}


async def test_fifty_identical_misses_make_one_upstream_call(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached()))
    upstream.plan("up-main", "delay:0.3")
    results = await asyncio.gather(*(create(client) for _ in range(25)), *(stream_text(client) for _ in range(25)))
    assert upstream.calls == {"up-main": 1}
    statuses = [r[0] for r in results]
    assert statuses.count("miss") == 1 and statuses.count("hit") == 49
    assert {r[1].choices[0].message.content for r in results[:25]} == {ANSWER}
    assert {r[1] for r in results[25:]} == {ANSWER}


async def test_followers_of_a_streamed_leader_get_the_stream_replayed(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached()))
    upstream.plan("up-main", "slow")
    results = await asyncio.gather(*(stream_text(client) for _ in range(10)))
    assert [r[1] for r in results] == [ANSWER] * 10
    assert sorted(r[0] or "" for r in results) == ["hit"] * 9 + ["miss"]
    assert upstream.calls == {"up-main": 1}


async def test_a_failing_leader_does_not_poison_the_followers(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**cached(), dispatch={"retries": 0, "cooldown": 0})
    upstream.plan("up-main", "500:0.2")  # the leader waits 0.2 s, then fails
    client = sdk(gateway)
    outcomes = await asyncio.gather(*(create(client) for _ in range(50)), return_exceptions=True)
    assert upstream.calls == {"up-main": 1}
    assert all(isinstance(o, openai.InternalServerError) for o in outcomes)
    status, completion = await create(client)  # nothing was cached: the next call goes upstream
    assert (status, completion.choices[0].message.content) == ("miss", ANSWER)
    assert upstream.calls == {"up-main": 2}


async def test_failed_cut_and_filtered_answers_are_never_stored(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**cached(), dispatch={"retries": 0, "cooldown": 0})
    client = sdk(gateway)
    upstream.plan("up-main", "filtered")
    assert (await create(client))[1].choices[0].finish_reason == "content_filter"
    upstream.plan("up-main", "drop")
    with pytest.raises(openai.APIError):
        await stream_text(client)
    upstream.plan("up-main", "400")
    with pytest.raises(openai.BadRequestError):
        await create(client)
    status, completion = await create(client)
    assert (status, completion.choices[0].finish_reason) == ("miss", "stop")
    assert upstream.calls == {"up-main": 4}


async def test_a_hit_is_free_and_recorded_as_a_hit(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        **cached(),
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        usage={"jsonl": str(records)},
        tenancy={"resolve": ["api_key"]},
        tenants={"a": {"api_keys": [hash_key("sk-a")], "limits": [{"per": "month", "usd": 5}]}},
    )
    client = sdk(gateway, "sk-a")
    await create(client, max_tokens=5)  # spends the whole budget
    for _ in range(3):
        assert (await create(client, max_tokens=5))[0] == "hit"  # still served: hits are free
    with pytest.raises(openai.RateLimitError):
        await create(client, max_tokens=4)  # a miss needs budget
    await gateway.flush()
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert [(r["cache_hit"], r["cost_usd"], r["output_tokens"], r["provider"]) for r in lines] == [
        (False, 5.0, 5, "primary"),
        *[(True, 0.0, 5, "primary")] * 3,
    ]


async def test_a_changed_mapping_does_not_serve_old_entries(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    store = unique("shared")
    first = make_gateway(**cached(store=require_redis()))
    await create(sdk(first), extra_body={"nonce": store})
    remapped = make_gateway(
        **cached(store=require_redis()), models={"gpt-main": {"provider": "backup", "model": "up-backup"}}
    )
    status, completion = await create(sdk(remapped), extra_body={"nonce": store})
    assert (status, completion.model) == ("miss", "up-backup")


async def test_redis_store_is_shared_between_gateways(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    url = require_redis()
    nonce = unique("n")
    one, two = make_gateway(**cached(store=url)), make_gateway(**cached(store=url))
    status, _ = await create(sdk(one), extra_body={"nonce": nonce})
    assert status == "miss"
    status, completion = await create(sdk(two), extra_body={"nonce": nonce})
    assert (status, completion.choices[0].message.content) == ("hit", ANSWER)
    assert upstream.calls == {"up-main": 1}


async def test_the_cache_off_sends_no_header(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    status, _ = await create(sdk(gateway))
    assert status is None
    with pytest.raises(UpstreamError):
        upstream.plan("up-main", "400")
        await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})


async def test_the_cache_field_never_reaches_the_upstream_even_with_the_cache_off(
    gateway: Gateway, upstream: OpenAIUpstream
) -> None:
    await create(sdk(gateway), extra_body={"unimw_cache": {"mode": "no-store"}})
    assert "unimw_cache" not in upstream.requests[0]


async def test_charge_full_bills_a_hit_like_the_original_call(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(
        **cached(charge="full"),
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        usage={"jsonl": str(records)},
        tenancy={"resolve": ["api_key"]},
        tenants={"a": {"api_keys": [hash_key("sk-a")], "limits": [{"per": "month", "usd": 10}]}},
    )
    client = sdk(gateway, "sk-a")
    assert (await create(client, max_tokens=5))[0] == "miss"
    assert (await create(client, max_tokens=5))[0] == "hit"  # charged 5 USD again: the budget is spent
    with pytest.raises(openai.RateLimitError):
        await create(client, max_tokens=5)
    await gateway.flush()
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert [(r["cache_hit"], r["cost_usd"]) for r in lines] == [(False, 5.0), (True, 5.0)]
    assert upstream.calls == {"up-main": 1}


@pytest.mark.parametrize(
    "control",
    [{"ttl": 1e300}, {"ttl": -5}, {"ttl": 0}, {"ttl": "31d"}, {"ttl": True}, {"ttl": [1]}, {"ttl": "soon"}],
    ids=["huge", "negative", "zero", "past-30-days", "boolean", "array", "not-a-duration"],
)
async def test_a_requested_ttl_out_of_bounds_is_400_before_any_call(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, control: dict[str, Any]
) -> None:
    client = sdk(make_gateway(**cached(store=require_redis())))
    with pytest.raises(openai.BadRequestError) as caught:
        await create(client, extra_body={"unimw_cache": control, "nonce": unique("n")})
    assert (caught.value.param, caught.value.code) == ("unimw_cache.ttl", "invalid_value")
    assert upstream.calls == {}


async def test_unknown_cache_extension_fields_are_400(make_gateway: Callable[..., Gateway]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await create(sdk(make_gateway(**cached())), extra_body={"unimw_cache": {"tll": "10s"}})
    assert (caught.value.param, caught.value.code) == ("unimw_cache", "unknown_parameter")


async def test_the_longest_ttl_is_stored_on_redis(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    client = sdk(make_gateway(**cached(store=require_redis())))
    nonce = unique("n")
    assert (await create(client, extra_body={"unimw_cache": {"ttl": "30d"}, "nonce": nonce}))[0] == "miss"
    assert (await create(client, extra_body={"nonce": nonce}))[0] == "hit"
    assert upstream.calls == {"up-main": 1}
