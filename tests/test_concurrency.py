"""The concurrency counters alone: places taken and given back exactly once, waiters served in order."""

from __future__ import annotations

import asyncio

import pytest

from unimw.concurrency import Slot, Slots
from unimw.errors import RateLimited

pytestmark = pytest.mark.anyio


async def refused(slots: Slots, tenant: str | None, per_tenant: int | None, overall: int | None) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        await slots.take(tenant, per_tenant, overall, 0)
    return caught.value


async def test_a_tenant_over_its_limit_is_refused_at_once_with_the_openai_envelope() -> None:
    slots = Slots()
    await slots.take("a", 2, None, 0)
    await slots.take("a", 2, None, 0)
    error = await refused(slots, "a", 2, None)
    assert (error.status, error.headers) == (429, {"retry-after": "1"})
    assert error.to_dict() == {
        "error": {
            "message": "Too many concurrent requests for this tenant: at most 2 at once. Retry shortly.",
            "type": "requests",
            "param": None,
            "code": "concurrency_limit_exceeded",
        }
    }
    assert slots.active("a") == 2
    assert slots.active("b") == 0
    await slots.take("b", 2, None, 0)  # another tenant has places of its own
    assert slots.active("b") == 1


async def test_a_slot_is_released_exactly_once() -> None:
    slots = Slots()
    first = await slots.take("a", 2, 5, 0)
    second = await slots.take("a", 2, 5, 0)
    assert (slots.active("a"), slots.active()) == (2, 2)
    first.release()
    first.release()
    assert (slots.active("a"), slots.active()) == (1, 1)
    assert not first.held and second.held
    second.release()
    assert (slots.active("a"), slots.active()) == (0, 0)
    assert slots._gates == {}  # nothing is kept for tenants with no call in flight


async def test_no_limit_takes_no_place() -> None:
    slots = Slots()
    slot = await slots.take("a", None, None, 0)
    assert not slot.held
    slot.release()
    assert slots._gates == {}


async def test_a_waiter_gets_the_place_a_finished_call_gives_back_first_come_first_served() -> None:
    slots = Slots()
    held = await slots.take("a", 1, None, 0)
    order: list[str] = []

    async def wait(name: str) -> Slot:
        slot = await slots.take("a", 1, None, 5)
        order.append(name)
        return slot

    one = asyncio.create_task(wait("one"))
    await asyncio.sleep(0)
    two = asyncio.create_task(wait("two"))
    await asyncio.sleep(0)
    assert slots.waiting == 2
    held.release()
    first = await asyncio.wait_for(one, 1)
    assert (order, slots.active("a"), slots.waiting) == (["one"], 1, 1)
    first.release()
    second = await asyncio.wait_for(two, 1)
    assert (order, slots.active("a"), slots.waiting) == (["one", "two"], 1, 0)
    second.release()
    assert slots._gates == {}


async def test_a_waiter_is_refused_when_its_wait_runs_out() -> None:
    slots = Slots()
    held = await slots.take("a", 1, None, 0)
    with pytest.raises(RateLimited) as caught:
        await asyncio.wait_for(slots.take("a", 1, None, 0.05), 1)
    assert caught.value.code == "concurrency_limit_exceeded"
    assert (slots.active("a"), slots.waiting, len(slots._gates["a"].waiters)) == (1, 0, 0)
    held.release()
    assert slots._gates == {}


async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_place() -> None:
    slots = Slots()
    held = await slots.take("a", 1, None, 0)
    waiter = asyncio.create_task(slots.take("a", 1, None, 5))
    await asyncio.sleep(0)
    assert slots.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 1)
    assert (slots.active("a"), slots.waiting, len(slots._gates["a"].waiters)) == (1, 0, 0)
    held.release()
    assert slots._gates == {}


async def test_a_waiter_cancelled_just_as_a_place_came_passes_it_on() -> None:
    slots = Slots()
    held = await slots.take("a", 1, None, 0)
    unlucky = asyncio.create_task(slots.take("a", 1, None, 5))
    await asyncio.sleep(0)
    next_in_line = asyncio.create_task(slots.take("a", 1, None, 5))
    await asyncio.sleep(0)
    held.release()  # the place goes to `unlucky`'s future...
    unlucky.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(unlucky, 1)
    slot = await asyncio.wait_for(next_in_line, 1)
    assert (slots.active("a"), slots.waiting) == (1, 0)
    slot.release()
    assert slots._gates == {}


async def test_beyond_the_bound_of_waiters_a_call_is_refused_at_once() -> None:
    slots = Slots(max_waiters=2)
    held = await slots.take("a", 1, 1, 0)
    waiters = [asyncio.create_task(slots.take("a", 1, None, 5)) for _ in range(2)]
    await asyncio.sleep(0)
    assert slots.waiting == 2
    with pytest.raises(RateLimited):
        await asyncio.wait_for(slots.take("b", 1, 1, 5), 1)  # b's own place, then the full gateway-wide queue...
    assert slots.active("b") == 0  # ...and b's place is given back with the refusal
    held.release()
    for task in waiters:
        (await asyncio.wait_for(task, 1)).release()
    assert slots.waiting == 0
    assert slots._gates == {}


async def test_the_gateway_wide_limit_counts_every_tenant_and_a_refusal_gives_back_the_tenants_place() -> None:
    slots = Slots()
    a = await slots.take("a", 5, 2, 0)
    b = await slots.take("b", 5, 2, 0)
    error = await refused(slots, "c", 5, 2)
    assert error.message == "Too many concurrent requests: the gateway serves at most 2 at once. Retry shortly."
    assert (slots.active("a"), slots.active("b"), slots.active("c"), slots.active()) == (1, 1, 0, 2)
    b.release()
    c = await slots.take("c", 5, 2, 0)
    assert (slots.active("c"), slots.active()) == (1, 2)
    a.release()
    c.release()
    assert slots._gates == {}


async def test_a_lowered_limit_lets_calls_in_flight_end_before_waiters_get_in() -> None:
    slots = Slots()
    held = [await slots.take("a", 3, None, 0) for _ in range(3)]
    waiter = asyncio.create_task(slots.take("a", 2, None, 5))  # the limit is now 2: three are in flight
    await asyncio.sleep(0)
    held[0].release()
    await asyncio.sleep(0)
    assert (slots.active("a"), waiter.done()) == (2, False)
    held[1].release()
    slot = await asyncio.wait_for(waiter, 1)
    assert slots.active("a") == 2
    for each in (slot, held[2]):
        each.release()
    assert slots._gates == {}
