"""Memory of one gateway serving many tenants the app resolves, none declared in the policy: ``python -m bench.tenants``.

    python -m bench.tenants --out bench/figures/2026-11-30-tenants.json   # 100,000 tenants, under 2 minutes
    python -m bench.tenants --tenants 2000 --out /tmp/t.json               # a smoke run, seconds

A ``{callable: "bench.tenants:identity"}`` source names each caller's tenant
(a UUID, as an app's primary key would be) and its plan, one of three; each
plan has a sliding hourly request limit and a monthly USD budget, so each
tenant holds two counters in the memory store. Calls go through
``Gateway.handle`` on the offline mock provider, whose model has a price, so
the USD counters move. Variants: ``plan`` (those two counters), and
``end_user`` (plus a daily request limit per end user, one end user per
tenant: three counters).

Each variant runs in a child process of its own: RSS never shrinks (freed
pages mostly stay with the allocator), so one variant's garbage would hide
the next one's growth. A child warms up with ``--warmup`` tenants (code
paths, caches, allocator arenas), reads RSS, serves ``--tenants`` new
tenants, reads RSS again; the growth over the new tenants is the figure.
RSS is read from ``/proc/self/statm`` (resident pages now, at any point);
``ru_maxrss`` from ``resource`` is only the peak, recorded beside it. The
limiter's counter cache and the tenants' rules cache hold at most 65,536
entries each, so growth per tenant falls once they are full: the
checkpoints show where. A third child repeats ``plan`` under tracemalloc
(started after the warm-up) and reports where the new bytes were allocated.

The clock starts mid-month at noon UTC and moves with real time, so no
window ends during a run and every counter stays live: the store ends with
exactly ``counters per tenant x (tenants + warmup)`` counters.

Where the bytes go, two ways. Each child, once its RSS is read, walks what
the store, the limiter's cache and the rules cache reach (``sys.getsizeof``
of every object, each counted once, to the first of the three that reaches
it): object sizes, without the allocator's overhead. The tracemalloc child
serves ``--trace-tenants`` tenants (caches not yet full) and groups the new
bytes by the file and line that allocated them; a block a free list hands
back keeps its first site (a sliding log's dict key table can show up as
the span's keyword arguments, which first held it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
import types
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from unimw import Gateway, Inbound
from unimw.identity import Identity
from unimw.operations import CHAT
from unimw.stores.memory import MemoryLimitStore

ROOT = Path(__file__).resolve().parent.parent
#: 2026-11-16T12:00:00Z: mid-month, mid-day, so no calendar window ends during a run.
START = 1_794_830_400.0
PLANS = ("free", "pro", "enterprise")
#: Per plan: requests per hour, USD per month.
LIMITS = {"free": (100, 5.0), "pro": (1_000, 50.0), "enterprise": (10_000, 500.0)}
#: Counters each tenant holds, per variant.
COUNTERS = {"plan": 2, "end_user": 3}
CHECKPOINTS = 10
TOP = 12
#: Both per-identity caches (the limiter's counters, the tenants' rules) hold at most this many entries.
CACHE_SIZE = 65_536
#: Objects every tenant shares with the whole program: not walked into when sizing a structure.
SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def policy(variant: str) -> dict[str, Any]:
    """Three plans; ``end_user`` adds a daily request limit per end user to each."""
    end_user = [{"per": "day", "requests": 500, "scope": "end_user"}] if variant == "end_user" else []
    plans = {
        name: {"limits": [{"per": "hour", "requests": requests}, {"per": "month", "usd": usd}, *end_user]}
        for name, (requests, usd) in LIMITS.items()
    }
    return {
        "providers": {"mock": {"kind": "mock"}},
        "models": {"mock-echo": {"provider": "mock", "model": "mock-echo", "price": {"input": 2.5, "output": 10.0}}},
        "plans": plans,
        "tenancy": {"resolve": [{"callable": "bench.tenants:identity"}]},
    }


def tenant_id(n: int) -> str:
    """The n-th tenant's id: a UUID string, 36 characters, as an app's primary key would be."""
    return str(uuid.UUID(int=n))


def identity(scope: Mapping[str, Any]) -> Identity | None:
    """The app's resolver: the tenant from an ``x-org`` header, its plan from its own records (here, n % 3)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-org":
            tenant = value.decode()
            return Identity(tenant, plan=PLANS[uuid.UUID(tenant).int % 3])
    return None


class Run:
    """One gateway on a memory store, and its calls."""

    def __init__(self, variant: str, calls: int) -> None:
        self.variant = variant
        self.calls = calls
        self.store = MemoryLimitStore()
        started = time.monotonic()
        self.gateway = Gateway.from_dict(
            policy(variant), limit_store=self.store, clock=lambda: START + time.monotonic() - started
        )

    async def tenant(self, n: int) -> None:
        """``calls`` calls of tenant n (its end user, in the ``end_user`` variant, is ``user-n``)."""
        scope = {"type": "http", "headers": [(b"x-org", tenant_id(n).encode())]}
        for _ in range(self.calls):
            body: dict[str, Any] = {
                "model": "mock-echo",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 16,
            }
            if self.variant == "end_user":
                body["user"] = f"user-{n}"
            await self.gateway.handle(CHAT, body, Inbound({}, scope))

    def caches(self) -> dict[str, int]:
        """Entries in the limiter's counter cache and the tenants' rules cache (each an LRU of 65,536)."""
        return {
            "limiter_cache": len(self.gateway._limiter._applicable_known),
            "rules_cache": len(self.gateway._tenants._rules),
        }

    async def sample(self, n: int) -> list[list[Any]]:
        """Tenant n's own limits: ``[limit, used, limit value]`` (proof that its USD counter moved)."""
        rules = self.gateway._tenants.rules(Identity(tenant_id(n), plan=PLANS[n % 3]))
        return [list(row) for row in await self.gateway._limiter.report(tenant_id(n), rules)]

    def sizes(self) -> dict[str, int]:
        """Bytes each structure reaches, each object counted once, to the first of them that reaches it."""
        seen: set[int] = set()
        owners: dict[str, list[object]] = {
            "store": [self.store],
            "limiter_cache": [self.gateway._limiter._applicable_known],
            "rules_cache": [self.gateway._tenants._rules],
        }
        return {name: reachable(roots, seen) for name, roots in owners.items()}


def reachable(roots: Iterable[object], seen: set[int]) -> int:
    """``sys.getsizeof`` summed over what ``roots`` reach and ``seen`` does not hold yet (classes, modules and
    functions aside); adds them to ``seen``."""
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, SHARED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


def rss_bytes() -> int:
    """Resident set size now, from ``/proc/self/statm`` (its second field, in pages)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """The peak resident set size so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settled_rss() -> int:
    gc.collect()
    return rss_bytes()


async def child(variant: str, tenants: int, warmup: int, calls: int, trace: bool) -> dict[str, Any]:
    """One variant in this process: warm up, read RSS, serve ``tenants`` new tenants, read RSS again."""
    run = Run(variant, calls)
    first = 10**9  # measured tenants' numbers, well clear of the warm-up's
    for n in range(warmup):
        await run.tenant(n)
    if trace:
        tracemalloc.start()
    before = settled_rss()
    held_before = run.store.sizes()
    checkpoints = []
    step = max(1, tenants // CHECKPOINTS)
    busy = 0.0
    for start in range(0, tenants, step):
        began = time.perf_counter()
        for n in range(first + start, first + min(tenants, start + step)):
            await run.tenant(n)
        took = time.perf_counter() - began
        busy += took
        growth = settled_rss() - before
        checkpoints.append(
            {
                "tenants": min(tenants, start + step),
                "rss_growth_bytes": growth,
                "seconds": round(took, 3),
                **run.caches(),
            }
        )
    after = settled_rss()
    max_rss = max_rss_bytes()
    tracing = traced(tenants) if trace else None
    held = run.store.sizes()
    result: dict[str, Any] = {
        "variant": variant,
        "tenants": tenants,
        "warmup_tenants": warmup,
        "calls_per_tenant": calls,
        "counters_per_tenant": COUNTERS[variant],
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_bytes": after - before,
        "bytes_per_tenant": round((after - before) / tenants, 1),
        "bytes_per_tenant_caches_full": caches_full_slope(checkpoints),
        "max_rss_bytes": max_rss,
        "counters": held["sliding"] + held["fixed"],
        "counters_before": held_before["sliding"] + held_before["fixed"],
        "store": held,
        **run.caches(),
        "calls": tenants * calls,
        "seconds": round(busy, 3),
        "calls_per_second": round(tenants * calls / busy, 1),
        "checkpoints": checkpoints,
        "sample_tenant": {"id": tenant_id(first), "limits": await run.sample(first)},
    }
    if tracing is not None:
        result["tracemalloc"] = tracing
    else:
        result["reachable_bytes"] = run.sizes()
    await run.gateway.aclose()
    return result


def caches_full_slope(checkpoints: list[dict[str, Any]]) -> float | None:
    """RSS growth per tenant once both caches are full (they stop growing): None if they never filled
    before the last checkpoint."""
    full = [c for c in checkpoints if min(c["limiter_cache"], c["rules_cache"]) >= CACHE_SIZE]
    if len(full) < 2:
        return None
    first, last = full[0], full[-1]
    growth: int = last["rss_growth_bytes"] - first["rss_growth_bytes"]
    tenants: int = last["tenants"] - first["tenants"]
    return round(growth / tenants, 1)


def traced(tenants: int) -> dict[str, Any]:
    """Where the bytes allocated since tracing started (and still held) were allocated: by file, by line."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    )
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def rows(key: str) -> list[dict[str, Any]]:
        stats = snapshot.statistics(key)[:TOP]
        return [
            {
                "where": _where(stat.traceback[0].filename, stat.traceback[0].lineno if key == "lineno" else None),
                "bytes": stat.size,
                "bytes_per_tenant": round(stat.size / tenants, 1),
                "blocks": stat.count,
            }
            for stat in stats
        ]

    return {
        "traced_bytes": current,
        "traced_peak_bytes": peak,
        "bytes_per_tenant": round(current / tenants, 1),
        "by_file": rows("filename"),
        "by_line": rows("lineno"),
    }


def _where(filename: str, line: int | None) -> str:
    path = Path(filename)
    for base in (ROOT, Path(sys.prefix), Path(sys.base_prefix)):
        if path.is_relative_to(base):
            path = path.relative_to(base)
            break
    return f"{path}:{line}" if line is not None else str(path)


def run_child(args: argparse.Namespace, variant: str, tenants: int, trace: bool) -> dict[str, Any]:
    """A variant in a fresh interpreter, so no other variant's freed pages are in its RSS."""
    argv = [sys.executable, "-m", "bench.tenants", "--child", variant, "--tenants", str(tenants)]
    argv += ["--warmup", str(args.warmup), "--calls", str(args.calls), *(["--trace"] if trace else [])]
    print(f"bench.tenants: {variant}{' under tracemalloc' if trace else ''}, {tenants} tenants", file=sys.stderr)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench.tenants: the {variant} child failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def meta() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    return {
        "command": " ".join(["python -m bench.tenants", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu}",
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "rss_source": "/proc/self/statm resident pages, after gc.collect(); growth = after - before, "
        "since RSS never shrinks (max_rss_bytes: ru_maxrss, the peak)",
        "tenant_id": "UUID string, 36 characters",
        # Others' work on this machine slows calls/s (never the bytes): the load when the run began.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _per_entry(size: int, entries: int) -> str:
    return f"{size / entries:.0f} per entry" if entries else "no entries: tenants on a plan as is share its rules"


def table(report: dict[str, Any]) -> str:
    """The report for people: one row per variant, where RSS grew, where the bytes are."""
    info = report["meta"]
    lines = [
        f"Python {info['python']} on {info['machine']}; load {info['loadavg_1m_at_start']} at start, "
        f"{info['loadavg_1m_at_end']} at end",
        f"{'variant':<9} {'tenants':>8} {'counters':>9} {'RSS before':>11} {'RSS after':>10} {'growth':>9} "
        f"{'B/tenant':>9} {'caches full':>11} {'calls/s':>8}",
    ]
    for name, r in report["variants"].items():
        full = r["bytes_per_tenant_caches_full"]
        lines.append(
            f"{name:<9} {r['tenants']:>8} {r['counters']:>9} {r['rss_before_bytes'] / 1e6:>8.1f} MB "
            f"{r['rss_after_bytes'] / 1e6:>7.1f} MB {r['rss_growth_bytes'] / 1e6:>6.1f} MB {r['bytes_per_tenant']:>9.0f} "
            f"{'-' if full is None else f'{full:.0f}':>11} {r['calls_per_second']:>8.0f}"
        )
    lines.append(
        "B/tenant: RSS growth per tenant served; caches full: the same, once both 65,536-entry caches are full"
    )
    for name, r in report["variants"].items():
        curve = ", ".join(f"{c['tenants']}: {c['rss_growth_bytes'] / 1e6:.1f}" for c in r["checkpoints"])
        lines.append(f"{name}: RSS growth in MB by tenants served: {curve}")
        reach = r["reachable_bytes"]
        lines.append(
            f"{name}: object bytes reached from the store {reach['store'] / 1e6:.1f} MB "
            f"({reach['store'] / (r['tenants'] + r['warmup_tenants']):.0f} per tenant held), "
            f"the limiter's cache {reach['limiter_cache'] / 1e6:.1f} MB "
            f"({_per_entry(reach['limiter_cache'], r['limiter_cache'])}), "
            f"the rules cache {reach['rules_cache'] / 1e6:.1f} MB ({_per_entry(reach['rules_cache'], r['rules_cache'])})"
        )
    traced_run = report.get("traced")
    if traced_run is not None:
        t = traced_run["tracemalloc"]
        lines.append(
            f"tracemalloc, {traced_run['variant']}, {traced_run['tenants']} tenants (caches not full): "
            f"{t['bytes_per_tenant']:.0f} B/tenant held; by file, then by line:"
        )
        for row in (*t["by_file"], *t["by_line"]):
            lines.append(f"  {row['bytes_per_tenant']:>7.1f} B/tenant {row['blocks']:>9} blocks  {row['where']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tenants", description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100_000, help="new tenants served after the warm-up")
    parser.add_argument("--warmup", type=int, default=500, help="tenants served before RSS is first read")
    parser.add_argument("--calls", type=int, default=1, help="calls per tenant")
    parser.add_argument("--variants", default="plan,end_user", help=f"comma-separated subset of: {','.join(COUNTERS)}")
    parser.add_argument(
        "--trace-tenants", type=int, default=10_000, help="tenants of the tracemalloc run (0: none); it is slow"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--child", choices=tuple(COUNTERS), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tenants < 1 or args.calls < 1 or args.warmup < 0:
        parser.error("--tenants and --calls must be at least 1, --warmup at least 0")
    if args.child is not None:
        print(json.dumps(asyncio.run(child(args.child, args.tenants, args.warmup, args.calls, args.trace))))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(COUNTERS):
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    report: dict[str, Any] = {"meta": meta()}
    report["variants"] = {v: run_child(args, v, args.tenants, trace=False) for v in variants}
    if args.trace_tenants > 0:
        report["traced"] = run_child(args, "plan", min(args.trace_tenants, args.tenants), trace=True)
    report["meta"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
