"""Circuit breakers: the state machine, the same on the process's store and on the real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Clock
from tests.redis_support import require_redis, unique
from unimw.breaker import SYNC, Breakers, BreakerStore, MemoryBreakers, breakers
from unimw.policy import Breaker

pytestmark = pytest.mark.anyio

SETTINGS = Breaker(failures=3, window=10.0, open_for=30.0)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BreakerStore]:
    if request.param == "memory":
        yield MemoryBreakers()
        return
    from unimw.stores.breaker import RedisBreakers

    made = RedisBreakers(require_redis(), key=unique("unimw:breaker:test"))
    yield made
    await made.aclose()


async def test_failures_within_the_window_open_it(store: BreakerStore) -> None:
    now = 1000.0
    assert await store.fail("m", now, SETTINGS) == (False, None)
    assert await store.fail("m", now + 4, SETTINGS) == (False, None)
    assert await store.fail("m", now + 9, SETTINGS) == (True, now + 9 + 30)
    assert await store.read() == {"m": now + 39}
    # A failure of a call made before it opened leaves it as it is.
    assert await store.fail("m", now + 10, SETTINGS) == (False, now + 39)


async def test_failures_spread_wider_than_the_window_do_not(store: BreakerStore) -> None:
    for at in (0.0, 6.0, 12.0, 18.0, 24.0):  # never three within 10 s of the first counted
        assert await store.fail("m", 1000 + at, SETTINGS) == (False, None)
    assert await store.read() == {}


async def test_one_probe_at_a_time_once_its_time_is_up(store: BreakerStore) -> None:
    for _ in range(3):
        await store.fail("m", 1000.0, SETTINGS)
    assert await store.claim("m", 1029.0, 30.0) is False  # still open
    assert await store.claim("m", 1030.0, 30.0) is True  # half-open: this call is the probe
    assert await store.claim("m", 1031.0, 30.0) is False  # another replica's call: the probe holds it
    assert await store.claim("m", 1060.0, 30.0) is True  # the probe never reported: given up after open_for


async def test_a_failed_probe_opens_it_again(store: BreakerStore) -> None:
    for _ in range(3):
        await store.fail("m", 1000.0, SETTINGS)
    assert await store.claim("m", 1030.0, 30.0) is True
    assert await store.fail("m", 1031.0, SETTINGS) == (True, 1061.0)
    assert await store.read() == {"m": 1061.0}
    assert await store.claim("m", 1032.0, 30.0) is False


async def test_an_answered_probe_closes_it(store: BreakerStore) -> None:
    for _ in range(3):
        await store.fail("m", 1000.0, SETTINGS)
    await store.fail("other", 1000.0, SETTINGS)
    await store.close("m")
    assert await store.read() == {}
    assert await store.claim("m", 1001.0, 30.0) is True  # closed: every call goes
    # Counting starts afresh: two more failures do not open it.
    assert await store.fail("m", 1002.0, SETTINGS) == (False, None)
    assert await store.fail("m", 1003.0, SETTINGS) == (False, None)


async def test_the_view_follows_the_changes_made_here() -> None:
    clock = Clock(1000.0)
    changes: list[tuple[str, str]] = []
    book = Breakers(SETTINGS, clock)
    book.changed = lambda name, state: changes.append((name, state))
    assert [await book.failed("m") for _ in range(3)] == [False, False, True]
    assert (book.state("m"), book.open, book.retry_after(["m"])) == ("open", {"m": 1030.0}, 30)
    assert await book.admit("m") is False
    clock.advance(30)
    assert book.state("m") == "half_open"
    assert await book.admit("m") is True
    assert await book.admit("m") is False  # the probe is under way
    await book.answered("m")
    assert (book.state("m"), book.open) == ("closed", {})
    assert changes == [("m", "open"), ("m", "half_open"), ("m", "closed")]


async def test_a_replica_sees_what_another_opened_within_a_second() -> None:
    url, key = require_redis(), unique("unimw:breaker:test")
    from unimw.stores.breaker import RedisBreakers

    clock = Clock(1000.0)
    one = Breakers(SETTINGS, clock, RedisBreakers(url, key), shared=True)
    two = Breakers(SETTINGS, clock, RedisBreakers(url, key), shared=True)
    try:
        await two.refresh()  # read once: nothing open
        for _ in range(3):
            await one.failed("m")
        await two.refresh()
        assert two.open == {}  # read less than a second ago: not again
        clock.advance(SYNC)
        await two.refresh()
        assert (two.open, two.state("m")) == ({"m": 1030.0}, "open")
        clock.advance(30)
        assert (await one.admit("m"), await two.admit("m")) == (True, False)  # one probe between them
        await one.answered("m")
        clock.advance(SYNC)
        await two.refresh()
        assert two.open == {}
    finally:
        await one.aclose()
        await two.aclose()


async def test_calls_arriving_together_share_one_read() -> None:
    reads = 0

    class Counting(MemoryBreakers):
        async def read(self) -> dict[str, float]:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.01)
            return {"m": 2000.0}

    book = Breakers(SETTINGS, Clock(1000.0), Counting(), shared=True)
    await asyncio.gather(*(book.refresh() for _ in range(5)))
    assert (reads, book.open) == (1, {"m": 2000.0})


async def test_a_failing_store_lets_calls_through_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    class Down(MemoryBreakers):
        async def fail(self, name: str, now: float, settings: Breaker) -> tuple[bool, float | None]:
            raise ConnectionError("store down")

        async def claim(self, name: str, now: float, hold: float) -> bool:
            raise ConnectionError("store down")

    book = Breakers(SETTINGS, Clock(1000.0), Down())
    book.open["m"] = 999.0  # half-open, as last read
    with caplog.at_level(logging.WARNING, logger="unimw.breaker"):
        assert [await book.failed("m") for _ in range(5)] == [False] * 5
        assert await book.admit("m") is True
    assert [r.getMessage() for r in caplog.records] == [
        "unimw: circuit breakers not shared (ConnectionError: store down)"
    ]


def test_no_breakers_unless_failures_are_set() -> None:
    assert breakers(Breaker(), "memory://", Clock()) is None
    made = breakers(SETTINGS, "memory://", Clock())
    assert made is not None and made.settings is SETTINGS


async def test_a_shared_store_that_cannot_be_read_keeps_the_view_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Unreadable(MemoryBreakers):
        async def read(self) -> dict[str, float]:
            raise ConnectionError("store down")

        async def close(self, name: str) -> None:
            raise ConnectionError("store down")

    clock = Clock(1000.0)
    book = Breakers(SETTINGS, clock, Unreadable(), shared=True)
    book.open["m"] = 2000.0
    with caplog.at_level(logging.WARNING, logger="unimw.breaker"):
        for _ in range(3):
            await book.refresh()
            clock.advance(SYNC)
        await book.answered("m")  # the probe answered: closed here, though the store could not be told
    assert book.open == {}
    assert [r.getMessage() for r in caplog.records] == [
        "unimw: circuit breakers not shared (ConnectionError: store down)"
    ]
