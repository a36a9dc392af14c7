"""`unimw usage` sums usage records or reads spend from the shared store; `unimw hash-key` prints a key's stored form.

Wrong arguments (an unknown --by key, a time that is not one, a flag the
mode does not take) exit with status 2 and argparse's message; a file or
policy that cannot be read, a tenant without limits to report, or a store
that cannot be reached, with status 1 and an ``error:`` line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import policy_for
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.cli import main
from unimw.identity import Identity
from unimw.records import UsageRecord
from unimw.tenants import hash_key
from unimw.usage_report import format_usd, instant, summarize


def unimw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unimw.cli", *args], capture_output=True, text=True, timeout=60)


def at(day: int, month: int = 11, hour: int = 0) -> float:
    return datetime(2026, month, day, hour, tzinfo=UTC).timestamp()


def record(**fields: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "request_id": "req",
        "tenant": "acme",
        "end_user": None,
        "model": "gpt-main",
        "provider": "primary",
        "upstream_model": "up-main",
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.0,
        "latency_ms": 1.0,
        "cache_hit": False,
        "status": "ok",
        "stream": False,
        "timestamp": at(2),
    }
    return UsageRecord(**{**base, **fields})


#: Three acme calls of 0.1 USD (one failed), one globex call in October, one call of no tenant.
RECORDS = [
    record(plan="pro", input_tokens=100, output_tokens=10, cost_usd=0.1, tags={"feature": "search"}, timestamp=at(2)),
    record(plan="pro", input_tokens=200, output_tokens=20, cost_usd=0.1, tags={"feature": "chat"}, timestamp=at(3)),
    record(plan="pro", model="gpt-backup", input_tokens=300, cost_usd=0.1, status="error", timestamp=at(4, hour=12)),
    record(
        tenant="globex",
        input_tokens=1000,
        output_tokens=500,
        cost_usd=0.25,
        tags={"feature": "search"},
        timestamp=at(15, month=10),
    ),
    record(
        tenant=None,
        model="mock-echo",
        provider="mock",
        input_tokens=5,
        output_tokens=5,
        status="cancelled",
        timestamp=at(5),
    ),
]


def write(path: Path, records: list[UsageRecord], extra: tuple[str, ...] = ()) -> str:
    lines = [json.dumps(dataclasses.asdict(r)) for r in records]
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return str(path)


@pytest.fixture
def records_file(tmp_path: Path) -> str:
    return write(tmp_path / "usage.jsonl", RECORDS)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["usage", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_hash_key() -> None:
    result = unimw("hash-key", "sk-abc")
    expected = "sha256:" + hashlib.sha256(b"sk-abc").hexdigest()
    assert result.stdout.strip() == expected == hash_key("sk-abc")


def test_records_by_tenant_by_default(records_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--records", records_file) == (
        0,
        [
            "tenant  calls  errors  input_tokens  output_tokens  cost_usd",
            "acme        3       1           600             30  0.300000",
            "globex      1       0         1,000            500  0.250000",
            "-           1       0             5              5  0.000000",
            "total       5       1         1,605            535  0.550000",
        ],
        "",
    )


def test_records_by_plan(records_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--records", records_file, "--by", "plan") == (
        0,
        [
            "plan   calls  errors  input_tokens  output_tokens  cost_usd",
            "pro        3       1           600             30  0.300000",
            "-          2       0         1,005            505  0.250000",
            "total      5       1         1,605            535  0.550000",
        ],
        "",
    )


def test_records_by_tag_group_untagged_under_dash(records_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--records", records_file, "--by", "tag:feature") == (
        0,
        [
            "tag:feature  calls  errors  input_tokens  output_tokens  cost_usd",
            "search           2       0         1,100            510  0.350000",
            "-                2       1           305              5  0.100000",
            "chat             1       0           200             20  0.100000",
            "total            5       1         1,605            535  0.550000",
        ],
        "",
    )


def test_records_by_two_keys_as_json(records_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--records", records_file, "--by", "tenant", "--by", "tag:feature", "--json")
    assert (code, err) == (0, "")

    def group(tenant: str, feature: str, *counts: int, cost: float) -> dict[str, Any]:
        names = ("calls", "errors", "input_tokens", "output_tokens")
        return {
            "by": {"tenant": tenant, "tag:feature": feature},
            **dict(zip(names, counts, strict=True)),
            "cost_usd": cost,
        }

    assert json.loads("\n".join(out)) == {
        "groups": [
            group("globex", "search", 1, 0, 1000, 500, cost=0.25),
            group("acme", "-", 1, 1, 300, 0, cost=0.1),
            group("acme", "chat", 1, 0, 200, 20, cost=0.1),
            group("acme", "search", 1, 0, 100, 10, cost=0.1),
            group("-", "-", 1, 0, 5, 5, cost=0.0),
        ],
        "total": {"calls": 5, "errors": 1, "input_tokens": 1605, "output_tokens": 535, "cost_usd": 0.55},
    }


def test_records_money_is_summed_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tenths = [record(cost_usd=0.1) for _ in range(3)]
    assert sum(r.cost_usd for r in tenths) != 0.3  # what a float sum would print
    code, out, _ = run(capsys, "--records", write(tmp_path / "u.jsonl", tenths), "--json")
    text = "\n".join(out)
    assert code == 0
    assert json.loads(text)["total"] == {
        "calls": 3,
        "errors": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": 0.3,
    }
    assert "0.30000000000000004" not in text
    assert format_usd(summarize([json.dumps(dataclasses.asdict(r)) for r in tenths]).total.cost_micros) == "0.300000"


def test_records_since_and_until(records_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--records", records_file, "--since", "2026-11-01T00:00:00Z", "--until", "2026-11-04")[1] == [
        "tenant  calls  errors  input_tokens  output_tokens  cost_usd",
        "acme        2       0           300             30  0.200000",
        "total       2       0           300             30  0.200000",
    ]


def test_records_since_a_span_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    path = write(
        tmp_path / "u.jsonl",
        [record(cost_usd=1, timestamp=now - 8 * 86400), record(cost_usd=2, timestamp=now - 86400)],
    )
    assert run(capsys, "--records", path, "--since", "7d")[1][1:] == [
        "acme        1       0             0              0  2.000000",
        "total       1       0             0              0  2.000000",
    ]
    assert instant("90m", 10_000.0) == 10_000.0 - 5400


def test_records_of_one_tenant(records_file: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--records", records_file, "--tenant", "acme", "--by", "model")[1] == [
        "model       calls  errors  input_tokens  output_tokens  cost_usd",
        "gpt-main        2       0           300             30  0.200000",
        "gpt-backup      1       1           300              0  0.100000",
        "total           3       1           600             30  0.300000",
    ]


def test_records_skip_and_count_malformed_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = dataclasses.asdict(record(cost_usd=9))
    broken["input_tokens"] = "12"
    path = write(
        tmp_path / "u.jsonl",
        RECORDS[:1],
        extra=("not json", "", "[1, 2]", json.dumps({"model": "gpt-main"}), json.dumps(broken), "{truncated"),
    )
    code, out, err = run(capsys, "--records", path)
    assert (code, out[1:]) == (
        0,
        [
            "acme        1       0           100             10  0.100000",
            "total       1       0           100             10  0.100000",
        ],
    )
    assert err == f"warning: skipped 5 malformed line(s) in {path} (the first is line 2)\n"


def test_records_file_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "absent.jsonl")
    assert run(capsys, "--records", path) == (1, [], f"error: cannot read {path}: No such file or directory\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--by", "colour"),
            "argument --by: cannot group by 'colour': use one of tenant, plan, model, end_user, provider, operation "
            "or tag:<key>",
        ),
        (("--by", "tag:"), "argument --by: cannot group by 'tag:'"),
        (
            ("--since", "yesterday"),
            "argument --since: 'yesterday' is neither a time (2026-11-01T00:00:00Z) nor a span back (7d, 12h)",
        ),
        (("--plan", "pro"), "--plan is for the store's report, not --records"),
    ],
)
def test_records_bad_arguments_exit_2(
    records_file: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["usage", "--records", records_file, *args])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1].startswith(f"unimw usage: error: {message}")


def test_grouping_flags_need_records(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["usage", "--by", "plan"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "unimw usage: error: --by needs --records"


@pytest.mark.anyio
async def test_usage_prints_spend_and_remaining(upstream: OpenAIUpstream, upstream_url: str, tmp_path: Path) -> None:
    url = require_redis()
    tenant = unique("acme")
    policy = policy_for(
        upstream_url,
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        tenancy={"store": url},
        tenants={tenant: {"limits": [{"per": "minute", "requests": 10}, {"per": "month", "usd": 50}]}},
    )
    async with Gateway.from_dict(policy) as gateway:
        for _ in range(2):
            await gateway.chat_completions(
                {"model": "gpt-main", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, tenant=tenant
            )
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy))
    result = unimw("usage", "--config", str(config), "--tenant", tenant)
    assert result.returncode == 0, result.stderr
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines == [
        tenant,
        "requests per minute used 2 of 10 remaining 8",
        "usd per month used 6 of 50 remaining 44",
    ]
    result = unimw("usage", "--config", str(config), "--tenant", tenant, "--json")
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {
        "tenants": [
            {
                "tenant": tenant,
                "plan": None,
                "limits": [
                    {"quantity": "requests", "per": "minute", "used": 2, "limit": 10, "remaining": 8},
                    {"quantity": "usd", "per": "month", "used": 6.0, "limit": 50.0, "remaining": 44.0},
                ],
            }
        ]
    }
    result = unimw("usage", "--config", str(config), "--tenant", "nobody")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {config}: no tenant 'nobody', and no tenancy.default_plan to give it limits: name one with --plan\n"
    )


def test_usage_of_tenants_on_plans(
    upstream: OpenAIUpstream, upstream_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A declared tenant has its plan's limits under its own; one from the app has its plan's (default or --plan)."""
    url = require_redis()
    declared, undeclared = unique("acme"), unique("cust")
    policy = policy_for(
        upstream_url,
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 0, "output": 1_000_000}}},
        tenancy={"store": url, "default_plan": "free"},
        plans={
            "free": {"limits": [{"per": "minute", "requests": 5}]},
            "pro": {"limits": [{"per": "minute", "requests": 10}, {"per": "month", "usd": 50}]},
        },
        tenants={declared: {"plan": "pro", "limits": [{"per": "month", "usd": 20}]}},
    )

    async def call_twice() -> None:
        body = {"model": "gpt-main", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with Gateway.from_dict(policy) as gateway:
            for _ in range(2):
                await gateway.chat_completions(body, tenant=declared)
                await gateway.chat_completions(body, tenant=Identity(undeclared, plan="pro"))

    asyncio.run(call_twice())
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy))

    def usage(*args: str) -> tuple[int, list[str], str]:
        code, out, err = run(capsys, "--config", str(config), *args)
        return code, [" ".join(line.split()) for line in out], err

    assert usage() == usage("--tenant", declared)
    assert usage("--tenant", declared) == (
        0,
        [
            f"{declared} (plan pro)",
            "requests per minute used 2 of 10 remaining 8",
            "usd per month used 6 of 20 remaining 14",
        ],
        "",
    )
    assert usage("--tenant", undeclared) == (
        0,
        [f"{undeclared} (plan free)", "requests per minute used 2 of 5 remaining 3"],
        "",
    )
    assert usage("--tenant", undeclared, "--plan", "pro") == (
        0,
        [
            f"{undeclared} (plan pro)",
            "requests per minute used 2 of 10 remaining 8",
            "usd per month used 6 of 50 remaining 44",
        ],
        "",
    )
    code, out, err = run(capsys, "--config", str(config), "--tenant", undeclared, "--plan", "pro", "--json")
    assert (code, err) == (0, "")
    assert json.loads("\n".join(out)) == {
        "tenants": [
            {
                "tenant": undeclared,
                "plan": "pro",
                "limits": [
                    {"quantity": "requests", "per": "minute", "used": 2, "limit": 10, "remaining": 8},
                    {"quantity": "usd", "per": "month", "used": 6.0, "limit": 50.0, "remaining": 44.0},
                ],
            }
        ]
    }
    assert usage("--tenant", declared, "--plan", "free") == (
        1,
        [],
        f"error: {config}: tenant {declared!r} is declared on plan 'pro', not 'free'\n",
    )
    assert usage("--tenant", undeclared, "--plan", "gold") == (
        1,
        [],
        f"error: {config}: no plan 'gold' in the policy\n",
    )
    with pytest.raises(SystemExit) as exited:
        usage("--plan", "pro")
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "unimw usage: error: --plan needs --tenant"
