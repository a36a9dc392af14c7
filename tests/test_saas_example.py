"""The SaaS example (examples/saas/), run as its customers would use it.

The app runs in process (its lifespan too) on its own SQLite file; its
customers' programs are the official openai SDK on ``/v1`` with keys the app
issued, and its users call its own routes. docs/saas.md quotes the example's
code, and the quotes are checked against it here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai.types.chat import ChatCompletionMessageParam

from examples.saas import db, keys
from examples.saas.app import POLICY, create_app
from tests.conftest import sdk_http
from tests.otel import Telemetry
from tests.test_serve import free_port
from unimw import Gateway, Identity, PermissionDenied, hash_key

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Summarise the meeting notes of Tuesday for the team"}
]
#: What the mock counts for QUESTION: 13 prompt tokens, 30 completion tokens.
#: smart (mock-large at $5 / $15 per 1M): 13 * 5 + 30 * 15 = 515 micro-USD; cheap (mock-small, $0.15 / $0.60): 19.95 → 20.
SMART_COST, CHEAP_COST = "0.000515", "0.000020"
#: Span attributes that say who a call was for and what for.
WHO = ("unimw.tenant", "unimw.end_user", "unimw.plan", "unimw.tag.")


@dataclass
class Saas:
    app: FastAPI
    gateway: Gateway
    database: db.Database
    keys: dict[str, str]
    usage: Path
    http: httpx.AsyncClient

    def sdk(self, key: str) -> openai.AsyncOpenAI:
        """An organisation's program: the official SDK with a key the app issued."""
        return openai.AsyncOpenAI(
            base_url="http://saas.test/v1", api_key=key, http_client=sdk_http(self.http), max_retries=0
        )

    async def records(self) -> list[dict[str, Any]]:
        await self.gateway.flush()
        if not self.usage.exists():
            return []
        return [json.loads(line) for line in self.usage.read_text().splitlines()]

    async def as_user(self, method: str, path: str, user: str | None, **kwargs: Any) -> httpx.Response:
        headers = {"X-Demo-User": user} if user is not None else {}
        return await self.http.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def saas(tmp_path: Path) -> AsyncIterator[Saas]:
    database = db.Database(tmp_path / "saas.sqlite3")
    issued = database.seed()
    app = create_app(database, usage_path=tmp_path / "usage.jsonl")
    async with (
        app.router.lifespan_context(app),  # its shutdown closes the gateway
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://saas.test") as http,
    ):
        yield Saas(app, app.state.gateway, database, issued, tmp_path / "usage.jsonl", http)


async def ask(client: openai.AsyncOpenAI, model: str, max_tokens: int | None = None) -> tuple[str, str, str | None]:
    """One call: the model that answered, the x-unimw-cost header and x-unimw-rerouted-from."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=QUESTION, max_tokens=max_tokens if max_tokens is not None else openai.omit
    )
    return raw.parse().model, raw.headers["x-unimw-cost"], raw.headers.get("x-unimw-rerouted-from")


async def test_an_organisations_key_works_until_its_plans_minute_limit(saas: Saas) -> None:
    acme, globex = saas.sdk(saas.keys["acme"]), saas.sdk(saas.keys["globex"])
    assert [await ask(acme, "cheap") for _ in range(3)] == [("mock-small", CHEAP_COST, None)] * 3
    with pytest.raises(openai.RateLimitError) as refused:  # the free plan: 3 requests a minute
        await ask(acme, "cheap")
    assert (refused.value.status_code, refused.value.code) == (429, "rate_limit_exceeded")
    assert refused.value.response.headers["retry-after"] == "60"
    # Another organisation, on pro (60 a minute), has counters of its own.
    assert [await ask(globex, "cheap") for _ in range(4)] == [("mock-small", CHEAP_COST, None)] * 4
    with pytest.raises(openai.NotFoundError) as hidden:  # the free plan's models are [cheap]
        await ask(acme, "smart")
    assert hidden.value.code == "model_not_found"
    records = await saas.records()  # refused calls are not records: they cost nothing
    assert [(r["tenant"], r["plan"], r["status"]) for r in records] == [("acme", "free", "ok")] * 3 + [
        ("globex", "pro", "ok")
    ] * 4


async def test_the_cost_header_is_the_usage_records_cost(saas: Saas) -> None:
    raw = await saas.sdk(saas.keys["globex"]).chat.completions.with_raw_response.create(
        model="smart", messages=QUESTION
    )
    completion = raw.parse()
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (13, 30)
    assert raw.headers["x-unimw-cost"] == SMART_COST
    [record] = await saas.records()
    assert {k: record[k] for k in ("tenant", "plan", "model", "upstream_model", "cost_usd", "tags")} == {
        "tenant": "globex",
        "plan": "pro",
        "model": "smart",
        "upstream_model": "mock-large",
        "cost_usd": 0.000515,
        "tags": {},
    }
    assert f"{record['cost_usd']:.6f}" == raw.headers["x-unimw-cost"]


async def test_the_summaries_route_calls_the_gateway_in_process_for_the_users_organisation(saas: Saas) -> None:
    text = {"text": "Q3 revenue grew 12 %."}
    answer = await saas.as_user("POST", "/orgs/globex/summaries", "hank", json=text)
    assert answer.status_code == 200
    assert answer.json() == {
        "summary": 'This is a mock reply from unimw (no model was called). You said: "Q3 revenue grew 12 %."',
        "model": "mock-large",
    }
    free = await saas.as_user("POST", "/orgs/acme/summaries", "wile", json=text)
    assert (free.status_code, free.json()["model"]) == (200, "mock-small")  # free organisations: the cheap alias
    records = await saas.records()
    assert [{k: r[k] for k in ("tenant", "plan", "end_user", "tags", "model", "cost_usd")} for r in records] == [
        {
            "tenant": "globex",
            "plan": "pro",
            "end_user": "hank",
            "tags": {"feature": "summaries"},
            "model": "smart",
            "cost_usd": 0.00041,  # 16 prompt tokens * $5 + 22 completion tokens * $15, per 1M
        },
        {
            "tenant": "acme",
            "plan": "free",
            "end_user": "wile",
            "tags": {"feature": "summaries"},
            "model": "cheap",
            "cost_usd": 0.000016,
        },
    ]
    assert (await saas.as_user("POST", "/orgs/globex/summaries", None, json=text)).status_code == 401
    assert (await saas.as_user("POST", "/orgs/globex/summaries", "wile", json=text)).status_code == 403
    assert len(await saas.records()) == 2


async def test_the_header_tags_an_sdk_call(saas: Saas) -> None:
    client = saas.sdk(saas.keys["globex"]).with_options(default_headers={"X-Unimw-Tags": "feature=api, team=core"})
    await client.chat.completions.create(model="cheap", messages=QUESTION, metadata={"feature": "chat"})
    [record] = await saas.records()
    assert record["tags"] == {"feature": "api", "team": "core"}  # the header wins over metadata on a shared key


async def test_a_revoked_key_is_refused_once_forgotten(saas: Saas) -> None:
    key = saas.keys["globex"]
    client = saas.sdk(key)
    assert await ask(client, "smart") == ("mock-large", SMART_COST, None)
    # Revoked in the table only: the gateway's cached answer keeps the key working for up to ttl (60 s here).
    assert saas.database.revoke("globex", hash_key(key)) is True
    assert await ask(client, "smart") == ("mock-large", SMART_COST, None)
    assert saas.gateway.forget_key(hash_key(key)) is True
    with pytest.raises(openai.AuthenticationError) as refused:
        await ask(client, "smart")
    assert (refused.value.status_code, refused.value.code) == (401, "invalid_api_key")


async def test_the_revoke_route_refuses_the_key_at_once(saas: Saas) -> None:
    issued = await saas.as_user("POST", "/orgs/globex/keys", "hank")
    assert issued.status_code == 201
    key, digest = issued.json()["key"], issued.json()["digest"]
    assert digest == hash_key(key)
    client = saas.sdk(key)
    assert await ask(client, "smart") == ("mock-large", SMART_COST, None)
    assert (await saas.as_user("DELETE", f"/orgs/globex/keys/{digest}", "wile")).status_code == 403
    revoked = await saas.as_user("DELETE", f"/orgs/globex/keys/{digest}", "hank")
    assert (revoked.status_code, revoked.json()) == (200, {"digest": digest, "forgotten": True})
    with pytest.raises(openai.AuthenticationError) as refused:
        await ask(client, "smart")
    assert (refused.value.status_code, refused.value.code) == (401, "invalid_api_key")
    again = await saas.as_user("DELETE", f"/orgs/globex/keys/{digest}", "hank")
    assert again.status_code == 404
    assert await ask(saas.sdk(saas.keys["globex"]), "smart") == ("mock-large", SMART_COST, None)  # its other key


async def test_an_organisations_own_budget_replaces_its_plans_and_reroutes_near_it(saas: Saas) -> None:
    umbrella = saas.sdk(saas.keys["umbrella"])  # pro, with its own budget of $0.005 a month instead of pro's $20
    answers = [await ask(umbrella, "smart", max_tokens=40) for _ in range(11)]
    # 8 calls: $0.004120 spent, under 90 %; 9 calls: $0.004635, past it: the 10th goes to cheap.
    assert answers == [("mock-large", SMART_COST, None)] * 9 + [("mock-small", CHEAP_COST, "smart")] * 2
    records = await saas.records()
    assert [(r["model"], r["upstream_model"], r["rerouted_from"]) for r in records] == [
        ("smart", "mock-large", None)
    ] * 9 + [("cheap", "mock-small", "smart")] * 2
    globex = saas.sdk(saas.keys["globex"])  # the same plan with the plan's own budget: far from it
    assert await ask(globex, "smart", max_tokens=40) == ("mock-large", SMART_COST, None)


async def test_the_enterprise_plan_calls_the_partner_with_the_organisations_own_key(saas: Saas) -> None:
    initech = keys.lookup(hash_key(saas.keys["initech"]))
    assert initech is not None
    assert (initech.tenant, initech.plan, list(initech.credentials)) == ("initech", "enterprise", ["partner"])
    assert await ask(saas.sdk(saas.keys["initech"]), "partner-large") == ("partner-large", "0.000489", None)
    with pytest.raises(PermissionDenied) as refused:  # an enterprise organisation that brought no key of its own
        await saas.gateway.chat_completions(
            {"model": "partner-large", "messages": QUESTION}, tenant=Identity("newco", plan="enterprise")
        )
    assert (refused.value.status, refused.value.code) == (403, "byok_required")


async def test_a_key_lookup_that_fails_is_a_503_not_a_pass(saas: Saas) -> None:
    moved = saas.database.path.with_suffix(".moved")
    saas.database.path.rename(moved)  # the app's database is gone: its lookup raises
    with pytest.raises(openai.InternalServerError) as refused:
        await ask(saas.sdk(saas.keys["globex"]), "smart")
    assert (refused.value.status_code, refused.value.code) == (503, "tenant_lookup_unavailable")
    saas.database.path.unlink()  # the empty file sqlite made in its place
    moved.rename(saas.database.path)
    assert await ask(saas.sdk(saas.keys["globex"]), "smart") == ("mock-large", SMART_COST, None)  # not cached


async def test_spans_carry_every_tag_and_the_cost_metric_only_the_policys(tmp_path: Path, telemetry: Telemetry) -> None:
    env = {"SAAS_USAGE": str(tmp_path / "usage.jsonl")}
    async with Gateway.from_yaml(POLICY, env=env, **telemetry.providers) as gateway:
        await gateway.chat_completions(
            {"model": "smart", "messages": QUESTION, "metadata": {"feature": "summaries", "team": "core"}},
            tenant=Identity("globex", plan="pro"),
            end_user="hank",
        )
    attributes = telemetry.span("chat smart")["attributes"]
    assert {k: v for k, v in attributes.items() if k.startswith(WHO)} == {
        "unimw.tenant": "globex",
        "unimw.end_user": "hank",
        "unimw.plan": "pro",
        "unimw.tag.feature": "summaries",
        "unimw.tag.team": "core",
    }
    # An organisation the policy does not declare is on metrics by its plan only; of its tags, usage.tags only.
    assert telemetry.metrics()["unimw.cost"] == [
        (
            {
                "gen_ai.request.model": "smart",
                "unimw.plan": "pro",
                "gen_ai.provider.name": "unimw.mock",
                "unimw.provider": "mock",
                "unimw.tag.feature": "summaries",
            },
            0.000515,
        )
    ]


SNIPPET = re.compile(r"<!-- from (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)```", re.DOTALL)


def test_the_docs_quote_the_examples_code() -> None:
    """Every block of docs/saas.md marked ``<!-- from <file> -->`` is a verbatim part of that file."""
    doc = (ROOT / "docs" / "saas.md").read_text()
    quotes = [(m["path"], m["code"]) for m in SNIPPET.finditer(doc)]
    assert len(quotes) >= 5
    for path, code in quotes:
        assert code in (ROOT / path).read_text(), f"docs/saas.md quotes {path}, which no longer holds:\n{code}"


def test_the_run_saas_once_command() -> None:
    """`bash examples/run_saas.sh --once`, as the README gives it: the demo, then the spend report."""
    env = {**os.environ, "PORT": str(free_port())}
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "run_saas.sh"), "--once"], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "  acme      asked cheap          -> mock-small     x-unimw-cost: 0.000020 USD",
        "  globex    asked smart          -> mock-large     x-unimw-cost: 0.000515 USD",
        "  initech   asked partner-large  -> partner-large  x-unimw-cost: 0.000489 USD",
        "  call 4: 429 rate_limit_exceeded, retry-after 60 s",
        "  call 10: -> mock-small 0.000020 USD, rerouted from smart",
        "  the next call with it: 401 invalid_api_key",
        "tenant    tag:feature  calls  errors  input_tokens  output_tokens  cost_usd",
        "globex    summaries        1       0            16             22  0.000410",
        "total                     16       0           211            472  0.006129",
    ):
        assert line in out.splitlines(), f"{line!r} not in:\n{out}"
