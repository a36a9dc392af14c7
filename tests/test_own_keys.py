"""Adapters for tenants' own keys: one per (provider, key), a bounded LRU, closed only when no call holds them.

The adapters are real OpenAI-wire adapters calling the loopback upstream
through a thin ASGI wrapper that records the client port of each request:
a request on the port of an earlier one reused its pooled connection (the
adapter's HTTP session is open), a request on a new port came through a new
session (the old one was closed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.servers import serve
from tests.upstreams.openai_app import OpenAIUpstream
from unimw.adapters.base import Adapter, Target
from unimw.adapters.openai import OpenAIAdapter
from unimw.own_keys import Lease, OwnKeys
from unimw.policy import Provider
from unimw.redaction import MASK

pytestmark = pytest.mark.anyio

KEY_A = "sk-tenant-a-0123456789"
KEY_B = "sk-tenant-b-0123456789"
KEY_C = "sk-tenant-c-0123456789"
TARGET = Target(name="gpt", model="up-own", provider="openai")
HELLO: Any = {"messages": [{"role": "user", "content": "Hi"}]}


class Ports:
    """The OpenAI upstream, recording the client port of every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.seen: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append(scope["client"][1])
        await self._app(scope, receive, send)


@pytest.fixture(scope="module")
def loopback() -> Iterator[tuple[OpenAIUpstream, Ports, str]]:
    upstream = OpenAIUpstream()
    ports = Ports(upstream.app)
    with serve(ports) as url:
        yield upstream, ports, url + "/v1"


@pytest.fixture
def server(loopback: tuple[OpenAIUpstream, Ports, str]) -> Iterator[tuple[OpenAIUpstream, Ports, str]]:
    upstream, ports, _ = loopback
    upstream.reset()
    ports.seen.clear()
    yield loopback
    upstream.reset()


def providers(url: str) -> dict[str, Provider]:
    return {
        "openai": Provider(kind="openai", base_url=url, api_key="sk-policy-0123456789", timeout=5),  # type: ignore[arg-type]
        "other": Provider(kind="openai", base_url=url, timeout=5),
    }


@pytest.fixture
async def own_keys(server: tuple[OpenAIUpstream, Ports, str]) -> AsyncIterator[OwnKeys]:
    keys = OwnKeys(providers(server[2]), max_adapters=2)
    yield keys
    await keys.aclose()


async def ask(lease: Lease) -> str:
    """One chat call through the lease's adapter; the content of the answer."""
    answer = await lease.adapter.complete(HELLO, TARGET)
    content: str = answer["choices"][0]["message"]["content"]
    return content


async def test_the_adapter_sends_the_tenant_key_and_its_redactor_blanks_it(
    own_keys: OwnKeys, server: tuple[OpenAIUpstream, Ports, str]
) -> None:
    upstream, _, _ = server
    lease = await own_keys.acquire("openai", KEY_A)
    assert type(lease.adapter) is OpenAIAdapter
    assert await ask(lease) == "Hello from up-own! The capital of France is Paris."
    await lease.release()
    assert [h["authorization"] for h in upstream.headers] == [f"Bearer {KEY_A}"]
    assert (
        lease.redactor.text(f"bad key {KEY_A}, not sk-policy-0123456789") == f"bad key {MASK}, not sk-policy-0123456789"
    )


async def test_the_same_key_gets_the_same_adapter_and_another_key_or_provider_another(own_keys: OwnKeys) -> None:
    first = await own_keys.acquire("openai", KEY_A)
    again = await own_keys.acquire("openai", KEY_A)
    other_key = await own_keys.acquire("openai", KEY_B)
    assert again.adapter is first.adapter
    assert again.redactor is first.redactor
    assert other_key.adapter is not first.adapter
    for lease in (first, again, other_key):
        await lease.release()
    other_provider = await own_keys.acquire("other", KEY_A)
    assert other_provider.adapter not in (first.adapter, other_key.adapter)
    await other_provider.release()


async def test_the_lru_keeps_at_most_max_adapters_least_recently_used_out(own_keys: OwnKeys) -> None:
    adapters: dict[str, Adapter] = {}
    for key in (KEY_A, KEY_B, KEY_A, KEY_C):  # A is used again after B, so B is the least recent when C comes
        lease = await own_keys.acquire("openai", key)
        adapters.setdefault(key, lease.adapter)
        await lease.release()
    assert len(own_keys) == 2
    kept_a = await own_keys.acquire("openai", KEY_A)
    kept_c = await own_keys.acquire("openai", KEY_C)
    rebuilt_b = await own_keys.acquire("openai", KEY_B)
    assert kept_a.adapter is adapters[KEY_A]
    assert kept_c.adapter is adapters[KEY_C]
    assert rebuilt_b.adapter is not adapters[KEY_B]
    assert len(own_keys) == 2
    for lease in (kept_a, kept_c, rebuilt_b):
        await lease.release()


async def test_an_idle_evicted_adapter_is_closed_at_once(
    own_keys: OwnKeys, server: tuple[OpenAIUpstream, Ports, str]
) -> None:
    _, ports, _ = server
    lease = await own_keys.acquire("openai", KEY_A)
    await ask(lease)
    await ask(lease)
    await lease.release()
    for key in (KEY_B, KEY_C):
        await (await own_keys.acquire("openai", key)).release()
    await ask(lease)  # the evicted adapter, used past its lease: a new session, so a new connection
    assert len(ports.seen) == 3
    assert ports.seen[0] == ports.seen[1] != ports.seen[2]
    await lease.adapter.aclose()


async def test_an_evicted_adapter_is_closed_only_after_its_last_lease(
    own_keys: OwnKeys, server: tuple[OpenAIUpstream, Ports, str]
) -> None:
    upstream, ports, _ = server
    upstream.plan("up-own", "slow")  # 0.2 s between words: eviction happens in the middle of the stream
    streaming = await own_keys.acquire("openai", KEY_A)
    second = await own_keys.acquire("openai", KEY_A)
    chunks = await streaming.adapter.stream({**HELLO, "stream": True}, TARGET)
    words: list[str] = []
    async with aclosing(chunks):  # type: ignore[type-var]
        async for chunk in chunks:
            words.append(chunk["choices"][0]["delta"].get("content") or "")
            if len(words) == 2:
                for key in (KEY_B, KEY_C):  # A is evicted while two leases hold it
                    await (await own_keys.acquire("openai", key)).release()
    assert "".join(words) == "Hello from up-own! The capital of France is Paris."
    await streaming.release()
    await streaming.release()  # releasing twice counts once
    await ask(second)  # still open under the second lease: the stream's connection, reused
    await second.release()
    await ask(second)  # the last lease is gone: closed, so a new session and connection
    assert len(ports.seen) == 3
    assert ports.seen[0] == ports.seen[1] != ports.seen[2]
    await second.adapter.aclose()


async def test_aclose_closes_kept_and_leased_adapters(server: tuple[OpenAIUpstream, Ports, str]) -> None:
    _, ports, url = server
    own_keys = OwnKeys(providers(url), max_adapters=1)
    evicted = await own_keys.acquire("openai", KEY_A)
    kept = await own_keys.acquire("openai", KEY_B)
    await kept.release()
    await ask(evicted)
    await ask(kept)
    await own_keys.aclose()
    assert len(own_keys) == 0
    await evicted.release()  # after aclose: nothing left to close
    await ask(evicted)
    await ask(kept)
    assert len(ports.seen) == 4
    assert len(set(ports.seen)) == 4  # every adapter was closed: each later call opened a new connection
    for lease in (evicted, kept):
        await lease.adapter.aclose()


async def test_unknown_provider_and_a_bound_below_one_are_refused(server: tuple[OpenAIUpstream, Ports, str]) -> None:
    with pytest.raises(ValueError, match="max_adapters must be at least 1, got 0"):
        OwnKeys(providers(server[2]), max_adapters=0)
    own_keys = OwnKeys(providers(server[2]))
    with pytest.raises(KeyError, match="nowhere"):
        await own_keys.acquire("nowhere", KEY_A)
    assert len(own_keys) == 0
