"""Bring your own key: a tenant's calls to a provider go with the tenant's own key for it.

The loopback OpenAI-wire upstream records the ``Authorization`` header of
every request, so each test states exactly which key reached it for which
call. A tenant's key is a secret like the policy's: echoed back by the
upstream in an error (``leak`` faults), it reaches no caller, span, metric
or log. Calls go through a dispatcher built as the gateway builds its own,
and through the gateway with an :class:`Identity` carrying credentials.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from tests.conftest import collect
from tests.otel import Telemetry
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.adapters import adapter_class
from unimw.dispatch import Dispatcher
from unimw.errors import UpstreamError
from unimw.identity import Identity
from unimw.loader import build_policy
from unimw.metrics import error_type, metric_error_type
from unimw.own_keys import OwnKeys
from unimw.redaction import MASK, Redactor, provider_secrets
from unimw.routing import Router
from unimw.wire import JSON, aclose

pytestmark = pytest.mark.anyio

POLICY_KEY = "sk-policy-0123456789abcdef"
BACKUP_KEY = "sk-backup-0123456789abcdef"
KEY_ONE = "sk-tenant-one-0123456789abcdef"
KEY_TWO = "sk-tenant-two-0123456789abcdef"
HELLO: Any = [{"role": "user", "content": "Hi"}]
CONTENT = "Hello from up-byok! The capital of France is Paris."
MODES = {"plain": "leak", "stream-first-event": "leak:first", "stream-mid": "leak:mid"}


def policy_data(upstream_url: str) -> dict[str, Any]:
    return {
        "providers": {
            "openai": {"kind": "openai", "base_url": upstream_url, "api_key": POLICY_KEY, "timeout": 5},
            "backup": {"kind": "openai", "base_url": upstream_url, "api_key": BACKUP_KEY, "timeout": 5},
        },
        "models": {
            "gpt": {"provider": "openai", "model": "up-byok"},
            "gpt-backup": {"provider": "backup", "model": "up-backup"},
        },
        "aliases": {"smart": {"targets": ["gpt", "gpt-backup"], "strategy": "fallback"}},
        "dispatch": {"retries": 0, "cooldown": "60s"},
        "tenants": {"t0": {}, "t1": {}, "t2": {}},
    }


class Dispatched:
    """A dispatcher over the policy's providers with tenants' own keys, built as the gateway builds its own."""

    def __init__(self, upstream_url: str, max_adapters: int) -> None:
        policy = build_policy(policy_data(upstream_url))
        self.router = Router(policy)
        self.adapters = {name: adapter_class(p.kind)(p) for name, p in policy.providers.items()}
        self.own_keys = OwnKeys(policy.providers, max_adapters=max_adapters)
        self.dispatcher = Dispatcher(
            self.router,
            self.adapters,
            policy.dispatch,
            redactors={name: Redactor(provider_secrets(p)) for name, p in policy.providers.items()},
            own_keys=self.own_keys,
        )

    async def complete(self, model: str, credentials: dict[str, str] | None = None) -> JSON:
        request: JSON = {"model": model, "messages": HELLO}
        _, answer = await self.dispatcher.complete(
            self.router.resolve(model),
            "chat",
            request,
            lambda adapter, target: adapter.complete(request, target),
            credentials=credentials,
        )
        return answer

    async def stream(self, model: str, credentials: dict[str, str] | None = None) -> AsyncIterator[JSON]:
        request: JSON = {"model": model, "messages": HELLO, "stream": True}
        _, chunks = await self.dispatcher.stream(
            self.router.resolve(model),
            "chat",
            request,
            lambda adapter, target: adapter.stream(request, target),
            credentials=credentials,
        )
        return chunks

    async def aclose(self) -> None:
        for adapter in self.adapters.values():
            await adapter.aclose()
        await self.own_keys.aclose()


@pytest.fixture
async def dispatched(upstream_url: str, upstream: OpenAIUpstream) -> AsyncIterator[Dispatched]:
    made = Dispatched(upstream_url, max_adapters=1)
    yield made
    await made.aclose()


@pytest.fixture
async def gateway(upstream_url: str, upstream: OpenAIUpstream, telemetry: Telemetry) -> AsyncIterator[Gateway]:
    async with Gateway.from_dict(policy_data(upstream_url), **telemetry.providers) as made:
        yield made


def sent(upstream: OpenAIUpstream) -> list[tuple[str, str]]:
    """(upstream model, bearer key) of every request the upstream received, in order."""
    return [
        (body["model"], headers["authorization"].removeprefix("Bearer "))
        for body, headers in zip(upstream.requests, upstream.headers, strict=True)
    ]


def text(chunks: list[JSON]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def fields(error: UpstreamError) -> list[str]:
    return [error.message, str(error), error.type, error.code or "", error.param or "", repr(error.headers)]


# ── through the dispatcher ───────────────────────────────────────────────────


async def test_each_call_goes_with_its_tenants_key_or_the_policy_key(
    dispatched: Dispatched, upstream: OpenAIUpstream
) -> None:
    answers = [
        await dispatched.complete("gpt", {"openai": KEY_ONE}),
        await dispatched.complete("gpt"),
        await dispatched.complete("gpt", {"openai": KEY_TWO}),
        await dispatched.complete("gpt", {"anthropic": KEY_TWO}),  # a key for another provider changes nothing
    ]
    streamed = [
        text(await collect(await dispatched.stream("gpt", {"openai": KEY_ONE}))),
        text(await collect(await dispatched.stream("gpt", {}))),
    ]
    assert [a["choices"][0]["message"]["content"] for a in answers] == [CONTENT] * 4
    assert streamed == [CONTENT] * 2
    assert sent(upstream) == [
        ("up-byok", KEY_ONE),
        ("up-byok", POLICY_KEY),
        ("up-byok", KEY_TWO),
        ("up-byok", POLICY_KEY),
        ("up-byok", KEY_ONE),
        ("up-byok", POLICY_KEY),
    ]
    assert (len(dispatched.own_keys), dispatched.own_keys.open) == (1, 1)  # every lease was released


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_a_leaked_tenant_key_is_blanked_from_the_error(
    dispatched: Dispatched, upstream: OpenAIUpstream, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    upstream.plan("up-byok", MODES[mode])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError) as caught:
        if mode == "plain":
            await dispatched.complete("gpt", {"openai": KEY_ONE})
        else:
            chunks = await dispatched.stream("gpt", {"openai": KEY_ONE})
            async with aclosing(chunks):  # type: ignore[type-var]
                async for _ in chunks:
                    pass
    assert sent(upstream) == [("up-byok", KEY_ONE)]
    assert MASK in caught.value.message  # the key was there, and was blanked out
    for found in (*fields(caught.value), caplog.text):
        assert KEY_ONE not in found
    assert dispatched.own_keys.open == 1  # the failed attempt's lease was released


async def test_a_tenants_rate_limit_does_not_cool_the_shared_target(
    dispatched: Dispatched, upstream: OpenAIUpstream
) -> None:
    one = {"openai": KEY_ONE}
    upstream.plan("up-byok", "429")
    await dispatched.complete("smart", one)  # the tenant's own key is rate-limited: on to the backup
    await dispatched.complete("smart")  # the policy's key: gpt was not cooled for everyone
    upstream.plan("up-byok", "429")
    await dispatched.complete("smart")  # the policy's key is rate-limited: gpt cools for 60 s
    await dispatched.complete("smart")  # so the policy's calls go to the backup at once
    await dispatched.complete("smart", one)  # the tenant's own key is not the one that cooled
    assert sent(upstream) == [
        ("up-byok", KEY_ONE),
        ("up-backup", BACKUP_KEY),
        ("up-byok", POLICY_KEY),
        ("up-byok", POLICY_KEY),
        ("up-backup", BACKUP_KEY),
        ("up-backup", BACKUP_KEY),
        ("up-byok", KEY_ONE),
    ]


async def test_a_tenants_bad_key_is_not_retried_and_leaves_the_target_to_others(
    dispatched: Dispatched, upstream: OpenAIUpstream
) -> None:
    upstream.plan("up-byok", "401")
    with pytest.raises(UpstreamError) as caught:
        await dispatched.complete("smart", {"openai": KEY_ONE})
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert caught.value.message == f"Incorrect API key provided: {MASK}."
    await dispatched.complete("smart")
    assert sent(upstream) == [("up-byok", KEY_ONE), ("up-byok", POLICY_KEY)]


async def test_a_stream_keeps_its_adapter_through_eviction_until_it_ends(
    dispatched: Dispatched, upstream: OpenAIUpstream
) -> None:
    own_keys = dispatched.own_keys  # keeps one adapter
    chunks = await dispatched.stream("gpt", {"openai": KEY_ONE})
    first = await anext(chunks)
    await dispatched.complete("gpt", {"openai": KEY_TWO})  # pushes tenant one's adapter out of the LRU
    assert (len(own_keys), own_keys.open) == (1, 2)  # out of the LRU, still open under the stream
    rest = await collect(chunks)
    assert text([first, *rest]) == CONTENT
    assert (len(own_keys), own_keys.open) == (1, 1)  # the stream ended: its lease released, the adapter closed
    assert sent(upstream) == [("up-byok", KEY_ONE), ("up-byok", KEY_TWO)]


async def test_a_stream_closed_unread_releases_its_adapter(dispatched: Dispatched, upstream: OpenAIUpstream) -> None:
    own_keys = dispatched.own_keys
    chunks = await dispatched.stream("gpt", {"openai": KEY_ONE})
    await dispatched.complete("gpt", {"openai": KEY_TWO})
    assert own_keys.open == 2
    await aclose(chunks)
    assert own_keys.open == 1
    with pytest.raises(StopAsyncIteration):
        await anext(chunks)


# ── through the gateway ──────────────────────────────────────────────────────


async def test_the_gateway_sends_each_tenants_own_key(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    body: JSON = {"model": "gpt", "messages": HELLO}
    one = Identity("t1", credentials={"openai": KEY_ONE})
    answers = [
        await gateway.chat_completions(body, tenant=one),
        await gateway.chat_completions(body, tenant=Identity("t0")),
        await gateway.chat_completions(body, tenant=Identity("t2", credentials={"openai": KEY_TWO})),
    ]
    streamed = text(await collect(await gateway.stream_chat_completions(body, tenant=one)))
    assert [a["choices"][0]["message"]["content"] for a in answers] == [CONTENT] * 3
    assert streamed == CONTENT
    assert sent(upstream) == [
        ("up-byok", KEY_ONE),
        ("up-byok", POLICY_KEY),
        ("up-byok", KEY_TWO),
        ("up-byok", KEY_ONE),
    ]


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_the_gateway_lets_a_tenant_key_reach_no_caller_span_metric_or_log(
    gateway: Gateway, upstream: OpenAIUpstream, telemetry: Telemetry, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    upstream.plan("up-byok", MODES[mode])
    caplog.set_level(logging.DEBUG)
    one = Identity("t1", credentials={"openai": KEY_ONE})
    body: JSON = {"model": "gpt", "messages": HELLO}
    with pytest.raises(UpstreamError) as caught:
        if mode == "plain":
            await gateway.chat_completions(body, tenant=one)
        else:
            chunks = await gateway.stream_chat_completions(body, tenant=one)
            async with aclosing(chunks):  # type: ignore[type-var]
                async for _ in chunks:
                    pass
    await gateway.flush()
    assert sent(upstream) == [("up-byok", KEY_ONE)]
    assert MASK in caught.value.message
    for found in (*fields(caught.value), caplog.text, telemetry.everything()):
        assert KEY_ONE not in found
    assert telemetry.span("chat gpt")["attributes"]["error.type"] == error_type(caught.value)
    [(attributes, _)] = telemetry.metrics()["gen_ai.client.operation.duration"]
    assert attributes["error.type"] == metric_error_type(caught.value)
