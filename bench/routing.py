"""What each routing strategy adds to a call, as a micro-benchmark: ``python -m bench.routing``.

    python -m bench.routing                      # ~20 s: median of 7 rounds, each timing enough calls for ~0.2 s
    python -m bench.routing --quick              # a smoke run, well under a second
    python -m bench.routing --out /tmp/r.json    # the figures as JSON too

Each figure is the time of what the gateway does for one call of that kind
of route and nothing else: ``resolve`` (the dict lookup), the per-call
placement for routes that have one (``when`` rules, a sticky arm), and the
order the dispatcher asks for. The request is a two-message chat of about
2 KB, the aliases have three targets. ``added`` is each figure minus the
``fallback`` one: what choosing that strategy costs per call, over a plain
alias. The dispatcher's latency sample (two ``perf_counter`` reads and an
EWMA update, only for targets of a ``least_latency`` alias) is timed apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unimw.loader import parse_policy
from unimw.route_rules import Facts
from unimw.routing import Router

POLICY = """\
providers: {p: {kind: mock}}
models:
  a: {provider: p, model: gpt-4.1, price: {input: 2, output: 8}}
  b: {provider: p, model: gpt-4.1-mini}
  c: {provider: p, model: claude-sonnet-4-0}
plans: {free: {}, pro: {}}
aliases:
  fallback: {targets: [a, b, c]}
  weighted: {targets: [{model: a, weight: 6}, {model: b, weight: 3}, c], strategy: weighted}
  sticky: {targets: [{model: a, weight: 6}, {model: b, weight: 3}, c], strategy: weighted, sticky: end_user}
  least_latency: {targets: [a, b, c], strategy: least_latency}
  cheapest: {targets: [a, b, c], strategy: cheapest}
  when_plan:
    targets: [a, b, c]
    when: [{plan: free, targets: [b]}, {tenant: acme, targets: [c]}, {headers: {X-Team: core}, targets: [a]}]
  when_shape:
    targets: [a, b, c]
    when: [{tools: true, targets: [b]}, {structured: true, targets: [c]}, {tokens_over: 100000, targets: [c]}]
"""

REQUEST = {
    "model": "x",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. " * 20},
        {"role": "user", "content": "What is the capital of France? Answer in one sentence. " * 25},
    ],
    "max_tokens": 256,
}


def cases(router: Router) -> dict[str, Callable[[], Any]]:
    """One call's routing work per kind of route."""
    book = router.latency
    assert book is not None
    for name, seconds in (("a", 0.9), ("b", 0.4), ("c", 0.6)):
        book.observe(name, seconds)

    def plain(name: str) -> Callable[[], Any]:
        def run() -> Any:
            return router.order(router.resolve(name), REQUEST)

        return run

    def placed(name: str) -> Callable[[], Any]:
        def run() -> Any:
            route = router.resolve(name)
            if route.per_call:
                route = router.place(route, Facts(REQUEST, tenant="globex", plan="pro", end_user="user-42"))
            return router.order(route, REQUEST)

        return run

    return {
        "fallback": plain("fallback"),
        "weighted": plain("weighted"),
        "sticky": placed("sticky"),
        "least_latency": plain("least_latency"),
        "cheapest": plain("cheapest"),
        "when (tenant, plan, header; none matches)": placed("when_plan"),
        "when (tools, structured, tokens; none matches)": placed("when_shape"),
    }


def latency_sample(router: Router) -> Callable[[], None]:
    """What the dispatcher adds to an attempt on a least_latency target: time it, fold the sample in."""
    book = router.latency
    assert book is not None

    def run() -> None:
        started = time.perf_counter()
        book.observe("b", time.perf_counter() - started + 0.4)

    return run


def measure(run: Callable[[], Any], rounds: int, seconds: float | None) -> float:
    """Median ns per call over ``rounds`` rounds of about ``seconds`` each (None: 200 calls a round)."""
    timer = timeit.Timer(run)
    number = 200
    if seconds is not None:
        number = max(1, int(timer.autorange()[0] * seconds / 0.2))
    return statistics.median(timer.repeat(repeat=rounds, number=number)) / number * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds of 200 calls")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    rounds, seconds = (3, None) if args.quick else (7, 0.2)
    router = Router(parse_policy(POLICY, env={}), random.Random(1), shared_latency=False)
    figures = {name: measure(run, rounds, seconds) for name, run in cases(router).items()}
    figures["least_latency: the sample per attempt"] = measure(latency_sample(router), rounds, seconds)
    base = figures["fallback"]
    print(f"bench.routing on Python {platform.python_version()}, {rounds} rounds; ns per call (median)")
    width = max(map(len, figures))
    for name, ns in figures.items():
        added = "" if name == "fallback" or name.startswith("least_latency:") else f"  (+{(ns - base) / 1000:.2f} µs)"
        print(f"  {name:<{width}}  {ns:9.0f}{added}")
    if args.out is not None:
        meta = {"command": " ".join([sys.executable, "-m", "bench.routing", *(argv or sys.argv[1:])])}
        args.out.write_text(json.dumps({"meta": meta, "ns_per_call": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
