"""Public model names → the targets to try, in order.

The route table is computed once from the policy; resolving a name on the
hot path is a dict lookup. What a strategy needs per call is worked out
only for the routes that have it:

* ``fallback`` (and a plain model): the targets as written, nothing more;
* ``weighted``: one draw by weight, the rest heaviest first as fallbacks;
  with ``sticky``, the draw is a hash of the tenant's (or end user's) id and
  the alias's name, made when the call is placed (:meth:`Router.place`), so a
  caller stays on one arm;
* ``least_latency``: by each target's recent latency (:mod:`unimw.latency`);
* ``cheapest``: by what the request's estimated tokens cost on each target.

An alias's ``when`` rules are tried when the call is placed, before its
limits are reserved: the first that matches replaces the alias's targets by
its own (a route made once, with the policy).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from unimw.adapters.base import Target
from unimw.errors import ModelNotFound
from unimw.latency import LatencyBook
from unimw.route_rules import Facts, Rule, compile_rule, estimate_tokens
from unimw.usage import Usage, cost_micros
from unimw.wire import JSON

if TYPE_CHECKING:
    from collections.abc import Mapping

    from unimw.calls import Call
    from unimw.policy import Alias, Policy, Price

#: Output tokens a request that sets no cap is priced for, by ``cheapest``.
OUTPUT_TOKENS = 1000


@dataclass(frozen=True, slots=True)
class Route:
    """What one public name stands for (or, once placed, what one call of it tries)."""

    name: str
    strategy: str  #: ``single``, ``fallback``, ``weighted``, ``least_latency`` or ``cheapest``
    targets: tuple[Target, ...]
    weights: tuple[float, ...]
    #: Where a call goes when a target says the request is too long for its context window (the alias's
    #: ``on_context_overflow``, flattened), or when its content filter refused the request.
    on_context_overflow: tuple[Target, ...] = ()
    on_content_filter: tuple[Target, ...] = ()
    #: Whether targets whose context window cannot hold the request are skipped before any call.
    context_check: bool = False
    #: The ``when`` rules, in order, each with the route it picks.
    rules: tuple[tuple[Rule, Route], ...] = ()
    sticky: str | None = None  #: ``tenant`` or ``end_user``: the weighted draw is a hash of that id
    #: For a weighted route: per target, the route with it first (the rest heaviest first).
    arms: tuple[Route, ...] = ()
    arm: str | None = None  #: the target a sticky draw placed the call on
    rule: int | None = None  #: the index of the ``when`` rule that picked these targets
    probe_after: float = 30.0  #: ``least_latency``: see :class:`~unimw.policy.Alias`
    #: The call must be placed (:meth:`Router.place`): it has rules, or it is sticky.
    per_call: bool = False
    #: A weighted route's arms' upper bounds in [0, 1], by weight.
    bounds: tuple[float, ...] = ()
    #: Whether the targets are tried as they stand (no strategy orders them per call).
    fixed: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", self.strategy in ("single", "fallback") or self.arm is not None)

    @property
    def is_alias(self) -> bool:
        return self.strategy != "single"

    def without(self, providers: Collection[str]) -> Route:
        """This route minus its targets on ``providers``."""
        kept = [i for i, target in enumerate(self.targets) if target.provider not in providers]
        return replace(
            self,
            targets=tuple(self.targets[i] for i in kept),
            weights=tuple(self.weights[i] for i in kept),
            on_context_overflow=tuple(t for t in self.on_context_overflow if t.provider not in providers),
            on_content_filter=tuple(t for t in self.on_content_filter if t.provider not in providers),
        )

    def only(self, targets: tuple[Target, ...]) -> Route:
        """This name tried on ``targets`` alone, in that order (a stream continued elsewhere)."""
        return Route(self.name, "fallback", targets, (1.0,) * len(targets))

    def order(self, rng: random.Random) -> tuple[Target, ...]:
        """Targets in the order to try them, for a ``weighted`` route: the first drawn by weight, the others
        following heaviest first, as fallbacks."""
        if self.strategy != "weighted" or len(self.targets) < 2 or self.arm is not None:
            return self.targets
        if len(self.arms) == len(self.targets):  # the orders made with the policy (a narrowed route has fewer)
            return self.arms[min(bisect.bisect_right(self.bounds, rng.random()), len(self.arms) - 1)].targets
        first = rng.choices(range(len(self.targets)), weights=self.weights)[0]
        return self.targets[first : first + 1] + tuple(self.targets[i] for i in _heaviest(self.weights, first))


class Router:
    """The route table for one policy, and the strategies' per-call orders.

    ``clock`` (seconds since the epoch) times ``least_latency``'s probes;
    ``shared`` pools its figures between replicas (see :mod:`unimw.latency`).
    """

    def __init__(
        self,
        policy: Policy,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.time,
        shared_latency: bool = True,
    ) -> None:
        self._rng = rng or random.Random()
        self.routes: dict[str, Route] = {}
        targets = {
            name: Target(
                name=name,
                model=model.model,
                provider=model.provider,
                params=model.params,
                prompt_cache=model.prompt_cache,
            )
            for name, model in policy.models.items()
        }
        check = policy.dispatch.context_check

        def flattened(names: list[str]) -> tuple[Target, ...]:
            return tuple(targets[m] for m in dict.fromkeys(m for n in names for m, _ in policy.expand(n)))

        from unimw.usage import DEFAULT_PRICES, FREE  # price models, made with the first router

        self._prices: dict[str, Price] = {
            name: model.price or DEFAULT_PRICES.get(model.model, FREE) for name, model in policy.models.items()
        }
        #: USD per 1M input and output tokens, as plain floats: cheapest compares them on every call.
        self._rates = {name: (price.input, price.output) for name, price in self._prices.items()}
        for name, target in targets.items():
            self.routes[name] = Route(name, "single", (target,), (1.0,), context_check=check)
        for name, alias in policy.aliases.items():
            # Every route of the alias (its own, each rule's, each sticky arm) keeps the alias's recovery targets.
            recovery = {
                "on_context_overflow": flattened(alias.on_context_overflow),
                "on_content_filter": flattened(alias.on_content_filter),
                "context_check": check if alias.context_check is None else alias.context_check,
            }
            rules = tuple(
                (compile_rule(i, rule), _route(name, alias, targets, policy.expand_rule(name, i), recovery, rule=i))
                for i, rule in enumerate(alias.when)
            )
            default = _route(name, alias, targets, policy.expand(name), recovery)
            self.routes[name] = replace(default, rules=rules, per_call=bool(rules) or default.per_call)
        tracked = {t.name for route in self._every_route() if route.strategy == "least_latency" for t in route.targets}
        self.latency: LatencyBook | None = None
        if tracked:
            store = policy.tenancy.store
            shared = None
            if shared_latency and not store.startswith("memory://"):
                from unimw.stores.latency import RedisLatency

                shared = RedisLatency(store)
            self.latency = LatencyBook(tracked, clock, shared)

    def _every_route(self) -> list[Route]:
        return [r for route in self.routes.values() for r in (route, *(sub for _, sub in route.rules))]

    def target(self, name: str | None) -> Target | None:
        """The concrete target of a model name (None for None)."""
        route = self.routes.get(name) if name is not None else None
        return route.targets[0] if route is not None and not route.is_alias else None

    def resolve(self, name: str) -> Route:
        try:
            return self.routes[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def place(self, route: Route, facts: Facts) -> Route:
        """What ``route`` tries for the call ``facts`` describe: its first matching rule's targets, on the
        caller's sticky arm. Only for a route that is ``per_call``; the others are used as they are."""
        for rule, picked in route.rules:
            if rule.matches(facts):
                route = picked
                break
        if route.sticky is not None:
            route = route.arms[self.arm_of(route, facts)]
        return route

    def place_call(self, route: Route, call: Call, headers: Mapping[str, str]) -> Route:
        """:meth:`place` for a call in the pipeline, with its request's headers."""
        return self.place(route, Facts.of(call, headers))

    def arm_of(self, route: Route, facts: Facts) -> int:
        """The arm of a sticky route for a caller: from the hash of its id, or drawn when it has none."""
        who = facts.end_user if route.sticky == "end_user" else None
        who = who if who is not None else facts.tenant
        point = stable_point(route.name, who) if who is not None else self._rng.random()
        return min(bisect.bisect_right(route.bounds, point), len(route.targets) - 1)

    def order(self, route: Route, request: JSON | None = None) -> tuple[Target, ...]:
        """The targets of ``route`` in the order to try them for ``request``."""
        if route.fixed or len(route.targets) < 2:
            return route.targets
        if route.strategy == "least_latency" and self.latency is not None:
            return self.latency.order(route.targets, route.probe_after)
        if route.strategy == "cheapest":
            return self.cheapest(route.targets, request or {})
        return route.order(self._rng)

    def cheapest(self, targets: tuple[Target, ...], request: JSON, tokens: int | None = None) -> tuple[Target, ...]:
        """``targets``, cheapest first for the request's estimated tokens (ties in the alias's order)."""
        prompt = estimate_tokens(request) if tokens is None else tokens
        output = output_tokens(request)
        rates = self._rates
        return tuple(sorted(targets, key=lambda t: rates[t.name][0] * prompt + rates[t.name][1] * output))

    def cost(self, name: str, usage: Usage) -> int:
        """What ``usage`` would cost on model ``name``, in micro-USD."""
        return cost_micros(self._prices[name], usage)

    async def flush(self) -> None:
        """Wait until the latency samples so far are shared."""
        if self.latency is not None:
            await self.latency.flush()

    async def aclose(self) -> None:
        if self.latency is not None:
            await self.latency.aclose()


def output_tokens(request: JSON) -> int:
    """The output a request is priced for by ``cheapest``: its own cap, else :data:`OUTPUT_TOKENS`."""
    for cap in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        if isinstance(value := request.get(cap), int):
            return value
    return OUTPUT_TOKENS


def stable_point(alias: str, who: str) -> float:
    """A point in [0, 1) fixed by the alias's name and a caller's id: the same in every process and release
    (not Python's ``hash``, which is salted per process)."""
    digest = hashlib.blake2b(f"{alias}\x00{who}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _cumulative(weights: tuple[float, ...]) -> tuple[float, ...]:
    total = sum(weights)
    return tuple(running / total for running in itertools.accumulate(weights))


def _heaviest(weights: tuple[float, ...], first: int) -> list[int]:
    """The indexes but ``first``, heaviest first (ties in the written order)."""
    return sorted((i for i in range(len(weights)) if i != first), key=lambda i: -weights[i])


def _route(
    name: str,
    alias: Alias,
    models: dict[str, Target],
    expanded: list[tuple[str, float]],
    recovery: dict[str, Any],
    rule: int | None = None,
) -> Route:
    targets = tuple(models[model] for model, _ in expanded)
    weights = tuple(weight for _, weight in expanded)
    route = Route(
        name,
        alias.strategy,
        targets,
        weights,
        sticky=alias.sticky,
        rule=rule,
        probe_after=alias.probe_after,
        **recovery,
    )
    if alias.strategy != "weighted":
        return route
    arms = tuple(
        replace(
            route,
            targets=(targets[i], *(targets[j] for j in _heaviest(weights, i))),
            weights=(weights[i], *(weights[j] for j in _heaviest(weights, i))),
            sticky=None,
            arm=targets[i].name,
        )
        for i in range(len(targets))
    )
    return replace(route, arms=arms, per_call=alias.sticky is not None, bounds=_cumulative(weights))
