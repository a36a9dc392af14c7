"""Spend the app can use: tags, returned cost, rerouting near a budget, plans that want the tenant's own key."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Clock, collect, sdk
from tests.e2e import tenant_hooks
from tests.otel import Telemetry
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, Identity, PermissionDenied
from unimw.cli import main as cli
from unimw.metrics import MAX_TAG_VALUES
from unimw.stores.base import Counter
from unimw.usage import MICRO

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
PRICED = {
    "gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 3, "output": 15}},
    "gpt-backup": {"provider": "backup", "model": "up-backup", "price": {"input": 1, "output": 2}},
}
PRO = {"limits": [{"per": "minute", "requests": 100}]}
BY_HEADER = {"resolve": [{"header": "X-Org", "plan_header": "X-Plan"}]}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def spend_policy(path: Path, **usage: Any) -> dict[str, Any]:
    return {
        "models": PRICED,
        "plans": {"pro": PRO},
        "tenancy": BY_HEADER,
        "usage": {"jsonl": str(path), **usage},
    }


async def test_tags_reach_records_spans_and_only_the_named_keys_reach_metrics(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path, telemetry: Telemetry,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = tmp_path / "usage.jsonl"
    gateway = make_gateway(telemetry=telemetry, **spend_policy(path, tags=["feature"]))
    client = sdk(gateway, "x", **{"X-Org": "acme-7", "X-Plan": "pro", "X-Unimw-Tags": "experiment=b, team=search"})
    await client.chat.completions.create(
        model="gpt-main", messages=HELLO, metadata={"feature": "answers", "team": "core"}
    )
    await gateway.flush()
    [record] = records(path)
    assert (record["tenant"], record["plan"]) == ("acme-7", "pro")
    assert record["tags"] == {"feature": "answers", "team": "search", "experiment": "b"}  # the header wins
    attributes = telemetry.span("chat gpt-main")["attributes"]
    assert {k: v for k, v in attributes.items() if k.startswith(("unimw.tag.", "unimw.plan", "unimw.tenant"))} == {
        "unimw.tenant": "acme-7",
        "unimw.plan": "pro",
        "unimw.tag.feature": "answers",
        "unimw.tag.team": "search",
        "unimw.tag.experiment": "b",
    }
    [(cost_attributes, cost)] = telemetry.metrics()["unimw.cost"]
    # A tenant of the app is counted by plan, not by id; of the tags, only the one the policy names.
    assert cost_attributes == {
        "gen_ai.request.model": "gpt-main",
        "unimw.plan": "pro",
        "gen_ai.provider.name": "openai",
        "unimw.provider": "primary",
        "unimw.tag.feature": "answers",
    }
    assert cost == pytest.approx(record["cost_usd"]) and record["cost_usd"] > 0
    assert cli(["usage", "--records", str(path), "--by", "tag:feature", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(g["by"], g["cost_usd"]) for g in report["groups"]] == [({"tag:feature": "answers"}, record["cost_usd"])]


async def test_a_malformed_tags_header_is_a_400_before_anything_is_spent(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    gateway = make_gateway(**spend_policy(tmp_path / "usage.jsonl"))
    for header in ("feature", "bad key=1", "a=" + "x" * 513, ",".join(f"k{i}=v" for i in range(17))):
        client = sdk(gateway, "x", **{"X-Org": "acme", "X-Plan": "pro", "X-Unimw-Tags": header})
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="gpt-main", messages=HELLO)
        assert (caught.value.code, caught.value.param) == ("invalid_tags", "X-Unimw-Tags"), header
    assert not upstream.calls


async def test_the_returned_cost_is_the_recorded_cost(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    gateway = make_gateway(**spend_policy(path, return_cost=True))
    client = sdk(gateway, "x", **{"X-Org": "acme", "X-Plan": "pro"})
    raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO)
    header = raw.headers["x-unimw-cost"]
    stream = await client.chat.completions.create(
        model="gpt-main", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = await collect(stream)
    await gateway.flush()
    plain, streamed = records(path)
    assert header == f"{plain['cost_usd']:.6f}" and plain["cost_usd"] > 0
    assert chunks[-1].usage is not None
    assert chunks[-1].model_extra == {"x_unimw": {"cost_usd": streamed["cost_usd"]}}
    assert all(not chunk.model_extra for chunk in chunks[:-1])  # only the usage chunk carries it
    expected = round(upstream_cost(plain) * MICRO)
    assert round(plain["cost_usd"] * MICRO) == expected  # 3 and 15 USD per million tokens


def upstream_cost(record: dict[str, Any]) -> float:
    tokens_in, tokens_out = int(record["input_tokens"]), int(record["output_tokens"])
    return (tokens_in * 3 + tokens_out * 15) / 1_000_000


async def test_without_return_cost_nothing_is_added(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(models=PRICED)
    raw = await sdk(gateway).chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO)
    assert "x-unimw-cost" not in raw.headers


async def test_on_budget_reroutes_at_the_threshold_and_back_in_the_next_window(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path, telemetry: Telemetry
) -> None:
    probe_path = tmp_path / "probe.jsonl"
    probe = make_gateway(**spend_policy(probe_path))
    await sdk(probe, "x", **{"X-Org": "probe", "X-Plan": "pro"}).chat.completions.create(
        model="gpt-main", messages=HELLO, max_tokens=50
    )
    await probe.flush()
    one_call = round(records(probe_path)[0]["cost_usd"] * MICRO)  # what one call on gpt-main costs, in micro-USD
    upstream.calls.clear()

    path, clock = tmp_path / "usage.jsonl", Clock()
    budget = {"per": "day", "usd": 10 * one_call / MICRO}
    plans = {"pro": {"limits": [budget], "on_budget": [{"at": 0.5, "use": "gpt-backup"}]}}
    gateway = make_gateway(clock=clock, telemetry=telemetry, **{**spend_policy(path), "plans": plans})
    client = sdk(gateway, "x", **{"X-Org": "acme", "X-Plan": "pro"})

    async def ask() -> str | None:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO, max_tokens=50)
        return raw.headers.get("x-unimw-rerouted-from")

    # Five calls spend half the budget; from then on the plan sends gpt-main's calls to gpt-backup.
    assert [await ask() for _ in range(7)] == [None] * 5 + ["gpt-main"] * 2
    assert upstream.calls == {"up-main": 5, "up-backup": 2}
    await gateway.flush()
    day_one = records(path)
    assert [(r["model"], r["rerouted_from"]) for r in day_one] == [("gpt-main", None)] * 5 + [
        ("gpt-backup", "gpt-main")
    ] * 2
    spent = sum(round(r["cost_usd"] * MICRO) for r in day_one)
    # Exact accounting across the switch: the day's counter holds exactly what the records say was spent.
    usd = Counter(f"unimw:lim:t:acme:day:usd:{_day(clock.now)}", 1, 86400.0, sliding=False, ends=float("inf"))
    assert await gateway._limiter.store.totals([usd], clock.now) == (spent,)
    clock.advance(86400)  # the next day: a new window, nothing spent
    assert await ask() is None
    assert upstream.calls == {"up-main": 6, "up-backup": 2}
    rerouted = [s for s in telemetry.spans() if s["attributes"].get("unimw.rerouted_from") == "gpt-main"]
    assert [s["name"] for s in rerouted] == ["chat gpt-backup"] * 2


def _day(at: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


async def test_a_plan_that_wants_the_tenants_own_key_drops_targets_it_did_not_bring_one_for(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.jsonl"
    plans = {"enterprise": {"byok": ["primary"]}}
    gateway = make_gateway(**{**spend_policy(path), "plans": plans, "tenancy": {"default_plan": "enterprise"}})
    with pytest.raises(PermissionDenied) as caught:
        await gateway.chat_completions({"model": "gpt-main", "messages": HELLO}, tenant=Identity("initech"))
    assert (caught.value.status, caught.value.code) == (403, "byok_required")
    assert "primary" in caught.value.message
    assert not upstream.calls
    # The alias still answers, from its other target.
    answer = await gateway.chat_completions({"model": "smart", "messages": HELLO}, tenant=Identity("initech"))
    assert answer["model"] == "up-backup"
    own_key = "sk-initech-own-0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    answer = await gateway.chat_completions(
        {"model": "smart", "messages": HELLO}, tenant=Identity("initech", credentials={"primary": own_key})
    )
    assert answer["model"] == "up-main"
    assert [h["authorization"] for h in upstream.headers] == ["Bearer sk-backup-secret", f"Bearer {own_key}"]
    await gateway.flush()
    assert own_key not in path.read_text() and own_key not in caplog.text
    assert own_key not in repr(Identity("initech", credentials={"primary": own_key}))


async def test_a_plans_cache_scope_beats_the_caches(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    plans = {"free": {"cache_scope": "global"}, "pro": {}}
    gateway = make_gateway(plans=plans, tenancy=BY_HEADER, cache={"enabled": True, "scope": "tenant"})

    async def ask(org: str, plan: str) -> str:
        client = sdk(gateway, "x", **{"X-Org": org, "X-Plan": plan})
        raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO)
        return raw.headers["x-unimw-cache"]

    assert [await ask("a", "free"), await ask("b", "free")] == ["miss", "hit"]  # shared by every free tenant
    assert [await ask("c", "pro"), await ask("d", "pro")] == ["miss", "miss"]  # the cache's own: per tenant
    assert upstream.calls == {"up-main": 3}


async def test_a_plans_alert_thresholds_beat_the_policys(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    tenant_hooks.alerts.clear()
    plans = {"pro": {"limits": [{"per": "day", "requests": 4}], "alerts": [0.5]}, "free": PRO}
    alerts = {"at": [0.8, 1.0], "call": "tests.e2e.tenant_hooks:record_alert"}
    gateway = make_gateway(plans=plans, tenancy={**BY_HEADER, "alerts": alerts})
    for org, plan in (("acme", "pro"), ("acme", "pro"), ("initech", "free")):
        await sdk(gateway, "x", **{"X-Org": org, "X-Plan": plan}).chat.completions.create(
            model="gpt-main", messages=HELLO
        )
    await gateway.flush()
    assert [(a.tenant, a.quantity, a.threshold, a.used, a.limit) for a in tenant_hooks.alerts] == [
        ("acme", "requests", 0.5, 2.0, 4.0)
    ]


async def test_a_responses_stream_returns_its_cost_on_its_completed_event(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    gateway = make_gateway(**spend_policy(path, return_cost=True))
    client = sdk(gateway, "x", **{"X-Org": "acme", "X-Plan": "pro"})
    raw = await client.responses.with_raw_response.create(model="gpt-main", input="Hello")
    events = await collect(await client.responses.create(model="gpt-main", input="Hello", stream=True))
    await gateway.flush()
    whole, streamed = records(path)
    assert raw.headers["x-unimw-cost"] == f"{whole['cost_usd']:.6f}"
    assert events[-1].type == "response.completed"
    assert events[-1].model_extra == {"x_unimw": {"cost_usd": streamed["cost_usd"]}}
    assert streamed["cost_usd"] > 0 and all(not e.model_extra for e in events[:-1])


async def test_a_metric_tag_takes_a_bounded_number_of_values(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, telemetry: Telemetry
) -> None:
    gateway = make_gateway(telemetry=telemetry, models=PRICED, plans={"pro": {}}, tenancy=BY_HEADER,
                           usage={"tags": ["feature"]})  # fmt: skip
    for i in range(MAX_TAG_VALUES + 2):
        client = sdk(gateway, "x", **{"X-Org": "acme", "X-Plan": "pro", "X-Unimw-Tags": f"feature=f{i}"})
        await client.chat.completions.create(model="gpt-main", messages=HELLO)
    values = [attributes["unimw.tag.feature"] for attributes, _ in telemetry.metrics()["unimw.cost"]]
    assert sorted(values) == sorted([f"f{i}" for i in range(MAX_TAG_VALUES)] + ["_OTHER"])
    spans = [s["attributes"]["unimw.tag.feature"] for s in telemetry.spans() if s["name"] == "chat gpt-main"]
    assert spans[-2:] == [f"f{MAX_TAG_VALUES}", f"f{MAX_TAG_VALUES + 1}"]  # spans keep every value


async def test_an_answer_paid_with_a_tenants_own_key_is_not_cached_for_others(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(
        plans={"pro": {}}, tenancy={"default_plan": "pro"}, cache={"enabled": True, "scope": "global"}
    )
    body = {"model": "gpt-main", "messages": HELLO}
    own = {"primary": "sk-initech-own-0123456789abcdef"}
    await gateway.chat_completions(body, tenant=Identity("initech", credentials=own))
    await gateway.chat_completions(body, tenant=Identity("acme"))  # global scope, but not initech's answer
    await gateway.chat_completions(body, tenant=Identity("initech", credentials=own))  # its own: a hit
    await gateway.chat_completions(body, tenant=Identity("globex"))  # acme's answer, shared globally: a hit
    assert upstream.calls == {"up-main": 2}
    assert [h["authorization"] for h in upstream.headers] == [f"Bearer {own['primary']}", "Bearer sk-primary-secret"]


@pytest.mark.parametrize("on_store_error", ["closed", "open"])
async def test_on_budget_with_the_store_down_follows_on_store_error(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, on_store_error: str
) -> None:
    plans = {"pro": {"limits": [{"per": "day", "usd": 1}], "on_budget": [{"at": 0.5, "use": "gpt-backup"}]}}
    store = "redis://127.0.0.1:1/0?socket_connect_timeout=0.2"  # nothing listens there
    gateway = make_gateway(plans=plans, tenancy={**BY_HEADER, "store": store, "on_store_error": on_store_error})
    client = sdk(gateway, "x", **{"X-Org": "acme", "X-Plan": "pro"})
    if on_store_error == "closed":
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="gpt-main", messages=HELLO)
        assert (caught.value.status_code, caught.value.code) == (503, "limits_unavailable")
        assert not upstream.calls
    else:  # unmetered, and not rerouted: nothing says the budget is near
        raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=HELLO)
        assert "x-unimw-rerouted-from" not in raw.headers
        assert upstream.calls == {"up-main": 1}
