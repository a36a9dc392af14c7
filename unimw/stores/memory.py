"""The embedded store: limits kept in this process's memory.

asyncio-safe without locks: no method awaits between reading and writing a
counter, so a reservation is atomic with respect to every other coroutine.

Its memory is bounded, although callers choose end-user ids freely. Counters
whose window has passed are swept at most once per ``sweep_interval`` seconds,
in time proportional to what is swept: sliding logs wait in a queue by when
they were last reserved on (one queue per window length, so the front expires
first), calendar counters by the end of their window, alert keys by expiry.
And the store holds at most ``max_counters`` live counters. A reservation
that needs a new counter past that raises StoreUnavailable, which the
policy's ``on_store_error`` turns into a 503 or an unmetered call: evicting a
live counter instead would forget its usage and let its caller past the
limit. Counters already held keep counting.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cachetools import TLRUCache

from unimw.stores.base import Counter, Reservation, StoreUnavailable

#: Live counters (sliding logs plus calendar totals) one process holds at most, unless the URL says otherwise.
DEFAULT_MAX_COUNTERS = 1_000_000


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
    """Sliding logs and calendar counters in dicts; expired ones are swept (see the module's docstring)."""

    #: A settlement is a few dict updates, cheaper than the task that would defer it: calls settle before
    #: their answer, so counters, alerts, records and spans are complete as the answer returns.
    settles_later = False

    def __init__(self, *, max_counters: int = DEFAULT_MAX_COUNTERS, sweep_interval: float = 1.0) -> None:
        if max_counters < 1:
            raise ValueError(f"max_counters must be at least 1, got {max_counters}")
        self._max_counters = max_counters
        self._sweep_interval = sweep_interval
        self._next_sweep = -math.inf
        self._sliding: dict[str, _Sliding] = {}
        self._fixed: dict[str, _Fixed] = {}
        self._once: dict[str, float] = {}
        # Sliding keys per window length, least recently reserved on first: the front expires first.
        self._touched: dict[float, OrderedDict[str, None]] = {}
        # Calendar keys by the end of their window: most share one (every day counter ends at midnight).
        self._ending: dict[float, list[str]] = {}
        self._ends: list[float] = []  # a heap of the ends in _ending
        self._once_until: list[tuple[float, str]] = []  # a heap of (expiry, key) of _once

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
        if now >= self._next_sweep:
            self._sweep(now)
        totals = tuple([self._total(c, now) for c in counters])
        for i, counter in enumerate(counters):
            if totals[i] + amounts[i] > counter.limit:
                wanted = totals[i] + amounts[i]
                return Reservation(False, totals, i, self._retry_after(counter, wanted, now, amounts[i]))
        self._make_room(counters, now)
        for counter, amount in zip(counters, amounts, strict=True):
            if counter.sliding:
                self._take_sliding(call_id, counter, amount, now)
            else:
                self._take_fixed(counter, amount)
        return Reservation(True, tuple(t + a for t, a in zip(totals, amounts, strict=True)))

    def _take_sliding(self, call_id: str, counter: Counter, amount: int, now: float) -> None:
        log = self._sliding.get(counter.key)
        if log is None:
            log = self._sliding[counter.key] = _Sliding()
        log.entries[call_id] = (now, amount)
        log.total += amount
        queue = self._touched.get(counter.window)
        if queue is None:
            queue = self._touched[counter.window] = OrderedDict()
        queue[counter.key] = None
        queue.move_to_end(counter.key)

    def _take_fixed(self, counter: Counter, amount: int) -> None:
        fixed = self._fixed.get(counter.key)
        if fixed is None:
            fixed = self._fixed[counter.key] = _Fixed(0, counter.ends)
            keys = self._ending.get(counter.ends)
            if keys is None:
                keys = self._ending[counter.ends] = []
                heapq.heappush(self._ends, counter.ends)
            keys.append(counter.key)
        fixed.total += amount

    def _make_room(self, counters: Sequence[Counter], now: float) -> None:
        """Raise StoreUnavailable if the counters this reservation would add do not fit, even after a sweep."""
        new = sum(1 for c in counters if c.key not in (self._sliding if c.sliding else self._fixed))
        if new == 0 or self._held() + new <= self._max_counters:
            return
        self._sweep(now)
        if self._held() + new > self._max_counters:
            raise StoreUnavailable(
                f"the memory limit store is full: {self._held()} live counters (max_counters={self._max_counters})"
            )

    def _held(self) -> int:
        return len(self._sliding) + len(self._fixed)

    def _sweep(self, now: float) -> None:
        """Drop what has expired, front of each queue first: the work is what is dropped, plus one look per queue."""
        self._next_sweep = now + self._sweep_interval
        for window, queue in self._touched.items():
            self._sweep_sliding(queue, window, now)
        while self._ends and self._ends[0] <= now:
            for key in self._ending.pop(heapq.heappop(self._ends)):
                fixed = self._fixed.get(key)
                if fixed is not None and fixed.expires <= now:
                    del self._fixed[key]
        self._sweep_once(now)

    def _sweep_sliding(self, queue: OrderedDict[str, None], window: float, now: float) -> None:
        while queue:
            key = next(iter(queue))
            log = self._sliding.get(key)
            if log is not None:
                log.expire(now, window)
                if log.entries:
                    return  # reserved on within the window, and so is every key behind it
                del self._sliding[key]
            queue.popitem(last=False)

    def _sweep_once(self, now: float) -> None:
        heap = self._once_until
        while heap and heap[0][0] <= now:
            until, key = heapq.heappop(heap)
            if self._once.get(key) == until:
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
        """As the protocol says; when ``max_counters`` keys are live, the soonest to expire is forgotten.

        Forgetting one means its alert may fire a second time in its window:
        a repeated alert is noise, a missing one would hide an overspend.
        """
        if self._once.get(key, 0.0) > now:
            return False
        self._sweep_once(now)
        if key not in self._once and len(self._once) >= self._max_counters:
            self._forget_soonest_once()
        until = now + ttl
        self._once[key] = until
        heapq.heappush(self._once_until, (until, key))
        return True

    def _forget_soonest_once(self) -> None:
        while self._once_until:
            until, key = heapq.heappop(self._once_until)
            if self._once.get(key) == until:
                del self._once[key]
                return

    def sizes(self) -> dict[str, int]:
        """What the store holds: sliding logs, calendar counters, alert keys, log entries (O(n): tests, benchmarks)."""
        entries = sum(len(log.entries) for log in self._sliding.values())
        return {"sliding": len(self._sliding), "fixed": len(self._fixed), "once": len(self._once), "entries": entries}

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

    async def delete(self, key: str) -> bool:
        return self._entries.pop(key, None) is not None

    async def aclose(self) -> None:
        return None
