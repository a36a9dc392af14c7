"""Retries, fallback and cooldown against a real loopback upstream that misbehaves on cue."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import collect, policy_for
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UpstreamError

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


async def test_retries_a_5xx_on_the_same_target(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    upstream.plan("up-main", "500")
    completion = await client.chat.completions.create(model="gpt-main", messages=HELLO)
    assert completion.model == "up-main"
    assert upstream.calls == {"up-main": 2}


async def test_gives_up_after_the_configured_retries(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(dispatch={"retries": 3, "backoff": "1ms", "cooldown": 0})
    upstream.plan("up-main", "503", "503", "503", "503", "ok")
    with pytest.raises(UpstreamError) as caught:
        await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    assert caught.value.status == 503
    assert upstream.calls == {"up-main": 4}


async def test_honours_retry_after_when_no_other_target(upstream_url: str, upstream: OpenAIUpstream) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = policy_for(upstream_url, dispatch={"retries": 1, "backoff": "1ms", "cooldown": 0})
    upstream.plan("up-main", "429:0.3")
    async with Gateway.from_dict(policy, sleep=sleep) as gateway:
        completion = await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    assert completion["model"] == "up-main"
    assert (waits, upstream.calls) == ([0.3], {"up-main": 2})


@pytest.mark.parametrize(
    ("retry_after", "waits", "calls"),
    [
        ("2", [2.0], {"up-main": 2}),  # short enough: waited for on the same target
        ("5", [], {"up-main": 1, "up-backup": 1}),  # longer: the next target at once, as by default
    ],
)
async def test_a_short_retry_after_may_be_waited_for_on_the_same_target(
    upstream_url: str, upstream: OpenAIUpstream, retry_after: str, waits: list[float], calls: dict[str, int]
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    dispatch = {"retries": 1, "cooldown": 0, "retry_after_same_target_up_to": "3s"}
    upstream.plan("up-main", f"429:{retry_after}")
    async with Gateway.from_dict(policy_for(upstream_url, dispatch=dispatch), sleep=sleep) as gateway:
        await gateway.chat_completions({"model": "smart", "messages": HELLO})
    assert (slept, upstream.calls) == (waits, calls)


async def test_too_long_a_retry_after_is_not_waited_for(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(dispatch={"retries": 2, "max_retry_after": "1s", "cooldown": 0})
    upstream.plan("up-main", "429:30")
    with pytest.raises(UpstreamError) as caught:
        await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    assert caught.value.status == 429
    assert upstream.calls == {"up-main": 1}


@pytest.mark.parametrize("fault", ["429", "500", "hang", "badjson"])
async def test_falls_back_to_the_next_target(client: openai.AsyncOpenAI, upstream: OpenAIUpstream, fault: str) -> None:
    upstream.plan("up-main", fault, fault)
    completion = await client.chat.completions.create(model="smart", messages=HELLO)
    assert completion.choices[0].message.content == "Hello from up-backup! The capital of France is Paris."
    # 429 and timeouts move on at once; 5xx and bad answers get their retry first.
    assert upstream.calls["up-main"] == (1 if fault in ("429", "hang") else 2)
    assert upstream.calls["up-backup"] == 1


async def test_a_client_error_does_not_fall_back(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    upstream.plan("up-main", "400")
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="smart", messages=HELLO)
    assert upstream.calls == {"up-main": 1}


async def test_a_stream_falls_back_before_its_first_chunk(client: openai.AsyncOpenAI, upstream: OpenAIUpstream) -> None:
    upstream.plan("up-main", "503", "503")
    stream = await client.chat.completions.create(model="smart", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "Hello from up-backup! The capital of France is Paris."
    assert upstream.calls == {"up-main": 2, "up-backup": 1}


async def test_a_failed_target_cools_down(make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    gateway = make_gateway(dispatch={"retries": 0, "cooldown": "60s"})
    upstream.plan("up-main", "500")
    for _ in range(3):
        await gateway.chat_completions({"model": "smart", "messages": HELLO})
    assert upstream.calls == {"up-main": 1, "up-backup": 3}


async def test_every_target_cooling_still_gets_tried(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(dispatch={"retries": 0, "cooldown": "60s"})
    upstream.plan("up-main", "500")
    with pytest.raises(UpstreamError):
        await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    completion = await gateway.chat_completions({"model": "gpt-main", "messages": HELLO})
    assert isinstance(completion, dict) and upstream.calls == {"up-main": 2}


async def test_weighted_alias_spreads_and_falls_back(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(
        aliases={"split": {"strategy": "weighted", "targets": [{"model": "gpt-main", "weight": 3}, "gpt-backup"]}}
    )
    for _ in range(200):
        await gateway.chat_completions({"model": "split", "messages": HELLO})
    assert upstream.calls["up-main"] + upstream.calls["up-backup"] == 200
    assert 110 < upstream.calls["up-main"] < 190  # 150 expected; 3:1 by weight


async def test_streamed_chunks_pass_through_as_sent(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    result = await gateway.stream_chat_completions(
        {"model": "gpt-main", "messages": HELLO, "stream_options": {"include_usage": True}}
    )
    chunks = await collect(result)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["model"] == "up-main" for c in chunks)
