"""Concurrency limits: how many calls a tenant, and the whole gateway, may have in flight at once.

A call takes a :class:`Slot` after its tenant is known and before its
reservation (:meth:`Slots.take`), and gives it back once, when it is
finished (:meth:`unimw.finishing.Finisher.finish`: after its answer, its
error, its cancellation, or the end or early close of its stream). Over a
limit, the call waits for a slot up to ``wait`` seconds, first come first
served, and is refused with a 429 ``concurrency_limit_exceeded`` past it
(at once when ``wait`` is 0, or when too many calls already wait).

The counters live in this process's memory: with several workers or
replicas each keeps its own, so a limit of N is N per process. They know
nothing of the policy (each call brings its limits), so a gateway whose
policy is swapped keeps counting the calls already in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from unimw.errors import RateLimited

#: Calls that may wait for a slot at once, over every limit; one more is refused at once (memory stays bounded).
MAX_WAITERS = 1000

#: The key of the gateway-wide limit (tenant ids are strings: it cannot clash with one).
EVERYONE = None


@dataclass(slots=True, eq=False)
class _Gate:
    """One limit's count of calls in flight and the calls waiting for one of them to end."""

    limit: int
    active: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class Slot:
    """The places one call holds (its tenant's, the gateway's); :meth:`release` gives them back once."""

    __slots__ = ("_gates", "_slots")

    def __init__(self, slots: Slots, gates: tuple[tuple[str | None, _Gate], ...]) -> None:
        self._slots = slots
        self._gates = gates

    @property
    def held(self) -> bool:
        return bool(self._gates)

    def release(self) -> None:
        """Give the places back (to the first waiter, if any); a second call does nothing."""
        gates, self._gates = self._gates, ()
        for key, gate in gates:
            self._slots.free(key, gate)


class Slots:
    """Counters of calls in flight per tenant and gateway-wide, with a bounded queue of waiting calls."""

    def __init__(self, max_waiters: int = MAX_WAITERS) -> None:
        self._gates: dict[str | None, _Gate] = {}
        self._max_waiters = max_waiters
        self._waiting = 0

    def active(self, tenant: str | None = EVERYONE) -> int:
        """Calls in flight for ``tenant`` (or under the gateway-wide limit)."""
        gate = self._gates.get(tenant)
        return gate.active if gate is not None else 0

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot, over every limit."""
        return self._waiting

    async def take(self, tenant: str | None, per_tenant: int | None, overall: int | None, wait: float) -> Slot:
        """A place under the tenant's limit and the gateway's (each None: no limit), waiting at most ``wait``
        seconds for both together; a 429 ``concurrency_limit_exceeded`` when none frees up in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        taken: list[tuple[str | None, _Gate]] = []
        try:
            if per_tenant is not None and tenant is not None:
                taken.append(await self._enter(tenant, per_tenant, deadline, loop))
            if overall is not None:
                taken.append(await self._enter(EVERYONE, overall, deadline, loop))
        except BaseException:
            for key, gate in taken:
                self.free(key, gate)
            raise
        return Slot(self, tuple(taken))

    async def _enter(
        self, key: str | None, limit: int, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> tuple[str | None, _Gate]:
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _Gate(limit)
        gate.limit = limit  # the current policy's: a swapped policy's limit applies from its next call on
        if gate.active < limit:
            gate.active += 1
            return key, gate
        remaining = deadline - loop.time()
        if remaining <= 0 or self._waiting >= self._max_waiters:
            self._drop_if_idle(key, gate)
            raise _refusal(key, limit)
        waiter: asyncio.Future[None] = loop.create_future()
        gate.waiters.append(waiter)
        self._waiting += 1
        try:
            async with asyncio.timeout(remaining):
                await waiter
        except BaseException as exc:
            handed = waiter.done() and not waiter.cancelled()
            if handed and isinstance(exc, TimeoutError):
                return key, gate  # the place came as the time ran out: it is this call's
            if handed:
                self.free(key, gate)  # cancelled just as a place came: pass it on
            else:
                waiter.cancel()
                if waiter in gate.waiters:  # unless a call that ended has already skipped it
                    gate.waiters.remove(waiter)
                self._drop_if_idle(key, gate)
            if isinstance(exc, TimeoutError):
                raise _refusal(key, limit) from None
            raise
        finally:
            self._waiting -= 1
        return key, gate

    def free(self, key: str | None, gate: _Gate) -> None:
        """One call of ``gate`` ended: its place goes to the first call still waiting, else is given back."""
        while gate.waiters and gate.active <= gate.limit:
            waiter = gate.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place passes on: ``active`` stays as it is
                return
        gate.active -= 1
        self._drop_if_idle(key, gate)

    def _drop_if_idle(self, key: str | None, gate: _Gate) -> None:
        # Only tenants with calls in flight or waiting are kept: memory follows the load, not every tenant seen.
        if gate.active == 0 and not gate.waiters and self._gates.get(key) is gate:
            del self._gates[key]


def _refusal(key: str | None, limit: int) -> RateLimited:
    if key is EVERYONE:
        message = f"Too many concurrent requests: the gateway serves at most {limit} at once. Retry shortly."
    else:
        message = f"Too many concurrent requests for this tenant: at most {limit} at once. Retry shortly."
    return RateLimited(message, code="concurrency_limit_exceeded", headers={"retry-after": "1"})
