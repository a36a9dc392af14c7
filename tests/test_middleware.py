"""The middleware in a host app: its routes, websockets and lifespan are untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from fastapi import FastAPI, WebSocket
from websockets.sync.client import connect

from tests.conftest import policy_for, sdk_http
from tests.servers import serve
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UnimwMiddleware


def host_app(events: list[str]) -> FastAPI:
    """An existing-looking app with its own routes, a websocket and a lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def home() -> dict[str, str]:
        return {"app": "host"}

    @app.post("/v1-lookalike/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return body

    @app.get("/v1")
    async def bare_prefix() -> dict[str, str]:
        return {"app": "host owns /v1 itself"}

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("hello " + await socket.receive_text())
        await socket.close()

    return app


def test_host_routes_websockets_and_lifespan(upstream: OpenAIUpstream, upstream_url: str, tmp_path: Path) -> None:
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy_for(upstream_url)))
    events: list[str] = []
    app = host_app(events)
    app.add_middleware(UnimwMiddleware, config=config)
    with serve(app, lifespan="on") as url:
        assert events == ["startup"]
        assert httpx.get(url + "/").json() == {"app": "host"}
        assert httpx.post(url + "/v1-lookalike/echo", json={"a": 1}).json() == {"a": 1}
        assert httpx.get(url + "/v1").json() == {"app": "host owns /v1 itself"}
        with connect(url.replace("http", "ws") + "/ws") as socket:
            socket.send("unimw")
            assert socket.recv(timeout=5) == "hello unimw"
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        completion = client.chat.completions.create(model="gpt-main", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == "Hello from up-main! The capital of France is Paris."
        client.close()
    assert events == ["startup", "shutdown"]


pytestmark = pytest.mark.anyio


async def test_the_app_can_be_mounted_instead(gateway: Gateway, upstream: OpenAIUpstream) -> None:
    app = FastAPI()
    app.mount("/llm", gateway.asgi_app(prefix="/v1"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as http:
        client = openai.AsyncOpenAI(
            base_url="http://app/llm/v1", api_key="x", http_client=sdk_http(http), max_retries=0
        )
        completion = await client.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "hi"}]
        )
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith("This is a mock reply from unimw")


def test_exactly_one_of_config_or_gateway() -> None:
    with pytest.raises(TypeError, match="exactly one of"):
        UnimwMiddleware(FastAPI())
