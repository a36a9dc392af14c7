"""Prompt-cache reads and writes in usage and cost, and the policy fields that price and place them."""

from __future__ import annotations

import pytest

from unimw import ConfigError
from unimw.loader import parse_policy
from unimw.policy import Price, PromptCache
from unimw.usage import DEFAULT_PRICES, Usage, cost_micros

SONNET = Price(input=3.00, cached_input=0.30, cache_write=3.75, cache_write_1h=6.00, output=15.00)


def test_usage_reads_cache_writes_from_the_openai_usage() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 5000,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 2500, "cache_write_1h_tokens": 500},
        }
    )
    assert usage == Usage(
        input_tokens=5000, output_tokens=10, cached_tokens=2000, cache_write_tokens=2500, cache_write_1h_tokens=500
    )


@pytest.mark.parametrize(
    ("usage", "micros"),
    [
        # 500 uncached at 3, 2000 read at 0.30, 2000 written for 5 minutes at 3.75 and 500 for an hour at 6, 10 out at 15
        pytest.param(Usage(5000, 10, 2000, 0, 2500, 500), 1500 + 600 + 7500 + 3000 + 150, id="reads-and-both-writes"),
        pytest.param(Usage(5000, 10, 0, 0, 5000, 0), 18750 + 150, id="all-written"),
        pytest.param(Usage(5000, 10, 5000, 0, 0, 0), 1500 + 150, id="all-read"),
        pytest.param(Usage(5000, 10), 15000 + 150, id="no-cache"),
    ],
)
def test_cache_reads_and_writes_are_priced_apart(usage: Usage, micros: int) -> None:
    assert cost_micros(SONNET, usage) == micros


def test_unset_write_prices_fall_back_to_input_then_to_the_write_price() -> None:
    usage = Usage(
        input_tokens=1000, output_tokens=0, cached_tokens=0, cache_write_tokens=1000, cache_write_1h_tokens=400
    )
    assert cost_micros(Price(input=2.0), usage) == 2000
    assert cost_micros(Price(input=2.0, cache_write=2.5), usage) == 2500
    assert cost_micros(Price(input=2.0, cache_write=2.5, cache_write_1h=4.0), usage) == 600 * 2.5 + 400 * 4


def test_counts_a_vendor_overstates_never_make_a_negative_cost() -> None:
    # More reads and writes than input: the writes are capped at what is left after the reads.
    usage = Usage(input_tokens=100, output_tokens=0, cached_tokens=80, cache_write_tokens=50, cache_write_1h_tokens=90)
    assert cost_micros(SONNET, usage) == 80 * 0.30 + 20 * 6.00


def test_built_in_claude_prices_carry_the_published_write_prices() -> None:
    """Anthropic's list prices: 5-minute writes at 1.25 times input, hour-long writes at twice it."""
    for model in ("claude-3-5-haiku-latest", "claude-sonnet-4-0", "claude-opus-4-0"):
        price = DEFAULT_PRICES[model]
        assert (price.cache_write, price.cache_write_1h) == (price.input * 1.25, price.input * 2), model


def test_the_policy_takes_write_prices_and_breakpoints() -> None:
    policy = parse_policy(
        """
providers:
  claude: {kind: anthropic, api_key: k}
models:
  sonnet:
    provider: claude
    model: claude-sonnet-4-5
    price: {input: 3, cached_input: 0.3, cache_write: 3.75, cache_write_1h: 6, output: 15}
    prompt_cache: {breakpoints: [system, last_user], ttl: 1h}
""",
        env={},
    )
    model = policy.models["sonnet"]
    assert model.price == SONNET
    assert model.prompt_cache == PromptCache(breakpoints=["system", "last_user"], ttl="1h")


@pytest.mark.parametrize(
    ("model", "line", "reason"),
    [
        pytest.param(
            "    price: {input: 3, cache_write: -1}\n",
            6,
            "models.m.price.cache_write: Input should be greater than or equal to 0",
            id="negative-write-price",
        ),
        pytest.param(
            "    prompt_cache: {breakpoints: [system, messages]}\n",
            6,
            "models.m.prompt_cache.breakpoints.1: Input should be 'tools', 'system' or 'last_user'",
            id="unknown-place",
        ),
        pytest.param(
            "    prompt_cache:\n      breakpoints: [system]\n      ttl: 10m\n",
            8,
            "models.m.prompt_cache.ttl: Input should be '5m' or '1h'",
            id="ttl",
        ),
        pytest.param(
            "    prompt_cache: {breakpoints: []}\n",
            6,
            "models.m.prompt_cache.breakpoints: List should have at least 1 item after validation, not 0",
            id="empty",
        ),
        pytest.param(
            "    prompt_cache:\n      breakpoints: [system, system]\n",
            7,
            "models.m.prompt_cache.breakpoints: each breakpoint may be listed once",
            id="twice",
        ),
    ],
)
def test_broken_prompt_cache_settings_name_line_and_reason(model: str, line: int, reason: str) -> None:
    text = "providers:\n  claude: {kind: anthropic}\nmodels:\n  m:\n    provider: claude\n" + model + "    model: x\n"
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, source="p.yaml", env={})
    assert (caught.value.line, caught.value.reason) == (line, reason)
