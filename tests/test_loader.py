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
        ("dispatch:\n  breaker:\n    failures: 5\n    open_for: soon\n", 4, "dispatch.breaker.open_for"),
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
        ("tenancy:\n  store: memory://?max_countrs=5\n", 2, "unknown memory:// store option 'max_countrs'"),
        (
            "cache:\n  enabled: true\n  store: redis://127.0.0.1:6379/0?pool_timeout=5\n",
            3,
            "unknown Redis store option(s) pool_timeout",
        ),
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
        "bad-breaker-duration",
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
        "bad-memory-store-option",
        "bad-redis-store-option",
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


# -- provider options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            "providers:\n  p:\n    kind: mock\n    options:\n      latency: 1s\n      delay: 2\n",
            6,
            "providers.p.options: unknown option(s) delay for kind 'mock'; it takes: chunk_delay, latency",
        ),
        (
            "providers:\n  p:\n    kind: mock\n    options:\n      latency: 1s\n      chunk_delay: -1\n",
            6,
            "providers.p.options.chunk_delay: Input should be greater than or equal to 0",
        ),
        (
            "providers:\n  p:\n    kind: mock\n    options:\n      latency: soon\n",
            5,
            "providers.p.options.latency: invalid duration 'soon': use a number of seconds or e.g. 250ms, 30s, 5m, 1h, 1d",
        ),
        (
            "providers:\n  a:\n    kind: anthropic\n    options:\n      default_max_tokens: 0\n",
            5,
            "providers.a.options.default_max_tokens: Input should be greater than 0",
        ),
        (
            "providers:\n  g:\n    kind: gemini\n    options:\n      thinking_levels:\n        gemini-3: [low, hihg]\n",
            6,
            "providers.g.options.thinking_levels.gemini-3.1: Input should be 'minimal', 'low', 'medium', 'high' or 'xhigh'",
        ),
        (
            "providers:\n  o:\n    kind: openai\n    options:\n      azure: 1.5\n",
            5,
            "providers.o.options.azure: the azure option must be true or a mapping with api_version and/or deployment",
        ),
        (
            "providers:\n  p:\n    kind: openia\n    options: {azure: true}\n",
            3,
            "providers.p.kind: unknown provider kind 'openia'; known kinds: anthropic, gemini, mock, openai",
        ),
    ],
    ids=["unknown-option", "negative-delay", "bad-latency", "zero-max-tokens", "unknown-level", "azure-number", "kind"],
)
def test_options_are_checked_against_the_kind(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="p.yaml", env={})
    assert (caught.value.line, caught.value.reason) == (line, reason)


def test_options_are_given_to_the_adapter_as_their_kind_reads_them() -> None:
    """Durations in seconds, an unquoted date as the text it spells, a boolean from the environment as a boolean."""
    text = """\
providers:
  m: {kind: mock, options: {latency: 250ms, chunk_delay: 2}}
  a: {kind: anthropic, options: {anthropic_version: 2023-06-01, default_max_tokens: "1024"}}
  g: {kind: gemini, options: {include_thoughts: "${THOUGHTS}", thinking_levels: {gemini-4: [low, high]}}}
  z: {kind: openai, options: {azure: {api_version: 2024-10-21}}}
  v1: {kind: openai, options: {azure: true}}
  plain: {kind: openai}
"""
    policy = parse_policy(text, env={"THOUGHTS": "false"})
    assert {name: p.options for name, p in policy.providers.items()} == {
        "m": {"latency": 0.25, "chunk_delay": 2.0},
        "a": {"anthropic_version": "2023-06-01", "default_max_tokens": 1024},
        "g": {"include_thoughts": False, "thinking_levels": {"gemini-4": ["low", "high"]}},
        "z": {"azure": {"api_version": "2024-10-21"}},
        "v1": {"azure": True},
        "plain": {},
    }


def isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with the ``unimw`` package's modules importable one by one, its ``__init__`` not run.

    The package has what its modules take from it: ``_read_as_unimw``, here doing nothing.
    """
    root = Path(__file__).parent.parent / "unimw"
    prelude = (
        f"import sys, types; pkg = types.ModuleType('unimw'); pkg.__path__ = [{str(root)!r}]; sys.modules['unimw'] = pkg\n"
        "pkg._read_as_unimw = lambda: None\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60)


def test_the_policy_imports_no_adapter() -> None:
    result = isolated("import unimw.policy; print(sorted(m for m in sys.modules if m.startswith('unimw.')))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['unimw.notation', 'unimw.policy']"  # notation: plain Python, no adapter


def test_checking_options_imports_no_adapter_module() -> None:
    """The registry names adapter classes by path: reading a policy that uses every kind loads none of them."""
    code = """\
from unimw.loader import parse_policy
parse_policy('''
providers:
  a: {kind: anthropic, options: {anthropic_version: "2023-06-01"}}
  g: {kind: gemini, options: {include_thoughts: true}}
  m: {kind: mock, options: {latency: 1}}
  o: {kind: openai, options: {azure: true}}
''', env={})
print(sorted(m for m in sys.modules if m.startswith('unimw.adapters')))
"""
    result = isolated(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['unimw.adapters', 'unimw.adapters.options']"


def test_importing_unimw_leaves_the_options_models_for_the_first_policy() -> None:
    """Import time matters to the host app: the options models are built when a policy is first read."""
    code = "import sys, unimw; print('unimw.adapters.options' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr


# -- hostile YAML ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("providers: &x {p: *x}\n", 1),
        ("providers:\n  p: &x\n    kind: mock\n    options:\n      again: *x\n", 5),
        ("limits: &x\n  - *x\n", 2),
    ],
    ids=["flow-mapping", "nested-mapping", "sequence"],
)
def test_an_alias_inside_its_own_anchor_is_refused(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="p.yaml", env={})
    assert (caught.value.line, caught.value.reason) == (line, "invalid YAML: a YAML alias refers to itself")


def laughs(levels: int, width: int) -> str:
    """A document whose aliases expand to ``width ** levels`` strings."""
    lines = ['l0: &l0 "lol"']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_aliases_that_expand_without_bound_are_refused() -> None:
    """A billion values from a dozen lines: refused before anything is built."""
    with pytest.raises(ConfigError) as caught:
        parse_policy(laughs(9, 10), source="p.yaml", env={})
    assert caught.value.reason == "YAML aliases expand to 1234567911 values, more than 100000 beyond those written"


def test_aliases_that_expand_a_little_are_accepted() -> None:
    """Below the bound the aliased values are all there (the sections are refused only as unknown fields)."""
    with pytest.raises(ConfigError) as caught:
        parse_policy(laughs(2, 300), source="p.yaml", env={})
    assert caught.value.reason == "l0: unknown field (and 2 more)"


def test_a_document_nested_too_deeply_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy("providers: " + "[" * 5000 + "]" * 5000 + "\n", source="p.yaml", env={})
    assert caught.value.reason == "invalid YAML: the document nests too deeply"


def test_a_merged_key_can_be_overridden() -> None:
    text = """\
providers:
  p: &p {kind: openai, timeout: 1s, base_url: "http://h"}
  q:
    <<: *p
    timeout: 5s
"""
    policy = parse_policy(text, env={})
    assert [(p.timeout, p.base_url) for p in policy.providers.values()] == [(1.0, "http://h"), (5.0, "http://h")]


def test_a_key_written_twice_beside_a_merge_is_still_refused() -> None:
    text = "providers:\n  p: &p {kind: openai}\n  q:\n    <<: *p\n    timeout: 5s\n    timeout: 6s\n"
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="p.yaml", env={})
    assert (caught.value.line, caught.value.reason) == (6, "duplicate key 'timeout'")
