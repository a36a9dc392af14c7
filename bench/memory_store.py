"""The memory limit store's footprint and per-call cost, with and without sweeping: ``python -m bench.memory_store``.

Memory: ``--users`` distinct end users each make one call (a minute log, a
day counter and an alert key each, as an end-user-scoped limit makes), then
the clock passes every window and one more call comes; tracemalloc counts
the bytes the store holds at both points.

Cost: reserve + settle per call, best of ``--repeat`` runs of ``--calls``
calls (the two modes alternate, so drift in the machine's load hits both), on
two workloads: one caller with the clock moving 1 ms a call (its own log
expires as it goes: sweeping only looks), and a new end user per call with
the clock moving 10 ms a call (a minute's worth of users stays live, the rest
is swept or piles up).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
import tracemalloc
from collections.abc import Callable

from unimw.stores.base import Counter
from unimw.stores.memory import MemoryLimitStore

START = 1_790_000_000.0
DAY_END = START + 86400


def user_counters(user: int) -> list[Counter]:
    """The counters an end-user-scoped ``{per: minute, requests}`` and ``{per: day, tokens}`` limit make."""
    subject = f"unimw:lim:t:acme:u:user-{user}"
    return [
        Counter(f"{subject}:minute:requests", 10**9, 60.0, True),
        Counter(f"{subject}:day:tokens:2026-09-21", 10**12, 86400.0, False, ends=DAY_END),
    ]


async def one_call(store: MemoryLimitStore, call_id: str, counters: list[Counter], now: float) -> None:
    amounts = [1, 500][: len(counters)]
    await store.reserve(call_id, counters, amounts, now)
    await store.settle(call_id, counters, amounts, [1, 100][: len(counters)], now)


async def footprint(users: int, sweep_interval: float) -> tuple[dict[str, int], int, dict[str, int], int]:
    """(sizes, bytes) after ``users`` calls, then again after the windows pass and one more call."""
    tracemalloc.start()
    store = MemoryLimitStore(sweep_interval=sweep_interval)
    for user in range(users):
        await one_call(store, f"c{user}", user_counters(user), START)
        await store.once(f"{user_counters(user)[0].key}:alert:0.8", 60.0, START)
    loaded, loaded_bytes = store.sizes(), tracemalloc.get_traced_memory()[0]
    later = START + 2 * 86400
    await one_call(store, "last", [Counter("unimw:lim:t:acme:u:late:minute:requests", 10**9, 60.0, True)], later)
    swept, swept_bytes = store.sizes(), tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return loaded, loaded_bytes, swept, swept_bytes


async def per_call(calls: int, sweep_interval: float, workload: Callable[[int], tuple[list[Counter], float]]) -> float:
    store = MemoryLimitStore(sweep_interval=sweep_interval)
    plan = [workload(i) for i in range(calls)]
    start = time.perf_counter()
    for i, (counters, now) in enumerate(plan):
        await one_call(store, f"c{i}", counters, now)
    return (time.perf_counter() - start) / calls * 1e6


def same_caller(i: int) -> tuple[list[Counter], float]:
    return user_counters(0), START + i * 0.001


def new_user_every_10ms(i: int) -> tuple[list[Counter], float]:
    return user_counters(i)[:1], START + i * 0.01


async def run(users: int, calls: int, repeat: int) -> None:
    print(f"memory: {users} end users, one call each; then every window passes and one more call comes")
    for label, interval in (("sweeping", 1.0), ("no sweeping", math.inf)):
        loaded, loaded_bytes, swept, swept_bytes = await footprint(users, interval)
        print(f"  {label:12} after the users: {loaded_bytes / 1e6:6.2f} MB {loaded}")
        print(f"  {label:12} windows passed: {swept_bytes / 1e6:6.2f} MB {swept}")
    print(f"cost: reserve + settle, µs per call, best of {repeat} runs of {calls} calls")
    modes = (("sweeping", 1.0), ("no sweeping", math.inf))
    for name, workload in (("one caller", same_caller), ("new user every 10 ms", new_user_every_10ms)):
        runs: dict[str, list[float]] = {label: [] for label, _ in modes}
        for _ in range(repeat):
            for label, interval in modes:
                runs[label].append(await per_call(calls, interval, workload))
        for label, _ in modes:
            print(f"  {name:22} {label:12} {min(runs[label]):6.2f} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_store", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(run(args.users, args.calls, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
