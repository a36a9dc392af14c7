"""Keys the app issues, looked up by their SHA-256 through a function of the app's.

The app stores only digests of the API keys it hands out; unimw hashes the
presented bearer key (:func:`unimw.tenants.hash_key`) and asks the app's
``key_lookup`` function who that digest belongs to. That function usually
reads a database, so its answers are cached: an answer naming a tenant for
``ttl``, an unknown key for ``negative_ttl``, each cache bounded to
``max_entries`` (least recently used out). A hot key thus costs one lookup
per ``ttl``, and a flood of one bad key one lookup per ``negative_ttl``;
identical lookups in flight at the same time are made once (single flight),
so a burst on a cold key is one lookup too.

The cost is that a revoked key keeps working for up to ``ttl``, unless the
app calls :meth:`KeyLookup.forget` (through ``Tenants.forget_key``), which
takes effect at once, even for a lookup already in flight.

The lookup fails closed: if the app's function raises, takes longer than
``timeout`` or answers with something that is not an identity, the request
gets a 503 (``tenant_lookup_unavailable``) rather than passing as nobody or
as the last tenant seen, and the failure is not cached, so the next request
asks again. This module sees digests only, never a key; even so, logs carry
no more of a digest than its first characters.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cachetools import TTLCache

from unimw.errors import ServiceUnavailable
from unimw.identity import Identity, identity_of
from unimw.notation import load_callable

if TYPE_CHECKING:
    from unimw.policy import KeyLookupSource

logger = logging.getLogger("unimw.tenants")

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class _Flight:
    """One lookup in progress; the identity of this object tells a forgotten flight from the current one."""

    __slots__ = ("task",)

    task: asyncio.Task[Identity | None]


class KeyLookup:
    """Identities by key digest, from the app's ``key_lookup`` function, cached and made once at a time.

    Built once per policy source, outside any event loop; ``identify`` is
    then called from the one loop serving requests, and ``forget`` from
    anywhere: the app revokes keys from its own threads, so the caches are
    touched under a lock (held for a few dict operations, never across an
    await). ``clock`` measures the cached answers' ages (monotonic seconds).
    """

    def __init__(self, source: KeyLookupSource, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._call = load_callable(source.key_lookup)
        # Anything else (an object with an async __call__, a partial) runs in a thread and its awaitable
        # answer is then awaited on the loop: slower, still right.
        self._awaitable = inspect.iscoroutinefunction(self._call)
        self._timeout = source.timeout
        self._known: TTLCache[str, Identity] = TTLCache(source.max_entries, source.ttl, timer=clock)
        self._unknown: TTLCache[str, bool] = TTLCache(source.max_entries, source.negative_ttl, timer=clock)
        self._flights: dict[str, _Flight] = {}
        # Reentrant: an eagerly started lookup may settle inside the identify that started it.
        self._lock = threading.RLock()
        # The loop keeps only weak references to tasks: a lookup whose callers all left must still finish.
        self._running: set[asyncio.Task[Identity | None]] = set()

    def __len__(self) -> int:
        """Answers held, of both kinds (expired ones not counted)."""
        with self._lock:
            self._known.expire()
            self._unknown.expire()
            return len(self._known) + len(self._unknown)

    async def identify(self, digest: str) -> Identity | None:
        """Who the key with this digest (``sha256:<hex>``) belongs to, or None for a key the app does not know.

        Raises :class:`~unimw.errors.ServiceUnavailable` when the app's
        function cannot answer; raises ``ValueError`` for anything but a
        digest (a key passed by mistake would otherwise reach the app).
        """
        if not _DIGEST.fullmatch(digest):
            raise ValueError("a key lookup takes a key's digest, sha256:<64 hex digits>")
        with self._lock:
            identity = self._known.get(digest)
            if identity is not None:
                return identity
            if self._unknown.get(digest):
                return None
            flight = self._flights.get(digest)
            if flight is None:
                flight = _Flight()
                # Registered before the task starts, so even a lookup that completes eagerly finds itself current.
                self._flights[digest] = flight
                flight.task = asyncio.create_task(self._settle(digest, flight), name="unimw key lookup")
                self._running.add(flight.task)
                flight.task.add_done_callback(_finished(self._running))
        # Shielded: a caller that is cancelled leaves the lookup running for the others waiting on it.
        return await asyncio.shield(flight.task)

    def forget(self, digest: str) -> bool:
        """Drop what is cached for ``digest``, positive or negative; True if an answer was held.

        A lookup of it in flight is disowned: its callers still get its
        answer, but it is not cached, and the next ``identify`` asks again.
        """
        with self._lock:
            self._flights.pop(digest, None)  # disowned: _settle finds it is no longer the current flight
            held = self._known.pop(digest, None) is not None
            return self._unknown.pop(digest, None) is not None or held

    async def _settle(self, digest: str, flight: _Flight) -> Identity | None:
        try:
            identity = await self._ask(digest)
        except BaseException:
            with self._lock:
                if self._flights.get(digest) is flight:
                    del self._flights[digest]
            raise
        with self._lock:
            if self._flights.get(digest) is flight:  # not forgotten while it ran
                del self._flights[digest]
                if identity is None:
                    self._unknown[digest] = True
                else:
                    self._known[digest] = identity
        return identity

    async def _ask(self, digest: str) -> Identity | None:
        try:
            async with asyncio.timeout(self._timeout):
                if self._awaitable:
                    answer = await self._call(digest)
                else:
                    # It may query a database: a worker thread, not the loop. Past the timeout the
                    # thread runs on to its end, but nobody waits for it.
                    answer = await asyncio.to_thread(self._call, digest)
                    if inspect.isawaitable(answer):
                        answer = await answer
            return identity_of(answer)
        except Exception as exc:
            # The app's message may quote the digest: only its first characters are logged.
            detail = _redact(str(exc), digest) or (
                f"no answer within {self._timeout:g} s" if isinstance(exc, TimeoutError) else ""
            )
            logger.warning("unimw: tenant key lookup for %s failed: %s: %s", _short(digest), type(exc).__name__, detail)
            raise ServiceUnavailable(
                "The tenant lookup is unavailable; try again shortly.", code="tenant_lookup_unavailable"
            ) from exc


def _finished(running: set[asyncio.Task[Identity | None]]) -> Callable[[asyncio.Task[Identity | None]], None]:
    def done(task: asyncio.Task[Identity | None]) -> None:
        running.discard(task)
        if not task.cancelled():
            task.exception()  # seen, even when every caller left: the failure was logged already

    return done


def _short(digest: str) -> str:
    return digest[:12] + "..."


def _redact(text: str, digest: str) -> str:
    """An error message of the app's, with the digest (either form) cut to its first characters."""
    return text.replace(digest, _short(digest)).replace(digest.removeprefix("sha256:"), _short(digest))
