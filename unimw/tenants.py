"""Who is calling, and what they may ask for.

A tenant is found by the sources in ``tenancy.resolve``, in order: an API
key (``Authorization: Bearer …``; the policy holds only its SHA-256), a
header set by the host app's own auth, or a ``"module:function"`` callable
given the ASGI scope (sync or async; it returns a tenant name or None).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unimw.errors import AuthenticationFailed, ModelNotFound
from unimw.policy import CallableSource, HeaderSource, Policy, Tenant, load_callable
from unimw.routing import Route
from unimw.wire import JSON


@dataclass(frozen=True, slots=True)
class Caller:
    """The tenant a request is for (None when the policy has no tenants) and its end user."""

    tenant: str | None
    end_user: str | None = None


def hash_key(key: str) -> str:
    """The form an API key is stored in policies.yaml: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class Tenants:
    """Tenant resolution and per-tenant access rules for one policy."""

    def __init__(self, policy: Policy) -> None:
        self._tenants = policy.tenants
        self._settings = policy.tenancy
        self._by_key_hash = {
            key.removeprefix("sha256:"): (key.removeprefix("sha256:"), name)
            for name, tenant in policy.tenants.items()
            for key in tenant.api_keys
        }
        self._end_user_header = (policy.tenancy.end_user_header or "").lower()
        self._sources: list[tuple[str, Any]] = []
        for source in policy.tenancy.resolve:
            if isinstance(source, HeaderSource):
                self._sources.append(("header", source.header.lower()))
            elif isinstance(source, CallableSource):
                self._sources.append(("callable", load_callable(source.callable)))
            else:
                self._sources.append(("api_key", None))

    async def identify(self, headers: Mapping[str, str], scope: Mapping[str, Any] | None, body: JSON | None) -> Caller:
        """The caller of an HTTP request; 401 if no source names a known tenant and there is no default."""
        if not self._tenants:
            return Caller(None)
        tenant = None
        for kind, arg in self._sources:
            if kind == "api_key":
                tenant = self._by_api_key(headers.get("authorization", ""))
            elif kind == "header":
                tenant = headers.get(arg) or None
            else:
                tenant = arg(scope if scope is not None else {"type": "http", "headers": []})
                if inspect.isawaitable(tenant):
                    tenant = await tenant
            if tenant is not None:
                break
        tenant = tenant or self._settings.default
        if tenant is None or tenant not in self._tenants:
            raise AuthenticationFailed(
                "Incorrect API key provided or unknown tenant. Pass a valid key as 'Authorization: Bearer <key>'."
            )
        return Caller(tenant, self.end_user(headers, body))

    def end_user(self, headers: Mapping[str, str], body: JSON | None) -> str | None:
        user = (body or {}).get("user") or (body or {}).get("safety_identifier")
        if not user and self._end_user_header:
            user = headers.get(self._end_user_header)
        return str(user)[:128] if user else None

    def _by_api_key(self, authorization: str) -> str | None:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        # Only digests are compared, never keys: a caller cannot steer the
        # digest of its guess, so the lookup's timing says nothing about a
        # stored key. The final check is constant-time all the same.
        digest = hashlib.sha256(key.strip().encode()).hexdigest()
        found = self._by_key_hash.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]

    def tenant(self, name: str | None) -> Tenant | None:
        return self._tenants.get(name) if name is not None else None

    def allows(self, caller: Caller, name: str) -> bool:
        tenant = self.tenant(caller.tenant)
        return tenant is None or tenant.models is None or name in tenant.models

    def authorize(self, caller: Caller, route: Route) -> int | None:
        """Refuse a model the tenant may not use (as OpenAI does: 404); the tenant's output cap, if any."""
        if not self.allows(caller, route.name):
            raise ModelNotFound(route.name)
        tenant = self.tenant(caller.tenant)
        return tenant.max_tokens if tenant is not None else None
