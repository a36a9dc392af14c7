"""Concurrency limits: how many calls a tenant, and the whole gateway, may have in flight at once.

A call takes a :class:`Slot` after its tenant is known and before its
reservation (:meth:`Slots.take`), and gives it back once, when it is
finished (:meth:`unimw.finishing.Finisher.finish`: after its answer, its
error, its cancellation, or the end or early close of its stream). Over a
limit, the call waits for a slot up to ``wait`` seconds, first come first
served, and is refused with a 429 ``concurrency_limit_exceeded`` past it
(at once when ``wait`` is 0, or when too many calls already wait).

The gateway-wide limit (``server.max_concurrent_calls``) bounds one
process, so its counter is the process's own. A tenant's limit (a plan's
``max_concurrent``) is the tenant's across every worker and replica when
the policy's store is Redis (:class:`~unimw.stores.concurrency.RedisSlots`):
a place is a lease taken in one round trip and given back off the response
path, and a call waiting for one tries again every :data:`POLL` seconds.
On ``memory://`` it is counted per process. The counters know nothing of
the policy (each call brings its limits), so a gateway whose policy is
swapped keeps counting the calls already in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from unimw.errors import RateLimited

logger = logging.getLogger("unimw.concurrency")

#: Calls that may wait for a slot at once, over every limit; one more is refused at once (memory stays bounded).
MAX_WAITERS = 1000

#: The key of the gateway-wide limit (tenant ids are strings: it cannot clash with one).
EVERYONE = None
#: Seconds between two tries of a call waiting for a place under a shared limit.
POLL = 0.05
#: Seconds between two renewals of the leases of the calls in flight here (a third of a shared lease's life).
RENEW_EVERY = 10.0

#: A place under a shared limit: (tenant, lease id).
Lease = tuple[str, str]


class SharedSlots(Protocol):
    """Where replicas count a tenant's calls in flight (:class:`~unimw.stores.concurrency.RedisSlots`)."""

    async def take(self, tenant: str, limit: int, lease: str, now: float) -> bool:
        """Take a place for ``lease`` if fewer than ``limit`` are taken; whether it was."""
        ...

    async def give_back(self, tenant: str, lease: str) -> None: ...

    async def renew(self, leases: Sequence[Lease], now: float) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True, eq=False)
class _Gate:
    """One limit's count of calls in flight and the calls waiting for one of them to end."""

    limit: int
    active: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class Slot:
    """The places one call holds (its tenant's, the gateway's); :meth:`release` gives them back once."""

    __slots__ = ("_gates", "_lease", "_slots")

    def __init__(self, slots: Slots, gates: tuple[tuple[str | None, _Gate], ...], lease: Lease | None = None) -> None:
        self._slots = slots
        self._gates = gates
        self._lease = lease

    @property
    def held(self) -> bool:
        return bool(self._gates) or self._lease is not None

    def release(self) -> None:
        """Give the places back (to the first waiter, if any; a shared one in a task); a second call does nothing."""
        gates, self._gates = self._gates, ()
        for key, gate in gates:
            self._slots.free(key, gate)
        if self._lease is not None:
            lease, self._lease = self._lease, None
            self._slots.give_back(lease)


class Slots:
    """Counters of calls in flight per tenant and gateway-wide, with a bounded queue of waiting calls."""

    def __init__(
        self,
        max_waiters: int = MAX_WAITERS,
        *,
        shared: SharedSlots | None = None,
        clock: Callable[[], float] = time.time,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        self._gates: dict[str | None, _Gate] = {}
        self._max_waiters = max_waiters
        self._waiting = 0
        self._shared = shared
        self._clock = clock
        self._renew_every = renew_every
        self._held: dict[str, str] = {}  #: lease id -> tenant, of the calls in flight here under a shared limit
        self._renewing: asyncio.Task[None] | None = None
        self._giving_back: set[asyncio.Task[None]] = set()
        self._unshared = False  #: renewing failed (and it was said once)

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
        lease: Lease | None = None
        try:
            if per_tenant is not None and tenant is not None:
                if self._shared is not None:
                    lease = await self._enter_shared(tenant, per_tenant, deadline, loop)
                else:
                    taken.append(await self._enter(tenant, per_tenant, deadline, loop))
            if overall is not None:
                taken.append(await self._enter(EVERYONE, overall, deadline, loop))
        except BaseException:
            for key, gate in taken:
                self.free(key, gate)
            if lease is not None:
                self.give_back(lease)
            raise
        return Slot(self, tuple(taken), lease)

    async def _enter_shared(self, tenant: str, limit: int, deadline: float, loop: asyncio.AbstractEventLoop) -> Lease:
        """A lease under ``tenant``'s limit in the shared store, tried again every :data:`POLL` s until
        ``deadline``. A store that fails raises :class:`~unimw.stores.base.StoreUnavailable` (the gateway
        answers it as it does for limits)."""
        assert self._shared is not None
        lease = (tenant, os.urandom(12).hex())
        waiting = False
        try:
            while True:
                try:
                    if await self._shared.take(tenant, limit, lease[1], self._clock()):
                        break
                except asyncio.CancelledError:
                    self.give_back(lease)  # the place may have been taken as the call was cancelled
                    raise
                remaining = deadline - loop.time()
                if remaining <= 0 or (not waiting and self._waiting >= self._max_waiters):
                    raise _refusal(tenant, limit)
                if not waiting:
                    waiting = True
                    self._waiting += 1
                await asyncio.sleep(min(POLL, remaining))
        finally:
            if waiting:
                self._waiting -= 1
        self._held[lease[1]] = tenant
        if self._renewing is None or self._renewing.done():
            self._renewing = loop.create_task(self._renew())
        return lease

    def give_back(self, lease: Lease) -> None:
        """Give a shared place back, in a task: the call that held it does not wait for the store."""
        assert self._shared is not None
        self._held.pop(lease[1], None)
        task = asyncio.get_running_loop().create_task(self._shared.give_back(*lease))
        self._giving_back.add(task)
        task.add_done_callback(self._given_back)

    def _given_back(self, task: asyncio.Task[None]) -> None:
        self._giving_back.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:  # the lease runs out by itself
            logger.warning("unimw: a concurrency place was not given back (%s: %s)", type(error).__name__, error)

    async def _renew(self) -> None:
        """Renew the leases of the calls in flight here, all in one round trip, while there are any."""
        assert self._shared is not None
        while self._held:
            await asyncio.sleep(self._renew_every)
            if not self._held:
                return
            try:
                await self._shared.renew([(tenant, lease) for lease, tenant in self._held.items()], self._clock())
            except Exception as error:  # the leases may run out: other replicas then see fewer calls in flight
                if not self._unshared:
                    logger.warning("unimw: concurrency leases not renewed (%s: %s)", type(error).__name__, error)
                self._unshared = True
            else:
                self._unshared = False

    async def aclose(self) -> None:
        """Stop renewing, wait for the places being given back, and close the shared store."""
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        await asyncio.gather(*self._giving_back, return_exceptions=True)
        if self._shared is not None:
            await self._shared.aclose()

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
