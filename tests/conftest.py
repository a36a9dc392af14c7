"""Shared fixtures: loopback upstreams, gateway factories, OpenAI SDK clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
import openai
import pytest

from tests.otel import Telemetry
from tests.servers import serve
from tests.upstreams import ScriptedUpstream
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.gemini_app import GeminiUpstream
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway

if TYPE_CHECKING:
    import httpx2

S = TypeVar("S", bound=ScriptedUpstream)

MakeGateway = Callable[[dict[str, Any]], Gateway]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _running(upstream: S) -> Iterator[tuple[S, str]]:
    """A loopback server for the whole session."""
    with serve(upstream.app) as url:
        yield upstream, url


def _fresh(server: S) -> Iterator[S]:
    """The session's server, with counters and fault plans reset for each test."""
    server.reset()
    yield server
    server.reset()


@pytest.fixture(scope="session")
def _openai_server() -> Iterator[tuple[OpenAIUpstream, str]]:
    yield from _running(OpenAIUpstream())


@pytest.fixture
def upstream(_openai_server: tuple[OpenAIUpstream, str]) -> Iterator[OpenAIUpstream]:
    """The loopback OpenAI-wire upstream."""
    yield from _fresh(_openai_server[0])


@pytest.fixture(scope="session")
def _anthropic_server() -> Iterator[tuple[AnthropicUpstream, str]]:
    yield from _running(AnthropicUpstream())


@pytest.fixture
def claude(_anthropic_server: tuple[AnthropicUpstream, str]) -> Iterator[AnthropicUpstream]:
    """The loopback Messages API."""
    yield from _fresh(_anthropic_server[0])


@pytest.fixture(scope="session")
def _gemini_server() -> Iterator[tuple[GeminiUpstream, str]]:
    yield from _running(GeminiUpstream())


@pytest.fixture
def gemini(_gemini_server: tuple[GeminiUpstream, str]) -> Iterator[GeminiUpstream]:
    """The loopback Gemini upstream."""
    yield from _fresh(_gemini_server[0])


@pytest.fixture
def upstream_url(_openai_server: tuple[OpenAIUpstream, str]) -> str:
    return _openai_server[1] + "/v1"


def policy_for(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A policy with two OpenAI-wire providers on the loopback upstream, a mock, and aliases."""
    policy: dict[str, Any] = {
        "providers": {
            "primary": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-primary-secret", "timeout": 1},
            "backup": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-backup-secret", "timeout": 1},
            "mock": {"kind": "mock"},
        },
        "models": {
            "gpt-main": {"provider": "primary", "model": "up-main"},
            "gpt-backup": {"provider": "backup", "model": "up-backup"},
            "mock-echo": {"provider": "mock", "model": "mock-echo"},
        },
        "aliases": {"smart": {"targets": ["gpt-main", "gpt-backup"], "strategy": "fallback"}},
        "dispatch": {"retries": 1, "backoff": "10ms", "cooldown": 0},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(policy.get(section), dict):
            policy[section] = {**policy[section], **value}
        else:
            policy[section] = value
    return policy


@pytest.fixture
async def make_gateway(upstream_url: str) -> AsyncIterator[Callable[..., Gateway]]:
    """Build gateways on the loopback upstream; all are closed after the test."""
    made: list[Gateway] = []

    def make(
        *, clock: Callable[[], float] | None = None, telemetry: Telemetry | None = None, **overrides: Any
    ) -> Gateway:
        policy = policy_for(upstream_url, **overrides)
        providers = telemetry.providers if telemetry is not None else {}
        gateway = (
            Gateway.from_dict(policy, clock=clock, **providers) if clock else Gateway.from_dict(policy, **providers)
        )
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.aclose()


@pytest.fixture
async def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official async SDK, calling the gateway in process through its transport."""
    async with httpx.AsyncClient(transport=gateway.transport()) as http:
        yield openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key="sk-client", http_client=sdk_http(http), max_retries=0
        )


def sdk_http(http: httpx.AsyncClient) -> httpx2.AsyncClient:
    """``http`` for the SDK: it is typed against its httpx2 fork, whose client ``httpx.AsyncClient`` matches."""
    return cast("httpx2.AsyncClient", http)


class Clock:
    """A clock tests move by hand: seconds since the epoch, starting at ``start``."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sdk(gateway: Gateway, api_key: str = "sk-client", **headers: str) -> openai.AsyncOpenAI:
    """The official async SDK on the gateway's in-process transport."""
    http = httpx.AsyncClient(transport=gateway.transport())
    return openai.AsyncOpenAI(
        base_url="http://unimw/v1", api_key=api_key, http_client=sdk_http(http), max_retries=0, default_headers=headers
    )


async def collect(chunks: AsyncIterator[Any] | Awaitable[Any]) -> list[Any]:
    return [chunk async for chunk in chunks]  # type: ignore[union-attr]


@pytest.fixture
def telemetry() -> Telemetry:
    """In-memory SDK tracer and meter providers: pass ``telemetry.providers`` to the Gateway."""
    return Telemetry()
