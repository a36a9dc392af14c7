"""The host app's side of tenancy, as test policies name it ("tests.e2e.tenancy_hooks:..."): its key table and auth.

An app that issues its own API keys stores only their digests and answers
unimw's ``key_lookup`` from that table; an app with its own login tells
unimw who is calling through a ``callable`` given the ASGI scope. Both are
real functions here, over state the tests change: the key table can be
edited, made to fail, slowed or held, and counts every question it is asked.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from unimw.identity import Identity


class KeyTable:
    """The app's table of issued keys (digest → who it belongs to), and what it was asked."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.rows: dict[str, object] = {}  #: an Identity or a tenant id; anything else is a broken row
        self.asked: list[str] = []  #: every digest a lookup function was called with, in order
        self.error: Exception | None = None  #: raised by the lookups when set: the database is down
        self.delay = 0.0  #: the async lookup takes this long (a slow database)
        self.gate: threading.Event | None = None  #: the sync lookup blocks on it when set (a hung query)
        self._lock = threading.Lock()

    def ask(self, digest: str) -> object:
        # The sync lookup runs in worker threads: the log is appended under a lock.
        with self._lock:
            self.asked.append(digest)
        if self.error is not None:
            raise self.error
        return self.rows.get(digest)


KEYS = KeyTable()


def lookup(digest: str) -> object:
    """A sync ``key_lookup``, as a function reading a database with a blocking driver would be."""
    answer = KEYS.ask(digest)
    if KEYS.gate is not None:
        KEYS.gate.wait(timeout=5)
    return answer


async def lookup_async(digest: str) -> object:
    """An async ``key_lookup``, as one awaiting an async database driver would be."""
    answer = KEYS.ask(digest)
    if KEYS.delay:
        await asyncio.sleep(KEYS.delay)
    return answer


#: Who each session of the app's own login is (the session id comes in ``X-Session``).
SESSIONS: dict[str, Identity] = {}


def session_identity(scope: dict[str, Any]) -> Identity | None:
    """A ``callable`` source: the app's login already knows the customer, its plan and what it bought."""
    for name, value in scope.get("headers", []):
        if name == b"x-session":
            return SESSIONS.get(value.decode())
    return None
