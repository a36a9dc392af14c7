"""``Gateway.reload``: a new policy for new calls, the old one to the end of the calls in flight, stores kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Clock, collect, policy_for
from tests.otel import Telemetry
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import ConfigError, Gateway
from unimw.errors import RateLimited

pytestmark = pytest.mark.anyio

ASK = {"model": "smart", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def policy(upstream_url: str, target: str, **overrides: Any) -> dict[str, Any]:
    """The test policy with ``smart`` pointing at ``target`` alone (a read timeout of 10 s, not 1: 200 calls
    delayed at once on a loaded machine must not time out and be retried, which would change the counts)."""
    data = policy_for(upstream_url, aliases={"smart": {"targets": [target], "strategy": "fallback"}}, **overrides)
    for provider in ("primary", "backup"):
        data["providers"][provider] = {**data["providers"][provider], "timeout": 10}
    return data


async def until(condition: Callable[[], bool]) -> None:
    """Wait (10 s at most) until ``condition`` holds: a count the upstream server keeps, polled."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the upstream sets no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
async def reloadable(upstream_url: str) -> AsyncIterator[Callable[..., Gateway]]:
    made: list[Gateway] = []

    def make(target: str = "gpt-main", **options: Any) -> Gateway:
        gateway = Gateway.from_dict(policy(upstream_url, target), **options)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.aclose()


async def test_calls_in_flight_finish_under_their_policy_and_later_ones_use_the_new(
    upstream: OpenAIUpstream, upstream_url: str, reloadable: Callable[..., Gateway]
) -> None:
    gateway = reloadable("gpt-main")
    upstream.plan("up-main", *["delay:0.5"] * 200)
    calls = [asyncio.ensure_future(gateway.chat_completions(ASK)) for _ in range(200)]
    await until(lambda: upstream.calls["up-main"] == 200)  # all 200 are waiting on the old target

    new = await gateway.reload(policy_for_reload := _built(policy(upstream_url, "gpt-backup")))
    assert new is policy_for_reload and gateway.live_policy is new
    async with asyncio.timeout(10):
        answers = await asyncio.gather(*calls)
    assert [a["model"] for a in answers] == ["up-main"] * 200
    assert dict(upstream.calls) == {"up-main": 200}

    after = [await gateway.chat_completions(ASK) for _ in range(3)]
    assert [a["model"] for a in after] == ["up-backup"] * 3
    assert dict(upstream.calls) == {"up-main": 200, "up-backup": 3}
    assert [t.model for t in gateway.policy.aliases["smart"].targets] == ["gpt-main"]  # the one it was made with
    assert [m["id"] for m in gateway.models()["data"]] == ["gpt-main", "gpt-backup", "mock-echo", "smart"]


async def test_a_stream_in_flight_reads_to_its_end_from_the_replaced_policy(
    upstream: OpenAIUpstream, upstream_url: str, reloadable: Callable[..., Gateway]
) -> None:
    gateway = reloadable("gpt-main")
    upstream.plan("up-main", "slow", "slow")
    streams = [await gateway.stream_chat_completions(ASK) for _ in range(2)]
    await gateway.reload(_built(policy(upstream_url, "gpt-backup")))
    retiring = set(gateway._reloading.retiring)
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in retiring)  # its connections stay open for the streams

    for stream in streams:
        chunks = await collect(stream)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text and chunks[-1]["model"] == "up-main"
    async with asyncio.timeout(5):
        await asyncio.gather(*retiring)  # closed once the last stream finished
    assert dict(upstream.calls) == {"up-main": 2}
    await gateway.chat_completions(ASK)
    assert dict(upstream.calls) == {"up-main": 2, "up-backup": 1}


async def test_an_invalid_file_is_refused_with_its_line_and_the_old_policy_keeps_serving(
    upstream: OpenAIUpstream, upstream_url: str, reloadable: Callable[..., Gateway], tmp_path: Path
) -> None:
    gateway = reloadable("gpt-main")
    text = yaml.safe_dump(policy(upstream_url, "gpt-backup"), sort_keys=False)
    broken = text.replace("strategy: fallback", "strategy: sideways")
    line = broken.splitlines().index("    strategy: sideways") + 1
    path = tmp_path / "policies.yaml"
    path.write_text(broken)
    with pytest.raises(ConfigError) as caught:
        await gateway.reload(path)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert gateway._reloading.retiring == set()
    assert (await gateway.chat_completions(ASK))["model"] == "up-main"

    path.write_text(text)  # fixed: now it takes
    await gateway.reload(str(path))
    assert (await gateway.chat_completions(ASK))["model"] == "up-backup"
    assert dict(upstream.calls) == {"up-main": 1, "up-backup": 1}


async def test_limit_counters_survive_a_reload(upstream_url: str, reloadable: Callable[..., Gateway]) -> None:
    clock = Clock()
    limited = {"acme": {"limits": [{"per": "minute", "requests": 2}]}}
    gateway = Gateway.from_dict(policy(upstream_url, "gpt-main", tenants=limited), clock=clock)
    try:
        for _ in range(2):
            await gateway.chat_completions(ASK, tenant="acme")
        await gateway.reload(_built(policy(upstream_url, "gpt-backup", tenants=limited)))
        with pytest.raises(RateLimited) as caught:
            await gateway.chat_completions(ASK, tenant="acme")
        assert caught.value.status == 429
        clock.advance(60)
        assert (await gateway.chat_completions(ASK, tenant="acme"))["model"] == "up-backup"
    finally:
        await gateway.aclose()


async def test_concurrency_slots_held_under_the_old_policy_still_count_after_a_reload(
    upstream: OpenAIUpstream, upstream_url: str
) -> None:
    small = {"plans": {"small": {"max_concurrent": 1}}, "tenants": {"acme": {"plan": "small"}}}
    gateway = Gateway.from_dict(policy(upstream_url, "gpt-main", **small))
    try:
        upstream.plan("up-main", "delay:0.5")
        first = asyncio.ensure_future(gateway.chat_completions(ASK, tenant="acme"))
        await until(lambda: upstream.calls["up-main"] == 1)  # in flight, holding acme's one slot
        await gateway.reload(_built(policy(upstream_url, "gpt-backup", **small)))
        with pytest.raises(RateLimited) as caught:
            await gateway.chat_completions(ASK, tenant="acme")
        assert (caught.value.status, caught.value.code) == (429, "concurrency_limit_exceeded")
        assert (await first)["model"] == "up-main"
        assert (await gateway.chat_completions(ASK, tenant="acme"))["model"] == "up-backup"  # its slot is free
        assert dict(upstream.calls) == {"up-main": 1, "up-backup": 1}
    finally:
        await gateway.aclose()


async def test_a_cached_answer_still_hits_after_a_reload(
    upstream: OpenAIUpstream, upstream_url: str, reloadable: Callable[..., Gateway]
) -> None:
    cached = {"enabled": True}
    gateway = Gateway.from_dict(policy(upstream_url, "gpt-main", cache=cached))
    try:
        first = await gateway.chat_completions(ASK)
        await gateway.reload(_built(policy(upstream_url, "gpt-main", cache=cached, dispatch={"retries": 0})))
        again = await gateway.chat_completions(ASK)
        assert again == first
        assert dict(upstream.calls) == {"up-main": 1}
    finally:
        await gateway.aclose()


async def test_the_cooldown_of_a_failing_target_survives_a_reload(upstream: OpenAIUpstream, upstream_url: str) -> None:
    both = {"smart": {"targets": ["gpt-main", "gpt-backup"], "strategy": "fallback"}}
    cooling = {"retries": 0, "cooldown": 60}
    gateway = Gateway.from_dict(policy_for(upstream_url, aliases=both, dispatch=cooling))
    try:
        upstream.plan("up-main", "503")
        assert (await gateway.chat_completions(ASK))["model"] == "up-backup"
        await gateway.reload(_built(policy_for(upstream_url, aliases=both, dispatch=cooling)))
        assert (await gateway.chat_completions(ASK))["model"] == "up-backup"  # gpt-main still cooling down
        assert dict(upstream.calls) == {"up-main": 1, "up-backup": 2}
    finally:
        await gateway.aclose()


async def test_aclose_closes_a_replaced_policy_still_draining(upstream: OpenAIUpstream, upstream_url: str) -> None:
    gateway = Gateway.from_dict(policy(upstream_url, "gpt-main"))
    upstream.plan("up-main", "slow")
    stream = await gateway.stream_chat_completions(ASK)
    await gateway.reload(_built(policy(upstream_url, "gpt-backup")))
    retiring = set(gateway._reloading.retiring)
    with contextlib.suppress(Exception):
        await stream.aclose()  # type: ignore[attr-defined]
    await gateway.aclose()
    assert all(task.done() for task in retiring)
    assert all(g._reloading.closed for g in gateway._reloading.generations)


def _built(data: dict[str, Any]) -> Any:
    from unimw.loader import build_policy

    return build_policy(data)


async def test_spans_and_metrics_go_on_to_the_same_providers_after_a_reload(
    upstream: OpenAIUpstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry = Telemetry()
    gateway = Gateway.from_dict(policy(upstream_url, "gpt-main"), **telemetry.providers)
    try:
        await gateway.chat_completions(ASK)
        await gateway.reload(_built(policy(upstream_url, "gpt-backup")))
        await gateway.chat_completions(ASK)
    finally:
        await gateway.aclose()
    chats = [s for s in telemetry.spans() if s["name"].startswith("chat ")]
    assert [s["name"] for s in chats] == ["chat smart", "chat smart"]
    durations = telemetry.metrics()["gen_ai.client.operation.duration"]
    assert sorted((point["gen_ai.response.model"], value[0]) for point, value in durations) == [
        ("up-backup", 1),
        ("up-main", 1),
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
