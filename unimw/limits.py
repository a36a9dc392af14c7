"""Rate limits and budgets: reserve the worst case before a call, settle the truth after.

Every limit that applies to a call (the tenant's, its end user's, and the
global ones on the target models and providers) becomes counters in one
store, reserved together or not at all. A reservation holds the call's
worst case: one request, its estimated input plus its output cap in tokens,
and their price at the dearest target of its route. Settling replaces those
amounts by what the call actually used, exactly once: before the call's
answer on a store where that costs nothing, after it (by the
:class:`~unimw.finishing.Finisher`) on one where it is a round trip
(:attr:`Limiter.settles_later`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from cachetools import LRUCache

from unimw import _read_as_unimw
from unimw.errors import BudgetExceeded, RateLimited, ServiceUnavailable, UnimwError
from unimw.plans import OPEN, Rules, declared
from unimw.routing import Route
from unimw.stores.base import Counter, LimitStore, StoreUnavailable
from unimw.tenants import Caller
from unimw.usage import MICRO, Usage, cost_micros

if TYPE_CHECKING:
    from unimw.policy import Limit, Policy, Price

logger = logging.getLogger("unimw.limits")

SLIDING = {"minute": 60.0, "hour": 3600.0}
QUANTITIES = ("requests", "tokens", "usd")


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A limit crossed a threshold for the first time in its window."""

    tenant: str | None
    counter: str
    quantity: str
    threshold: float
    used: float
    limit: float


@dataclass(slots=True)
class Hold:
    """One call's reservation, until it is settled."""

    call_id: str
    counters: tuple[Counter, ...]
    quantities: tuple[str, ...]
    reserved: tuple[int, ...]
    totals: tuple[int, ...] = ()  #: each counter's total just after the reservation
    tenant: str | None = None
    alert_at: tuple[float, ...] = ()  #: the tenant's alert thresholds
    metered: bool = True  #: False when the store was down and the policy lets calls through
    settled: bool = field(default=False)

    @property
    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the response (built only for doors that send them)."""
        return _rate_headers(self.counters, self.quantities, self.totals)


class Limiter:
    """Reserve and settle on a :class:`~unimw.stores.base.LimitStore` for one policy."""

    def __init__(self, policy: Policy, store: LimitStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._policy = policy
        self._settings = policy.tenancy
        self._clock = clock
        self._zone = ZoneInfo(policy.tenancy.reset_timezone)
        from unimw.usage import DEFAULT_PRICES, FREE  # price models, made with the first limiter

        self._free = FREE
        self._prices = {
            name: model.price or DEFAULT_PRICES.get(model.model, FREE) for name, model in policy.models.items()
        }
        # The counters of each (tenant, end user, route, limits), until a calendar window
        # ends: keys and calendar arithmetic are worked out once per window, not per call.
        self._applicable_known: LRUCache[
            tuple[str | None, str | None, str, tuple[Limit, ...]],
            tuple[float, tuple[Counter, ...], tuple[str, ...]],
        ] = LRUCache(maxsize=65536)
        # Reservation ids: unique across replicas (a random prefix) without a syscall per call.
        self._id_prefix = os.urandom(8).hex() + "-"
        self._ids = itertools.count()
        self._declared = declared(policy)
        self._alert_at = tuple(policy.tenancy.alerts.at)
        #: Whether a settlement is a round trip worth making after the answer (the store says; see LimitStore).
        self.settles_later = bool(getattr(store, "settles_later", False))

    @property
    def enabled(self) -> bool:
        # Tenants from the app may bring limits of their own: any tenancy at all may be metered.
        return bool(self._policy.limits or self._policy.tenants or self._policy.plans)

    def rules(self, caller: Caller) -> Rules:
        """The caller's rules, or its declaration's when it carries none."""
        if caller.rules is not None:
            return caller.rules
        return self._declared.get(caller.tenant or "", OPEN)

    def price(self, target_name: str) -> Price:
        return self._prices.get(target_name, self._free)

    def needs_output_cap(self, caller: Caller) -> bool:
        """Whether the call must carry an output cap for its reservation to be a true worst case."""
        return self.rules(caller).capped

    def _applicable(self, caller: Caller, route: Route) -> tuple[tuple[Counter, ...], tuple[str, ...]]:
        """The counters (and what each counts) for this caller and route, remembered until a window ends."""
        now = self._clock()
        key = (caller.tenant, caller.end_user, route.name, self.rules(caller).limits)
        known = self._applicable_known.get(key)
        if known is not None and now < known[0]:
            return known[1], known[2]
        pairs = self._counters(caller, route)
        counters = tuple(c for c, _ in pairs)
        ends = min((c.ends for c in counters if not c.sliding), default=math.inf)
        self._applicable_known[key] = (ends, counters, tuple(q for _, q in pairs))
        return counters, tuple(q for _, q in pairs)

    async def reserve(self, caller: Caller, route: Route, prompt_tokens: int, output_tokens: int) -> Hold | None:
        """Take the call's worst case (its prompt estimate and output cap, at the route's dearest target)
        on every limit that applies, or refuse with 429."""
        counters, quantities = self._applicable(caller, route)
        if not counters:
            return None
        worst = self._worst_case(route, prompt_tokens, output_tokens)
        amounts = tuple(worst[q] for q in quantities)
        call_id = f"{self._id_prefix}{next(self._ids)}"
        try:
            reservation = await self.store.reserve(call_id, counters, amounts, self._clock())
        except StoreUnavailable as exc:
            return self._store_down(exc, caller, call_id)
        alert_at = self.rules(caller).alerts
        hold = Hold(
            call_id,
            counters,
            quantities,
            amounts,
            reservation.totals,
            caller.tenant,
            alert_at if alert_at is not None else self._alert_at,
        )
        if not reservation.ok:
            refused = reservation.refused
            raise self._refusal(counters[refused], quantities[refused], reservation.retry_after, hold.headers)
        return hold

    async def settle(self, hold: Hold, usage: Usage | None, cost: int, *, answered: bool) -> list[BudgetAlert]:
        """Replace the reservation by what the call used; a second settle of the same hold does nothing.

        ``answered`` is False when the upstream produced nothing: the request
        still counts, its tokens and cost do not. Returns the alert thresholds
        this call crossed first in their window, for the caller to deliver.
        """
        if hold.settled or not hold.metered:
            hold.settled = True
            return []
        hold.settled = True
        used = usage or Usage()
        actual_by_quantity = {
            "requests": 1,
            "tokens": used.total_tokens if answered else 0,
            "usd": cost if answered else 0,
        }
        actual = tuple(actual_by_quantity[q] for q in hold.quantities)
        try:
            totals = await self.store.settle(hold.call_id, hold.counters, hold.reserved, actual, self._clock())
        except StoreUnavailable:
            logger.error("unimw: could not settle call %s: the limit store is unreachable", hold.call_id)
            return []
        try:
            return await self._alerts(hold, totals)
        except StoreUnavailable:
            logger.error("unimw: could not record alerts for call %s: the limit store is unreachable", hold.call_id)
            return []

    async def spent_share(self, caller: Caller) -> float:
        """The largest share of any of the tenant's USD limits spent in its current window (0 with none).

        One read of the store, made only for tenants whose plan reroutes near a budget.
        """
        counters = [
            counter
            for limit in self.rules(caller).limits
            if limit.usd is not None and limit.scope == "tenant"
            for counter, quantity in self._limit_counters(f"t:{caller.tenant}", limit)
            if quantity == "usd"
        ]
        if not counters:
            return 0.0
        try:
            totals = await self.store.totals(counters, self._clock())
        except StoreUnavailable as exc:
            if self._settings.on_store_error == "closed":
                raise ServiceUnavailable(
                    "The usage store is unreachable, so budgets cannot be checked. Please try again later.",
                    code="limits_unavailable",
                ) from exc
            return 0.0
        return max(total / counter.limit for counter, total in zip(counters, totals, strict=True))

    async def report(self, tenant: str, rules: Rules | None = None) -> list[tuple[str, float, float]]:
        """``(limit, used, limit value)`` for each of a tenant's own limits in the current windows.

        ``rules`` are those of a tenant the policy does not declare (its plan's, with its overrides).
        """
        limits = (rules or self.rules(Caller(tenant))).limits
        rows = [
            (limit.per, counter, quantity)
            for limit in limits
            if limit.scope == "tenant"
            for counter, quantity in self._limit_counters(f"t:{tenant}", limit)
        ]
        if not rows:
            return []
        totals = await self.store.totals([counter for _, counter, _ in rows], self._clock())
        report = []
        for (per, counter, quantity), total in zip(rows, totals, strict=True):
            scale = MICRO if quantity == "usd" else 1
            report.append((f"{quantity} per {per}", total / scale, counter.limit / scale))
        return report

    def _tenant_counters(self, caller: Caller) -> list[tuple[Counter, str]]:
        pairs: list[tuple[Counter, str]] = []
        for limit in self.rules(caller).limits if caller.tenant is not None else ():
            if limit.scope == "end_user":
                if caller.end_user is None:
                    continue
                subject = f"t:{caller.tenant}:u:{caller.end_user}"
            else:
                subject = f"t:{caller.tenant}"
            pairs += self._limit_counters(subject, limit)
        return pairs

    def _counters(self, caller: Caller, route: Route) -> list[tuple[Counter, str]]:
        pairs = self._tenant_counters(caller)
        names = {t.name for t in route.targets}
        providers = {t.provider for t in route.targets}
        for limit in self._policy.limits:
            if limit.model in names:
                pairs += self._limit_counters(f"m:{limit.model}", limit)
            elif limit.provider in providers:
                pairs += self._limit_counters(f"p:{limit.provider}", limit)
        return pairs

    def _limit_counters(self, subject: str, limit: Limit) -> list[tuple[Counter, str]]:
        window, ends, suffix = self._window(limit.per, self._clock())
        out = []
        for quantity in QUANTITIES:
            value = getattr(limit, quantity)
            if value is None:
                continue
            units = round(value * MICRO) if quantity == "usd" else int(value)
            key = f"unimw:lim:{subject}:{limit.per}:{quantity}{suffix}"
            out.append((Counter(key, units, window, sliding=limit.per in SLIDING, ends=ends), quantity))
        return out

    def _window(self, per: str, now: float) -> tuple[float, float, str]:
        """(seconds, end, key suffix): a calendar window is named in the key and ends at ``end``."""
        if per in SLIDING:
            return SLIDING[per], 0.0, ""
        local = datetime.fromtimestamp(now, self._zone)
        if per == "day":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            end = start + timedelta(days=1)
            name = start.strftime(":%Y-%m-%d")
        else:
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            end = (start + timedelta(days=32)).replace(day=1)
            name = start.strftime(":%Y-%m")
        # Aware datetimes add wall-clock time in the zone: a day with a DST change is 23 or 25 hours long.
        return end.timestamp() - start.timestamp(), end.timestamp(), name

    def _worst_case(self, route: Route, prompt: int, output: int) -> dict[str, int]:
        usage = Usage(prompt, output)
        usd = max(cost_micros(self.price(t.name), usage) for t in route.targets)
        return {"requests": 1, "tokens": prompt + output, "usd": usd}

    def _refusal(
        self, counter: Counter, quantity: str, retry_after: float | None, headers: dict[str, str]
    ) -> UnimwError:
        headers = dict(headers)
        if retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        if quantity == "usd" or not counter.sliding:
            what = "budget" if quantity == "usd" else f"{quantity} quota"
            return BudgetExceeded(
                f"You exceeded your current {what} for this period. It resets when the period ends.",
                headers=headers,
            )
        return RateLimited(
            f"Rate limit reached for {quantity}: limit {counter.limit} per {int(counter.window)} s. "
            "Please try again later.",
            exhausted="tokens" if quantity == "tokens" else "requests",
            headers=headers,
        )

    def _store_down(self, exc: StoreUnavailable, caller: Caller, call_id: str) -> Hold:
        if self._settings.on_store_error == "closed":
            raise ServiceUnavailable(
                "The usage store is unreachable, so limits cannot be checked. Please try again later.",
                code="limits_unavailable",
            ) from exc
        logger.warning("unimw: limit store unreachable, letting call through unmetered: %s", exc)
        return Hold(call_id, (), (), (), (), caller.tenant, metered=False)

    async def _alerts(self, hold: Hold, totals: Sequence[int]) -> list[BudgetAlert]:
        alerts: list[BudgetAlert] = []
        thresholds = hold.alert_at
        lowest = min(thresholds, default=math.inf)
        for counter, quantity, total in zip(hold.counters, hold.quantities, totals, strict=True):
            if total < lowest * counter.limit:
                continue  # the common case: nowhere near any threshold
            for threshold in thresholds:
                if total < threshold * counter.limit:
                    continue
                if not await self.store.once(f"{counter.key}:alert:{threshold}", counter.window, self._clock()):
                    continue
                scale = MICRO if quantity == "usd" else 1
                used, limit = total / scale, counter.limit / scale
                alerts.append(BudgetAlert(hold.tenant, counter.key, quantity, threshold, used, limit))
        return alerts

    async def aclose(self) -> None:
        await self.store.aclose()


def _rate_headers(counters: Sequence[Counter], quantities: Sequence[str], totals: Sequence[int]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, from the shortest window of requests and of tokens."""
    headers: dict[str, str] = {}
    best: dict[str, tuple[float, Counter, int]] = {}
    for counter, quantity, total in zip(counters, quantities, totals, strict=True):
        if quantity in ("requests", "tokens") and (quantity not in best or counter.window < best[quantity][0]):
            best[quantity] = (counter.window, counter, total)
    for quantity, (window, counter, total) in best.items():
        headers[f"x-ratelimit-limit-{quantity}"] = str(counter.limit)
        headers[f"x-ratelimit-remaining-{quantity}"] = str(max(0, counter.limit - total))
        headers[f"x-ratelimit-reset-{quantity}"] = go_duration(window)
    return headers


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes resets: ``12ms``, ``1s``, ``6m0s``, ``1h0m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# Loaded with the first policy or gateway, maybe after unimw's names were first read: its public names (and
# those of the modules it loaded) read as unimw's too, as those loaded with ``from unimw import Gateway`` do.
_read_as_unimw()
