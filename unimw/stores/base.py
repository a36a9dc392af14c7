"""The store protocols: what limits and the response cache need from storage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit counter.

    A sliding counter holds every reservation of the last ``window`` seconds
    (so any ``window`` seconds hold at most ``limit``); a fixed counter is one
    total for a calendar window whose key names it, and expires when the
    window ``ends`` (seconds since the epoch).
    """

    key: str
    limit: int
    window: float
    sliding: bool
    ends: float = 0.0


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to a reserve: taken, or the first counter that did not fit."""

    ok: bool
    #: One total per counter, in order, also when refused: after the reservation (before it, if refused).
    totals: tuple[int, ...]
    refused: int = -1  #: index of the counter that did not fit
    retry_after: float | None = None  #: seconds until it would fit; None if it never will


class CacheStore(Protocol):
    """Bytes by key, each with its own time to live."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, key: str) -> bool:
        """Forget ``key``; whether it was there."""
        ...

    async def aclose(self) -> None: ...


class StoreUnavailable(Exception):
    """The store could not be reached."""


class LimitStore(Protocol):
    """Atomic multi-counter reservations.

    ``reserve`` takes ``amounts[i]`` on ``counters[i]`` for every ``i``, or on
    none of them; ``settle`` replaces each reserved amount by the actual one.
    Both are one round trip on a networked store.

    A store may also say, with a class attribute ``settles_later = True``,
    that its ``settle`` costs a round trip: the gateway then settles each
    call after its answer is sent (still exactly once, and before the gateway
    closes), so a caller waits for the reservation only. Without it (or with
    False) calls are settled before their answer, as the in-process store
    wants: its settlement is cheaper than a task. It is not part of the
    protocol's required members, so stores written before it still fit.
    """

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> Reservation: ...

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        """Apply the actual amounts; returns each counter's total after."""
        ...

    async def totals(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]: ...

    async def once(self, key: str, ttl: float, now: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` seconds (alerts fire once per window)."""
        ...

    async def aclose(self) -> None: ...
