"""The app's own database: organisations on plans, the API keys it issued them, their users and provider keys.

Plain sqlite3 in a file, with a connection per operation (as a pool would
hand one out): unimw runs the key lookup in a worker thread, the request
handlers run in others, and none of them share a connection. API keys are
stored only as ``unimw.hash_key(key)`` digests; the plaintext is shown once,
when the key is issued.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from unimw import hash_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS organisations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,                  -- a plan of policies.yaml: free, pro or enterprise
    monthly_budget_usd REAL              -- a budget of its own instead of its plan's; NULL: the plan's
);
CREATE TABLE IF NOT EXISTS api_keys (
    digest TEXT PRIMARY KEY,             -- sha256:<hex>, never the key
    org_id TEXT NOT NULL REFERENCES organisations(id),
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organisations(id)
);
CREATE TABLE IF NOT EXISTS provider_keys (
    org_id TEXT NOT NULL REFERENCES organisations(id),
    provider TEXT NOT NULL,              -- a provider of policies.yaml the organisation brings its own key for
    api_key TEXT NOT NULL,               -- a real app encrypts these at rest
    PRIMARY KEY (org_id, provider)
);
"""

#: The organisations the app starts with: id, name, plan, its own monthly budget (or None), and its one user.
SEED = (
    ("acme", "Acme Corp", "free", None, "wile"),
    ("globex", "Globex", "pro", None, "hank"),
    ("umbrella", "Umbrella", "pro", 0.005, "alice"),  # capped its own spend at half a cent: the demo reaches it
    ("initech", "Initech", "enterprise", 1000.0, "peter"),  # bought a bigger budget than its plan's
)
#: Provider keys organisations brought (bring your own key): Initech has its own contract with the partner.
SEED_PROVIDER_KEYS = (("initech", "partner"),)


@dataclass(frozen=True, slots=True)
class Organisation:
    id: str
    name: str
    plan: str
    monthly_budget_usd: float | None


class Database:
    """The app's tables in the SQLite file at ``path``, created if missing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path)) as connection, connection:  # commits on success
            yield connection

    def seed(self) -> dict[str, str]:
        """Create the starting organisations, each with a user and one API key; their keys by organisation id."""
        with self._connect() as db:
            for org_id, name, plan, budget, user in SEED:
                db.execute("INSERT INTO organisations VALUES (?, ?, ?, ?)", (org_id, name, plan, budget))
                db.execute("INSERT INTO users VALUES (?, ?)", (user, org_id))
            for org_id, provider in SEED_PROVIDER_KEYS:
                db.execute(
                    "INSERT INTO provider_keys VALUES (?, ?, ?)", (org_id, provider, "sk-own-" + secrets.token_hex(8))
                )
        return {org_id: self.issue_key(org_id) for org_id, *_ in SEED}

    def issue_key(self, org_id: str) -> str:
        """A new API key for the organisation: only its digest is stored, so this is the one time it is seen."""
        key = "sk-saas-" + secrets.token_urlsafe(24)
        with self._connect() as db:
            db.execute("INSERT INTO api_keys (digest, org_id) VALUES (?, ?)", (hash_key(key), org_id))
        return key

    def revoke(self, org_id: str, digest: str) -> bool:
        """Mark one of the organisation's keys revoked; False if it has no such live key."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE api_keys SET revoked = 1 WHERE digest = ? AND org_id = ? AND revoked = 0", (digest, org_id)
            )
            return cursor.rowcount == 1

    def key_owner(self, digest: str) -> Organisation | None:
        """The organisation a live (not revoked) key belongs to."""
        return self._organisation(
            "SELECT o.* FROM api_keys k JOIN organisations o ON o.id = k.org_id WHERE k.digest = ? AND k.revoked = 0",
            digest,
        )

    def user_organisation(self, user_id: str) -> Organisation | None:
        return self._organisation(
            "SELECT o.* FROM users u JOIN organisations o ON o.id = u.org_id WHERE u.id = ?", user_id
        )

    def provider_keys(self, org_id: str) -> dict[str, str]:
        """The provider keys the organisation brought, by provider name."""
        with self._connect() as db:
            rows = db.execute("SELECT provider, api_key FROM provider_keys WHERE org_id = ?", (org_id,)).fetchall()
        return {provider: key for provider, key in rows}

    def _organisation(self, query: str, value: str) -> Organisation | None:
        with self._connect() as db:
            row = db.execute(query, (value,)).fetchone()
        return Organisation(*row) if row is not None else None


_current: Database | None = None


def use(database: Database) -> None:
    """Make ``database`` the one the key lookup reads (the app calls this when it starts)."""
    global _current
    _current = database


def current() -> Database:
    if _current is None:
        raise RuntimeError("the app has not opened its database yet")
    return _current
