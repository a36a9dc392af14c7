"""The WSGI door over a real WSGI server on loopback, with the official SDK as the client."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import policy_for
from tests.counting import CountingLimitStore
from tests.e2e import tenant_hooks
from tests.servers import hang_up_after, serve
from tests.upstreams.openai_app import OpenAIUpstream
from tests.wsgi.helpers import HELLO, GatedUpstream, host_app, running, sdk, wait_until
from unimw import Gateway
from unimw.records import UsageRecord
from unimw.tenants import hash_key
from unimw.wsgi import UnimwWSGIMiddleware

ACME_KEY = "sk-acme-wsgi"
ANSWER = "Hello from up-main! The capital of France is Paris."


def test_chat_plain_and_streamed_and_the_host_routes_untouched(upstream: OpenAIUpstream, upstream_url: str) -> None:
    with running(policy_for(upstream_url)) as (url, _):
        client = sdk(url)
        completion = client.chat.completions.create(model="gpt-main", messages=HELLO)
        assert (completion.choices[0].message.content, completion.usage and completion.usage.completion_tokens) == (
            ANSWER,
            len(ANSWER) // 4,
        )
        chunks = list(client.chat.completions.create(model="gpt-main", messages=HELLO, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        assert [m.id for m in client.models.list()] == ["gpt-main", "gpt-backup", "mock-echo", "smart"]
        assert client.models.retrieve("smart").owned_by == "unimw"
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.get("/notes").text == "host GET /notes "
            assert http.post("/notes", content=b"buy milk").text == "host POST /notes buy milk"
            assert http.get("/v1x/models").text == "host GET /v1x/models "  # only what is under the prefix
            assert http.get("/v1").text == "host GET /v1 "
            missing = http.get("/v1/nothing")
            assert (missing.status_code, missing.json()["error"]["type"]) == (404, "invalid_request_error")
            wrong = http.get("/v1/chat/completions")
            assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    assert upstream.calls == {"up-main": 2}


def test_errors_reach_the_sdk_as_its_own_classes(upstream: OpenAIUpstream, upstream_url: str) -> None:
    policy = policy_for(upstream_url, tenants={"acme": {"api_keys": [hash_key(ACME_KEY)]}})
    with running(policy) as (url, _):
        client = sdk(url, ACME_KEY)
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="gpt-main", messages=HELLO, extra_body={"temperature": "hot"})
        assert (bad.value.status_code, bad.value.param) == (400, "temperature")
        with pytest.raises(openai.BadRequestError) as unparsable:
            client.post("/chat/completions", cast_to=object, content=b"{not json")
        assert unparsable.value.status_code == 400
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="no-such-model", messages=HELLO)
        assert (missing.value.status_code, missing.value.code) == (404, "model_not_found")
        with pytest.raises(openai.AuthenticationError) as denied:
            sdk(url, "sk-wrong").chat.completions.create(model="gpt-main", messages=HELLO)
        assert denied.value.status_code == 401
        upstream.plan("up-main", "400")
        with pytest.raises(openai.BadRequestError) as upstream_bad:
            client.chat.completions.create(model="gpt-main", messages=HELLO)
        assert upstream_bad.value.param == "messages"
    assert upstream.calls == {"up-main": 1}


def test_a_tenant_limit_answers_429_with_rate_limit_headers(upstream: OpenAIUpstream, upstream_url: str) -> None:
    policy = policy_for(
        upstream_url,
        tenants={"acme": {"api_keys": [hash_key(ACME_KEY)], "limits": [{"per": "minute", "requests": 1}]}},
    )
    with running(policy) as (url, _):
        client = sdk(url, ACME_KEY)
        raw = client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO)
        assert {k: v for k, v in raw.headers.items() if k.startswith("x-ratelimit-")} == {
            "x-ratelimit-limit-requests": "1",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1m0s",
        }
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="gpt-main", messages=HELLO, stream=True)
        error = refused.value
        assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < int(error.response.headers["retry-after"]) <= 60
    assert upstream.calls == {"up-main": 1}


def test_a_stream_reaches_the_client_while_the_upstream_is_still_sending() -> None:
    gated = GatedUpstream()
    with serve(gated.app) as upstream_url:
        policy = {
            "providers": {"gated": {"kind": "openai", "base_url": upstream_url + "/v1", "api_key": "k", "timeout": 10}},
            "models": {"gated-model": {"provider": "gated", "model": "up-main"}},
        }
        with running(policy) as (url, _):
            chunks = sdk(url).chat.completions.create(model="gated-model", messages=HELLO, stream=True)
            with chunks:
                events = iter(chunks)
                first = next(events)
                held = gated.sent  # the upstream sends nothing more until the gate opens
                gated.gate.set()
                rest = list(events)
    assert (first.choices[0].delta.role, held) == ("assistant", 1)
    assert "".join(c.choices[0].delta.content or "" for c in rest) == ANSWER
    assert gated.sent > held


def test_a_client_leaving_mid_stream_is_settled_once(upstream: OpenAIUpstream, upstream_url: str) -> None:
    limits = CountingLimitStore()
    policy = policy_for(
        upstream_url,
        tenancy={"default": "acme", "resolve": []},
        tenants={"acme": {"limits": [{"per": "minute", "requests": 100}]}},
        usage={"call": "tests.e2e.tenant_hooks:record_usage"},
    )
    tenant_hooks.records.clear()
    upstream.plan("up-main", "slow")  # 0.2 s between words
    body: Any = {"model": "gpt-main", "messages": HELLO, "stream": True}
    with running(policy, limit_store=limits) as (url, door):
        hang_up_after(url, body, events=3)  # the role chunk and two words
        assert wait_until(lambda: limits.settled > 0)
        door.run(door.gateway.flush())
        records = list(tenant_hooks.records)
    assert limits.settled == 1
    assert len(records) == 1
    record = records[0]
    assert isinstance(record, UsageRecord)
    assert (record.status, record.stream, record.tenant) == ("cancelled", True, "acme")
    assert record.output_tokens < len(ANSWER) // 4  # what was produced before the client left, not the whole answer


def test_a_response_closed_before_its_end_leaves_no_task_behind(upstream_url: str) -> None:
    """A server that stops reading after the last chunk (its write failed) and closes the response."""
    door = UnimwWSGIMiddleware(host_app, gateway=Gateway.from_dict(policy_for(upstream_url)))
    statuses: list[str] = []
    body = json.dumps({"model": "mock-echo", "messages": HELLO}).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/chat/completions",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    try:
        response = door(environ, lambda status, headers, exc_info=None: statuses.append(status))  # type: ignore[arg-type]
        answer = next(iter(response))
        response.close()  # type: ignore[attr-defined]
        assert wait_until(lambda: door.run(_tasks()) == 0)
    finally:
        door.run(door.gateway.aclose())
    assert (statuses, json.loads(answer)["object"]) == (["200 OK"], "chat.completion")


async def _tasks() -> int:
    """Tasks on the door's loop besides this one."""
    return len(asyncio.all_tasks()) - 1


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_declared_as_anything_but_json_gets_415(
    upstream: OpenAIUpstream, upstream_url: str, content_type: str
) -> None:
    body = json.dumps({"model": "gpt-main", "messages": HELLO}).encode()
    with running(policy_for(upstream_url)) as (url, _), httpx.Client(base_url=url, timeout=10) as http:
        refused = http.post("/v1/chat/completions", content=body, headers={"content-type": content_type})
        served = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
    assert (refused.status_code, refused.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert served.status_code == 200
    assert upstream.calls == {"up-main": 1}
