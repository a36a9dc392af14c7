"""Random bodies through the whole gateway, for every adapter, with content capture on.

Two kinds of body: any JSON value at all, and requests of a chat shape whose
every field is hostile (from :mod:`tests.hostile`), each sent plain and
streamed to a gateway whose models are served by the mock and by loopback
OpenAI, Anthropic and Gemini servers. Whatever happens, only unimw's own
errors may come out, and every call's span must end (the exporter sees only
ended spans, so one finished gateway span per call proves it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile import HOSTILE, requests
from tests.otel import Telemetry
from unimw import Gateway, UnimwError
from unimw.wire import JSON

MODELS = ("mock", "openai", "anthropic", "gemini")
BODIES = st.one_of(HOSTILE, requests())


class Rig:
    """One gateway on its own event loop, kept for all the examples."""

    def __init__(self, policy: JSON) -> None:
        self.runner = asyncio.Runner()
        self.telemetry = Telemetry()
        self.gateway = self.runner.run(self._build(policy))
        self.calls = 0

    async def _build(self, policy: JSON) -> Gateway:
        return Gateway.from_dict(policy, **self.telemetry.providers)

    def call(self, body: Any, stream: bool) -> None:
        self.calls += 1
        self.runner.run(asyncio.wait_for(self._call(body, stream), 30))

    async def _call(self, body: Any, stream: bool) -> None:
        try:
            if not stream:
                await self.gateway.chat_completions(body)
                return
            chunks = await self.gateway.stream_chat_completions(body)
            async with aclosing(chunks):  # type: ignore[type-var]
                async for _ in chunks:
                    pass
        except UnimwError:
            pass

    def close(self) -> None:
        self.runner.run(self.gateway.aclose())
        self.runner.close()


@pytest.fixture(scope="module")
def rig(
    _openai_server: tuple[Any, str], _anthropic_server: tuple[Any, str], _gemini_server: tuple[Any, str]
) -> Iterator[Rig]:
    providers = {
        "mock": {"kind": "mock"},
        "openai": {"kind": "openai", "base_url": _openai_server[1] + "/v1", "api_key": "sk-o", "timeout": 5},
        "anthropic": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-a", "timeout": 5},
        "gemini": {"kind": "gemini", "base_url": _gemini_server[1] + "/v1beta", "api_key": "g-k", "timeout": 5},
    }
    upstream = {"mock": "mock", "openai": "up-main", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}
    policy = {
        "providers": providers,
        "models": {name: {"provider": name, "model": upstream[name]} for name in MODELS},
        "dispatch": {"retries": 0, "cooldown": 0},
        "tracing": {"capture_content": True},
    }
    made = Rig(policy)
    yield made
    made.close()


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(body=BODIES, model=st.sampled_from(MODELS), stream=st.booleans())
def test_only_unimw_errors_escape_and_every_span_ends(rig: Rig, body: Any, model: str, stream: bool) -> None:
    if isinstance(body, dict) and "messages" in body:
        body = {**body, "model": model}
    before = rig.calls
    finished = len([s for s in rig.telemetry.finished() if s.parent is None])
    rig.call(body, stream)
    ended = len([s for s in rig.telemetry.finished() if s.parent is None])
    assert (rig.calls - before, ended - finished) == (1, 1)
