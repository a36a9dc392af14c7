"""Circuit breakers: a target that keeps failing is left alone for a while, by every replica.

Cooldown (``dispatch.cooldown``) puts a target that just failed behind the
others of its alias for a few seconds: one process's hint, and a call whose
targets are all cooling still tries them. A breaker (``dispatch.breaker``)
is the firm rule for a target that is down:

* **closed**: calls go through. Each retryable failure of an attempt on the
  policy's key counts (a caller's own key says nothing of the target's
  health, as for cooldown), and ``failures`` of them within ``window`` of
  the first open it;
* **open**: for ``open_for`` no call is sent to it. The alias's other
  targets answer; a call whose every target is open gets 503
  ``circuit_open`` at once, with ``Retry-After``, instead of waiting on a
  dead upstream;
* **half-open**: once ``open_for`` is up, one call at a time, across every
  replica, is let through as a probe. Any answer (even a 4xx: the target is
  up) closes the breaker; a retryable failure opens it for ``open_for``
  again. A probe whose process died is given up after ``open_for``.

The state lives in a :class:`BreakerStore`: the process's own
(:class:`MemoryBreakers`, for ``memory://``) or Redis
(:class:`~unimw.stores.breaker.RedisBreakers`, when ``tenancy.store`` is
``redis://``), where each change is one Lua script. Each process keeps a
view of the open breakers (:attr:`Breakers.open`), so a call whose targets
are all closed costs nothing: changes made here update it at once, and on
a shared store a call that finds it older than :data:`SYNC` seconds reads
the store first (one HGETALL, at most once a second per process), so a
breaker another replica opened is obeyed here within a second.

A store that fails (Redis down) leaves the breakers as they were and the
calls going: a breaker only spares a dead upstream its traffic, it never
refuses a call because it cannot tell.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from unimw.policy import Breaker

logger = logging.getLogger("unimw.breaker")

#: Seconds after which a process's view of a shared store's breakers is read again, at the next call.
SYNC = 1.0

State = Literal["closed", "open", "half_open"]


class BreakerStore(Protocol):
    """Where breakers are kept; times are seconds since the epoch (every replica's clock alike)."""

    async def fail(self, name: str, now: float, settings: Breaker) -> tuple[bool, float | None]:
        """Count a failure of ``name``: whether it opened the breaker, and until when it is open (None: closed)."""
        ...

    async def claim(self, name: str, now: float, hold: float) -> bool:
        """Whether this call is the probe of ``name`` (its breaker's time is up and no probe holds it, for ``hold``
        seconds at most); True too when the breaker was closed meanwhile."""
        ...

    async def close(self, name: str) -> None:
        """Close the breaker of ``name`` (its probe answered)."""
        ...

    async def read(self) -> dict[str, float]:
        """Every open breaker (half-open ones too): target name -> until when it is open."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    failures: int = 0
    since: float = 0.0  #: when the first of ``failures`` was counted
    open_until: float | None = None
    probe_until: float = 0.0  #: a probe holds the half-open breaker until then


class MemoryBreakers:
    """:class:`BreakerStore` in this process: one entry per target that failed, so bounded by the policy."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def fail(self, name: str, now: float, settings: Breaker) -> tuple[bool, float | None]:
        entry = self._entries.setdefault(name, _Entry())
        if entry.open_until is not None:
            if entry.open_until > now:  # a call sent before it opened: it stays open as it is
                return False, entry.open_until
            entry.open_until, entry.probe_until = now + settings.open_for, 0.0  # the probe failed
            return True, entry.open_until
        if entry.failures == 0 or now - entry.since >= settings.window:
            entry.failures, entry.since = 0, now
        entry.failures += 1
        if entry.failures < settings.failures:
            return False, None
        entry.failures, entry.open_until = 0, now + settings.open_for
        return True, entry.open_until

    async def claim(self, name: str, now: float, hold: float) -> bool:
        entry = self._entries.get(name)
        if entry is None or entry.open_until is None:
            return True
        if entry.open_until > now or entry.probe_until > now:
            return False
        entry.probe_until = now + hold
        return True

    async def close(self, name: str) -> None:
        self._entries.pop(name, None)

    async def read(self) -> dict[str, float]:
        return {name: e.open_until for name, e in self._entries.items() if e.open_until is not None}

    async def aclose(self) -> None:
        pass


class Breakers:
    """The breakers of one gateway's targets, over a store; ``changed(target, state)`` hears every change made here.

    ``clock`` is seconds since the epoch (the gateway's). ``settings`` may be replaced (a reload): the state stays.
    """

    def __init__(
        self,
        settings: Breaker,
        clock: Callable[[], float],
        store: BreakerStore | None = None,
        *,
        shared: bool = False,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._store: BreakerStore = store or MemoryBreakers()
        #: Whether other replicas change the store too (its breakers are then read again, see :meth:`refresh`).
        self.shared = shared
        #: This process's view: target -> until when its breaker is open (past: half-open). Absent: closed.
        self.open: dict[str, float] = {}
        self.changed: Callable[[str, State], None] = lambda name, state: None
        self._read_at = -math.inf
        self._reading: asyncio.Future[None] | None = None
        self._unshared = False  #: the store failed (and it was said once)

    def state(self, name: str) -> State:
        """The breaker of ``name`` as this process sees it."""
        until = self.open.get(name)
        if until is None:
            return "closed"
        return "open" if until > self._clock() else "half_open"

    def retry_after(self, names: list[str]) -> int:
        """Whole seconds until the first of ``names`` (all open) lets a probe through; at least 1."""
        now = self._clock()
        return max(1, math.ceil(min(self.open.get(n, now) for n in names) - now))

    async def refresh(self) -> None:
        """Read the shared store's breakers, when this process's view of them is older than :data:`SYNC`."""
        if not self.shared or self._clock() - self._read_at < SYNC:
            return
        if self._reading is None or self._reading.done():
            self._read_at = self._clock()
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)  # calls arriving meanwhile wait for the same read

    async def admit(self, name: str) -> bool:
        """Whether a call may try ``name``, whose breaker this process sees open: True for its probe."""
        now = self._clock()
        if self.open[name] > now:
            return False
        try:
            probe = await self._store.claim(name, now, self.settings.open_for)
        except Exception as error:
            self._store_failed(error)
            return True
        if probe:
            self.changed(name, "half_open")
        return probe

    async def failed(self, name: str) -> bool:
        """Count a retryable failure of ``name``; whether its breaker is open after it."""
        try:
            opened, until = await self._store.fail(name, self._clock(), self.settings)
        except Exception as error:
            self._store_failed(error)
            return False
        if until is None:
            return False
        self.open[name] = until
        if opened:
            self.changed(name, "open")
        return True

    async def answered(self, name: str) -> None:
        """The probe of ``name`` got an answer: its breaker closes."""
        self.open.pop(name, None)
        try:
            await self._store.close(name)
        except Exception as error:
            self._store_failed(error)
            return
        self.changed(name, "closed")

    async def aclose(self) -> None:
        if self._reading is not None:
            await asyncio.gather(self._reading, return_exceptions=True)
        await self._store.aclose()

    async def _read(self) -> None:
        try:
            self.open = await self._store.read()
        except Exception as error:
            self._store_failed(error)
        else:
            self._unshared = False

    def _store_failed(self, error: Exception) -> None:
        if not self._unshared:  # once per outage, not once per call
            logger.warning("unimw: circuit breakers not shared (%s: %s)", type(error).__name__, error)
        self._unshared = True


def breakers(settings: Breaker, store_url: str, clock: Callable[[], float]) -> Breakers | None:
    """The breakers a policy asks for (None: ``failures`` is 0), kept where its limits are (``tenancy.store``)."""
    if not settings.failures:
        return None
    if store_url.startswith("memory://"):
        return Breakers(settings, clock)
    from unimw.stores.breaker import RedisBreakers

    return Breakers(settings, clock, RedisBreakers(store_url), shared=True)
