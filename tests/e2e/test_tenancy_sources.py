"""Tenants that live in the host app, through every source, end to end with the official SDK.

The app's side is real code (:mod:`tests.e2e.tenancy_hooks`): a key table it
issues keys from and a login that knows each customer's plan. Each test
checks what the caller gets (status and error code, models, limits), what
the app was asked (digests, exactly how often) and what the upstream saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Clock, sdk
from tests.e2e.tenancy_hooks import KEYS, SESSIONS
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, Identity, Limit
from unimw.errors import AuthenticationFailed, ModelNotFound, RateLimited
from unimw.tenants import hash_key

pytestmark = pytest.mark.anyio

SYNC = "tests.e2e.tenancy_hooks:lookup"
ASYNC = "tests.e2e.tenancy_hooks:lookup_async"
SESSION = {"callable": "tests.e2e.tenancy_hooks:session_identity"}
HEADERS = {"header": "X-Tenant-Id", "plan_header": "X-Tenant-Plan"}

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
APP_KEY = "sk-app-issued-0001"
APP_KEY_2 = "sk-app-issued-0002"
BAD_KEY = "sk-forged-9999"
ACME_KEY = "sk-acme-declared-01"

PLANS: dict[str, Any] = {
    "free": {"models": ["gpt-backup"], "max_tokens": 50, "limits": [{"per": "minute", "requests": 2}]},
    "pro": {
        "models": ["gpt-main", "smart"],
        "limits": [{"per": "minute", "requests": 3}, {"per": "day", "requests": 4}],
    },
    "team": {"max_tokens": 50, "limits": [{"per": "minute", "requests": 100}]},
}
#: The policy's public names, in the order /v1/models lists them.
ALL_MODELS = ["gpt-main", "gpt-backup", "mock-echo", "smart"]

LOOKUP_DOWN = {
    "message": "The tenant lookup is unavailable; try again shortly.",
    "type": "service_unavailable_error",
    "param": None,
    "code": "tenant_lookup_unavailable",
}


def tenancy(*sources: object, **settings: Any) -> dict[str, Any]:
    """Policy sections: the plans above, and callers found by ``sources``."""
    return {"plans": PLANS, "tenancy": {"resolve": list(sources), **settings}}


@pytest.fixture(autouse=True)
def app_state() -> Iterator[None]:
    KEYS.reset()
    SESSIONS.clear()
    yield
    if KEYS.gate is not None:
        KEYS.gate.set()  # never leave a worker thread blocked on a hung "query"
    KEYS.reset()
    SESSIONS.clear()


@pytest.fixture(params=[SYNC, ASYNC], ids=["sync", "async"])
def lookup(request: pytest.FixtureRequest) -> str:
    """The app's key lookup, as a sync function and as an async one."""
    return str(request.param)


async def outcomes(client: openai.AsyncOpenAI, tries: int, model: str = "gpt-main", **extra: Any) -> list[str]:
    """What ``tries`` calls in a row got: "ok", or the refusal's status and error code."""
    seen = []
    for _ in range(tries):
        try:
            await client.chat.completions.create(model=model, messages=HELLO, **extra)
            seen.append("ok")
        except openai.APIStatusError as error:
            seen.append(f"{error.status_code} {error.code}")
    return seen


async def model_ids(client: openai.AsyncOpenAI) -> list[str]:
    return [model.id for model in (await client.models.list()).data]


OK_3_THEN_RATE_LIMITED = ["ok", "ok", "ok", "429 rate_limit_exceeded"]


# ── key_lookup: keys the app issues ──────────────────────────────────────────


async def test_the_lookup_gets_the_keys_digest_and_a_hot_key_is_looked_up_once(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, lookup: str
) -> None:
    digest = hash_key(APP_KEY)
    assert digest == "sha256:" + hashlib.sha256(APP_KEY.encode()).hexdigest()
    KEYS.rows[digest] = Identity("cust-1", plan="team")
    gateway = make_gateway(**tenancy({"key_lookup": lookup}))
    client = sdk(gateway, APP_KEY)
    assert await outcomes(client, 20) == ["ok"] * 20
    assert await model_ids(client) == ALL_MODELS
    assert KEYS.asked == [digest]  # the digest, never the key; once for 21 requests
    assert upstream.calls == {"up-main": 20}


async def test_a_flood_of_one_unknown_key_is_401_for_one_lookup(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, lookup: str
) -> None:
    gateway = make_gateway(**tenancy({"key_lookup": lookup}))
    client = sdk(gateway, BAD_KEY)

    async def one() -> str:
        try:
            await client.chat.completions.create(model="gpt-main", messages=HELLO)
            return "ok"
        except openai.AuthenticationError as error:
            return f"{error.status_code} {error.code}"

    assert await asyncio.gather(*(one() for _ in range(50))) == ["401 invalid_api_key"] * 50
    assert await outcomes(client, 5) == ["401 invalid_api_key"] * 5  # remembered as unknown
    assert KEYS.asked == [hash_key(BAD_KEY)]
    assert not upstream.calls


async def test_forget_key_revokes_an_issued_key_at_once(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, lookup: str
) -> None:
    digest = hash_key(APP_KEY)
    KEYS.rows[digest] = "cust-1"
    gateway = make_gateway(**tenancy({"key_lookup": lookup}, default_plan="team"))
    client = sdk(gateway, APP_KEY)
    assert await outcomes(client, 1) == ["ok"]
    del KEYS.rows[digest]  # revoked in the app's table...
    assert await outcomes(client, 1) == ["ok"]  # ...but its answer is still held
    assert gateway.forget_key(digest) is True
    assert await outcomes(client, 2) == ["401 invalid_api_key"] * 2
    assert KEYS.asked == [digest, digest]
    assert gateway.forget_key(hash_key("sk-never-issued")) is False
    # Forgetting also drops an answer of "unknown": a key issued again works at once.
    KEYS.rows[digest] = "cust-1"
    assert await outcomes(client, 1) == ["401 invalid_api_key"]
    assert gateway.forget_key(digest) is True
    assert await outcomes(client, 1) == ["ok"]
    assert KEYS.asked == [digest, digest, digest]
    assert upstream.calls == {"up-main": 3}
    with pytest.raises(ValueError, match="digest"):  # the key itself, by mistake: refused, not silently ignored
        gateway.forget_key(APP_KEY)


async def test_without_forget_key_a_revoked_key_works_until_its_ttl(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    """The lookup cache runs on the monotonic clock, which tests cannot move: a short ttl, waited for."""
    ttl = 0.5
    digest = hash_key(APP_KEY)
    KEYS.rows[digest] = "cust-1"
    gateway = make_gateway(**tenancy({"key_lookup": SYNC, "ttl": ttl}, default_plan="team"))
    client = sdk(gateway, APP_KEY)
    asked_before = time.monotonic()
    assert await outcomes(client, 1) == ["ok"]
    del KEYS.rows[digest]
    assert await outcomes(client, 1) == ["ok"]
    refused_at = None
    deadline = asked_before + 5
    while time.monotonic() < deadline:
        if await outcomes(client, 1) == ["401 invalid_api_key"]:
            refused_at = time.monotonic()
            break
        await asyncio.sleep(0.02)
    assert refused_at is not None
    assert refused_at - asked_before >= ttl  # not a moment before the held answer expired
    assert KEYS.asked == [digest, digest]  # every call that passed meanwhile used the held answer


async def test_a_lookup_that_raises_or_answers_nonsense_is_503_and_not_held(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, lookup: str
) -> None:
    digest = hash_key(APP_KEY)
    gateway = make_gateway(**tenancy({"key_lookup": lookup}, default_plan="team"))
    client = sdk(gateway, APP_KEY)
    KEYS.error = RuntimeError(f"connection refused while reading {digest}")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="gpt-main", messages=HELLO)
        assert (caught.value.status_code, caught.value.body) == (503, LOOKUP_DOWN)
    KEYS.error = None
    KEYS.rows[digest] = 42  # a row the lookup cannot make an identity of
    assert await outcomes(client, 1) == ["503 tenant_lookup_unavailable"]
    assert not upstream.calls
    KEYS.rows[digest] = "cust-1"  # the database is back: the failures were not remembered
    assert await outcomes(client, 1) == ["ok"]
    assert KEYS.asked == [digest] * 4
    assert upstream.calls == {"up-main": 1}


async def test_a_lookup_that_times_out_is_503(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, lookup: str
) -> None:
    digest = hash_key(APP_KEY)
    KEYS.rows[digest] = "cust-1"
    if lookup == SYNC:
        KEYS.gate = threading.Event()
    else:
        KEYS.delay = 2.0
    gateway = make_gateway(**tenancy({"key_lookup": lookup, "timeout": 0.05}, default_plan="team"))
    client = sdk(gateway, APP_KEY)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="gpt-main", messages=HELLO)
    waited = time.monotonic() - started
    if KEYS.gate is not None:
        KEYS.gate.set()
    assert (caught.value.status_code, caught.value.body) == (503, LOOKUP_DOWN)
    assert 0.05 <= waited < 1.0  # the timeout, not the lookup's own time
    assert KEYS.asked == [digest]
    assert not upstream.calls


async def test_an_identity_from_the_lookup_gets_its_plans_limits(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, lookup: str
) -> None:
    clock = Clock()
    KEYS.rows[hash_key(APP_KEY)] = Identity("cust-pro", plan="pro")
    gateway = make_gateway(clock=clock, **tenancy({"key_lookup": lookup}))
    client = sdk(gateway, APP_KEY)
    assert await outcomes(client, 4) == OK_3_THEN_RATE_LIMITED  # pro: 3 a minute
    clock.advance(61)
    assert await outcomes(client, 2) == ["ok", "429 insufficient_quota"]  # and 4 a day
    assert upstream.calls == {"up-main": 4}
    assert await model_ids(client) == ["gpt-main", "smart"]


async def test_a_declared_key_wins_and_an_app_key_works_after_it(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, lookup: str
) -> None:
    KEYS.rows[hash_key(ACME_KEY)] = Identity("impostor", plan="pro")  # the app's table disagrees: ignored
    KEYS.rows[hash_key(APP_KEY)] = Identity("cust-1", plan="pro")
    gateway = make_gateway(
        tenants={"acme": {"api_keys": [hash_key(ACME_KEY)], "plan": "free"}},
        **tenancy("api_key", {"key_lookup": lookup}),
    )
    acme, app = sdk(gateway, ACME_KEY), sdk(gateway, APP_KEY)
    assert await model_ids(acme) == ["gpt-backup"]
    assert await outcomes(acme, 1, model="gpt-backup") == ["ok"]
    assert KEYS.asked == []  # a declared key never reaches the app
    assert await model_ids(app) == ["gpt-main", "smart"]
    assert await outcomes(app, 1) == ["ok"]
    assert KEYS.asked == [hash_key(APP_KEY)]
    assert upstream.calls == {"up-backup": 1, "up-main": 1}


# ── {header, plan_header}: the app's auth in front names tenant and plan ─────


async def test_the_plan_header_gives_the_plans_limits_and_models(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(clock=Clock(), **tenancy(HEADERS))
    client = sdk(gateway, "sk-anything", **{"X-Tenant-Id": "t-1", "X-Tenant-Plan": "free"})
    assert await model_ids(client) == ["gpt-backup"]
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-main")
    assert caught.value.code == "model_not_found"
    assert await outcomes(client, 1, model="gpt-main") == ["404 model_not_found"]
    assert not upstream.calls
    assert await outcomes(client, 3, model="gpt-backup") == ["ok", "ok", "429 rate_limit_exceeded"]
    assert upstream.calls == {"up-backup": 2}


async def test_an_unknown_plan_is_403_and_no_plan_without_a_default_is_401(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy(HEADERS))
    unknown_plan = sdk(gateway, "sk-anything", **{"X-Tenant-Id": "t-1", "X-Tenant-Plan": "platinum"})
    assert await outcomes(unknown_plan, 1) == ["403 plan_not_found"]
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await unknown_plan.models.list()
    assert caught.value.code == "plan_not_found"
    no_plan = sdk(gateway, "sk-anything", **{"X-Tenant-Id": "t-1"})
    assert await outcomes(no_plan, 1) == ["401 invalid_api_key"]
    with pytest.raises(openai.AuthenticationError):
        await no_plan.models.list()
    too_long = sdk(gateway, "sk-anything", **{"X-Tenant-Id": "t" * 201, "X-Tenant-Plan": "free"})
    assert await outcomes(too_long, 1, model="gpt-backup") == ["401 invalid_api_key"]
    assert not upstream.calls


async def test_default_plan_governs_a_tenant_whose_auth_names_none(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(clock=Clock(), **tenancy(HEADERS, default_plan="free"))
    client = sdk(gateway, "sk-anything", **{"X-Tenant-Id": "t-2"})
    assert await model_ids(client) == ["gpt-backup"]
    assert await outcomes(client, 1) == ["404 model_not_found"]
    assert await outcomes(client, 3, model="gpt-backup") == ["ok", "ok", "429 rate_limit_exceeded"]
    assert upstream.calls == {"up-backup": 2}


# ── overrides: what an Identity changes of its plan ─────────────────────────


async def test_an_identitys_limit_replaces_its_plans_of_the_same_window_and_keeps_the_others(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    SESSIONS["a"] = Identity("cust-a", plan="pro", limits=(Limit(per="minute", requests=2),))
    SESSIONS["b"] = Identity("cust-b", plan="pro", limits=(Limit(per="minute", requests=10),))
    gateway = make_gateway(clock=Clock(), **tenancy(SESSION))
    a = sdk(gateway, "sk-x", **{"X-Session": "a"})
    assert await outcomes(a, 3) == ["ok", "ok", "429 rate_limit_exceeded"]
    with pytest.raises(openai.RateLimitError) as caught:
        await a.chat.completions.create(model="gpt-main", messages=HELLO)
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "2"
    b = sdk(gateway, "sk-x", **{"X-Session": "b"})
    # 10 a minute instead of pro's 3, but pro's 4 a day still holds.
    assert await outcomes(b, 5) == ["ok", "ok", "ok", "ok", "429 insufficient_quota"]
    assert upstream.calls == {"up-main": 6}


async def test_an_end_user_limit_of_an_identity_adds_to_its_plans_tenant_limit(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    """Same window, other scope: the plan's 3 a minute for the tenant stays, 2 a minute per end user is added."""
    SESSIONS["c"] = Identity("cust-c", plan="pro", limits=(Limit(per="minute", requests=2, scope="end_user"),))
    gateway = make_gateway(clock=Clock(), **tenancy(SESSION))
    client = sdk(gateway, "sk-x", **{"X-Session": "c"})
    assert await outcomes(client, 3, user="alice") == ["ok", "ok", "429 rate_limit_exceeded"]
    assert await outcomes(client, 1, user="bob") == ["ok"]
    assert await outcomes(client, 1, user="carol") == ["429 rate_limit_exceeded"]  # the tenant's third was bob's
    assert upstream.calls == {"up-main": 3}


async def test_an_identitys_models_extend_its_plans(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    SESSIONS["d"] = Identity("cust-d", plan="free", models=("gpt-main",))
    gateway = make_gateway(**tenancy(SESSION))
    client = sdk(gateway, "sk-x", **{"X-Session": "d"})
    assert await model_ids(client) == ["gpt-main", "gpt-backup"]
    assert await outcomes(client, 1, model="gpt-main") == ["ok"]
    assert await outcomes(client, 1, model="gpt-backup") == ["ok"]
    assert await outcomes(client, 1, model="smart") == ["404 model_not_found"]
    assert upstream.calls == {"up-main": 1, "up-backup": 1}


async def test_an_identitys_max_tokens_caps_what_the_upstream_is_asked(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    SESSIONS["e"] = Identity("cust-e", plan="team", max_tokens=7)
    SESSIONS["f"] = Identity("cust-f", plan="team")
    gateway = make_gateway(**tenancy(SESSION))
    e = sdk(gateway, "sk-x", **{"X-Session": "e"})
    await e.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=100)
    await e.chat.completions.create(model="gpt-main", messages=HELLO, max_completion_tokens=3)
    await e.chat.completions.create(model="gpt-main", messages=HELLO)
    f = sdk(gateway, "sk-x", **{"X-Session": "f"})
    await f.chat.completions.create(model="gpt-main", messages=HELLO, max_tokens=100)
    caps = [(r.get("max_tokens"), r.get("max_completion_tokens")) for r in upstream.requests]
    assert caps == [(7, None), (None, 3), (None, 7), (50, None)]  # the last is team's own cap


async def test_a_declared_tenants_own_limits_beat_its_plans(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    clock = Clock()
    gateway = make_gateway(
        clock=clock,
        tenants={
            "acme": {"api_keys": [hash_key(ACME_KEY)], "plan": "pro", "limits": [{"per": "minute", "requests": 1}]}
        },
        **tenancy("api_key"),
    )
    client = sdk(gateway, ACME_KEY)
    assert await model_ids(client) == ["gpt-main", "smart"]  # pro's models
    assert await outcomes(client, 2) == ["ok", "429 rate_limit_exceeded"]  # its own 1 a minute, not pro's 3
    seen = []
    for _ in range(4):
        clock.advance(61)
        seen += await outcomes(client, 1)
    assert seen == ["ok", "ok", "ok", "429 insufficient_quota"]  # pro's 4 a day still holds
    assert upstream.calls == {"up-main": 4}


# ── in process: the app names the tenant itself ─────────────────────────────


def chat_body(model: str = "gpt-main") -> dict[str, Any]:
    return {"model": model, "messages": HELLO}


async def test_in_process_a_tenant_never_declared_is_held_to_its_identitys_plan(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(clock=Clock(), **tenancy("api_key"))
    tenant = Identity("cust-x", plan="pro")
    for _ in range(3):
        completion = await gateway.chat_completions(chat_body(), tenant=tenant)
        assert completion["model"] == "up-main"
    with pytest.raises(RateLimited) as caught:
        await gateway.chat_completions(chat_body(), tenant=tenant)
    assert (caught.value.status, caught.value.code) == (429, "rate_limit_exceeded")
    with pytest.raises(ModelNotFound):
        await gateway.chat_completions(chat_body("gpt-backup"), tenant=Identity("cust-y", plan="pro"))
    assert upstream.calls == {"up-main": 3}


async def test_in_process_a_tenant_neither_declared_nor_on_a_plan_is_refused(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy("api_key"))
    for tenant in ("ghost", Identity("ghost")):
        with pytest.raises(AuthenticationFailed) as caught:
            await gateway.chat_completions(chat_body(), tenant=tenant)
        assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
        with pytest.raises(AuthenticationFailed):
            gateway.models(tenant=tenant)
    assert not upstream.calls


async def test_in_process_default_plan_governs_a_tenant_named_by_id(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(clock=Clock(), **tenancy("api_key", default_plan="free"))
    for _ in range(2):
        await gateway.chat_completions(chat_body("gpt-backup"), tenant="ghost")
    with pytest.raises(RateLimited):
        await gateway.chat_completions(chat_body("gpt-backup"), tenant="ghost")
    with pytest.raises(ModelNotFound):
        await gateway.chat_completions(chat_body(), tenant="ghost")
    assert upstream.calls == {"up-backup": 2}


async def test_in_process_models_lists_the_plans_models_and_the_identitys_extra_ones(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(**tenancy("api_key"))

    def ids(tenant: Identity) -> list[str]:
        listing = gateway.models(tenant=tenant)
        assert listing["object"] == "list"
        return [model["id"] for model in listing["data"]]

    assert ids(Identity("cust-z", plan="free")) == ["gpt-backup"]
    assert ids(Identity("cust-z", plan="free", models=("smart",))) == ["gpt-backup", "smart"]
    assert ids(Identity("cust-z", plan="pro", models=("gpt-backup", "mock-echo"))) == ALL_MODELS
    assert gateway.model("smart", tenant=Identity("cust-z", plan="free", models=("smart",)))["id"] == "smart"
    with pytest.raises(ModelNotFound):
        gateway.model("gpt-main", tenant=Identity("cust-z", plan="free", models=("smart",)))


async def test_in_process_with_no_tenant_models_and_calls_are_the_default_tenants(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    """No tenant means the policy's default one, for listing models as for calling them (and as over HTTP)."""
    gateway = make_gateway(tenants={"walk-in": {"plan": "free"}}, **tenancy("api_key", default="walk-in"))
    assert await model_ids(sdk(gateway, "sk-nobody")) == ["gpt-backup"]
    with pytest.raises(ModelNotFound):
        await gateway.chat_completions(chat_body())
    assert [model["id"] for model in gateway.models()["data"]] == ["gpt-backup"]
    with pytest.raises(ModelNotFound):
        gateway.model("gpt-main")
    assert not upstream.calls


# ── counters are per tenant id ──────────────────────────────────────────────


async def test_two_app_tenants_on_one_plan_each_get_the_whole_limit(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    KEYS.rows[hash_key(APP_KEY)] = Identity("cust-1", plan="pro")
    KEYS.rows[hash_key(APP_KEY_2)] = Identity("cust-2", plan="pro")
    gateway = make_gateway(clock=Clock(), **tenancy({"key_lookup": ASYNC}))
    one, two = sdk(gateway, APP_KEY), sdk(gateway, APP_KEY_2)
    assert await outcomes(one, 2) + await outcomes(two, 2) == ["ok"] * 4
    assert await outcomes(one, 2) + await outcomes(two, 2) == ["ok", "429 rate_limit_exceeded"] * 2
    assert upstream.calls == {"up-main": 6}


async def test_one_tenant_id_through_two_sources_shares_its_counters(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    KEYS.rows[hash_key(APP_KEY)] = Identity("cust-9", plan="pro")
    gateway = make_gateway(clock=Clock(), **tenancy({"key_lookup": ASYNC}, HEADERS))
    by_key = sdk(gateway, APP_KEY)
    by_header = sdk(gateway, BAD_KEY, **{"X-Tenant-Id": "cust-9", "X-Tenant-Plan": "pro"})
    seen = await outcomes(by_key, 1) + await outcomes(by_header, 1) + await outcomes(by_key, 1)
    assert seen == ["ok", "ok", "ok"]
    assert await outcomes(by_header, 1) + await outcomes(by_key, 1) == ["429 rate_limit_exceeded"] * 2
    with pytest.raises(RateLimited):
        await gateway.chat_completions(chat_body(), tenant=Identity("cust-9", plan="pro"))
    assert KEYS.asked == [hash_key(APP_KEY), hash_key(BAD_KEY)]  # the header's caller was first asked for by key
    assert upstream.calls == {"up-main": 3}
