"""The embedded store: limits kept in this process's memory.

asyncio-safe without locks: no method awaits between reading and writing a
counter, so a reservation is atomic with respect to every other coroutine.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cachetools import TLRUCache

from unimw.stores.base import Counter, Reservation


@dataclass(slots=True)
class _Sliding:
    entries: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)  # call id -> (time, amount)
    total: int = 0

    def expire(self, now: float, window: float) -> None:
        while self.entries:
            call_id, (at, amount) = next(iter(self.entries.items()))
            if at > now - window:
                return
            del self.entries[call_id]
            self.total -= amount

    def retry_after(self, need: int, now: float, window: float) -> float:
        """Seconds until enough old entries expire to free ``need``."""
        freed = 0
        for at, amount in self.entries.values():
            freed += amount
            if freed >= need:
                return max(0.0, at + window - now)
        return window


@dataclass(slots=True)
class _Fixed:
    total: int
    expires: float


class MemoryLimitStore:
    """Sliding logs and calendar counters in dicts; expired entries are dropped as they are met."""

    def __init__(self) -> None:
        self._sliding: dict[str, _Sliding] = {}
        self._fixed: dict[str, _Fixed] = {}
        self._once: dict[str, float] = {}

    def _total(self, counter: Counter, now: float) -> int:
        if counter.sliding:
            log = self._sliding.get(counter.key)
            if log is None:
                return 0
            log.expire(now, counter.window)
            return log.total
        fixed = self._fixed.get(counter.key)
        if fixed is None or fixed.expires <= now:
            self._fixed.pop(counter.key, None)
            return 0
        return fixed.total

    async def reserve(
        self, call_id: str, counters: Sequence[Counter], amounts: Sequence[int], now: float
    ) -> Reservation:
        totals = tuple([self._total(c, now) for c in counters])
        for i, counter in enumerate(counters):
            if totals[i] + amounts[i] > counter.limit:
                wanted = totals[i] + amounts[i]
                return Reservation(False, totals, i, self._retry_after(counter, wanted, now, amounts[i]))
        for counter, amount in zip(counters, amounts, strict=True):
            if counter.sliding:
                log = self._sliding.setdefault(counter.key, _Sliding())
                log.entries[call_id] = (now, amount)
                log.total += amount
            else:
                fixed = self._fixed.get(counter.key)
                if fixed is None:
                    self._drop_expired(now)  # new calendar windows are rare: a good time to sweep
                    fixed = self._fixed[counter.key] = _Fixed(0, counter.ends)
                fixed.total += amount
        return Reservation(True, tuple(t + a for t, a in zip(totals, amounts, strict=True)))

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, f in self._fixed.items() if f.expires <= now]:
            del self._fixed[key]
        for key in [k for k, until in self._once.items() if until <= now]:
            del self._once[key]

    def _retry_after(self, counter: Counter, wanted: int, now: float, amount: int) -> float | None:
        if amount > counter.limit:
            return None
        if counter.sliding:
            return self._sliding[counter.key].retry_after(wanted - counter.limit, now, counter.window)
        return max(0.0, self._fixed[counter.key].expires - now)

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        totals = []
        for counter, before, after in zip(counters, reserved, actual, strict=True):
            if counter.sliding:
                log = self._sliding.get(counter.key)
                if log is not None and call_id in log.entries:
                    at, _ = log.entries[call_id]
                    log.entries[call_id] = (at, after)
                    log.total += after - before
                totals.append(log.total if log is not None else 0)
            else:
                fixed = self._fixed.get(counter.key)
                if fixed is not None and fixed.expires > now:
                    fixed.total += after - before
                totals.append(fixed.total if fixed is not None and fixed.expires > now else 0)
        return tuple(totals)

    async def totals(self, counters: Sequence[Counter], now: float) -> tuple[int, ...]:
        return tuple(self._total(c, now) for c in counters)

    async def once(self, key: str, ttl: float, now: float) -> bool:
        if self._once.get(key, 0.0) > now:
            return False
        self._once[key] = now + ttl
        return True

    async def aclose(self) -> None:
        return None


class MemoryCacheStore:
    """An LRU of byte strings, bounded by entry count and by total bytes, each entry with its own TTL."""

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self._max_entries = max_entries
        self._entries: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=max_bytes, ttu=lambda _key, value, now: now + value[1], timer=clock, getsizeof=lambda v: len(v[0])
        )

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        return entry[0] if entry is not None else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if len(value) > self._entries.maxsize:
            return  # larger than the whole cache: not worth evicting everything for
        self._entries.pop(key, None)
        while len(self._entries) >= self._max_entries:
            self._entries.popitem()
        self._entries[key] = (value, ttl)

    async def aclose(self) -> None:
        return None
