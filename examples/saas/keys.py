"""Who an API key belongs to, answered from the app's own table: the policy's ``key_lookup``.

``policies.yaml`` names :func:`lookup` under ``tenancy.resolve``. unimw hashes
the bearer key and calls it with the digest (in a worker thread, as it is a
plain function and reads SQLite), and keeps its answer ``ttl``, an unknown
key's ``negative_ttl``. :func:`identity` is also what the app's own endpoints
pass to the gateway in process, so an organisation has the same rules
whichever way it calls.
"""

from __future__ import annotations

from collections.abc import Mapping

from examples.saas import db
from unimw import Identity, Limit


def identity(org: db.Organisation, credentials: Mapping[str, str] | None = None) -> Identity:
    """The organisation as unimw's tenant: its plan, its own monthly budget if it bought one, its own keys."""
    own_budget = (Limit(per="month", usd=org.monthly_budget_usd),) if org.monthly_budget_usd is not None else ()
    return Identity(tenant=org.id, plan=org.plan, limits=own_budget, credentials=credentials or {})


def lookup(digest: str) -> Identity | None:
    """The organisation whose live key has this digest (``sha256:<hex>``); None for an unknown or revoked key."""
    database = db.current()
    org = database.key_owner(digest)
    if org is None:
        return None
    return identity(org, database.provider_keys(org.id))
