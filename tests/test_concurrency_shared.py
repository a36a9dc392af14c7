"""Tenants' concurrency limits shared by replicas, on the real Redis: leases, waiting, renewal, a dead process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from tests.conftest import Clock
from tests.redis_support import require_redis, unique
from unimw.concurrency import Slots
from unimw.errors import RateLimited
from unimw.stores.concurrency import LEASE, RedisSlots

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store() -> AsyncIterator[Callable[[], RedisSlots]]:
    """Stores on one Redis under this test's own prefix, as two replicas would have; closed after the test."""
    url, prefix = require_redis(), unique("unimw:inflight:test") + ":"
    made: list[RedisSlots] = []

    def make() -> RedisSlots:
        made.append(RedisSlots(url, prefix))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


async def test_places_are_counted_across_replicas(store: Callable[[], RedisSlots]) -> None:
    one, two = store(), store()
    assert [await one.take("acme", 2, "a", 1000.0), await two.take("acme", 2, "b", 1000.0)] == [True, True]
    assert await two.take("acme", 2, "c", 1000.0) is False
    assert await one.take("globex", 2, "d", 1000.0) is True  # another tenant's places are its own
    await one.give_back("acme", "a")
    assert await two.take("acme", 2, "c", 1000.0) is True


async def test_a_lease_not_renewed_runs_out_and_a_renewed_one_does_not(store: Callable[[], RedisSlots]) -> None:
    one = store()
    assert await one.take("acme", 2, "dead", 1000.0) is True  # its process dies: never renewed
    assert await one.take("acme", 2, "alive", 1000.0) is True
    await one.renew([("acme", "alive")], 1000.0 + LEASE - 1)
    assert await one.take("acme", 2, "new", 1000.0 + LEASE - 0.5) is False  # both still held
    assert await one.take("acme", 2, "new", 1000.0 + LEASE) is True  # the dead one's ran out
    assert await one.take("acme", 2, "more", 1000.0 + LEASE + 1) is False  # the renewed one still holds


async def test_a_call_waits_for_a_place_another_replica_gives_back(store: Callable[[], RedisSlots]) -> None:
    one, two = Slots(shared=store()), Slots(shared=store())
    held = await one.take("acme", 1, None, 0)
    with pytest.raises(RateLimited) as refused:
        await two.take("acme", 1, None, 0)
    assert refused.value.code == "concurrency_limit_exceeded"
    waiting = asyncio.ensure_future(two.take("acme", 1, None, 5))
    await asyncio.sleep(0.2)
    assert not waiting.done() and two.waiting == 1
    held.release()
    slot = await asyncio.wait_for(waiting, 5)
    assert slot.held and two.waiting == 0
    slot.release()
    await one.aclose()
    await two.aclose()


async def test_a_long_call_keeps_its_place_as_its_lease_is_renewed(store: Callable[[], RedisSlots]) -> None:
    clock = Clock(1000.0)
    one = Slots(shared=store(), clock=clock, renew_every=0.01)
    two = Slots(shared=store(), clock=clock)
    held = await one.take("acme", 1, None, 0)
    clock.advance(LEASE - 1)
    await asyncio.sleep(0.1)  # renewals, at the clock's new time
    clock.advance(LEASE - 1)  # past the first lease's end: only the renewals hold it
    with pytest.raises(RateLimited):
        await two.take("acme", 1, None, 0)
    held.release()
    await asyncio.sleep(0.05)  # given back in a task
    (await two.take("acme", 1, None, 0)).release()
    await one.aclose()
    await two.aclose()


async def test_a_call_cancelled_while_waiting_takes_nothing(store: Callable[[], RedisSlots]) -> None:
    one, two = Slots(shared=store()), Slots(shared=store())
    held = await one.take("acme", 1, None, 0)
    waiting = asyncio.ensure_future(two.take("acme", 1, None, 5))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.release()
    await asyncio.sleep(0.05)
    (await one.take("acme", 1, None, 0)).release()  # the place is free: the cancelled call holds none
    assert two.waiting == 0
    await one.aclose()
    await two.aclose()


async def test_a_store_that_fails_after_the_lease_was_taken_is_logged_and_the_lease_runs_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing:
        async def take(self, tenant: str, limit: int, lease: str, now: float) -> bool:
            return True

        async def give_back(self, tenant: str, lease: str) -> None:
            raise ConnectionError("store down")

        async def renew(self, leases: object, now: float) -> None:
            raise ConnectionError("store down")

        async def aclose(self) -> None:
            pass

    slots = Slots(shared=Failing(), renew_every=0.01)
    with caplog.at_level(logging.WARNING, logger="unimw.concurrency"):
        held = await slots.take("acme", 1, None, 0)
        await asyncio.sleep(0.05)  # several renewals fail: said once
        held.release()
        await asyncio.sleep(0.01)  # the give-back task fails
    await slots.aclose()
    assert [r.getMessage() for r in caplog.records] == [
        "unimw: concurrency leases not renewed (ConnectionError: store down)",
        "unimw: a concurrency place was not given back (ConnectionError: store down)",
    ]
