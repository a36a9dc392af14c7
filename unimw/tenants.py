"""Who is calling, and what they may ask for.

A tenant is found by the sources in ``tenancy.resolve``, in order:

* ``api_key``: the bearer key of a tenant declared in the policy (which holds only its SHA-256);
* ``{header: X-Tenant-Id, plan_header: X-Tenant-Plan}``: headers set by the host app's own auth in front;
* ``{callable: "module:function"}``: the app's function, given the ASGI scope (sync or async);
* ``{key_lookup: "module:function"}``: keys the app issues, looked up by their SHA-256 (:mod:`unimw.key_lookup`).

Each answers with an :class:`~unimw.identity.Identity` (or a tenant id), and
the tenant's rules are its plan's with its declaration and overrides on top
(:mod:`unimw.plans`). A tenant need not be declared: the app is the source
of truth for its customers, the policy for its plans.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from unimw.errors import AuthenticationFailed, ModelNotFound, PermissionDenied
from unimw.identity import Identity, identity_of
from unimw.notation import load_callable
from unimw.plans import OPEN, Rules, declared, layered
from unimw.wire import JSON

if TYPE_CHECKING:
    from unimw.key_lookup import KeyLookup
    from unimw.policy import HeaderSource, Policy
    from unimw.routing import Route

#: A key's digest, as :func:`hash_key` writes it.
KEY_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

#: Longest tenant id accepted from a header or an app's resolver: ids become store keys and span attributes.
MAX_TENANT_ID = 200


@dataclass(frozen=True, slots=True)
class Caller:
    """The tenant a request is for (None when the policy has no tenants), its end user and its rules.

    ``rules`` None means the rules of the declared tenant of that name (the limiter looks them up).
    """

    tenant: str | None
    end_user: str | None = None
    rules: Rules | None = None
    #: The tenant's own provider keys (bring your own key), by provider name.
    credentials: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def plan(self) -> str | None:
        return self.rules.plan if self.rules is not None else None


def hash_key(key: str) -> str:
    """The form an API key is stored in: ``sha256:<hex>`` (in policies.yaml, or in the app's own key table)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


Source = Callable[[Mapping[str, str], Mapping[str, Any] | None], Awaitable[Identity | None]]


class Tenants:
    """Tenant resolution and per-tenant access rules for one policy."""

    def __init__(self, policy: Policy, clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` times the key lookups' cached answers (the gateway's clock, so tests can move it)."""
        self._policy = policy
        self._clock = clock
        self._declared = policy.tenants
        self._plans = policy.plans
        self._settings = policy.tenancy
        #: Whether callers are told apart at all: a policy with no tenants and no plans meters nobody.
        self.active = bool(policy.tenants or policy.plans)
        self._declared_rules = declared(policy)
        self._by_key_hash = {
            key.removeprefix("sha256:"): (key.removeprefix("sha256:"), name)
            for name, tenant in policy.tenants.items()
            for key in tenant.api_keys
        }
        self._end_user_header = (policy.tenancy.end_user_header or "").lower()
        # Rules per distinct identity: worked out once, not per call.
        self._rules: LRUCache[Identity, Rules] = LRUCache(maxsize=65536)
        # An undeclared tenant with no overrides has its plan's rules exactly: one object per plan, shared
        # (480 bytes a tenant less than one per identity, in bench/tenants.py).
        self._plan_rules = {name: layered(name, plan, None, None) for name, plan in policy.plans.items()}
        self.key_lookups: list[KeyLookup] = []
        self._sources = [self._source(source) for source in policy.tenancy.resolve]

    def _source(self, source: Any) -> Source:
        from unimw.policy import CallableSource, HeaderSource, KeyLookupSource  # loaded with the policy

        if isinstance(source, HeaderSource):
            return _header_source(source)
        if isinstance(source, CallableSource):
            return _callable_source(load_callable(source.callable))
        if isinstance(source, KeyLookupSource):
            from unimw.key_lookup import KeyLookup  # only a policy with a key_lookup source needs it

            lookup = KeyLookup(source, clock=self._clock)
            self.key_lookups.append(lookup)
            return _key_lookup_source(lookup)
        return self._api_key_source

    async def identify(self, headers: Mapping[str, str], scope: Mapping[str, Any] | None, body: JSON | None) -> Caller:
        """The caller of an HTTP request; 401 if no source names a tenant and there is no default."""
        if not self.active:
            return Caller(None)
        identity = None
        for source in self._sources:
            if (identity := await source(headers, scope)) is not None:
                break
        if identity is None and self._settings.default is not None:
            identity = Identity(self._settings.default)
        if identity is None:
            raise AuthenticationFailed(
                "Incorrect API key provided or unknown tenant. Pass a valid key as 'Authorization: Bearer <key>'."
            )
        return self.caller(identity, self.end_user(headers, body))

    def caller(self, identity: Identity, end_user: str | None = None) -> Caller:
        """The caller ``identity`` names, with its rules; 401 for a tenant no plan or declaration governs."""
        return Caller(identity.tenant, end_user, self.rules(identity), identity.credentials)

    def rules(self, identity: Identity) -> Rules:
        known = self._rules.get(identity)
        if known is not None:
            return known
        tenant = identity.tenant
        if len(tenant) > MAX_TENANT_ID:
            raise AuthenticationFailed(f"A tenant id is at most {MAX_TENANT_ID} characters.")
        declared = self._declared.get(tenant)
        if declared is not None and identity.plan is None and not identity.overrides:
            return self._declared_rules[tenant]
        plan = identity.plan or (declared.plan if declared is not None else self._settings.default_plan)
        if declared is None and plan is None:
            raise AuthenticationFailed(
                f"Unknown tenant {tenant!r}: it is not declared and the policy has no default_plan."
            )
        if plan is not None and plan not in self._plans:
            raise PermissionDenied(
                f"Tenant {tenant!r} is on plan {plan!r}, which the policy does not define.", code="plan_not_found"
            )
        if declared is None and plan is not None and not identity.overrides:
            return self._plan_rules[plan]
        rules = layered(plan, self._plans.get(plan or ""), declared, identity)
        self._rules[identity] = rules
        return rules

    def rules_of(self, caller: Caller) -> Rules:
        """The caller's rules: its own, or its declaration's, or none at all."""
        if caller.rules is not None:
            return caller.rules
        return self._declared_rules.get(caller.tenant or "", OPEN)

    def end_user(self, headers: Mapping[str, str], body: JSON | None) -> str | None:
        user = (body or {}).get("user") or (body or {}).get("safety_identifier")
        if not user and self._end_user_header:
            user = headers.get(self._end_user_header)
        return str(user)[:128] if user else None

    async def _api_key_source(self, headers: Mapping[str, str], scope: Mapping[str, Any] | None) -> Identity | None:
        key = bearer_key(headers)
        if key is None:
            return None
        # Only digests are compared, never keys: a caller cannot steer the
        # digest of its guess, so the lookup's timing says nothing about a
        # stored key. The final check is constant-time all the same.
        digest = hashlib.sha256(key.encode()).hexdigest()
        found = self._by_key_hash.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return Identity(found[1])

    def forget_key(self, digest: str) -> bool:
        """Drop what the key lookups remember of ``digest`` (``sha256:<hex>``): a revoked key stops working now."""
        if not KEY_DIGEST.fullmatch(digest):
            raise ValueError("forget_key takes a key's digest, sha256:<64 hex digits> (unimw.hash_key(key))")
        forgotten = False
        for lookup in self.key_lookups:
            forgotten = lookup.forget(digest) or forgotten
        return forgotten

    def allows(self, caller: Caller, name: str) -> bool:
        return self.rules_of(caller).allows(name)

    def authorize(self, caller: Caller, route: Route, asked: str | None = None) -> tuple[Route, int | None]:
        """The route as this caller may use it, and its output cap.

        A model it may not use is a 404, as OpenAI answers; targets on a
        provider its plan wants its own key for, when it brought none, are
        dropped, and a 403 says so if none is left.
        """
        rules = self.rules_of(caller)
        if not rules.allows(asked or route.name):
            raise ModelNotFound(asked or route.name)
        if rules.byok:
            missing = {t.provider for t in route.targets if t.provider in rules.byok} - caller.credentials.keys()
            if missing:
                route = route.without(missing)
                if not route.targets:
                    raise PermissionDenied(
                        f"Your plan needs your own key for {', '.join(sorted(missing))} to call {route.name!r}.",
                        code="byok_required",
                    )
        return route, rules.max_tokens


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, if there is one."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def _header_source(source: HeaderSource) -> Source:
    header, plan_header = source.header.lower(), (source.plan_header or "").lower()

    async def identify(headers: Mapping[str, str], scope: Mapping[str, Any] | None) -> Identity | None:
        tenant = headers.get(header)
        if not tenant:
            return None
        return Identity(tenant, (headers.get(plan_header) or None) if plan_header else None)

    return identify


def _callable_source(function: Callable[..., Any]) -> Source:
    async def identify(headers: Mapping[str, str], scope: Mapping[str, Any] | None) -> Identity | None:
        answer = function(scope if scope is not None else {"type": "http", "headers": []})
        if inspect.isawaitable(answer):
            answer = await answer
        return identity_of(answer)

    return identify


def _key_lookup_source(lookup: KeyLookup) -> Source:
    async def identify(headers: Mapping[str, str], scope: Mapping[str, Any] | None) -> Identity | None:
        key = bearer_key(headers)
        return await lookup.identify(hash_key(key)) if key is not None else None

    return identify
