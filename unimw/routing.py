"""Public model names → the targets to try, in order.

The route table is computed once from the policy; resolving a name on the
hot path is a dict lookup (plus one weighted draw for ``weighted`` aliases).
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unimw.adapters.base import Target
from unimw.errors import ModelNotFound

if TYPE_CHECKING:
    from unimw.policy import Policy


@dataclass(frozen=True, slots=True)
class Route:
    """What one public name stands for."""

    name: str
    strategy: str  #: ``single``, ``fallback`` or ``weighted``
    targets: tuple[Target, ...]
    weights: tuple[float, ...]
    #: Where a call goes when a target says the request is too long for its context window (the alias's
    #: ``on_context_overflow``, flattened), or when its content filter refused the request.
    on_context_overflow: tuple[Target, ...] = ()
    on_content_filter: tuple[Target, ...] = ()
    #: Whether targets whose context window cannot hold the request are skipped before any call.
    context_check: bool = False

    @property
    def is_alias(self) -> bool:
        return self.strategy != "single"

    def without(self, providers: Collection[str]) -> Route:
        """This route minus its targets on ``providers``."""
        kept = [i for i, target in enumerate(self.targets) if target.provider not in providers]
        return Route(
            self.name,
            self.strategy,
            tuple(self.targets[i] for i in kept),
            tuple(self.weights[i] for i in kept),
            tuple(t for t in self.on_context_overflow if t.provider not in providers),
            tuple(t for t in self.on_content_filter if t.provider not in providers),
            self.context_check,
        )

    def only(self, targets: tuple[Target, ...]) -> Route:
        """This name tried on ``targets`` alone, in that order (a stream continued elsewhere)."""
        return Route(self.name, "fallback", targets, (1.0,) * len(targets))

    def order(self, rng: random.Random) -> tuple[Target, ...]:
        """Targets in the order to try them.

        ``weighted`` draws the first target by weight; the others follow,
        heaviest first, as fallbacks.
        """
        if self.strategy != "weighted" or len(self.targets) < 2:
            return self.targets
        first = rng.choices(range(len(self.targets)), weights=self.weights)[0]
        rest = sorted((i for i in range(len(self.targets)) if i != first), key=lambda i: -self.weights[i])
        return tuple(self.targets[i] for i in (first, *rest))


class Router:
    """The route table for one policy."""

    def __init__(self, policy: Policy, rng: random.Random | None = None) -> None:
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

        for name, target in targets.items():
            self.routes[name] = Route(name, "single", (target,), (1.0,), context_check=check)
        for name, alias in policy.aliases.items():
            expanded = policy.expand(name)
            self.routes[name] = Route(
                name,
                alias.strategy,
                tuple(targets[model] for model, _ in expanded),
                tuple(weight for _, weight in expanded),
                flattened(alias.on_context_overflow),
                flattened(alias.on_content_filter),
                check if alias.context_check is None else alias.context_check,
            )

    def target(self, name: str | None) -> Target | None:
        """The concrete target of a model name (None for None)."""
        route = self.routes.get(name) if name is not None else None
        return route.targets[0] if route is not None and not route.is_alias else None

    def resolve(self, name: str) -> Route:
        try:
            return self.routes[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def order(self, route: Route) -> tuple[Target, ...]:
        return route.order(self._rng)
