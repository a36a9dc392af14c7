"""Public model names → the targets to try, in order.

The route table is computed once from the policy; resolving a name on the
hot path is a dict lookup (plus one weighted draw for ``weighted`` aliases).
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from unimw.adapters.base import Target
from unimw.errors import ModelNotFound
from unimw.policy import Policy


@dataclass(frozen=True, slots=True)
class Route:
    """What one public name stands for."""

    name: str
    strategy: str  #: ``single``, ``fallback`` or ``weighted``
    targets: tuple[Target, ...]
    weights: tuple[float, ...]

    @property
    def is_alias(self) -> bool:
        return self.strategy != "single"

    def without(self, providers: Collection[str]) -> Route:
        """This route minus its targets on ``providers``."""
        kept = [i for i, target in enumerate(self.targets) if target.provider not in providers]
        return Route(
            self.name, self.strategy, tuple(self.targets[i] for i in kept), tuple(self.weights[i] for i in kept)
        )

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
        for name, target in targets.items():
            self.routes[name] = Route(name, "single", (target,), (1.0,))
        for name, alias in policy.aliases.items():
            expanded = policy.expand(name)
            self.routes[name] = Route(
                name,
                alias.strategy,
                tuple(targets[model] for model, _ in expanded),
                tuple(weight for _, weight in expanded),
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
