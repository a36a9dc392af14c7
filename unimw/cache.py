"""The response cache: exact-match, tenant-scoped, streaming-aware, single-flight.

The key is a hash of everything in the request that can change the answer
(the caller's fields, minus those that cannot: ``stream``, ``user``,
``metadata``, ...) with the model name replaced by the route it resolves
to (its targets, their vendor ids and params), plus the scope: the tenant,
or ``global`` where the policy says so. JSON key order and whitespace do not
matter, since the parsed request is what is hashed. Entries are stored as
``chat.completion`` objects, so a streamed request can be served from a
plain one and the other way round.

Identical requests that miss at the same time make one upstream call: the
first is the leader, the others wait for its answer (up to ``cache.wait``).
A leader that fails hands its error to those waiting; a leader that never
finishes (its client left mid-stream) lets them go on alone. Nothing that
failed, was cut short, or was refused is stored.

Per request: ``Cache-Control: no-cache`` skips the lookup but stores the
answer, ``no-store`` does neither; the body field ``unimw_cache`` (an
``extra_body`` in the openai SDK) takes ``{"ttl": "10m"}`` and
``{"mode": "no-cache" | "no-store"}`` the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from unimw.errors import InvalidRequest, UpstreamError
from unimw.notation import parse_duration
from unimw.operations.base import CONTROL_FIELD, Operation
from unimw.stores.base import CacheStore, StoreUnavailable
from unimw.wire import JSON, dumps, loads

if TYPE_CHECKING:
    from unimw.policy import Cache, Policy
    from unimw.routing import Route, Router

logger = logging.getLogger("unimw.cache")

#: Longest time to live a request may ask for: a day's worth of answers is what caching is for, and an
#: unbounded value would overflow a store's expiry (Redis takes milliseconds as a 64-bit integer).
MAX_REQUEST_TTL = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Rule:
    """The cache settings in force for one public name."""

    enabled: bool
    ttl: float
    scope: str
    when: str


@dataclass(slots=True)
class Lookup:
    """What the cache said about one request, and what it owes it afterwards."""

    status: str  #: ``hit``, ``miss`` or ``bypass``
    key: str | None = None
    ttl: float = 0.0
    store: bool = False  #: whether the answer may be stored
    answer: JSON | None = None  #: the cached answer, on a hit
    target: str | None = None  #: the model that gave the cached answer
    flight: asyncio.Future[tuple[JSON, str | None] | None] | None = None  #: set when this call leads a flight


class ResponseCache:
    """Lookups and stores on a :class:`~unimw.stores.base.CacheStore` for one policy."""

    def __init__(self, policy: Policy, router: Router, store: CacheStore) -> None:
        self.store = store
        self._settings = policy.cache
        self._rules = {name: _rule(policy.cache, name) for name in router.routes}
        self._fingerprints = {name: _fingerprint(route) for name, route in router.routes.items()}
        self._flights: dict[str, asyncio.Future[tuple[JSON, str | None] | None]] = {}

    @property
    def charges_hits(self) -> bool:
        return self._settings.charge == "full"

    def applies(self, route: Route) -> bool:
        return self._rules[route.name].enabled

    async def lookup(
        self,
        operation: Operation,
        route: Route,
        request: JSON,
        tenant: str | None,
        headers: Mapping[str, str],
        scope: str | None = None,
    ) -> Lookup:
        """Find ``request``'s answer, join the identical call in flight, or lead a new one.

        ``scope`` is the tenant's plan's (``cache_scope``), which beats the model's and the cache's.
        """
        rule = self._rules[route.name]
        mode, ttl = _directives(request, headers, rule.ttl)
        if mode == "no-store" or (rule.when == "temperature_zero" and request.get("temperature") != 0):
            return Lookup("bypass")
        key = self._key(operation, route, request, tenant if (scope or rule.scope) == "tenant" else None)
        if mode == "no-cache":
            return Lookup("bypass", key, ttl, store=True)
        try:
            if (stored := await self.store.get(key)) is not None:
                target, answer = loads(stored)
                return Lookup("hit", key, ttl, answer=answer, target=target)
        except StoreUnavailable as exc:
            logger.warning("unimw: cache store unreachable, answering uncached: %s", exc)
            return Lookup("bypass")
        except ValueError:  # an entry this version cannot read: answered uncached, and stored anew
            logger.warning("unimw: unreadable cache entry %s, answering uncached", key)
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = asyncio.get_running_loop().create_future()
            return Lookup("miss", key, ttl, store=True, flight=flight)
        try:
            answer = await asyncio.wait_for(asyncio.shield(flight), self._settings.wait)
        except TimeoutError:
            answer = None
        if answer is None:  # the leader gave up or took too long: go alone
            return Lookup("miss", key, ttl, store=True)
        return Lookup("hit", key, ttl, answer=answer[0], target=answer[1])

    async def finish(
        self, lookup: Lookup, answer: JSON | None, target: str | None, error: BaseException | None
    ) -> None:
        """Release the calls waiting on this one, then store ``answer`` (a good one, or None) and its model.

        The waiters are released first and whatever happens: a store that fails
        must not leave them waiting out ``cache.wait``.
        """
        self._release(lookup, answer, target, error)
        if lookup.store and lookup.key is not None and answer is not None:
            try:
                await self.store.set(lookup.key, dumps([target, answer]), lookup.ttl)
            except StoreUnavailable as exc:
                logger.warning("unimw: cache store unreachable, answer not stored: %s", exc)

    def _release(self, lookup: Lookup, answer: JSON | None, target: str | None, error: BaseException | None) -> None:
        flight = lookup.flight
        if flight is None or lookup.key is None:
            return
        if self._flights.get(lookup.key) is flight:
            del self._flights[lookup.key]
        if flight.done():
            return
        if isinstance(error, UpstreamError):
            # The upstream's answer is everyone's; the leader's own refusals (its budget) are not.
            flight.set_exception(error)
            flight.exception()  # mark it retrieved: nobody may be waiting
        else:
            flight.set_result((answer, target) if answer is not None else None)

    def _key(self, operation: Operation, route: Route, request: JSON, scope: str | None) -> str:
        ignored = operation.not_in_cache_key
        canonical = {k: v for k, v in request.items() if k not in ignored}
        fingerprint = self._fingerprints[route.name]
        if route.rule is not None or route.arm is not None:
            # Placed by a when rule or on a sticky arm: other targets, or another first, than the name's own.
            fingerprint = [*fingerprint, route.rule, route.arm]
        payload = orjson.dumps(
            [scope or "global", operation.path, fingerprint, canonical],
            option=orjson.OPT_SORT_KEYS,
        )
        return "unimw:cache:" + hashlib.sha256(payload).hexdigest()

    async def aclose(self) -> None:
        await self.store.aclose()


def strip_control(request: JSON) -> JSON:
    """The request without unimw's own per-request field, which no upstream should see."""
    if CONTROL_FIELD not in request:
        return request
    return {k: v for k, v in request.items() if k != CONTROL_FIELD}


def _directives(request: JSON, headers: Mapping[str, str], ttl: float) -> tuple[str | None, float]:
    """(mode, ttl) from ``Cache-Control`` and the ``unimw_cache`` body field."""
    mode = None
    cache_control = headers.get("cache-control", "").lower()
    if "no-store" in cache_control:
        mode = "no-store"
    elif "no-cache" in cache_control:
        mode = "no-cache"
    control = request.get(CONTROL_FIELD)
    if control is None:
        return mode, ttl
    if not isinstance(control, dict):
        raise InvalidRequest(f"'{CONTROL_FIELD}' must be an object.", param=CONTROL_FIELD)
    if (requested := control.get("mode")) is not None:
        if requested not in ("no-cache", "no-store"):
            raise InvalidRequest(
                f"Invalid value for '{CONTROL_FIELD}.mode': use 'no-cache' or 'no-store'.",
                param=f"{CONTROL_FIELD}.mode",
                code="invalid_value",
            )
        mode = "no-store" if "no-store" in (mode, requested) else "no-cache"
    if (value := control.get("ttl")) is not None:
        ttl = _requested_ttl(value)
    if unknown := sorted(set(control) - {"mode", "ttl"}):
        raise InvalidRequest(
            f"Unknown field(s) in '{CONTROL_FIELD}': {', '.join(map(repr, unknown))}; it takes 'mode' and 'ttl'.",
            param=CONTROL_FIELD,
            code="unknown_parameter",
        )
    return mode, ttl


def _requested_ttl(value: Any) -> float:
    invalid = InvalidRequest(
        f"Invalid value for '{CONTROL_FIELD}.ttl': give a duration such as 600 or '10m', "
        f"above 0 and at most {int(MAX_REQUEST_TTL // 86400)} days.",
        param=f"{CONTROL_FIELD}.ttl",
        code="invalid_value",
    )
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise invalid
    try:
        ttl = float(parse_duration(value))
    except ValueError as exc:
        raise invalid from exc
    if not 0 < ttl <= MAX_REQUEST_TTL:
        raise invalid
    return ttl


def _rule(settings: Cache, name: str) -> Rule:
    override = settings.models.get(name)

    def pick(field: str) -> Any:
        value = getattr(override, field) if override is not None else None
        return getattr(settings, field) if value is None else value

    enabled = settings.enabled if override is None or override.enabled is None else override.enabled
    return Rule(enabled, pick("ttl"), pick("scope"), pick("when"))


def _fingerprint(route: Route) -> list[Any]:
    """What the name stands for right now: a changed mapping must not serve old entries."""
    return [route.name, route.strategy, [[t.provider, t.model, dict(t.params)] for t in route.targets]]
