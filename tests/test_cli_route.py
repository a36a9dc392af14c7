"""``unimw route``, run as a command: the targets a request would try, in order, and why."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.redis_support import require_redis, unique
from unimw.cli import main
from unimw.latency import PENALTY, WEIGHT
from unimw.stores.latency import RedisLatency

POLICY = """\
providers:
  openai: {kind: openai, api_key: sk-never-printed}
  anthropic: {kind: anthropic, api_key: sk-never-printed}
models:
  mini: {provider: openai, model: gpt-4.1-mini}
  big: {provider: openai, model: gpt-4.1}
  sonnet: {provider: anthropic, model: claude-sonnet-4-0}
plans:
  free: {models: [cheap]}
  pro: {}
tenants:
  acme: {plan: pro}
aliases:
  smart:
    targets: [big, sonnet]
    when:
      - {plan: free, targets: [mini]}
      - {tools: true, tokens_over: 50000, targets: [sonnet, big]}
      - {headers: {X-Team: search}, tags: {feature: ask}, targets: [mini, big]}
  cheap: {targets: [big, sonnet, mini], strategy: cheapest}
  fast: {targets: [big, sonnet], strategy: least_latency}
  exp: {targets: [{model: big, weight: 3}, mini], strategy: weighted, sticky: end_user}
dispatch: {cooldown: 60s}
"""


def route(
    tmp_path: Path, *args: str, policy: str = POLICY, in_process: bool = True
) -> subprocess.CompletedProcess[str]:
    """``unimw route --config <policy> ARGS``: as a command, or (the same ``main``, quicker) in this process."""
    path = tmp_path / "policies.yaml"
    path.write_text(policy)
    argv = ["route", "--config", str(path), *args]
    if not in_process:
        command = [sys.executable, "-m", "unimw.cli", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's refusals
            code = int(exit.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def said(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


@pytest.mark.parametrize(
    ("args", "output"),
    [
        (
            ["--model", "smart", "--tenant", "acme", "--tools", "--tokens", "90000"],
            """
            smart: alias, strategy fallback
            when:
              rule 0 (plan: free): no: plan is pro
              rule 1 (tools: true, tokens_over: 50000): matched
              rule 2 (tag feature: ask, header X-Team: search): not tried
            targets, in the order tried:
              1. sonnet  anthropic/claude-sonnet-4-0
              2. big     openai/gpt-4.1
            """,
        ),
        (
            ["--model", "smart", "--tenant", "acme", "--tools", "--header", "x-team: search", "--tag", "feature=ask"],
            """
            smart: alias, strategy fallback
            when:
              rule 0 (plan: free): no: plan is pro
              rule 1 (tools: true, tokens_over: 50000): no: about 0 tokens
              rule 2 (tag feature: ask, header X-Team: search): matched
            targets, in the order tried:
              1. mini  openai/gpt-4.1-mini
              2. big   openai/gpt-4.1
            """,
        ),
        (
            ["--model", "smart", "--tenant", "newco", "--plan", "pro", "--header", "X-Team: ads"],
            """
            smart: alias, strategy fallback
            when:
              rule 0 (plan: free): no: plan is pro
              rule 1 (tools: true, tokens_over: 50000): no: tools is false; about 0 tokens
              rule 2 (tag feature: ask, header X-Team: search): no: no tag feature; header X-Team is ads
              no rule matched: the alias's own targets
            targets, in the order tried:
              1. big     openai/gpt-4.1
              2. sonnet  anthropic/claude-sonnet-4-0
            """,
        ),
        (
            ["--model", "smart", "--tenant", "newco", "--plan", "free"],
            """
            smart: alias, strategy fallback
            tenant newco may not use smart: its calls get 404 model_not_found
            when:
              rule 0 (plan: free): matched
              rule 1 (tools: true, tokens_over: 50000): not tried
              rule 2 (tag feature: ask, header X-Team: search): not tried
            targets, in the order tried:
              1. mini  openai/gpt-4.1-mini
            """,
        ),
        (
            ["--model", "cheap", "--tokens", "9000"],
            """
            cheap: alias, strategy cheapest
            targets, in the order tried:
              1. mini    openai/gpt-4.1-mini          0.005200 USD for 9000 prompt + 1000 output tokens
              2. big     openai/gpt-4.1               0.026000 USD for 9000 prompt + 1000 output tokens
              3. sonnet  anthropic/claude-sonnet-4-0  0.042000 USD for 9000 prompt + 1000 output tokens
            """,
        ),
        (
            ["--model", "fast"],
            """
            fast: alias, strategy least_latency
            targets, in the order tried:
              1. big     openai/gpt-4.1               not measured yet
              2. sonnet  anthropic/claude-sonnet-4-0  not measured yet
              (no --store: a process that has measured nothing tries them in this order)
            """,
        ),
        (
            ["--model", "exp", "--end-user", "user-7"],
            """
            exp: alias, strategy weighted, sticky on end_user
            sticky: end user user-7 is on arm mini
            targets, in the order tried:
              1. mini  openai/gpt-4.1-mini
              2. big   openai/gpt-4.1
            """,
        ),
        (
            ["--model", "exp", "--tenant", "acme"],
            """
            exp: alias, strategy weighted, sticky on end_user
            sticky: tenant acme is on arm big
            targets, in the order tried:
              1. big   openai/gpt-4.1
              2. mini  openai/gpt-4.1-mini
            """,
        ),
        (
            ["--model", "exp"],
            """
            exp: alias, strategy weighted, sticky on end_user
            sticky on end_user: none given, so the first target is drawn by weight per call
            targets, in the order tried:
              1. big   openai/gpt-4.1       weight 3, first in 75% of calls
              2. mini  openai/gpt-4.1-mini  weight 1, first in 25% of calls
            """,
        ),
        (
            ["--model", "sonnet"],
            """
            sonnet: model anthropic/claude-sonnet-4-0
            targets, in the order tried:
              1. sonnet  anthropic/claude-sonnet-4-0
            """,
        ),
    ],
    ids=["rule-matched", "header-and-tag", "no-rule", "plan-not-allowed", "cheapest", "least-latency", "sticky-user",
         "sticky-tenant", "sticky-nobody", "model"],
)  # fmt: skip
def test_route_explains_the_order(tmp_path: Path, args: list[str], output: str) -> None:
    result = route(tmp_path, *args, in_process=args[1] != "smart")  # the first four as the command itself
    assert (result.returncode, result.stderr, result.stdout) == (0, "", said(output))


def test_cheapest_prices_the_request_output_cap(tmp_path: Path) -> None:
    result = route(tmp_path, "--model", "cheap", "--tokens", "100", "--max-tokens", "20000")
    assert result.stdout.splitlines()[2:] == [
        "  1. mini    openai/gpt-4.1-mini          0.032040 USD for 100 prompt + 20000 output tokens",
        "  2. big     openai/gpt-4.1               0.160200 USD for 100 prompt + 20000 output tokens",
        "  3. sonnet  anthropic/claude-sonnet-4-0  0.300300 USD for 100 prompt + 20000 output tokens",
    ]


def at(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.anyio
async def test_route_reads_the_shared_latency_figures(tmp_path: Path) -> None:
    url = require_redis()
    big, sonnet = unique("big"), unique("sonnet")  # the shared hash is keyed by model name
    policy = POLICY.replace("claude-sonnet-4-0", "x").replace("big", big).replace("sonnet", sonnet)
    now = round(time.time(), 3)
    earlier = now - 20
    shared = RedisLatency(url)
    try:
        await shared.push([(big, 0.5, False), (sonnet, 0.2, False)], earlier)
        await shared.push([(sonnet, 0.4, False)], earlier + 1)
        await shared.push([(big, 0.1, False)], earlier + 2)
    finally:
        await shared.aclose()
    # sonnet: 0.2 + 0.3 x (0.4 - 0.2) = 260 ms; big: 0.5 + 0.3 x (0.1 - 0.5) = 380 ms
    assert round((0.2 + WEIGHT * (0.4 - 0.2)) * 1000) == 260
    result = route(tmp_path, "--model", "fast", "--store", url, policy=policy, in_process=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[2:] == [
        f"  1. {sonnet}  anthropic/x     260 ms average of 2 samples, last at {at(earlier + 1)}",
        f"  2. {big:<{len(sonnet)}}  openai/gpt-4.1  380 ms average of 2 samples, last at {at(earlier + 2)}",
    ]
    # A failure just now: the target is cooling down (in the process that saw it) for dispatch.cooldown.
    shared = RedisLatency(url)
    try:
        await shared.push([(sonnet, PENALTY * 0.38, True)], now)
    finally:
        await shared.aclose()
    result = route(tmp_path, "--model", "fast", "--store", url, policy=policy, in_process=False)
    assert result.stdout.splitlines()[2:] == [
        f"  1. {big:<{len(sonnet)}}  openai/gpt-4.1  380 ms average of 2 samples, last at {at(earlier + 2)}",
        f"  2. {sonnet}  anthropic/x     410 ms average of 3 samples, last at {at(now)}; failed at {at(now)}, "
        f"cooling down until {at(now + 60)} where it failed",
    ]
    # The faster (sonnet, now) is fresh, the other (big) untried for over probe_after: a call would probe big.
    shared = RedisLatency(url)
    try:
        await shared.push([(big, 0.5, False)], now - 40)
        await shared.push([(sonnet, 0.0, False)], now - 35)
    finally:
        await shared.aclose()
    result = route(tmp_path, "--model", "fast", "--store", url, policy=policy, in_process=False)
    assert result.stdout.splitlines()[2:] == [
        f"  1. {big:<{len(sonnet)}}  openai/gpt-4.1  416 ms average of 3 samples, last at {at(now - 40)}; probed: not tried for "
        "30 s",
        f"  2. {sonnet}  anthropic/x     287 ms average of 4 samples, last at {at(now - 35)}; failed at {at(now)}, "
        f"cooling down until {at(now + 60)} where it failed",
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--model", "nope"], "error: {path}: no model or alias 'nope'"),
        (["--model", "smart", "--tenant", "newco"], "error: {path}: no tenant 'newco', and no tenancy.default_plan"),
        (["--model", "fast", "--store", "memory://"], "error: --store must be a redis:// URL, got 'memory://'"),
        (
            ["--model", "fast", "--store", "redis://127.0.0.1:1/0?socket_connect_timeout=0.2"],
            "error: Redis is unreachable",
        ),
    ],
    ids=["unknown-model", "unknown-tenant", "not-redis", "redis-down"],
)
def test_route_refuses_what_it_cannot_use(tmp_path: Path, args: list[str], error: str) -> None:
    result = route(tmp_path, *args)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(error.format(path=tmp_path / "policies.yaml")), result.stderr


def test_route_names_the_line_of_a_broken_rule(tmp_path: Path) -> None:
    broken = POLICY.replace("{plan: free, targets: [mini]}", "{plan: gold, targets: [mini]}")
    result = route(tmp_path, "--model", "smart", policy=broken)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {tmp_path / 'policies.yaml'}:17: a when rule names plan 'gold', which is not in plans\n"
    )
    check = subprocess.run(
        [sys.executable, "-m", "unimw.cli", "check", str(tmp_path / "policies.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (check.returncode, check.stderr) == (1, result.stderr)


def test_flags_are_checked(tmp_path: Path) -> None:
    for args, message in (
        (["--model", "smart", "--tag", "feature"], "'feature' is not KEY=VALUE"),
        (["--model", "smart", "--header", "X-Team"], "'X-Team' is not 'NAME: VALUE'"),
        (["--tenant", "acme"], "the following arguments are required: --model"),
    ):
        result = route(tmp_path, *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr


DOC = Path(__file__).parent.parent / "docs" / "routing.md"


def test_the_routing_doc_shows_what_the_command_prints(tmp_path: Path) -> None:
    """Its YAML examples make one valid policy, and each ``unimw route`` it shows (but the one reading a store) is
    printed exactly so."""
    doc = DOC.read_text()
    base, *examples = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    aliases: dict[str, object] = {}
    for example in examples:
        aliases.update(yaml.safe_load(example)["aliases"])
    policy = yaml.safe_load(base) | {"aliases": aliases}
    for provider in policy["providers"].values():
        provider["api_key"] = "sk-test"  # not ${...}: the test's environment has no keys
    shown = re.findall(r"\$ unimw route (.*?)\n(.*?)(?=\n\$ |\n```)", doc, re.S)
    assert len(shown) == 3
    for flags, output in shown:
        if "--store" in flags:
            continue
        args = [a for a in shlex.split(flags) if a not in ("--config", "policies.yaml")]
        result = route(tmp_path, *args, policy=yaml.safe_dump(policy))
        assert (result.returncode, result.stderr, result.stdout) == (0, "", output.rstrip("\n") + "\n"), flags


README = Path(__file__).parent.parent / "README.md"
README_MODELS = {
    "providers": {"openai": {"kind": "openai", "api_key": "sk-test"}, "anthropic": {"kind": "anthropic"}},
    "models": {
        "gpt-4.1": {"provider": "openai", "model": "gpt-4.1"},
        "gpt-4.1-mini": {"provider": "openai", "model": "gpt-4.1-mini"},
        "claude-sonnet": {"provider": "anthropic", "model": "claude-sonnet-4-0"},
    },
    "plans": {"free": {}, "pro": {}},
    "tenants": {"acme": {"plan": "pro"}},
}


def test_the_readme_routing_example_is_what_the_command_prints(tmp_path: Path) -> None:
    section = README.read_text().split("## Routing\n", 1)[1].split("\n## ", 1)[0]
    example, shown = re.findall(r"```(?:yaml|text)\n(.*?)```", section, re.S)
    policy = README_MODELS | yaml.safe_load(example)
    flags, output = shown.split("\n", 1)
    args = [a for a in shlex.split(flags.removeprefix("$ unimw route ")) if a not in ("--config", "policies.yaml")]
    result = route(tmp_path, *args, policy=yaml.safe_dump(policy))
    assert (result.returncode, result.stderr, result.stdout) == (0, "", output)


def test_check_lists_the_rules_and_stickiness(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY)
    result = subprocess.run(
        [sys.executable, "-m", "unimw.cli", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("aliases (4):\n")[1].splitlines() == [
        "  smart [fallback] -> big, sonnet",
        "    when plan: free -> mini",
        "    when tools: true, tokens_over: 50000 -> sonnet, big",
        "    when tag feature: ask, header X-Team: search -> mini, big",
        "  cheap [cheapest] -> big, sonnet, mini",
        "  fast [least_latency] -> big, sonnet",
        "  exp [weighted, sticky on end_user] -> big (weight 3), mini",
    ]
