"""``unimw route``: the targets a request would try, in order, and why.

Worked out by the same code the gateway runs (the route table, the ``when``
rules, the sticky hash, the strategies' orders), for a request described
by flags instead of sent. The latency figures and failures of
``least_latency`` live in the processes that serve calls: with a store
(``--store redis://...``) they are read from where those processes share
them, else the order is the one a process that has measured nothing yet
would use.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime

from unimw.latency import Figure
from unimw.plans import Rules
from unimw.policy import Policy
from unimw.route_rules import Facts, explain
from unimw.routing import Route, Router, output_tokens
from unimw.usage import MICRO, Usage


def report(
    policy: Policy,
    name: str,
    facts: Facts,
    *,
    now: float,
    figures: Mapping[str, Figure] | None = None,
    rules: Rules | None = None,
) -> list[str]:
    """The lines ``unimw route`` prints for a call of ``name`` that ``facts`` describe (ModelNotFound if unknown).

    ``figures`` are the shared latency figures (None: no store was given); ``rules`` the caller's plan's, to
    say whether it may use ``name`` at all.
    """
    router = Router(policy, random.Random(0), clock=lambda: now, shared_latency=False)
    route = router.resolve(name)
    lines = [_headline(route)]
    if rules is not None and not rules.allows(name):
        lines.append(f"tenant {facts.tenant} may not use {name}: its calls get 404 model_not_found")
    route = _rules(route, facts, lines)
    weighted_first = None
    if route.sticky is not None:
        by_user = route.sticky == "end_user" and facts.end_user is not None
        who = facts.end_user if by_user else facts.tenant
        if who is None:
            lines.append(f"sticky on {route.sticky}: none given, so the first target is drawn by weight per call")
        else:
            route = route.arms[router.arm_of(route, facts)]
            lines.append(f"sticky: {'end user' if by_user else 'tenant'} {who} is on arm {route.arm}")
            weighted_first = route.arm
    lines.append("targets, in the order tried:")
    lines += _targets(router, route, facts, now, figures, policy.dispatch.cooldown, weighted_first)
    return lines


def _headline(route: Route) -> str:
    if not route.is_alias:
        target = route.targets[0]
        return f"{route.name}: model {target.provider}/{target.model}"
    sticky = f", sticky on {route.sticky}" if route.sticky is not None else ""
    return f"{route.name}: alias, strategy {route.strategy}{sticky}"


def _rules(route: Route, facts: Facts, lines: list[str]) -> Route:
    """The route the first matching rule picks (or ``route``), with a line per rule saying why."""
    if not route.rules:
        return route
    picked = None
    lines.append("when:")
    for rule, candidate in route.rules:
        if picked is not None:
            verdict = "not tried"
        elif rule.matches(facts):
            picked, verdict = candidate, "matched"
        else:
            verdict = f"no: {explain(rule, facts)}"
        lines.append(f"  rule {rule.index} ({rule.text}): {verdict}")
    if picked is None:
        lines.append("  no rule matched: the alias's own targets")
        return route
    return picked


def _targets(
    router: Router,
    route: Route,
    facts: Facts,
    now: float,
    figures: Mapping[str, Figure] | None,
    cooldown: float,
    sticky_arm: str | None,
) -> list[str]:
    targets = route.targets
    notes: dict[str, str] = {}
    strategy = route.strategy
    if strategy == "weighted" and sticky_arm is None and len(targets) > 1:
        total = sum(route.weights)
        targets = tuple(route.targets[i] for i in sorted(range(len(targets)), key=lambda i: -route.weights[i]))
        for target, weight in zip(route.targets, route.weights, strict=True):
            notes[target.name] = f"weight {weight:g}, first in {weight / total:.0%} of calls"
    elif strategy == "least_latency" and router.latency is not None:
        book = router.latency
        book.merge(figures or {})
        measured = {t.name for t in targets if t.name in book.figures}
        targets = book.order(targets, route.probe_after)
        for target in route.targets:
            notes[target.name] = _latency(book.figures.get(target.name), now, cooldown)
        if len(measured) == len(targets) > 1 and book.figures[targets[0].name].average > min(
            book.figures[t.name].average for t in targets
        ):
            notes[targets[0].name] += f"; probed: not tried for {route.probe_after:g} s"
    elif strategy == "cheapest":
        usage = Usage(facts.tokens, output_tokens(facts.request))
        targets = router.cheapest(targets, facts.request, tokens=facts.tokens)
        for target in targets:
            micros = router.cost(target.name, usage)
            notes[target.name] = (
                f"{micros / MICRO:.6f} USD for {usage.input_tokens} prompt + {usage.output_tokens} output tokens"
            )
    width = max(len(t.name) for t in targets)
    where = max(len(f"{t.provider}/{t.model}") for t in targets)
    lines = []
    for i, target in enumerate(targets, 1):
        line = f"  {i}. {target.name:<{width}}  {target.provider + '/' + target.model:<{where}}"
        if note := notes.get(target.name):
            line += f"  {note}"
        lines.append(line.rstrip())
    if strategy == "least_latency" and figures is None:
        lines.append("  (no --store: a process that has measured nothing tries them in this order)")
    return lines


def _latency(figure: Figure | None, now: float, cooldown: float) -> str:
    if figure is None:
        return "not measured yet"
    text = f"{figure.average * 1000:.0f} ms average of {figure.samples} samples, last at {_when(figure.at)}"
    if figure.failed_at is not None:
        text += f"; failed at {_when(figure.failed_at)}"
        if now < figure.failed_at + cooldown:
            text += f", cooling down until {_when(figure.failed_at + cooldown)} where it failed"
    return text


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
