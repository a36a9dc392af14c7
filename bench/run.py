"""Every performance figure, side by side with calling the upstream directly, in one run.

    python -m bench.run                # full run, a few minutes on 2 cores
    python -m bench.run --quick        # tiny counts: the CI smoke run
    python -m bench.run --only chat,stream --out /tmp/r.json

The fake upstream (and every server under test) runs pinned to one core and
this process (the client, and the in-process gateway) to the other. Each
benchmark is one small function below that returns named figures; a figure
whose feature has not landed yet is reported as skipped, never guessed.
The table goes to stdout, progress to stderr, and the results as JSON to
``bench/results/latest.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import gc
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import yaml

from bench import clients
from bench.clients import CHAT, MODEL, RawClient, policy
from bench.measure import Call, Figure, Plan, Results, Skipped, Stats, Target, contest, table
from bench.procs import ROOT, Cores, Processes, cpu_seconds, free_port, python, read_line, rss_mb, wait_http
from bench.upstream import STREAM_CHUNKS
from unimw import Gateway

CHAT_PATH = "/v1/chat/completions"
US, MS = "µs", "ms"


@dataclass(frozen=True)
class Options:
    quick: bool
    out: Path
    only: frozenset[str]
    wrk: bool

    @property
    def plan(self) -> Plan:
        """Rounds of calls for in-process and HTTP latency figures."""
        if self.quick:
            return Plan(rounds=2, count=60, warmup=20, seconds=2.0)
        return Plan(rounds=5, count=2000, warmup=300, seconds=15.0)

    @property
    def load_seconds(self) -> float:
        return 2.0 if self.quick else 10.0

    @property
    def import_runs(self) -> int:
        return 3 if self.quick else 10

    @property
    def memory_calls(self) -> int:
        return 2000 if self.quick else 100_000

    @property
    def bench_timeout(self) -> float:
        """No single benchmark may run longer than this."""
        return 90.0 if self.quick else 900.0


@dataclass
class Server:
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Env:
    """What the benchmarks share: options, cores, the fake upstream, servers started on demand."""

    opts: Options
    cores: Cores
    procs: Processes
    tmp: Path
    upstream: Server
    results: Results
    http: aiohttp.ClientSession
    servers: dict[str, Server] = field(default_factory=dict)

    @property
    def upstream_v1(self) -> str:
        return self.upstream.url + "/v1"

    def series(self, prefix: str, stats: dict[str, Stats]) -> dict[str, Stats]:
        self.results.series.update({f"{prefix}: {name}": s for name, s in stats.items()})
        return stats

    def server(self, name: str, kind: str = "serve", policy_data: dict[str, Any] | None = None) -> Server:
        """A gateway server (``unimw serve`` or the FastAPI app) on the server core, started once."""
        if name in self.servers:
            return self.servers[name]
        config = self.tmp / f"{name}.yaml"
        config.write_text(yaml.safe_dump(policy_data or policy(self.upstream_v1)))
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "UNIMW_BENCH_CONFIG": str(config)}
        host = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        if kind == "serve":
            argv = python("-m", "unimw.cli", "serve", "--config", str(config), *host)
        else:
            argv = python("-m", "uvicorn", "bench.fastapi_app:app", *host, "--no-access-log")
        proc = self.procs.start(name, [*self.cores.prefix(self.cores.server), *argv], env)
        try:
            wait_http(proc, port, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{self.procs.log_tail(name)}") from None
        self.servers[name] = Server(port, proc.pid)
        return self.servers[name]

    async def upstream_chats(self) -> int:
        async with self.http.get(self.upstream.url + "/stats") as response:
            count: int = (await response.json())["chats"]
            return count


Item = Figure | Skipped
Benchmark = Callable[[Env], Awaitable[list[Item]]]


def _at_most(limit: float, text: str) -> Target:
    return Target("<=", limit, text)


def _added_at_most(limit: float, text: str) -> Target:
    return Target("<=", limit, text, on_added=True)


# --- 1 and 2: direct baselines and the in-process gateway ------------------------------------------


async def bench_chat(env: Env) -> list[Item]:
    """Non-streaming: raw socket, aiohttp, httpx and in-process Gateway.chat_completions."""
    url = env.upstream.url + CHAT_PATH
    raw = RawClient("127.0.0.1", env.upstream.port)
    try:
        async with (
            aiohttp.ClientSession() as session,
            httpx.AsyncClient(trust_env=False) as hx,
            Gateway.from_dict(policy(env.upstream_v1)) as gateway,
        ):
            stats = await contest(
                {
                    "direct raw asyncio": clients.raw_chat(raw, CHAT_PATH),
                    "direct aiohttp": clients.aiohttp_chat(session, url),
                    "direct httpx": clients.httpx_chat(hx, url),
                    "in-process gateway": clients.gateway_chat(gateway),
                },
                env.opts.plan,
            )
    finally:
        await raw.aclose()
    env.series("chat", stats)
    raw_s, aio, hxs, gw = (s.median for s in stats.values())
    return [
        Figure("direct.raw.p50_us", "direct: raw asyncio socket client", raw_s, US),
        Figure("direct.aiohttp.p50_us", "direct: reused aiohttp.ClientSession", aio, US),
        Figure("direct.httpx.p50_us", "direct: plain httpx.AsyncClient", hxs, US),
        Figure(
            "inproc.chat.p50_us",
            "in-process chat_completions vs aiohttp",
            gw,
            US,
            aio,
            "aiohttp",
            _added_at_most(75, "≤ +75 µs"),
        ),
        Figure(
            "inproc.chat_vs_httpx.p50_us",
            "in-process chat_completions vs httpx",
            gw,
            US,
            hxs,
            "httpx",
            _added_at_most(0, "≤ +0 (not slower)"),
        ),
    ]


# --- 3: streaming in process --------------------------------------------------------------------


async def bench_stream(env: Env) -> list[Item]:
    """A 50-chunk stream: read directly (raw, aiohttp by lines and by chunks, httpx) and through the gateway."""
    url = env.upstream.url + CHAT_PATH
    raw = RawClient("127.0.0.1", env.upstream.port)
    try:
        async with (
            aiohttp.ClientSession() as session,
            httpx.AsyncClient(trust_env=False) as hx,
            Gateway.from_dict(policy(env.upstream_v1)) as gateway,
        ):
            calls = {
                "direct raw asyncio": clients.raw_stream(raw, CHAT_PATH),
                "direct aiohttp, lines": clients.aiohttp_stream(session, url),
                "direct aiohttp, chunks": clients.aiohttp_stream_chunks(session, url),
                "direct httpx, lines": clients.httpx_stream(hx, url),
                "in-process gateway": clients.gateway_stream(gateway),
            }
            for call in calls.values():
                await clients.check_stream(call)
            stats = await contest(calls, env.opts.plan.scaled(0.4))
    finally:
        await raw.aclose()
    env.series("stream", stats)
    raw_s, lines, chunks, hxs, gw = (s.median for s in stats.values())
    per_chunk = _added_at_most(10, "≤ +10 µs/chunk")
    n = STREAM_CHUNKS
    return [
        Figure("stream.raw.p50_us", "direct stream (50 chunks): raw asyncio", raw_s, US),
        Figure("stream.aiohttp.p50_us", "direct stream (50 chunks): aiohttp, lines", lines, US),
        Figure("stream.aiohttp_chunks.p50_us", "direct stream (50 chunks): aiohttp, chunks", chunks, US),
        Figure("stream.httpx.p50_us", "direct stream (50 chunks): httpx, lines", hxs, US),
        Figure(
            "inproc.stream.p50_us", "in-process stream (50 chunks) vs aiohttp lines", gw, US, lines, "aiohttp lines"
        ),
        Figure(
            "inproc.stream.per_chunk_us",
            "in-process stream, per chunk, vs aiohttp lines",
            gw / n,
            US,
            lines / n,
            "aiohttp lines",
            per_chunk,
        ),
        # The stricter baseline: aiohttp doing the least it can to read the same stream.
        Figure(
            "inproc.stream_vs_chunks.per_chunk_us",
            "in-process stream, per chunk, vs aiohttp chunks",
            gw / n,
            US,
            chunks / n,
            "aiohttp chunks",
            per_chunk,
        ),
    ]


# --- 4: over HTTP: unimw serve and a FastAPI app with the middleware ------------------------------


async def bench_http(env: Env) -> list[Item]:
    """Sequential calls and stream time-to-first-byte over loopback: direct vs unimw serve vs FastAPI."""
    targets = {
        "direct": env.upstream,
        "unimw serve": env.server("serve"),
        "FastAPI + UnimwMiddleware": env.server("fastapi", kind="fastapi"),
    }
    plan = env.opts.plan.scaled(0.5)
    calls = {name: clients.aiohttp_chat(env.http, s.url + CHAT_PATH) for name, s in targets.items()}
    latency = env.series("http", await contest(calls, plan))
    probes = {name: clients.aiohttp_ttfb(env.http, s.url + CHAT_PATH) for name, s in targets.items()}
    ttfb = env.series("ttfb", await contest(probes, plan, probe=True))
    direct, serve, fastapi = (s.median for s in latency.values())
    t_direct, t_serve, t_fastapi = (s.median for s in ttfb.values())
    half_ms = _added_at_most(500, "≤ +500 µs")
    return [
        Figure("http.direct.p50_us", "HTTP: upstream direct (aiohttp client)", direct, US),
        Figure("http.serve.p50_us", "HTTP: through unimw serve", serve, US, direct, "direct", half_ms),
        Figure("http.fastapi.p50_us", "HTTP: through FastAPI + middleware", fastapi, US, direct, "direct", half_ms),
        Figure("ttfb.direct.p50_us", "stream TTFB: upstream direct", t_direct, US),
        Figure("ttfb.serve.p50_us", "stream TTFB: through unimw serve", t_serve, US, t_direct, "direct", half_ms),
        Figure("ttfb.fastapi.p50_us", "stream TTFB: through FastAPI + middleware", t_fastapi, US, t_direct, "direct"),
    ]


# --- 5: throughput of unimw serve ---------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    tool: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def apply_load(env: Env, url: str, seconds: float) -> Load:
    """32 keep-alive connections for ``seconds``: wrk with a Lua body script, else an aiohttp client."""
    if not env.opts.wrk:
        done, elapsed, errors = await clients.aiohttp_load(url, 32, seconds, max_requests=int(seconds * 50_000))
        if errors:
            raise RuntimeError(f"{errors} of {done} requests to {url} failed under load")
        return Load(done, elapsed, "asyncio+aiohttp client")
    script = env.tmp / "chat.lua"
    body = orjson.dumps(CHAT).decode()
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{body}]]\n'
        f'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {clients.API_KEY}"\n'
    )
    argv = [
        *env.cores.prefix(env.cores.client),
        *("wrk", "-t1", "-c32", f"-d{round(seconds)}s", "--timeout", "5s", "-s", str(script), url),
    ]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = stdout.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with status {proc.returncode}:\n{out}")
    match = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    if match is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {url} reported errors:\n{out}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match[3]]
    return Load(int(match[1]), float(match[2]) * scale, "wrk -t1 -c32")


async def bench_throughput(env: Env) -> list[Item]:
    """Requests/s and CPU per request of unimw serve on one core, 32 connections."""
    seconds = env.opts.load_seconds
    upstream = await apply_load(env, env.upstream.url + CHAT_PATH, seconds)
    server = env.server("serve")
    url = server.url + CHAT_PATH
    # Under load the upstream moves next to the load client, so the server has its core to itself.
    pinned = env.cores.client is not None
    if pinned:
        os.sched_setaffinity(env.upstream.pid, {env.cores.client})  # type: ignore[arg-type]
    try:
        await apply_load(env, url, 1.0 if env.opts.quick else 3.0)  # warm-up: connections, caches, lazy imports
        cpu_before = cpu_seconds(server.pid)
        load = await apply_load(env, url, seconds)
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        if pinned:
            os.sched_setaffinity(env.upstream.pid, {env.cores.server})  # type: ignore[arg-type]
    note = f"{load.tool}, {load.requests} requests in {load.seconds:.1f}s"
    return [
        Figure("throughput.upstream.rps", "throughput: fake upstream alone", upstream.rps, "req/s", note=upstream.tool),
        Figure(
            "throughput.serve.rps",
            "throughput: unimw serve, 1 core, 32 conns",
            load.rps,
            "req/s",
            target=Target(">=", 2000, "≥ 2,000 req/s"),
            note=note,
        ),
        Figure(
            "throughput.serve.cpu_ms_per_req",
            "CPU per request: unimw serve",
            cpu * 1000 / load.requests,
            MS,
            target=_at_most(0.5, "≤ 0.5 ms"),
            note=note,
        ),
    ]


# --- 6: import time, RSS, memory growth ---------------------------------------------------------

_RSS_SNIPPET = "import os,sys;{}print(int(open('/proc/self/statm').read().split()[1])*os.sysconf('SC_PAGE_SIZE'), 'openai' in sys.modules)"


def _run_python(code: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    return (time.perf_counter() - start) * 1000, out.stdout


async def bench_import(env: Env) -> list[Item]:
    """``python -c "import unimw"`` wall time against a bare interpreter, and RSS after import."""
    bare: list[float] = []
    unimw: list[float] = []
    for _ in range(env.opts.import_runs):
        bare.append(_run_python("pass")[0])
        unimw.append(_run_python("import unimw")[0])
    _, bare_out = _run_python(_RSS_SNIPPET.format(""))
    _, unimw_out = _run_python(_RSS_SNIPPET.format("import unimw;"))
    bare_rss, unimw_rss = int(bare_out.split()[0]) / 1e6, int(unimw_out.split()[0]) / 1e6
    openai_loaded = float(unimw_out.split()[1] == "True")
    median_bare, median_unimw = sorted(bare)[len(bare) // 2], sorted(unimw)[len(unimw) // 2]
    return [
        Figure(
            "import.wall_ms",
            'python -c "import unimw", median',
            median_unimw,
            MS,
            median_bare,
            "bare python",
            _at_most(250, "≤ 250 ms"),
        ),
        Figure(
            "import.wall_best_ms",
            'python -c "import unimw", best',
            min(unimw),
            MS,
            min(bare),
            "bare python",
            _at_most(250, "≤ 250 ms"),
        ),
        Figure(
            "import.rss_mb", "RSS after import unimw", unimw_rss, "MB", bare_rss, "bare python", _at_most(60, "≤ 60 MB")
        ),
        Figure(
            "import.openai_sdk_loaded",
            "import unimw pulls in the openai SDK",
            openai_loaded,
            "",
            target=_at_most(0, "0 (no)"),
        ),
    ]


async def bench_memory(env: Env) -> list[Item]:
    """RSS growth of this process over N in-process calls (one in ten streamed), after a warm-up."""
    calls = env.opts.memory_calls
    deadline = time.monotonic() + (30 if env.opts.quick else 300)
    async with Gateway.from_dict(policy(env.upstream_v1)) as gateway:
        chat, stream = clients.gateway_chat(gateway), clients.gateway_stream(gateway)
        for i in range(min(1000, calls // 2)):
            await (stream() if i % 10 == 0 else chat())
        gc.collect()
        before = rss_mb()
        done = 0
        while done < calls and time.monotonic() < deadline:
            await (stream() if done % 10 == 0 else chat())
            done += 1
        gc.collect()
        growth = rss_mb() - before
    return [
        Figure(
            "memory.rss_growth_mb",
            f"RSS growth over {done:,} in-process calls",
            growth,
            "MB",
            target=_at_most(2, "flat (≤ 2 MB)"),
            note=f"{done} calls, RSS before {before:.1f} MB",
        )
    ]


# --- 7: cache, limits, tracing ------------------------------------------------------------------
# A policy the bench writes that is refused is reported as skipped with the reason; never a number.


def _skip(keys: list[tuple[str, str]], reason: str) -> list[Item]:
    return [Skipped(key, label, reason) for key, label in keys]


async def bench_cache(env: Env) -> list[Item]:
    """Cache hit latency, in process and over HTTP, against the same call without a cache."""
    keys = [("cache.inproc.p50_us", "cache hit, in process"), ("cache.http.p50_us", "cache hit, over HTTP (serve)")]
    data = policy(env.upstream_v1, cache={"enabled": True, "store": "memory://", "ttl": "1h"})
    try:
        cached = Gateway.from_dict(data)
    except Exception as exc:
        return _skip(keys, f"the cache policy the bench writes was refused: {exc}")
    async with cached, Gateway.from_dict(policy(env.upstream_v1)) as plain:
        hit = clients.gateway_chat(cached)
        await hit()  # the miss that fills the cache
        before = await env.upstream_chats()
        await hit()
        if await env.upstream_chats() != before:
            return _skip(keys, "a repeated call reached the upstream: no cache hit to time")
        calls = {"no cache (upstream call)": clients.gateway_chat(plain), "cache hit": hit}
        inproc = env.series("cache in process", await contest(calls, env.opts.plan))
    miss, hit_us = (s.median for s in inproc.values())
    items: list[Item] = [Figure(*keys[0], hit_us, US, miss, "no cache", _at_most(30, "≤ 30 µs"))]
    server = env.server("serve-cache", policy_data=data)
    http_hit = clients.aiohttp_chat(env.http, server.url + CHAT_PATH)
    await http_hit()
    before = await env.upstream_chats()
    await http_hit()
    if await env.upstream_chats() != before:
        return [*items, Skipped(*keys[1], "a repeated call through unimw serve reached the upstream: no hit to time")]
    http_calls = {
        "no cache (upstream call)": clients.aiohttp_chat(env.http, env.server("serve").url + CHAT_PATH),
        "cache hit": http_hit,
    }
    over_http = env.series("cache over HTTP", await contest(http_calls, env.opts.plan.scaled(0.5)))
    http_miss, http_hit_us = (s.median for s in over_http.values())
    return [*items, Figure(*keys[1], http_hit_us, US, http_miss, "no cache", _at_most(300, "≤ 0.3 ms"))]


def _redis_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def start_redis(env: Env) -> int | None:
    """A private redis-server on the server core (so no other client shares it), else the one on 6379."""
    if shutil.which("redis-server") is None:
        return 6379 if _redis_answers(6379) else None
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    env.procs.start("redis", [*env.cores.prefix(env.cores.server), *argv, "--logfile", str(env.tmp / "redis.log")])
    deadline = time.monotonic() + 10
    while not _redis_answers(port):
        if time.monotonic() > deadline:
            raise TimeoutError("redis-server did not answer within 10s")
        time.sleep(0.02)
    return port


async def _round_trips(call: Call, calls: int) -> float:
    """Redis round trips per call: each send of a command or pipeline by redis-py is one."""
    from redis.asyncio.connection import AbstractConnection

    sent = 0
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        for _ in range(calls):
            await call()
    finally:
        AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
    return sent / calls


async def bench_limits(env: Env) -> list[Item]:
    """Added cost of the rate-limit + budget step per call: memory store, and Redis."""
    memory = ("limits.memory.p50_us", "budget + rate limit, memory store")
    redis = [
        ("limits.redis.p50_us", "budget + rate limit, Redis store"),
        ("limits.redis.round_trips", "Redis round trips per call"),
    ]
    # Limits no call here can reach: the figure is the cost of checking them, never a refusal.
    limits = [{"per": "minute", "requests": 10**9, "tokens": 10**12}, {"per": "month", "usd": 10**9}]
    tenants = {"limited": {"limits": limits}, "unlimited": {}}
    items: list[Item] = []
    stores: list[tuple[tuple[str, str], str]] = [(memory, "memory://")]
    redis_port = start_redis(env) if importlib.util.find_spec("redis") else None
    if redis_port is None:
        items += _skip(redis, "skipped: no redis-server to start and none answering at 127.0.0.1:6379")
    else:
        stores.append((redis[0], f"redis://127.0.0.1:{redis_port}/0"))
    for (key, label), store in stores:
        data = policy(env.upstream_v1, tenants=tenants, tenancy={"store": store})
        try:
            gateway = Gateway.from_dict(data)
        except Exception as exc:
            items.append(Skipped(key, label, f"the tenants policy the bench writes was refused: {exc}"))
            continue
        async with gateway:
            plain = clients.gateway_chat(gateway, tenant="unlimited")
            limited = clients.gateway_chat(gateway, tenant="limited")
            stats = await contest({"no limits": plain, "limits": limited}, env.opts.plan)
            trips = await _round_trips(limited, 50) if store.startswith("redis") else None
        env.series(f"limits ({store.split(':')[0]})", stats)
        base, measured = (s.median for s in stats.values())
        target = _added_at_most(20, "≤ +20 µs") if store == "memory://" else None
        items.append(Figure(key, label, measured, US, base, "tenant without limits", target))
        if trips is not None:
            items.append(Figure(redis[1][0], redis[1][1], trips, "", target=_at_most(2, "≤ 2")))
    # The same step with the offline mock provider: no socket, so no network jitter in the difference.
    offline = {"providers": {"mock": {"kind": "mock"}}, "models": {MODEL: {"provider": "mock", "model": MODEL}}}
    async with Gateway.from_dict({**offline, "tenants": tenants}) as gateway:
        plain = clients.gateway_chat(gateway, tenant="unlimited")
        limited = clients.gateway_chat(gateway, tenant="limited")
        stats = await contest({"no limits": plain, "limits": limited}, env.opts.plan)
    env.series("limits (memory, mock provider)", stats)
    base, measured = (s.median for s in stats.values())
    label = "budget + rate limit, memory store, mock provider"
    target = _added_at_most(20, "≤ +20 µs")
    items.append(Figure("limits.memory_offline.p50_us", label, measured, US, base, "tenant without limits", target))
    return items


async def bench_tracing(env: Env) -> list[Item]:
    """Added cost per call with an SDK TracerProvider and a no-op exporter."""
    keys = [("tracing.sdk.p50_us", "tracing on (SDK provider, no-op exporter)")]
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class NoopExporter(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NoopExporter()))
    data = policy(env.upstream_v1)
    traced = Gateway.from_dict(data, tracer_provider=provider)  # type: ignore[call-arg,unused-ignore]
    async with traced, Gateway.from_dict(data) as plain:
        stats = await contest(
            {"tracing off": clients.gateway_chat(plain), "tracing on": clients.gateway_chat(traced)}, env.opts.plan
        )
    provider.shutdown()
    env.series("tracing", stats)
    base, measured = (s.median for s in stats.values())
    return [Figure(*keys[0], measured, US, base, "no provider", _added_at_most(30, "≤ +30 µs"))]


# --- 8: optional comparison targets -------------------------------------------------------------


async def bench_litellm(env: Env) -> list[Item]:
    """LiteLLM's SDK against the same upstream, when it is importable (never installed by the bench)."""
    keys = [("litellm.sdk.p50_us", "LiteLLM SDK acompletion vs aiohttp"), ("litellm.proxy.p50_us", "LiteLLM proxy")]
    if importlib.util.find_spec("litellm") is None:
        return _skip(keys, "skipped: litellm is not installed (optional comparison; `pip install litellm` to add it)")
    litellm = importlib.import_module("litellm")

    async def sdk() -> object:
        return await litellm.acompletion(
            model=f"openai/{MODEL}", messages=CHAT["messages"], api_base=env.upstream_v1, api_key=clients.API_KEY
        )

    direct = clients.aiohttp_chat(env.http, env.upstream.url + CHAT_PATH)
    stats = env.series(
        "litellm", await contest({"direct aiohttp": direct, "LiteLLM SDK": sdk}, env.opts.plan.scaled(0.2))
    )
    base, measured = (s.median for s in stats.values())
    return [
        Figure(keys[0][0], keys[0][1], measured, US, base, "aiohttp"),
        Skipped(*keys[1], "skipped: the LiteLLM proxy is not started by the bench yet"),
    ]


BENCHMARKS: dict[str, Benchmark] = {
    "chat": bench_chat,
    "stream": bench_stream,
    "http": bench_http,
    "throughput": bench_throughput,
    "import": bench_import,
    "memory": bench_memory,
    "cache": bench_cache,
    "limits": bench_limits,
    "litellm": bench_litellm,
    "tracing": bench_tracing,
}


# --- the command --------------------------------------------------------------------------------


def start_upstream(procs: Processes, cores: Cores, lifetime: float) -> Server:
    argv = python("-m", "bench.upstream", "--port", "0", "--lifetime", f"{lifetime:g}")
    proc = procs.start("upstream", [*cores.prefix(cores.server), *argv])
    port = int(read_line(proc, timeout=20))
    wait_http(proc, port, timeout=10)
    return Server(port, proc.pid)


def meta(opts: Options, cores: Cores) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    versions = {}
    for name in ("aiohttp", "httpx", "uvicorn", "starlette", "fastapi", "orjson", "uvloop", "httptools"):
        with contextlib.suppress(Exception):
            versions[name] = importlib.metadata.version(name)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu}",
        "cores": {"client": cores.client, "server": cores.server},
        "load_tool": "wrk" if opts.wrk else "asyncio+aiohttp",
        # What uvicorn picks for the servers under test ("auto"): it changes their CPU per request.
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "quick": opts.quick,
        "plan": dataclasses.asdict(opts.plan),
        "versions": versions,
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


async def run(opts: Options, cores: Cores) -> int:
    results = Results()
    failed: list[str] = []
    lifetime = 300 if opts.quick else 3600
    with tempfile.TemporaryDirectory(prefix="unimw-bench-") as tmp, Processes(Path(tmp)) as procs:
        upstream = start_upstream(procs, cores, lifetime)
        async with aiohttp.ClientSession() as session:
            env = Env(opts, cores, procs, Path(tmp), upstream, results, session)
            for name, benchmark in BENCHMARKS.items():
                if opts.only and name not in opts.only:
                    continue
                print(f"bench: {name}: {(benchmark.__doc__ or '').strip()}", file=sys.stderr, flush=True)
                started = time.monotonic()
                try:
                    results.add(await asyncio.wait_for(benchmark(env), opts.bench_timeout))
                except Exception as exc:
                    traceback.print_exc()
                    failed.append(name)
                    results.add([Skipped(name, f"benchmark {name}", f"FAILED: {type(exc).__name__}: {exc}")])
                print(f"bench: {name}: {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    print(table(results))
    report = results.to_json({**meta(opts, cores), "failed": failed})
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nresults: {opts.out}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (CI smoke run, well under a minute)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "latest.json", help="JSON results file"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(BENCHMARKS)}")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--load", choices=("auto", "wrk", "asyncio"), default="auto", help="load client (auto: wrk if installed)"
    )
    args = parser.parse_args(argv)
    only = frozenset(filter(None, args.only.split(",")))
    if unknown := only - set(BENCHMARKS):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    cores = Cores.detect(pin=not args.no_pin)
    cores.pin_self()
    if args.load == "wrk" and shutil.which("wrk") is None:
        parser.error("--load wrk: wrk is not installed (apt-get install wrk)")
    wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    return asyncio.run(run(Options(args.quick, args.out, only, wrk), cores))


if __name__ == "__main__":
    raise SystemExit(main())
