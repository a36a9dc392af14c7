"""One trace from the client to the upstream, over real sockets: FastAPI instrumented with the OTel ASGI middleware."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from tests.conftest import policy_for
from tests.otel import Telemetry
from tests.servers import serve
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UnimwMiddleware

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7


def test_a_client_hanging_up_ends_the_call_span_in_the_callers_trace(
    upstream: OpenAIUpstream, upstream_url: str, telemetry: Telemetry
) -> None:
    gateway = Gateway.from_dict(policy_for(upstream_url), **telemetry.providers)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.aclose()  # in the server's event loop, where its connections live

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(UnimwMiddleware, gateway=gateway)
    traced = OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"], **telemetry.providers)
    upstream.plan("up-main", "slow")  # 0.2 s between words
    with serve(traced) as url:
        client = openai.OpenAI(
            base_url=url + "/v1",
            api_key="sk-client",
            max_retries=0,
            default_headers={"traceparent": f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"},
        )
        with client.chat.completions.create(model="gpt-main", messages=HELLO, stream=True) as stream:
            for i, _ in enumerate(stream):
                if i == 2:
                    break
        deadline = time.monotonic() + 5
        while "chat gpt-main" not in [s.name for s in telemetry.finished()] and time.monotonic() < deadline:
            time.sleep(0.02)
    spans = telemetry.spans()
    [server] = [s for s in spans if s["kind"] == "SERVER"]
    assert telemetry.tree() == [server["name"], "  chat gpt-main"]
    assert {s["trace_id"] for s in spans} == {CLIENT_TRACE}, "the caller's trace goes on through the gateway"
    call = telemetry.span("chat gpt-main")
    assert call["attributes"]["unimw.status"] == "cancelled"
    assert call["status"] == "UNSET"
    assert upstream.headers[0]["traceparent"].split("-")[1] == f"{CLIENT_TRACE:032x}"
