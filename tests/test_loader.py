"""policies.yaml: what is accepted, and what is refused with its line and reason."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unimw import ConfigError, load_policy
from unimw.loader import parse_policy

GOOD = """\
providers:
  openai: {kind: openai, api_key: "${TEST_KEY}", timeout: 30s}
  local: {kind: openai, base_url: "${LOCAL_URL:-http://127.0.0.1:8000/v1}"}
models:
  gpt: {provider: openai, model: gpt-4.1, price: {input: 2, output: 8}}
  llama: {provider: local, model: llama3}
aliases:
  smart: {targets: [gpt, llama]}
  smarter: {targets: [{model: smart, weight: 2}, llama], strategy: weighted}
"""


def test_a_good_policy() -> None:
    policy = parse_policy(GOOD, env={"TEST_KEY": "sk-123"})
    openai = policy.providers["openai"]
    assert openai.api_key is not None and openai.api_key.get_secret_value() == "sk-123"
    assert openai.timeout == 30.0
    assert policy.providers["local"].base_url == "http://127.0.0.1:8000/v1"
    assert policy.models["gpt"].price is not None and policy.models["gpt"].price.output == 8
    assert policy.expand("smarter") == [("gpt", 2.0), ("llama", 2.0)]
    assert "sk-123" not in repr(policy)


def test_env_values_are_not_parsed_as_yaml() -> None:
    policy = parse_policy(GOOD, env={"TEST_KEY": "a: b # not a comment"})
    key = policy.providers["openai"].api_key
    assert key is not None and key.get_secret_value() == "a: b # not a comment"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("providers: {a: [1, 2}\n", 1, "invalid YAML"),
        ("providers:\n  p: {kind: openai}\n  p: {kind: mock}\n", 3, "duplicate key 'p'"),
        ("providers:\n  p:\n    kind: openia\n", 3, "unknown provider kind 'openia'"),
        (
            "providers:\n  p:\n    kind: openai\n    api_key: ${NOPE_NOT_SET}\n",
            4,
            "environment variable NOPE_NOT_SET is not set",
        ),
        (
            "providers:\n  p: {kind: openai}\nmodels:\n  m:\n    provider: q\n    model: x\n",
            5,
            "provider 'q', which is not defined",
        ),
        (
            "providers:\n  p: {kind: mock}\nmodels:\n  m: {provider: p, model: x}\naliases:\n  a:\n    targets:\n      - m\n      - ghost\n",
            9,
            "'ghost', which is neither a model nor an alias",
        ),
        (
            "providers:\n  p: {kind: mock}\naliases:\n  a: {targets: [b]}\n  b: {targets: [a]}\n",
            4,
            "alias cycle: a -> b -> a",
        ),
        ("providers:\n  p: {kind: mock}\n  q:\n    kind: mock\n    colour: blue\n", 5, "unknown field"),
        ("providers:\n  p:\n    kind: openai\n    timeout: soon\n", 4, "invalid duration 'soon'"),
        ("providers:\n  p:\n    kind: openai\n    base_url: ftp://x\n", 4, "must start with http://"),
        ("models:\n  m: {provider: p}\n", 2, "models.m.model: Field required"),
        ("- just\n- a list\n", 1, "must be a mapping"),
        ("surprise: 1\n", 1, "surprise: unknown field"),
        (
            "tenancy:\n  resolve:\n    - callable: myapp.auth:who\n",
            3,
            "cannot use 'myapp.auth:who': No module named 'myapp'",
        ),
        ("usage:\n  call: json:no_such_function\n", 2, "cannot use 'json:no_such_function'"),
        ("tenants:\n  t:\n    api_keys: [sk-plain-text-key]\n", 3, "api_keys are stored hashed"),
        ("tenants:\n  t: {models: [ghost]}\n", 2, "'ghost', which is neither a model nor an alias"),
        (
            "tenants:\n  t:\n    limits:\n      - {per: week, requests: 5}\n",
            4,
            "Input should be 'minute', 'hour', 'day' or 'month'",
        ),
        ("tenants:\n  t:\n    limits:\n      - {per: day}\n", 4, "at least one of requests, tokens or usd"),
        ("tenancy: {reset_timezone: Mars/Olympus}\n", 1, "unknown time zone 'Mars/Olympus'"),
        ("cache: {store: ftp://x}\n", 1, "store must be memory:// or redis://"),
        (
            "providers:\n  a:\n    kind: anthropic\n    options: {anthropic_verison: '2023-06-01'}\n",
            4,
            "unknown option(s) anthropic_verison for kind 'anthropic'; it takes: anthropic_version, default_max_tokens",
        ),
        (
            "providers:\n  z:\n    kind: openai\n    options: {azure: {api_verison: x}}\n",
            4,
            "the azure option must be true or a mapping",
        ),
    ],
    ids=[
        "bad-yaml",
        "duplicate-key",
        "unknown-kind",
        "missing-env",
        "unknown-provider",
        "alias-to-nowhere",
        "alias-cycle",
        "unknown-field",
        "bad-duration",
        "bad-url",
        "missing-field",
        "not-a-mapping",
        "unknown-section",
        "callable-not-importable",
        "sink-not-found",
        "plain-api-key",
        "tenant-model-nowhere",
        "bad-window",
        "empty-limit",
        "bad-timezone",
        "bad-store-url",
        "unknown-option",
        "bad-azure-option",
    ],
)
def test_broken_policies_name_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="p.yaml", env={})
    assert caught.value.line == line, str(caught.value)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"p.yaml:{line}: ")


def test_an_empty_file_is_an_empty_policy() -> None:
    assert parse_policy("", env={}).models == {}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the policy file"):
        load_policy(tmp_path / "nope.yaml")


def unimw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unimw.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_check_prints_what_a_good_policy_defines(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(GOOD)
    result = unimw("check", str(path), env={"TEST_KEY": "sk-do-not-print", "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert "smart [fallback] -> gpt, llama" in result.stdout
    assert "smarter [weighted] -> gpt (weight 2), llama (weight 2)" in result.stdout
    assert "sk-do-not-print" not in result.stdout


def test_check_refuses_a_broken_policy_with_line_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(
        textwrap.dedent("""\
        providers:
          p: {kind: mock}
        aliases:
          loop: {targets: [loop]}
        """)
    )
    result = unimw("check", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {path}:4: alias cycle: loop -> loop"


def test_the_repository_policy_is_valid() -> None:
    result = unimw("check", str(Path(__file__).parent.parent / "policies.yaml"))
    assert result.returncode == 0, result.stderr


ALIASED = """\
providers:
  p: &shared {kind: openai, base_url: "${URL}"}
  q: *shared
  r: {<<: *shared, timeout: 5s}
"""


def test_an_aliased_value_is_interpolated_once() -> None:
    """An alias puts one YAML node at several places: each place gets the env value as it is, never re-expanded."""
    policy = parse_policy(ALIASED, env={"URL": "http://h/${SECRET}", "SECRET": "s3cr3t"})
    assert {name: p.base_url for name, p in policy.providers.items()} == {
        "p": "http://h/${SECRET}",
        "q": "http://h/${SECRET}",
        "r": "http://h/${SECRET}",
    }


def test_an_aliased_nested_mapping_is_interpolated_once() -> None:
    text = """\
providers:
  p: {kind: openai, headers: &headers {x-target: "${TARGET}"}}
  q: {kind: openai, headers: *headers}
"""
    policy = parse_policy(text, env={"TARGET": "${SECRET}", "SECRET": "s3cr3t"})
    assert {name: p.headers for name, p in policy.providers.items()} == {
        "p": {"x-target": "${SECRET}"},
        "q": {"x-target": "${SECRET}"},
    }


def test_an_env_value_is_never_expanded_again() -> None:
    policy = parse_policy(GOOD, env={"TEST_KEY": "${OTHER}", "OTHER": "sk-other"})
    key = policy.providers["openai"].api_key
    assert key is not None and key.get_secret_value() == "${OTHER}"


def test_an_aliased_default_is_not_expanded_again() -> None:
    """A default ends at the first ``}``, so this one's text is ``http://h/${SECRET`` and the value ends in ``${SECRET}``."""
    text = """\
providers:
  p: &shared {kind: openai, base_url: "${NOT_SET:-http://h/${SECRET}}"}
  q: *shared
"""
    policy = parse_policy(text, env={"SECRET": "s3cr3t"})
    assert {name: p.base_url for name, p in policy.providers.items()} == {
        "p": "http://h/${SECRET}",
        "q": "http://h/${SECRET}",
    }


def test_an_error_inside_an_aliased_mapping_names_the_line_of_the_field() -> None:
    """Every place an alias puts a mapping records its fields' lines: the line where the field is written."""
    text = """\
providers:
  p: {kind: mock}
models:
  m:
    provider: p
    model: x
    price: &price {input: 2, output: 8}
tenants:
  t: *price
"""
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="p.yaml", env={})
    assert (caught.value.line, caught.value.reason) == (7, "tenants.t.input: unknown field (and 1 more)")
