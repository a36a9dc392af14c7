"""An operation defined outside unimw runs through the whole pipeline with no change to the gateway.

``Echo`` is a toy operation of this test's own: ``POST /v1/echo`` with
``{"model", "input"}``, answered by asking the target's adapter for a chat
completion and echoing its text. Served by the ASGI door, it gets the
tenant step (a 401 for a wrong key), validation, model access, limits
(reserved and settled), the response cache and its own spans and metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import pytest

from tests.otel import Telemetry
from unimw import Gateway, InvalidRequest, Operation, Reading
from unimw.adapters.base import Adapter, Target
from unimw.tenants import hash_key
from unimw.usage import Usage
from unimw.wire import JSON

pytestmark = pytest.mark.anyio

KEY = "sk-acme-echo-0123456789"


class Echo(Operation):
    """Echo the target's chat answer to ``input``."""

    name: ClassVar[str] = "echo"
    path: ClassVar[str] = "/echo"

    def validate(self, body: Any) -> JSON:
        request = super().validate(body)
        if not isinstance(request.get("input"), str):
            raise InvalidRequest("'input' must be a string.", param="input")
        return request

    async def complete(self, adapter: Adapter, request: JSON, target: Target) -> JSON:
        chat = {"model": request["model"], "messages": [{"role": "user", "content": request["input"]}]}
        completion = await adapter.complete(chat, target)
        return {
            "id": completion["id"],
            "object": "echo",
            "model": completion["model"],
            "output": completion["choices"][0]["message"]["content"],
            "tokens": [completion["usage"]["prompt_tokens"], completion["usage"]["completion_tokens"]],
        }

    def read(self, answer: JSON) -> Reading:
        return Reading(Usage(*answer["tokens"]), answer["id"], answer["model"], ("stop",))


@pytest.fixture
async def echo(telemetry: Telemetry) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    policy = {
        "providers": {"mock": {"kind": "mock"}},
        "models": {
            "mock-echo": {"provider": "mock", "model": "mock-echo"},
            "other": {"provider": "mock", "model": "x"},
        },
        "tenancy": {"resolve": ["api_key"]},
        "tenants": {
            "acme": {"api_keys": [hash_key(KEY)], "models": ["mock-echo"], "limits": [{"per": "minute", "requests": 2}]}
        },
        "cache": {"enabled": True},
    }
    async with Gateway.from_dict(policy, operations=[Echo()], **telemetry.providers) as gateway:
        headers = {"authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(
            transport=gateway.transport(), base_url="http://unimw/v1", headers=headers
        ) as http:
            yield gateway, http


async def test_the_toy_operation_runs_through_every_step(
    echo: tuple[Gateway, httpx.AsyncClient], telemetry: Telemetry
) -> None:
    _, http = echo
    first = await http.post("/echo", json={"model": "mock-echo", "input": "hello there"})
    assert (first.status_code, first.headers["x-unimw-cache"], first.headers["x-ratelimit-remaining-requests"]) == (
        200,
        "miss",
        "1",
    )
    assert first.json()["output"] == 'This is a mock reply from unimw (no model was called). You said: "hello there"'
    hit = await http.post("/echo", json={"model": "mock-echo", "input": "hello there"})
    assert (hit.status_code, hit.headers["x-unimw-cache"], hit.json()) == (200, "hit", first.json())
    miss = await http.post("/echo", json={"model": "mock-echo", "input": "again"})
    refused = await http.post("/echo", json={"model": "mock-echo", "input": "once more"})
    assert (miss.status_code, refused.status_code, refused.json()["error"]["code"]) == (200, 429, "rate_limit_exceeded")
    spans = telemetry.spans()
    assert [(s["name"], s["attributes"]["unimw.status"]) for s in spans if s["parent"] is None] == [
        ("echo mock-echo", "ok"),
        ("echo mock-echo", "ok"),
        ("echo mock-echo", "ok"),
        ("echo mock-echo", "error"),
    ]
    assert [s["name"] for s in spans if s["parent"] is not None] == []  # one attempt each: no span of its own
    answered = spans[0]["attributes"]
    assert {k: answered[k] for k in ("gen_ai.operation.name", "gen_ai.usage.input_tokens", "unimw.tenant")} == {
        "gen_ai.operation.name": "echo",
        "gen_ai.usage.input_tokens": first.json()["tokens"][0],
        "unimw.tenant": "acme",
    }


async def test_the_toy_operation_gets_the_tenant_step_and_validation(
    echo: tuple[Gateway, httpx.AsyncClient], telemetry: Telemetry
) -> None:
    _, http = echo
    anonymous = await http.post("/echo", json={"model": "mock-echo", "input": "hi"}, headers={"authorization": ""})
    not_allowed = await http.post("/echo", json={"model": "other", "input": "hi"})
    invalid = await http.post("/echo", json={"model": "mock-echo", "input": 5})
    wrong_method = await http.get("/echo")
    assert [r.status_code for r in (anonymous, not_allowed, invalid, wrong_method)] == [401, 404, 400, 405]
    assert (invalid.json()["error"]["param"], wrong_method.headers["allow"]) == ("input", "POST")
    # The refusals are traced like any other ending of a call: one span each, with its error.type.
    assert [(s["name"], s["attributes"].get("error.type")) for s in telemetry.spans()] == [
        ("echo mock-echo", "invalid_api_key"),
        ("echo other", "model_not_found"),
        ("echo mock-echo", "invalid_request_error"),
    ]
