"""Routing as pure functions: when rules, the sticky hash, cheapest's prices, the latency book, and the policy's
refusals of broken rules (with their line)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.conftest import Clock
from unimw import ConfigError
from unimw.adapters.base import Target
from unimw.latency import PENALTY, WEIGHT, Figure, LatencyBook
from unimw.loader import parse_policy
from unimw.route_rules import MEDIA_TOKENS, Facts, estimate_tokens, explain
from unimw.routing import OUTPUT_TOKENS, Router, output_tokens, stable_point

RULES = """\
providers: {p: {kind: mock}}
models:
  a: {provider: p, model: a}
  b: {provider: p, model: b}
  c: {provider: p, model: c}
plans: {free: {}, pro: {}}
aliases:
  smart:
    targets: [a, b]
    when:
      - {tenant: acme, targets: [c]}
      - {plan: [free], targets: [b]}
      - {tags: {feature: [search, ask]}, targets: [c, a]}
      - {headers: {X-Team: core}, targets: [b, c]}
      - {tools: true, targets: [a]}
      - {images: true, targets: [b]}
      - {structured: true, targets: [c]}
      - {tokens_over: 100, targets: [c, b]}
      - {tools: false, images: false, structured: false, plan: pro, targets: [b, a]}
"""

HI = [{"role": "user", "content": "hi"}]


def names(targets: tuple[Target, ...]) -> list[str]:
    return [t.name for t in targets]


@pytest.fixture
def router() -> Router:
    return Router(parse_policy(RULES, env={}), random.Random(7))


@pytest.mark.parametrize(
    ("facts", "rule", "targets"),
    [
        (Facts({"messages": HI}, tenant="acme", plan="free"), 0, ["c"]),
        (Facts({"messages": HI}, tenant="other", plan="free"), 1, ["b"]),
        (Facts({"messages": HI}, tags={"feature": "ask"}), 2, ["c", "a"]),
        (Facts({"messages": HI}, headers={"x-team": "core"}), 3, ["b", "c"]),
        (Facts({"messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]}), 4, ["a"]),
        (
            Facts({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            5,
            ["b"],
        ),
        (Facts({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}), 5, ["b"]),
        (Facts({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}), 6, ["c"]),
        (Facts({"messages": HI, "response_format": {"type": "json_object"}}), 6, ["c"]),
        (Facts({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}), 6, ["c"]),
        (Facts({"messages": [{"role": "user", "content": "x" * 404}]}), 7, ["c", "b"]),
        (Facts({"messages": HI}, plan="pro"), 8, ["b", "a"]),
    ],
    ids=[
        "tenant",
        "plan",
        "tag",
        "header",
        "tools",
        "image",
        "responses-image",
        "json-schema",
        "json-object",
        "responses-format",
        "tokens",
        "all-false-and-plan",
    ],
)
def test_each_condition_selects_its_rule(router: Router, facts: Facts, rule: int, targets: list[str]) -> None:
    placed = router.place(router.resolve("smart"), facts)
    assert (placed.rule, names(placed.targets), placed.name, placed.strategy) == (rule, targets, "smart", "fallback")


@pytest.mark.parametrize(
    "facts",
    [
        Facts({"messages": HI}, tenant="acme-2", plan="enterprise", tags={"feature": "chat"}),
        Facts({"messages": HI}, headers={"x-team": "Core"}),  # values are compared exactly
        Facts({"messages": HI}, tags={"other": "search"}),
        Facts({"messages": [{"role": "user", "content": "x" * 396}]}),  # 100 tokens ("user" counts) is not over 100
        Facts({"messages": HI, "response_format": {"type": "text"}}, plan="free-ish"),
    ],
    ids=["nothing", "header-case", "other-tag", "tokens-at-bound", "text-format"],
)
def test_no_match_keeps_the_alias_targets(router: Router, facts: Facts) -> None:
    route = router.resolve("smart")
    placed = router.place(route, facts)
    assert placed is route and placed.rule is None and names(placed.targets) == ["a", "b"]


def test_header_names_match_in_any_case_and_values_exactly() -> None:
    policy = parse_policy(
        RULES.replace("X-Team: core", "x-tEAM: [core, search]"),
        env={},
    )
    router = Router(policy)
    for value, rule in (("core", 3), ("search", 3), ("CORE", None)):
        assert router.place(router.resolve("smart"), Facts({}, headers={"x-team": value})).rule == rule


def test_rules_say_why_they_did_not_match(router: Router) -> None:
    rules = [rule for rule, _ in router.resolve("smart").rules]
    facts = Facts({"messages": HI, "tools": [{"type": "function"}]}, tenant="t1", plan="pro")
    assert [(rule.text, explain(rule, facts)) for rule in rules] == [
        ("tenant: acme", "tenant is t1"),
        ("plan: free", "plan is pro"),
        ("tag feature: one of search, ask", "no tag feature"),
        ("header X-Team: core", "no header X-Team"),
        ("tools: true", ""),
        ("images: true", "images is false"),
        ("structured: true", "structured is false"),
        ("tokens_over: 100", "about 7 tokens"),  # "user", "hi" and the tools' JSON
        ("plan: pro, tools: false, images: false, structured: false", "tools is true"),
    ]


def test_the_request_shape_is_read_only_by_rules_that_ask() -> None:
    facts = Facts({"messages": HI}, plan="free")
    router = Router(parse_policy(RULES, env={}))
    router.place(router.resolve("smart"), facts)
    assert (facts._tokens, facts._tools, facts._images, facts._structured) == (None, None, None, None)


def test_token_estimate_counts_text_tools_and_media_not_data() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    request = {
        "messages": [
            {"role": "system", "content": "s" * 100},
            {"role": "user", "content": [{"type": "text", "text": "t" * 200}, image]},
        ],
        "tools": [tool],
    }
    tool_chars = len(b'[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]')
    # role strings count too: "system" + "user" + "text"
    chars = 100 + 200 + len("system") + len("user") + len("text") + MEDIA_TOKENS * 4 + tool_chars
    assert estimate_tokens(request) == (chars + 3) // 4
    assert estimate_tokens({"input": "abcd" * 10, "instructions": "abcd"}) == 11
    assert estimate_tokens({}) == 0


def test_a_fallback_alias_is_not_placed_per_call() -> None:
    router = Router(parse_policy(RULES + "  plain: {targets: [a, b]}\n", env={}))
    plain = router.resolve("plain")
    assert (plain.per_call, plain.fixed, router.order(plain) is plain.targets) == (False, True, True)
    assert router.resolve("smart").per_call and router.latency is None


# ── sticky ──────────────────────────────────────────────────────────────────

STICKY = """\
providers: {p: {kind: mock}}
models: {a: {provider: p, model: a}, b: {provider: p, model: b}, c: {provider: p, model: c}}
aliases:
  exp:
    targets: [{model: a, weight: 6}, {model: b, weight: 3}, {model: c, weight: 1}]
    strategy: weighted
    sticky: end_user
  by-tenant: {targets: [a, b], strategy: weighted, sticky: tenant}
"""


def test_the_sticky_point_is_a_fixed_hash_of_alias_and_caller() -> None:
    # The same in every process and release: the digest, not Python's salted hash().
    assert stable_point("exp", "user-1") == 0.4766174855125486
    assert stable_point("exp", "user-2") == 0.9624874569330696
    assert stable_point("other", "user-1") != stable_point("exp", "user-1")


def test_sticky_arms_split_by_weight_and_stay_put() -> None:
    router = Router(parse_policy(STICKY, env={}), random.Random(1))
    route = router.resolve("exp")
    arms = Counter(router.place(route, Facts({}, end_user=f"user-{i}")).arm for i in range(10_000))
    # Exact, since the hash is fixed; and each within 3 standard deviations of its weight's share.
    assert arms == {"a": 5994, "b": 2967, "c": 1039}
    for arm, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(arms[arm] - 10_000 * share) <= 3 * (10_000 * share * (1 - share)) ** 0.5, arm
    for i in range(50):
        placed = {
            tuple(names(router.place(route, Facts({}, end_user=f"user-{i}", tenant=f"t{j}")).targets)) for j in range(5)
        }
        assert len(placed) == 1  # the same arm (and order) whatever else the call says
    first = router.place(route, Facts({}, end_user="user-1"))
    assert (first.arm, names(first.targets), first.fixed) == ("a", ["a", "b", "c"], True)
    second = router.place(route, Facts({}, end_user="user-2"))
    assert (second.arm, names(second.targets), router.order(second)) == ("c", ["c", "a", "b"], second.targets)


def test_sticky_on_end_user_falls_back_to_the_tenant_then_to_a_draw() -> None:
    router = Router(parse_policy(STICKY, env={}), random.Random(3))
    route = router.resolve("exp")
    by_tenant = {router.place(route, Facts({}, tenant="acme")).arm for _ in range(20)}
    assert by_tenant == {router.place(route, Facts({}, end_user="acme")).arm}
    drawn = Counter(router.place(route, Facts({})).arm for _ in range(2000))
    assert set(drawn) == {"a", "b", "c"} and drawn["a"] > drawn["b"] > drawn["c"]


def test_sticky_on_tenant_ignores_the_end_user() -> None:
    router = Router(parse_policy(STICKY, env={}))
    route = router.resolve("by-tenant")
    assert len({router.place(route, Facts({}, tenant="acme", end_user=f"u{i}")).arm for i in range(30)}) == 1


# ── cheapest ────────────────────────────────────────────────────────────────

CHEAP = """\
providers: {p: {kind: mock}}
models:
  dear-input: {provider: p, model: x, price: {input: 10, output: 1}}
  dear-output: {provider: p, model: y, price: {input: 1, output: 10}}
  listed: {provider: p, model: gpt-4.1-mini}
  free: {provider: p, model: unpriced}
aliases:
  cheap: {targets: [dear-input, dear-output, listed], strategy: cheapest}
  with-free: {targets: [dear-input, free], strategy: cheapest}
"""


def test_cheapest_prices_the_estimated_tokens_on_each_target() -> None:
    router = Router(parse_policy(CHEAP, env={}))
    route = router.resolve("cheap")
    long_prompt = {"messages": [{"role": "user", "content": "x" * 400_000}], "max_tokens": 10}
    long_answer = {"messages": HI, "max_completion_tokens": 50_000}
    # 100,001 prompt tokens + 10 output: 40,016 / 100,101 / 1,000,011 micro-USD (gpt-4.1-mini at its list price).
    assert names(router.order(route, long_prompt)) == ["listed", "dear-output", "dear-input"]
    # 2 prompt tokens + 50,000 output: 50,020 / 80,001 / 500,002.
    assert names(router.order(route, long_answer)) == ["dear-input", "listed", "dear-output"]
    assert names(router.order(router.resolve("with-free"), long_prompt)) == ["free", "dear-input"]


def test_cheapest_ties_keep_the_written_order_and_output_defaults() -> None:
    router = Router(parse_policy(CHEAP.replace("output: 1}", "output: 10}").replace("input: 1,", "input: 10,"), env={}))
    assert names(router.cheapest(router.resolve("cheap").targets[:2], {"messages": HI})) == [
        "dear-input",
        "dear-output",
    ]
    assert (output_tokens({}), output_tokens({"max_tokens": 7}), output_tokens({"max_output_tokens": 9})) == (
        OUTPUT_TOKENS,
        7,
        9,
    )


# ── the latency book ────────────────────────────────────────────────────────


def targets(*names: str) -> tuple[Target, ...]:
    return tuple(Target(name=n, model=n, provider="p") for n in names)


def test_the_book_tries_unmeasured_targets_first_then_the_fastest() -> None:
    clock = Clock()
    book = LatencyBook({"a", "b", "c"}, clock)
    abc = targets("a", "b", "c")
    assert names(book.order(abc, 30)) == ["a", "b", "c"]
    book.observe("a", 0.5)
    assert names(book.order(abc, 30)) == ["b", "c", "a"]
    book.observe("b", 0.2)
    book.observe("c", 0.3)
    assert names(book.order(abc, 30)) == ["b", "c", "a"]
    book.observe("b", 0.9)  # 0.2 + 0.3 x 0.7 = 0.41: now behind c, ahead of a
    assert book.figures["b"] == Figure(0.2 + WEIGHT * 0.7, 2, clock.now)
    assert names(book.order(abc, 30)) == ["c", "b", "a"]
    book.observe("untracked", 0.1)
    assert "untracked" not in book.figures


def test_a_failure_counts_as_a_penalty_against_its_target() -> None:
    clock = Clock()
    book = LatencyBook({"a", "b"}, clock)
    book.observe("a", 0.1)
    book.observe("b", 0.3)
    book.failed("a", 0.01)  # a quick 500 is not a fast answer: a sample of PENALTY x the slowest average
    after_one = 0.1 + WEIGHT * (PENALTY * 0.3 - 0.1)
    assert book.figures["a"] == Figure(after_one, 2, clock.now, clock.now)
    assert names(book.order(targets("a", "b"), 30)) == ["a", "b"]  # one failure (cooled down anyway) is not enough
    clock.advance(1)
    book.failed("a", 0.01)
    assert book.figures["a"] == Figure(after_one + WEIGHT * (PENALTY * 0.3 - after_one), 3, clock.now, clock.now)
    assert names(book.order(targets("a", "b"), 30)) == ["b", "a"]
    book.observe("a", 0.1)
    assert book.figures["a"].failed_at == clock.now  # the last failure stays known


def test_a_target_left_untried_is_probed_once_per_interval() -> None:
    clock = Clock()
    book = LatencyBook({"a", "b", "c"}, clock)
    abc = targets("a", "b", "c")
    for name, seconds in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
        book.observe(name, seconds)
    clock.advance(29)
    book.observe("a", 0.1)
    assert names(book.order(abc, 30)) == ["a", "b", "c"]
    clock.advance(1)  # b and c untried for 30 s: the one untried longest (b, then c) goes first, once each
    assert names(book.order(abc, 30)) == ["b", "a", "c"]
    assert names(book.order(abc, 30)) == ["c", "a", "b"]
    assert names(book.order(abc, 30)) == ["a", "b", "c"]
    clock.advance(30)
    assert names(book.order(abc, 30))[0] == "b"


def test_shared_figures_replace_the_process_own() -> None:
    clock = Clock()
    book = LatencyBook({"a", "b"}, clock)
    book.observe("a", 0.1)
    book.merge({"a": Figure(0.9, 40, clock.now - 5), "b": Figure(0.2, 3, clock.now + 1), "zz": Figure(0.1, 1, 0)})
    assert book.figures == {"a": Figure(0.9, 40, clock.now - 5), "b": Figure(0.2, 3, clock.now + 1)}
    assert names(book.order(targets("a", "b"), 30)) == ["b", "a"]


# ── the policy refuses broken rules with their line ─────────────────────────

BASE = """\
providers: {p: {kind: mock}}
models: {a: {provider: p, model: a}, b: {provider: p, model: b}}
plans: {free: {}}
aliases:
  smart:
    targets: [a]
"""


@pytest.mark.parametrize(
    ("tail", "line", "reason"),
    [
        ("    when:\n      - {targets: [b]}\n", 8, "a when rule needs a condition (tenant, plan, tags, headers, tools"),
        (
            "    when:\n      - plan: free\n        targets: [nowhere]\n",
            9,
            "when rule 0 of alias 'smart' points at 'nowhere'",
        ),
        (
            "    when:\n      - plan: [free, gold]\n        targets: [b]\n",
            8,
            "a when rule names plan 'gold', which is not in plans",
        ),
        ("    when:\n      - {team: core, targets: [b]}\n", 8, "aliases.smart.when.0.team: unknown field"),
        (
            "    when:\n      - tools: yes please\n        targets: [b]\n",
            8,
            "aliases.smart.when.0.tools: Input should be a valid boolean",
        ),
        ("    when:\n      - {tokens_over: -1, targets: [b]}\n", 8, "greater than or equal to 0"),
        ("    when:\n      - headers: {'X Team': core}\n        targets: [b]\n", 8, "'X Team' is not a header name"),
        ("    when:\n      - tags: {'bad key!': x}\n        targets: [b]\n", 8, "aliases.smart.when.0.tags.bad key!"),
        ("    when:\n      - {plan: free, targets: []}\n", 8, "should have at least 1 item"),
        ("    sticky: tenant\n", 7, "alias 'smart' is sticky, which needs strategy: weighted"),
        ("    strategy: fastest\n", 7, "Input should be 'fallback', 'weighted', 'least_latency' or 'cheapest'"),
        ("    probe_after: soon\n", 7, "invalid duration 'soon'"),
    ],
    ids=[
        "no-condition",
        "dangling-target",
        "unknown-plan",
        "unknown-condition",
        "not-a-boolean",
        "negative-tokens",
        "bad-header-name",
        "bad-tag-key",
        "no-targets",
        "sticky-not-weighted",
        "unknown-strategy",
        "bad-probe",
    ],
)
def test_broken_rules_are_refused_with_their_line(tail: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(BASE + tail, source="p.yaml", env={})
    assert (caught.value.line, reason in caught.value.reason) == (line, True), str(caught.value)
