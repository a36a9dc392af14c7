"""A tenant's rules: its plan, then what its declaration and its identity change.

The rules of a call are worked out from three layers, each over the one
before: the plan (``plans:``), the tenant's declaration (``tenants:``, if
it has one) and the overrides its :class:`~unimw.identity.Identity`
carries. A limit replaces the one beneath with the same window and scope
(this customer's own monthly budget beats its plan's) and adds to the
others. Rules are immutable and hashable: the limiter remembers counters
per rules, and rules per identity, so none of this runs per call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from unimw.identity import Identity
    from unimw.policy import BudgetStep, Limit, Plan, Policy, Tenant


@dataclass(frozen=True, slots=True)
class Rules:
    """What one tenant may use, and how much."""

    plan: str | None = None
    models: frozenset[str] | None = None  #: public names it may call; None: all
    max_tokens: int | None = None
    max_concurrent: int | None = None  #: calls in flight at once (:mod:`unimw.concurrency`); None: no limit
    limits: tuple[Limit, ...] = ()
    cache_scope: Literal["tenant", "global"] | None = None
    alerts: tuple[float, ...] | None = None
    on_budget: tuple[BudgetStep, ...] = ()
    byok: frozenset[str] = frozenset()  #: providers it must bring its own key for

    @property
    def capped(self) -> bool:
        """Whether a call must carry an output cap for its reservation to be a true worst case."""
        return any(limit.tokens or limit.usd for limit in self.limits)

    def allows(self, name: str) -> bool:
        return self.models is None or name in self.models


#: The rules of a caller no plan or declaration governs: everything, unlimited.
OPEN = Rules()


def layered(plan_name: str | None, plan: Plan | None, tenant: Tenant | None, identity: Identity | None) -> Rules:
    """The rules of a tenant on ``plan``, declared as ``tenant``, identified as ``identity`` (each may be absent)."""
    rules = OPEN if plan is None else _over(Rules(plan=plan_name), plan)
    if tenant is not None:
        rules = _over(rules, tenant)
    if identity is not None and identity.overrides:
        models = rules.models | set(identity.models) if rules.models is not None else None
        rules = replace(
            rules,
            models=frozenset(models) if models is not None else None,
            max_tokens=identity.max_tokens if identity.max_tokens is not None else rules.max_tokens,
            max_concurrent=identity.max_concurrent if identity.max_concurrent is not None else rules.max_concurrent,
            limits=_limits_over(rules.limits, identity.limits),
        )
    return rules


def declared(policy: Policy) -> dict[str, Rules]:
    """The rules of each tenant declared in ``policy``."""
    return {name: layered(t.plan, policy.plans.get(t.plan or ""), t, None) for name, t in policy.tenants.items()}


def _over(rules: Rules, layer: Plan) -> Rules:
    return replace(
        rules,
        models=frozenset(layer.models) if layer.models is not None else rules.models,
        max_tokens=layer.max_tokens if layer.max_tokens is not None else rules.max_tokens,
        max_concurrent=layer.max_concurrent if layer.max_concurrent is not None else rules.max_concurrent,
        limits=_limits_over(rules.limits, tuple(layer.limits)),
        cache_scope=layer.cache_scope or rules.cache_scope,
        alerts=tuple(layer.alerts) if layer.alerts is not None else rules.alerts,
        on_budget=tuple(sorted(layer.on_budget, key=lambda s: s.at)) if layer.on_budget else rules.on_budget,
        byok=rules.byok | frozenset(layer.byok) if layer.byok else rules.byok,
    )


def _limits_over(beneath: tuple[Limit, ...], above: tuple[Limit, ...]) -> tuple[Limit, ...]:
    """``above``'s limits, plus each of ``beneath``'s whose window and scope none of ``above`` has."""
    if not above:
        return beneath
    taken = {(limit.per, limit.scope) for limit in above}
    return tuple(limit for limit in beneath if (limit.per, limit.scope) not in taken) + above
