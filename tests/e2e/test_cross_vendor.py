"""One alias across vendors: an overloaded Anthropic target, then Gemini, transparently to the client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import sdk
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.gemini_app import GeminiUpstream
from unimw import Gateway

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5-20250929"
FLASH = "gemini-3-flash-preview"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def gateway(
    _anthropic_server: tuple[AnthropicUpstream, str], _gemini_server: tuple[GeminiUpstream, str]
) -> AsyncIterator[Gateway]:
    gateway = Gateway.from_dict(
        {
            "providers": {
                "anthropic": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-ant-test"},
                "google": {"kind": "gemini", "base_url": _gemini_server[1] + "/v1beta", "api_key": "g-test"},
            },
            "models": {
                "claude": {"provider": "anthropic", "model": SONNET},
                "flash": {"provider": "google", "model": FLASH},
            },
            "aliases": {"smart": {"targets": ["claude", "flash"]}},
            "dispatch": {"retries": 1, "backoff": "1ms", "cooldown": 0},
        }
    )
    yield gateway
    await gateway.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_overloaded_anthropic_falls_back_to_gemini(
    gateway: Gateway, claude: AnthropicUpstream, gemini: GeminiUpstream, stream: bool
) -> None:
    claude.plan(SONNET, "529", "529")
    client = sdk(gateway)
    if stream:
        chunks = [c async for c in await client.chat.completions.create(model="smart", messages=HELLO, stream=True)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        model = chunks[0].model
    else:
        completion = await client.chat.completions.create(model="smart", messages=HELLO)
        text, model = completion.choices[0].message.content or "", completion.model
    assert text == f"Hello from {FLASH}! The capital of France is Paris."
    assert model == FLASH
    assert claude.calls == {SONNET: 2}  # the attempt and its retry, both overloaded
    assert gemini.calls == {FLASH: 1}
