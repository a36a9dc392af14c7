"""Keys the app issues, looked up by digest: cached answers, single flight, revocation, failing closed.

The app's side is real code here: the lookup functions below read a key table the tests change, count
their calls and can be held or made to fail; the cache runs on a clock moved by hand.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Clock
from unimw.errors import ServiceUnavailable
from unimw.identity import Identity
from unimw.key_lookup import KeyLookup
from unimw.policy import KeyLookupSource
from unimw.tenants import hash_key

pytestmark = pytest.mark.anyio

SYNC = "tests.test_key_lookup:lookup_sync"
ASYNC = "tests.test_key_lookup:lookup_async"
ALICE, BOB, MALLORY = hash_key("sk-live-alice"), hash_key("sk-live-bob"), hash_key("sk-forged-mallory")
ACME = Identity("acme", plan="pro")


class Backend:
    """The app's key table and what its lookup functions were asked."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.table: dict[str, object] = {}
        self.calls: list[str] = []
        self.entered = threading.Condition()  # notified each time a lookup function is entered
        self.threads: list[int] = []
        self.error: Exception | None = None
        self.sleep = 0.0  # an async lookup sleeps this long first
        self.gate: threading.Event | None = None  # a sync lookup blocks on it, when set
        self.release: asyncio.Event | None = None  # an async lookup waits for it, when set

    def enter(self, digest: str) -> None:
        with self.entered:
            self.calls.append(digest)
            self.threads.append(threading.get_ident())
            self.entered.notify_all()

    def wait_for_calls(self, count: int) -> None:
        with self.entered:
            assert self.entered.wait_for(lambda: len(self.calls) >= count, timeout=5)

    def answer(self, digest: str) -> object:
        if self.error is not None:
            raise self.error
        return self.table.get(digest)


BACKEND = Backend()


def lookup_sync(digest: str) -> object:
    BACKEND.enter(digest)
    answer = BACKEND.answer(digest)  # the row as it was when the query ran
    if BACKEND.gate is not None:
        BACKEND.gate.wait(timeout=5)
    return answer


async def lookup_async(digest: str) -> object:
    BACKEND.enter(digest)
    answer = BACKEND.answer(digest)
    if BACKEND.sleep:
        await asyncio.sleep(BACKEND.sleep)
    if BACKEND.release is not None:
        await asyncio.wait_for(BACKEND.release.wait(), timeout=5)
    return answer


class AsyncLookup:
    """An async function of another shape: an object whose ``__call__`` is a coroutine function."""

    async def __call__(self, digest: str) -> object:
        return await lookup_async(digest)


lookup_object = AsyncLookup()


@pytest.fixture(autouse=True)
def backend() -> Iterator[Backend]:
    BACKEND.reset()
    yield BACKEND
    if BACKEND.gate is not None:
        BACKEND.gate.set()  # never leave a worker thread blocked


@pytest.fixture(params=[SYNC, ASYNC], ids=["sync", "async"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(path: str, clock: Clock, **settings: Any) -> KeyLookup:
    source = KeyLookupSource(key_lookup=path, **{"ttl": 60, "negative_ttl": 30, "timeout": 2, **settings})
    return KeyLookup(source, clock=clock)


async def wait_for_calls(backend: Backend, count: int) -> None:
    """Until the app's function has been entered ``count`` times (it may run in a worker thread)."""
    await asyncio.to_thread(backend.wait_for_calls, count)


async def test_an_answer_is_cached_for_its_ttl(path: str, backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.table[BOB] = "globex"
    clock = Clock()
    keys = make(path, clock)
    assert [await keys.identify(d) for d in (ALICE, BOB, ALICE, BOB, ALICE)] == [
        ACME, Identity("globex"), ACME, Identity("globex"), ACME,
    ]  # fmt: skip
    assert backend.calls == [ALICE, BOB]  # called with the digest itself, once per key
    clock.advance(59.999)
    assert await keys.identify(ALICE) == ACME
    assert backend.calls == [ALICE, BOB]
    clock.advance(0.001)  # the ttl is up: exactly one more lookup, then cached again
    assert await keys.identify(ALICE) == ACME
    assert await keys.identify(ALICE) == ACME
    assert backend.calls == [ALICE, BOB, ALICE]


async def test_an_unknown_key_is_remembered_for_the_negative_ttl(path: str, backend: Backend) -> None:
    clock = Clock()
    keys = make(path, clock)
    assert [await keys.identify(MALLORY) for _ in range(100)] == [None] * 100
    assert backend.calls == [MALLORY]
    backend.table[MALLORY] = "acme"  # issued meanwhile: known once the negative answer expires
    clock.advance(29.999)
    assert await keys.identify(MALLORY) is None
    assert backend.calls == [MALLORY]
    clock.advance(0.001)
    assert await keys.identify(MALLORY) == Identity("acme")
    assert backend.calls == [MALLORY, MALLORY]


async def test_an_empty_tenant_id_means_nobody(backend: Backend) -> None:
    backend.table[ALICE] = ""
    keys = make(SYNC, Clock())
    assert (await keys.identify(ALICE), await keys.identify(ALICE)) == (None, None)
    assert backend.calls == [ALICE]


async def test_forget_revokes_at_once(path: str, backend: Backend) -> None:
    backend.table[ALICE] = ACME
    keys = make(path, Clock())
    assert await keys.identify(ALICE) == ACME
    del backend.table[ALICE]
    assert await keys.identify(ALICE) == ACME  # still cached: revoked only within the ttl...
    assert keys.forget(ALICE) is True  # ...or at once
    assert await keys.identify(ALICE) is None
    assert backend.calls == [ALICE, ALICE]
    assert keys.forget(ALICE) is True  # the negative answer goes too
    assert keys.forget(ALICE) is False
    assert keys.forget(BOB) is False
    backend.table[ALICE] = "globex"
    assert await keys.identify(ALICE) == Identity("globex")
    assert backend.calls == [ALICE, ALICE, ALICE]


async def test_forget_works_from_the_apps_own_threads(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    keys = make(SYNC, Clock())
    assert await keys.identify(ALICE) == ACME
    del backend.table[ALICE]
    assert await asyncio.to_thread(keys.forget, ALICE) is True  # a sync view of the app's, say
    assert await keys.identify(ALICE) is None
    assert backend.calls == [ALICE, ALICE]


async def test_a_lookup_in_flight_at_forget_is_not_cached(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.release = asyncio.Event()
    keys = make(ASYNC, Clock())
    first = asyncio.create_task(keys.identify(ALICE))
    await wait_for_calls(backend, 1)
    del backend.table[ALICE]
    assert keys.forget(ALICE) is False  # nothing cached yet
    backend.release.set()
    assert await first == ACME  # asked before the revocation
    assert await keys.identify(ALICE) is None  # the answer in flight was dropped, not cached
    assert backend.calls == [ALICE, ALICE]


async def test_identify_after_forget_does_not_join_the_stale_lookup(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.release = asyncio.Event()
    keys = make(ASYNC, Clock())
    first = asyncio.create_task(keys.identify(ALICE))
    await wait_for_calls(backend, 1)
    del backend.table[ALICE]
    keys.forget(ALICE)
    second = asyncio.create_task(keys.identify(ALICE))
    await wait_for_calls(backend, 2)
    backend.release.set()
    assert (await first, await second) == (ACME, None)
    assert await keys.identify(ALICE) is None
    assert backend.calls == [ALICE, ALICE]


async def test_concurrent_identifies_share_one_lookup(path: str, backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.gate, backend.release = threading.Event(), asyncio.Event()
    keys = make(path, Clock())
    waiting = [asyncio.create_task(keys.identify(ALICE)) for _ in range(1000)]
    await wait_for_calls(backend, 1)
    await asyncio.sleep(0)  # every identify has run up to its wait
    backend.gate.set()
    backend.release.set()
    assert await asyncio.gather(*waiting) == [ACME] * 1000
    assert backend.calls == [ALICE]


async def test_a_cancelled_caller_leaves_the_lookup_to_the_others(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.release = asyncio.Event()
    keys = make(ASYNC, Clock())
    first = asyncio.create_task(keys.identify(ALICE))
    await wait_for_calls(backend, 1)
    others = [asyncio.create_task(keys.identify(ALICE)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    backend.release.set()
    assert await asyncio.gather(*others) == [ACME] * 3
    assert first.cancelled()
    assert backend.calls == [ALICE]


async def test_the_lookup_outlives_all_its_callers(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.release = asyncio.Event()
    keys = make(ASYNC, Clock())
    caller = asyncio.create_task(keys.identify(ALICE))
    await wait_for_calls(backend, 1)
    caller.cancel()
    backend.release.set()
    assert await keys.identify(ALICE) == ACME  # joins the lookup still running, or reads its cached answer
    assert await keys.identify(ALICE) == ACME
    assert backend.calls == [ALICE]


async def test_a_sync_lookup_runs_off_the_event_loop(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    keys = make(SYNC, Clock())
    assert await keys.identify(ALICE) == ACME
    assert len(backend.threads) == 1 and backend.threads[0] != threading.get_ident()


async def test_an_async_lookup_runs_on_the_event_loop(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    keys = make(ASYNC, Clock())
    assert await keys.identify(ALICE) == ACME
    assert backend.threads == [threading.get_ident()]


async def test_an_async_callable_object_is_awaited(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    keys = make("tests.test_key_lookup:lookup_object", Clock())
    assert (await keys.identify(ALICE), await keys.identify(ALICE)) == (ACME, ACME)
    assert backend.calls == [ALICE]


async def test_a_failing_lookup_fails_closed_and_is_not_cached(
    path: str, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.table[ALICE] = ACME
    backend.error = LookupError(f"database down while reading {ALICE} ({ALICE.removeprefix('sha256:')})")
    keys = make(path, Clock())
    with caplog.at_level(logging.WARNING, logger="unimw.tenants"), pytest.raises(ServiceUnavailable) as failed:
        await keys.identify(ALICE)
    assert (failed.value.status, failed.value.code) == (503, "tenant_lookup_unavailable")
    assert failed.value.__cause__ is backend.error
    assert ALICE not in failed.value.message
    short = ALICE[:12] + "..."
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            "unimw.tenants",
            logging.WARNING,
            f"unimw: tenant key lookup for {short} failed: LookupError: database down while reading {short} ({short})",
        )
    ]
    assert ALICE.removeprefix("sha256:") not in caplog.text
    backend.error = None
    assert await keys.identify(ALICE) == ACME  # the failure was not cached
    assert backend.calls == [ALICE, ALICE]


async def test_a_slow_async_lookup_times_out(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.sleep = 10.0
    keys = make(ASYNC, Clock(), timeout=0.05)
    with pytest.raises(ServiceUnavailable) as failed:
        await keys.identify(ALICE)
    assert (failed.value.status, failed.value.code) == (503, "tenant_lookup_unavailable")
    assert isinstance(failed.value.__cause__, TimeoutError)
    backend.sleep = 0.0
    assert await keys.identify(ALICE) == ACME
    assert backend.calls == [ALICE, ALICE]


async def test_a_blocked_sync_lookup_times_out(backend: Backend) -> None:
    backend.table[ALICE] = ACME
    backend.gate = gate = threading.Event()
    keys = make(SYNC, Clock(), timeout=0.05)
    try:
        with pytest.raises(ServiceUnavailable) as failed:
            await keys.identify(ALICE)
        assert (failed.value.status, failed.value.code) == (503, "tenant_lookup_unavailable")
        assert isinstance(failed.value.__cause__, TimeoutError)
    finally:
        gate.set()
    assert await keys.identify(ALICE) == ACME  # the gate is open now: answered, not a cached failure
    assert backend.calls == [ALICE, ALICE]


@pytest.mark.parametrize("answer", [42, {"tenant": "acme"}, b"acme"], ids=["int", "dict", "bytes"])
async def test_an_answer_that_is_not_an_identity_fails_closed(path: str, backend: Backend, answer: object) -> None:
    backend.table[ALICE] = answer
    keys = make(path, Clock())
    with pytest.raises(ServiceUnavailable) as failed:
        await keys.identify(ALICE)
    assert (failed.value.status, failed.value.code) == (503, "tenant_lookup_unavailable")
    assert isinstance(failed.value.__cause__, TypeError)
    with pytest.raises(ServiceUnavailable):
        await keys.identify(ALICE)
    assert backend.calls == [ALICE, ALICE]


async def test_the_caches_hold_at_most_max_entries_each(backend: Backend) -> None:
    known = [hash_key(f"sk-live-{i}") for i in range(10)]
    unknown = [hash_key(f"sk-forged-{i}") for i in range(10)]
    backend.table.update({digest: f"tenant-{i}" for i, digest in enumerate(known)})
    keys = make(SYNC, Clock(), max_entries=3)
    for k, u in zip(known, unknown, strict=True):
        assert (await keys.identify(k), await keys.identify(u)) == (Identity(f"tenant-{known.index(k)}"), None)
        assert len(keys) <= 6
    assert len(keys) == 6  # three of each kind
    backend.calls.clear()
    for digest in known[-3:] + unknown[-3:]:  # the most recent are held
        await keys.identify(digest)
    assert backend.calls == []
    assert await keys.identify(known[0]) == Identity("tenant-0")  # the least recent went out
    assert await keys.identify(unknown[0]) is None
    assert backend.calls == [known[0], unknown[0]]
    assert len(keys) == 6


async def test_only_a_digest_is_accepted() -> None:
    keys = make(SYNC, Clock())
    for wrong in ("sk-live-alice", ALICE.upper(), ALICE[:-1], ALICE.removeprefix("sha256:"), ALICE + "0"):
        with pytest.raises(ValueError, match="sha256:<64 hex digits>") as refused:
            await keys.identify(wrong)
        assert wrong not in str(refused.value)  # a plaintext key passed by mistake is not echoed
    assert BACKEND.calls == []
