"""Every performance figure, side by side with calling the upstream directly, in one run.

    python -m bench.run                # full run, a few minutes on 2 cores
    python -m bench.run --quick        # tiny counts: the CI smoke run
    python -m bench.run --only chat,stream --out /tmp/r.json

The fake upstream (and every server under test) runs pinned to one core and
this process (the client, and the in-process gateway) to the other. Each
benchmark is one small function below that returns named figures; a figure
whose feature has not landed yet is reported as skipped, never guessed.

The machine is shared and its speed drifts, so every benchmark measures its
own direct call in the same interleaved rounds as what it compares with it,
and each figure is also reported as a ratio to that call (see
:class:`bench.measure.Figure`): what a latency adds, over the direct p50;
throughput and CPU per request, over the fake upstream's own under the same
load; ``import unimw``, over ``import httpx`` in the same alternating runs.
The run states the machine (CPU model, cores, Python, load average at start
and end), the commit and the exact command above the table and in the JSON.
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
import shlex
import shutil
import socket
import statistics
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
        """Seconds of load on each side (split into alternating rounds in a full run)."""
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
    return Target("<=", limit, text, on="added")


def _over(reference: float, label: str) -> dict[str, Any]:
    """A figure with no baseline of its own, as a ratio to ``reference`` (the figure divided by it)."""
    return {"reference": reference, "reference_label": label, "ratio_on": "value"}


def _added_over(reference: float, label: str) -> dict[str, Any]:
    """What a figure adds to its baseline, as a ratio to the direct call ``reference`` of the same run."""
    return {"reference": reference, "reference_label": label}


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
        Figure("direct.raw.p50_us", "direct: raw asyncio socket client", raw_s, US, **_over(aio, "direct aiohttp")),
        Figure("direct.aiohttp.p50_us", "direct: reused aiohttp.ClientSession", aio, US),
        Figure("direct.httpx.p50_us", "direct: plain httpx.AsyncClient", hxs, US, **_over(aio, "direct aiohttp")),
        Figure(
            "inproc.chat.p50_us",
            "in-process chat_completions vs aiohttp",
            gw,
            US,
            aio,
            "direct aiohttp",
            _added_at_most(75, "≤ +75 µs"),
        ),
        Figure(
            "inproc.chat_vs_httpx.p50_us",
            "in-process chat_completions vs httpx",
            gw,
            US,
            hxs,
            "direct httpx",
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
                "direct raw asyncio, frames": clients.raw_stream(raw, CHAT_PATH),
                "direct raw asyncio, network chunks": clients.raw_stream_chunks(raw, CHAT_PATH),
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
    raw_s, raw_chunks, lines, chunks, hxs, gw = (s.median for s in stats.values())
    per_chunk = _added_at_most(10, "≤ +10 µs/chunk")
    n = STREAM_CHUNKS
    vs_lines = _over(lines, "aiohttp lines")
    return [
        Figure("stream.raw.p50_us", "direct stream (50 chunks): raw asyncio, frames", raw_s, US, **vs_lines),
        Figure(
            "stream.raw_chunks.p50_us",
            "direct stream (50 chunks): raw asyncio, network chunks",
            raw_chunks,
            US,
            **vs_lines,
        ),
        Figure("stream.aiohttp.p50_us", "direct stream (50 chunks): aiohttp, lines", lines, US),
        Figure("stream.aiohttp_chunks.p50_us", "direct stream (50 chunks): aiohttp, chunks", chunks, US, **vs_lines),
        Figure("stream.httpx.p50_us", "direct stream (50 chunks): httpx, lines", hxs, US, **vs_lines),
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
        Figure(
            "inproc.stream_vs_chunks.per_chunk_us",
            "in-process stream, per chunk, vs aiohttp chunks",
            gw / n,
            US,
            chunks / n,
            "aiohttp chunks",
            per_chunk,
        ),
        # The strictest baseline: a raw socket's reads as they come, no HTTP client at all.
        Figure(
            "inproc.stream_vs_raw.per_chunk_us",
            "in-process stream, per chunk, vs raw network chunks",
            gw / n,
            US,
            raw_chunks / n,
            "raw network chunks",
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
        Figure("ttfb.serve.p50_us", "stream TTFB: through unimw serve", t_serve, US, t_direct, "direct TTFB", half_ms),
        Figure(
            "ttfb.fastapi.p50_us", "stream TTFB: through FastAPI + middleware", t_fastapi, US, t_direct, "direct TTFB"
        ),
        # A streamed answer should start no later, over what the upstream takes, than a plain one ends.
        Figure(
            "ttfb.serve.added_vs_plain_us",
            "unimw serve: TTFB added vs plain call added",
            t_serve - t_direct,
            US,
            serve - direct,
            "plain call added",
            Target("<=", 1.0, "≤ 1.0x", on="ratio"),
            ratio_on="value",
        ),
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


async def apply_load(env: Env, url: str, seconds: float, pinned: bool = True) -> Load:
    """32 keep-alive connections for ``seconds``: wrk with a Lua body script, else an aiohttp client.

    wrk runs on the client core, or, not ``pinned``, wherever this process may run.
    """
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
        *(env.cores.prefix(env.cores.client) if pinned else []),
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


@dataclass
class Tally:
    """Requests served, seconds of load and CPU seconds of the server under load, summed over rounds."""

    requests: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    tool: str = ""

    def add(self, load: Load, cpu: float) -> None:
        self.requests += load.requests
        self.seconds += load.seconds
        self.cpu += cpu
        self.tool = load.tool

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_req(self) -> float:
        return self.cpu * 1000 / self.requests

    @property
    def note(self) -> str:
        return f"{self.tool}, {self.requests} requests in {self.seconds:.1f}s"


async def _loaded(env: Env, url: str, pid: int, seconds: float, tally: Tally, pinned: bool = True) -> None:
    """Load ``url`` for ``seconds`` and add to ``tally`` the requests and the CPU ``pid`` and its children
    (the workers of ``unimw serve --workers``) spent on them."""
    before = _tree_cpu_seconds(pid)
    load = await apply_load(env, url, seconds, pinned)
    tally.add(load, _tree_cpu_seconds(pid) - before)


#: Every core this process may run on, read at import: ``main`` pins the bench to the client core later,
#: and the unpinned rounds give each process all of them.
ALL_CORES = frozenset(os.sched_getaffinity(0))
#: The worker processes of the scaling figure.
WORKERS = 2


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _read(f"/proc/{entry.name}/stat")
            if stat and int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its children (a child that ended meanwhile counts as none)."""
    total = cpu_seconds(pid)
    for child in _children(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(child)
    return total


def _place(pid: int, cores: frozenset[int] | set[int]) -> None:
    """Move every thread of ``pid`` and of its children onto ``cores``."""
    for process in [pid, *_children(pid)]:
        with contextlib.suppress(FileNotFoundError):
            for task in Path(f"/proc/{process}/task").iterdir():
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(int(task.name), cores)


def _start_server(env: Env, name: str, argv: list[str], cores: frozenset[int] | None, ready: int = 0) -> Server:
    """A server for the throughput figures, started once with ``taskset`` on ``cores`` (None: not pinned),
    ready when ``/health`` answers and, with ``ready``, once its log says that many apps started (workers)."""
    if name in env.servers:
        return env.servers[name]
    port = free_port()
    prefix = ["taskset", "-c", ",".join(map(str, sorted(cores)))] if cores and shutil.which("taskset") else []
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "UNIMW_BENCH_UPSTREAM": env.upstream.url}
    proc = env.procs.start(name, [*prefix, *argv, "--host", "127.0.0.1", "--port", str(port)], environ)
    try:
        wait_http(proc, port, timeout=30)
        deadline = time.monotonic() + 30
        while env.procs.log_tail(name, 200).count("Application startup complete") < ready:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {ready} workers did not all start within 30s")
            time.sleep(0.05)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n{env.procs.log_tail(name)}") from None
    env.servers[name] = Server(port, proc.pid)
    return env.servers[name]


def _passthrough(env: Env) -> Server:
    """bench/passthrough.py under uvicorn as ``unimw serve`` runs: httptools, the loop uvicorn picks
    (uvloop when installed), no access log nor websockets, the same keep-alive and connection limit."""
    from unimw.serve_limits import ServeLimits

    limits = ServeLimits()
    argv = python(
        *("-m", "uvicorn", "bench.passthrough:app", "--http", "httptools", "--ws", "none", "--no-access-log"),
        *("--log-level", "warning", "--timeout-keep-alive", f"{limits.keep_alive:g}"),
        *("--limit-concurrency", str(limits.limit_concurrency)),
    )
    return _start_server(env, "passthrough", argv, None if env.cores.server is None else frozenset({env.cores.server}))


def _serve_workers(env: Env) -> Server | str:
    """``unimw serve --workers WORKERS`` on every core, or why it cannot be measured (read from its ``--help``)."""
    done = subprocess.run(python("-m", "unimw.cli", "serve", "--help"), capture_output=True, text=True, cwd=ROOT)
    if "--workers" not in done.stdout:
        return "skipped: unimw serve has no --workers option (one process per server)"
    config = env.tmp / "serve-workers.yaml"
    config.write_text(yaml.safe_dump(policy(env.upstream_v1)))
    # Info, so that each worker logs its start; uvicorn logs nothing per request without the access log.
    argv = python("-m", "unimw.cli", "serve", "--config", str(config), "--workers", str(WORKERS), "--log-level", "info")
    return _start_server(env, "serve-workers", argv, ALL_CORES if env.cores.client is not None else None, WORKERS)


async def _alternate(rounds: int, sides: dict[str, Callable[[], Awaitable[None]]]) -> None:
    """Each side once a round, in order, then in reverse order the next round."""
    names = list(sides)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            await sides[name]()


async def bench_throughput(env: Env) -> list[Item]:
    """Requests/s and CPU per request of unimw serve, a bare passthrough and the fake upstream, alternating;
    then unimw serve --workers 2 against one worker and the upstream, every process on every core."""
    rounds = 1 if env.opts.quick else 2
    seconds = env.opts.load_seconds / rounds
    warm = 1.0 if env.opts.quick else 3.0
    server, floor = env.server("serve"), _passthrough(env)
    direct_url = env.upstream.url + CHAT_PATH
    direct, serve, passthrough = Tally(), Tally(), Tally()
    # The upstream serves the direct load on its own core; under the load through a server it moves
    # next to the load client, so the server has its core to itself.
    pinned = env.cores.client is not None

    def upstream_on(core: int | None) -> None:
        if pinned:
            os.sched_setaffinity(env.upstream.pid, {core})  # type: ignore[arg-type]

    async def direct_side() -> None:
        upstream_on(env.cores.server)
        await _loaded(env, direct_url, env.upstream.pid, seconds, direct)

    def through(target: Server, tally: Tally) -> Callable[[], Awaitable[None]]:
        async def side() -> None:
            upstream_on(env.cores.client)
            await _loaded(env, target.url + CHAT_PATH, target.pid, seconds, tally)

        return side

    try:
        upstream_on(env.cores.client)
        for target in (server, floor):  # warm-up: connections, lazy imports
            await apply_load(env, target.url + CHAT_PATH, warm)
        await _alternate(
            rounds, {"direct": direct_side, "serve": through(server, serve), "pass": through(floor, passthrough)}
        )
    finally:
        upstream_on(env.cores.server)
    upstream_cpu = direct.cpu_ms_per_req
    items: list[Item] = [
        Figure("throughput.upstream.rps", "throughput: fake upstream alone", direct.rps, "req/s", note=direct.note),
        Figure(
            "throughput.upstream.cpu_ms_per_req",
            "CPU per request: fake upstream alone",
            upstream_cpu,
            MS,
            note=direct.note,
        ),
        Figure(
            "throughput.serve.rps",
            "throughput: unimw serve, 1 core, 32 conns",
            serve.rps,
            "req/s",
            direct.rps,
            "upstream",
            Target(">=", 0.25, "≥ 0.25x", on="ratio"),
            serve.note,
            ratio_on="value",
        ),
        Figure(
            "throughput.serve.cpu_ms_per_req",
            "CPU per request: unimw serve",
            serve.cpu_ms_per_req,
            MS,
            upstream_cpu,
            "upstream",
            Target("<=", 5.0, "≤ 5x", on="ratio"),
            serve.note,
            ratio_on="value",
        ),
        # The floor: the same server and HTTP client with nothing of unimw between them.
        Figure(
            "throughput.passthrough.rps",
            "throughput: bare uvicorn + aiohttp passthrough, 1 core",
            passthrough.rps,
            "req/s",
            direct.rps,
            "upstream",
            note=passthrough.note,
            ratio_on="value",
        ),
        Figure(
            "throughput.passthrough.cpu_ms_per_req",
            "CPU per request: bare passthrough",
            passthrough.cpu_ms_per_req,
            MS,
            upstream_cpu,
            "upstream",
            note=passthrough.note,
            ratio_on="value",
        ),
        Figure(
            "throughput.serve.rps_vs_passthrough",
            "throughput: unimw serve vs the bare passthrough",
            serve.rps,
            "req/s",
            passthrough.rps,
            "passthrough",
            note=serve.note,
            ratio_on="value",
        ),
        Figure(
            "throughput.serve.cpu_vs_passthrough",
            "CPU per request: unimw serve vs the bare passthrough",
            serve.cpu_ms_per_req,
            MS,
            passthrough.cpu_ms_per_req,
            "passthrough",
            note=serve.note,
            ratio_on="value",
        ),
    ]
    workers = _serve_workers(env)
    if isinstance(workers, str):
        return [
            *items,
            Skipped("throughput.serve_workers.rps", f"throughput: unimw serve --workers {WORKERS}", workers),
        ]
    return items + await _scaling(env, server, workers, rounds, seconds, warm)


async def _scaling(env: Env, one: Server, many: Server, rounds: int, seconds: float, warm: float) -> list[Item]:
    """``--workers WORKERS`` against one worker and the upstream, in alternating rounds, with every process
    (load client, upstream, servers) free to run on every core: two workers pinned to one core would
    measure nothing, and on a 2-core machine there is no core left to give them alone."""
    pinned = env.cores.client is not None
    direct, single, multi = Tally(), Tally(), Tally()
    direct_url = env.upstream.url + CHAT_PATH

    def side(url: str, pid: int, tally: Tally) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await _loaded(env, url, pid, seconds, tally, pinned=False)

        return run

    try:
        if pinned:
            os.sched_setaffinity(0, ALL_CORES)  # the load client (wrk, or this process) inherits it
            _place(env.upstream.pid, ALL_CORES)
            _place(one.pid, ALL_CORES)
        await apply_load(env, many.url + CHAT_PATH, warm, pinned=False)  # warm-up: each worker's connections
        await _alternate(
            rounds,
            {
                "direct": side(direct_url, env.upstream.pid, direct),
                "one": side(one.url + CHAT_PATH, one.pid, single),
                "many": side(many.url + CHAT_PATH, many.pid, multi),
            },
        )
    finally:
        if pinned:
            assert env.cores.client is not None and env.cores.server is not None
            _place(one.pid, {env.cores.server})
            _place(env.upstream.pid, {env.cores.server})
            os.sched_setaffinity(0, {env.cores.client})
    cores = len(ALL_CORES) if pinned else len(os.sched_getaffinity(0))
    where = f"unpinned: the load client, the fake upstream and the server under load share the same {cores} core(s)" + (
        "" if pinned else " (the bench is not pinning: --no-pin or a single core)"
    )
    many_label = f"--workers {WORKERS}"
    return [
        Figure(
            "throughput.unpinned.upstream.rps",
            "throughput: fake upstream alone, unpinned",
            direct.rps,
            "req/s",
            note=f"{where}; {direct.note}",
        ),
        Figure(
            "throughput.unpinned.serve.rps",
            "throughput: unimw serve (1 worker), unpinned",
            single.rps,
            "req/s",
            direct.rps,
            "upstream, unpinned",
            note=f"{where}; {single.note}",
            ratio_on="value",
        ),
        Figure(
            "throughput.serve_workers.rps",
            f"throughput: unimw serve {many_label} vs 1 worker, unpinned",
            multi.rps,
            "req/s",
            single.rps,
            "1 worker, unpinned",
            note=f"{where}; {multi.note}",
            ratio_on="value",
        ),
        Figure(
            "throughput.serve_workers.rps_vs_upstream",
            f"throughput: unimw serve {many_label} vs upstream, unpinned",
            multi.rps,
            "req/s",
            direct.rps,
            "upstream, unpinned",
            note=f"{where}; {multi.note}",
            ratio_on="value",
        ),
        Figure(
            "throughput.serve_workers.cpu_ms_per_req",
            f"CPU per request: unimw serve {many_label} (parent + workers)",
            multi.cpu_ms_per_req,
            MS,
            single.cpu_ms_per_req,
            "1 worker, unpinned",
            note=f"{where}; {multi.note}",
            ratio_on="value",
        ),
    ]


# --- 6: import time, RSS, memory growth ---------------------------------------------------------

# Times the import alone (not the interpreter's start), then reports RSS and whether the openai SDK came along.
_IMPORT_SNIPPET = (
    "import time;t=time.perf_counter();{}t=time.perf_counter()-t;import os,sys;"
    "print(t*1000,int(open('/proc/self/statm').read().split()[1])*os.sysconf('SC_PAGE_SIZE'),'openai' in sys.modules)"
)


@dataclass(frozen=True)
class Imported:
    """One ``python -c`` run: wall time of the process, time of the import in it, RSS after, openai loaded."""

    wall_ms: float
    import_ms: float
    rss_mb: float
    openai: bool


#: What each alternating run imports. ``import unimw`` may defer its names until first use, so what an app
#: imports to mount the gateway is timed too.
IMPORTS = {
    "bare python": "",
    "httpx": "import httpx;",
    "unimw": "import unimw;",
    "gateway": "from unimw import Gateway, UnimwMiddleware;",
}


def _run_import(statement: str) -> Imported:
    code = _IMPORT_SNIPPET.format(statement)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    wall = (time.perf_counter() - start) * 1000
    import_ms, rss, openai = out.stdout.split()
    return Imported(wall, float(import_ms), int(rss) / 1e6, openai == "True")


async def bench_import(env: Env) -> list[Item]:
    """``import unimw`` against ``import httpx`` (and a bare interpreter), alternating, in fresh processes."""
    names = list(IMPORTS)
    runs: dict[str, list[Imported]] = {name: [] for name in names}
    # httpx is imported from the bytecode pip compiled at install; unimw gets the same, so that what is timed
    # is loading it, not compiling its source (with PYTHONDONTWRITEBYTECODE set, no import would write it).
    await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "compileall", "-q", str(ROOT / "unimw")], check=True)
    for i in range(env.opts.import_runs):
        # Rotate who goes first, so a warm page cache or a busy moment favours none of them.
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:
            runs[name].append(await asyncio.to_thread(_run_import, IMPORTS[name]))
    bare, hx, unimw, gateway = (runs[name] for name in names)

    def median(runs: list[Imported], field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    note = (
        f"medians of {len(unimw)} runs each, alternating, unimw's bytecode compiled first; "
        f"bare python: {median(bare, 'wall_ms'):.1f} ms"
    )
    hx_ms = median(hx, "import_ms")
    vs_httpx: dict[str, Any] = {"ratio_on": "value", "note": note}
    return [
        Figure("import.httpx_ms", "import httpx, in the process, median", hx_ms, MS, note=note),
        Figure(
            "import.unimw_ms",
            "import unimw, in the process, median",
            median(unimw, "import_ms"),
            MS,
            hx_ms,
            "import httpx",
            Target("<=", 1.3, "≤ 1.3x", on="ratio"),
            **vs_httpx,
        ),
        Figure(
            "import.gateway_ms",
            "from unimw import Gateway, UnimwMiddleware, median",
            median(gateway, "import_ms"),
            MS,
            hx_ms,
            "import httpx",
            **vs_httpx,
        ),
        Figure(
            "import.wall_ms",
            'python -c "import unimw", median',
            median(unimw, "wall_ms"),
            MS,
            median(hx, "wall_ms"),
            'python -c "import httpx"',
            _at_most(250, "≤ 250 ms"),
            **vs_httpx,
        ),
        Figure(
            "import.wall_best_ms",
            'python -c "import unimw", best',
            min(r.wall_ms for r in unimw),
            MS,
            min(r.wall_ms for r in hx),
            'python -c "import httpx"',
            _at_most(250, "≤ 250 ms"),
            **vs_httpx,
        ),
        Figure(
            "import.rss_mb",
            "RSS after import unimw",
            median(unimw, "rss_mb"),
            "MB",
            median(hx, "rss_mb"),
            "import httpx",
            _at_most(60, "≤ 60 MB"),
            **vs_httpx,
        ),
        Figure(
            "import.gateway_rss_mb",
            "RSS after from unimw import Gateway, UnimwMiddleware",
            median(gateway, "rss_mb"),
            "MB",
            median(hx, "rss_mb"),
            "import httpx",
            _at_most(60, "≤ 60 MB"),
            **vs_httpx,
        ),
        Figure(
            "import.openai_sdk_loaded",
            "import unimw or its Gateway pulls in the openai SDK",
            float(any(r.openai for r in unimw + gateway)),
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
        calls = {
            "direct aiohttp": clients.aiohttp_chat(env.http, env.upstream.url + CHAT_PATH),
            "no cache (upstream call)": clients.gateway_chat(plain),
            "cache hit": hit,
        }
        inproc = env.series("cache in process", await contest(calls, env.opts.plan))
    direct, miss, hit_us = (s.median for s in inproc.values())
    # A hit is measured as a share of the direct call it saves.
    items: list[Item] = [
        Figure(*keys[0], hit_us, US, miss, "no cache", _at_most(30, "≤ 30 µs"), **_over(direct, "direct aiohttp"))
    ]
    server = env.server("serve-cache", policy_data=data)
    http_hit = clients.aiohttp_chat(env.http, server.url + CHAT_PATH)
    await http_hit()
    before = await env.upstream_chats()
    await http_hit()
    if await env.upstream_chats() != before:
        return [*items, Skipped(*keys[1], "a repeated call through unimw serve reached the upstream: no hit to time")]
    http_calls = {
        "direct aiohttp": clients.aiohttp_chat(env.http, env.upstream.url + CHAT_PATH),
        "no cache (upstream call)": clients.aiohttp_chat(env.http, env.server("serve").url + CHAT_PATH),
        "cache hit": http_hit,
    }
    over_http = env.series("cache over HTTP", await contest(http_calls, env.opts.plan.scaled(0.5)))
    http_direct, http_miss, http_hit_us = (s.median for s in over_http.values())
    target = _at_most(300, "≤ 0.3 ms")
    return [
        *items,
        Figure(*keys[1], http_hit_us, US, http_miss, "no cache", target, **_over(http_direct, "direct aiohttp")),
    ]


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


class RedisSends:
    """Counts what redis-py sends while installed: each command, script call or pipeline is one round trip."""

    def __init__(self) -> None:
        self.sent = 0
        self._original: Any = None

    def __enter__(self) -> RedisSends:
        from redis.asyncio.connection import AbstractConnection

        self._original = original = AbstractConnection.send_packed_command

        async def counting(conn: AbstractConnection, command: Any, check_health: bool = True) -> None:
            self.sent += 1
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from redis.asyncio.connection import AbstractConnection

        AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


async def _quiet(sends: RedisSends, resident: set[asyncio.Task[Any]], within: float = 0.25) -> None:
    """Wait until what a call left to do after it returned is done: no new task left, no send for a while."""
    deadline = time.monotonic() + within
    last = -1
    while time.monotonic() < deadline:
        if sends.sent == last and not asyncio.all_tasks() - resident:
            return
        last = sends.sent
        await asyncio.sleep(0.002)


async def _response_path_trips(call: Call, sends: RedisSends, calls: int) -> float:
    """Redis round trips per call made before the call returns, each call's leftovers drained before the next.

    What the gateway sends after a call returned (a settlement moved off the
    response path) is counted in ``sends.sent`` but not here.
    """
    await asyncio.sleep(0.05)
    resident = asyncio.all_tasks()
    await _quiet(sends, resident)
    sends.sent = during = 0
    for _ in range(calls):
        before = sends.sent
        await call()
        during += sends.sent - before
        await _quiet(sends, resident)
    return during / calls


async def bench_limits(env: Env) -> list[Item]:
    """Added cost of the rate-limit + budget step per call: memory store, and Redis (with its round trips)."""
    memory = ("limits.memory.p50_us", "budget + rate limit, memory store")
    redis = [
        ("limits.redis.p50_us", "budget + rate limit, Redis store"),
        ("limits.redis.round_trips", "Redis round trips per call, in all"),
        ("limits.redis.round_trips_response_path", "Redis round trips per call, before it returns"),
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
    direct_call = clients.aiohttp_chat(env.http, env.upstream.url + CHAT_PATH)
    trip_calls = 50
    for (key, label), store in stores:
        data = policy(env.upstream_v1, tenants=tenants, tenancy={"store": store})
        try:
            gateway = Gateway.from_dict(data)
        except Exception as exc:
            items.append(Skipped(key, label, f"the tenants policy the bench writes was refused: {exc}"))
            continue
        on_redis = store.startswith("redis")
        sends = RedisSends()
        response_path: float | None = None
        with contextlib.ExitStack() as counting:
            async with gateway:
                plain = clients.gateway_chat(gateway, tenant="unlimited")
                limited = clients.gateway_chat(gateway, tenant="limited")
                calls = {"direct aiohttp": direct_call, "no limits": plain, "limits": limited}
                stats = await contest(calls, env.opts.plan)
                if on_redis:
                    counting.enter_context(sends)
                    response_path = await _response_path_trips(limited, sends, trip_calls)
            # Closed: whatever the gateway still sent on its way out is counted in the total too.
        env.series(f"limits ({store.split(':')[0]})", stats)
        direct, base, measured = (s.median for s in stats.values())
        target = _added_at_most(20, "≤ +20 µs") if store == "memory://" else None
        items.append(
            Figure(
                key, label, measured, US, base, "tenant without limits", target, **_added_over(direct, "direct aiohttp")
            )
        )
        if response_path is not None:
            items.append(Figure(*redis[1], sends.sent / trip_calls, "", target=_at_most(2, "≤ 2")))
            items.append(Figure(*redis[2], response_path, "", target=_at_most(1, "≤ 1")))
    # The same step with the offline mock provider: no socket, so no network jitter in the difference.
    offline = {"providers": {"mock": {"kind": "mock"}}, "models": {MODEL: {"provider": "mock", "model": MODEL}}}
    async with Gateway.from_dict({**offline, "tenants": tenants}) as gateway:
        plain = clients.gateway_chat(gateway, tenant="unlimited")
        limited = clients.gateway_chat(gateway, tenant="limited")
        calls = {"direct aiohttp": direct_call, "no limits": plain, "limits": limited}
        stats = await contest(calls, env.opts.plan)
    env.series("limits (memory, mock provider)", stats)
    direct, base, measured = (s.median for s in stats.values())
    label = "budget + rate limit, memory store, mock provider"
    target = _added_at_most(20, "≤ +20 µs")
    items.append(
        Figure(
            "limits.memory_offline.p50_us",
            label,
            measured,
            US,
            base,
            "tenant without limits",
            target,
            **_added_over(direct, "direct aiohttp"),
        )
    )
    return items


async def bench_concurrency(env: Env) -> list[Item]:
    """Added cost per call of a tenant's concurrency limit shared through Redis (a lease taken before dispatch,
    given back after), and of circuit breakers on a Redis store with every target closed."""
    keys = [
        ("concurrency.redis.p50_us", "tenant concurrency limit shared on Redis, added per call"),
        ("concurrency.redis.round_trips_response_path", "… Redis round trips per call, before it returns"),
        ("breakers.redis.p50_us", "circuit breakers on a Redis store, every target closed, added per call"),
    ]
    redis_port = start_redis(env) if importlib.util.find_spec("redis") else None
    if redis_port is None:
        return _skip(keys, "skipped: no redis-server to start and none answering at 127.0.0.1:6379")
    store = f"redis://127.0.0.1:{redis_port}/0"
    # A limit no call here reaches: the figure is the cost of the lease, never a wait or a refusal.
    tenants = {"bounded": {"max_concurrent": 10**6}, "unbounded": {}}
    direct_call = clients.aiohttp_chat(env.http, env.upstream.url + CHAT_PATH)
    items: list[Item] = []
    async with Gateway.from_dict(policy(env.upstream_v1, tenants=tenants, tenancy={"store": store})) as gateway:
        plain = clients.gateway_chat(gateway, tenant="unbounded")
        bounded = clients.gateway_chat(gateway, tenant="bounded")
        calls = {"direct aiohttp": direct_call, "no limit": plain, "concurrency limit": bounded}
        stats = await contest(calls, env.opts.plan)
        env.series("concurrency (redis)", stats)
        direct, base, measured = (s.median for s in stats.values())
        items.append(
            Figure(
                *keys[0], measured, US, base, "tenant without a limit", None, **_added_over(direct, "direct aiohttp")
            )
        )
        with RedisSends() as sends:
            trips = await _response_path_trips(bounded, sends, 50)
        items.append(Figure(*keys[1], trips, ""))
    off = policy(env.upstream_v1, tenancy={"store": store})
    on = {**off, "dispatch": {"breaker": {"failures": 5}}}
    async with Gateway.from_dict(off) as without, Gateway.from_dict(on) as with_breakers:
        calls = {
            "direct aiohttp": direct_call,
            "no breakers": clients.gateway_chat(without),
            "breakers": clients.gateway_chat(with_breakers),
        }
        stats = await contest(calls, env.opts.plan)
    env.series("breakers (redis)", stats)
    direct, base, measured = (s.median for s in stats.values())
    items.append(Figure(*keys[2], measured, US, base, "no breakers", None, **_added_over(direct, "direct aiohttp")))
    return items


async def bench_tracing(env: Env) -> list[Item]:
    """Added cost per call of SDK tracer and meter providers over none (in process, mock provider)."""
    keys = [
        ("tracing.sdk.p50_us", "tracing on (SDK tracer + meter providers, no-op exporter), added per call"),
        ("tracing.sdk.instructions", "… the same, instructions added per call under callgrind"),
    ]
    from bench import tracing

    # The mock provider, so no socket's jitter lands in a difference of a few tens of µs; each round is
    # a few calls per configuration, back to back, and the figure is the median of the per-round
    # differences (bench/tracing.py). The loopback upstream is called only for the ratio's reference.
    quick = env.opts.quick
    made = {config: await tracing.gateway(config) for config in ("off", "sdk")}
    try:
        calls = {config: tracing.caller(gw, stream=False) for config, (gw, _) in made.items()}
        per_round = await tracing.paired_rounds(calls, rounds=40 if quick else 2000, per_round=20, warmup=200)
    finally:
        for gw, shutdown in made.values():
            await gw.aclose()
            shutdown()
    direct_call = clients.aiohttp_chat(env.http, env.upstream.url + CHAT_PATH)
    direct = (await contest({"direct aiohttp": direct_call}, env.opts.plan.scaled(0.25)))["direct aiohttp"].median
    base = statistics.median(per_round["off"])
    added = tracing.added(per_round, "sdk", "off")
    target = _added_at_most(30, "≤ +30 µs")
    items: list[Item] = [
        Figure(*keys[0], base + added, US, base, "no provider", target, **_added_over(direct, "direct aiohttp"))
    ]
    if quick:
        items.append(Skipped(*keys[1], "skipped: --quick (callgrind takes a minute or two)"))
    elif not tracing.callgrind_available():
        items.append(Skipped(*keys[1], "skipped: valgrind is not installed (apt-get install valgrind)"))
    else:
        jobs = [("off", "plain"), ("sdk", "plain")]
        counted = await asyncio.to_thread(tracing.instructions, jobs, calls=500, warmup=200)
        off, sdk = counted[jobs[0]], counted[jobs[1]]
        items.append(Figure(*keys[1], sdk, "instr", off, "no provider"))
    return items


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
    "concurrency": bench_concurrency,
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


@dataclass(frozen=True)
class Machine:
    """What the run ran on and how it was started, read before any pinning."""

    cpu_model: str
    nproc: int
    command: str
    cwd: str

    @classmethod
    def read(cls, argv: list[str]) -> Machine:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in _read("/proc/cpuinfo").splitlines()
                if ":" in line and line.split(":", 1)[0].strip() in ("model name", "Model", "cpu model")
            ),
            platform.processor() or platform.machine(),
        )
        command = shlex.join([sys.executable, "-m", "bench.run", *argv])
        return cls(cpu, len(os.sched_getaffinity(0)), command, os.getcwd())


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was around the run."""
    return [round(x, 2) for x in os.getloadavg()]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() if done.returncode == 0 else ""


def meta(opts: Options, cores: Cores, machine: Machine, load_start: list[float]) -> dict[str, Any]:
    versions = {}
    for name in ("aiohttp", "httpx", "uvicorn", "starlette", "fastapi", "orjson", "uvloop", "httptools", "redis"):
        with contextlib.suppress(Exception):
            versions[name] = importlib.metadata.version(name)
    # Read-only: the files that differ from the commit, so a run of a work in progress says so.
    modified = _git("diff", "--name-only", "HEAD").splitlines()
    return {
        "command": machine.command,
        "cwd": machine.cwd,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "modified": modified,
        "cpu_model": machine.cpu_model,
        "nproc": machine.nproc,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "machine": f"{platform.machine()}, {machine.nproc} cores, {machine.cpu_model}",
        "cores": {"client": cores.client, "server": cores.server},
        "load_tool": "wrk" if opts.wrk else "asyncio+aiohttp",
        # What uvicorn picks for the servers under test ("auto"): it changes their CPU per request.
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "quick": opts.quick,
        "plan": dataclasses.asdict(opts.plan),
        "versions": versions,
    }


def header(info: dict[str, Any]) -> str:
    """The lines printed above the table: what ran, where, and how busy the machine was."""
    modified = info["modified"]
    dirty = f" + {len(modified)} modified file(s): {', '.join(modified)}" if modified else ""
    start, end = (" ".join(f"{x:.2f}" for x in info[k]) for k in ("loadavg_start", "loadavg_end"))
    cores = info["cores"]
    return "\n".join(
        [
            f"bench.run at {info['commit'] or '(no git)'}{dirty}, {info['date']}",
            f"command: cd {shlex.quote(info['cwd'])} && {info['command']}",
            f"machine: {info['cpu_model']}, nproc {info['nproc']}, {platform.machine()}",
            f"python: {info['python']} ({info['python_implementation']})",
            f"load average: start {start}, end {end} (1, 5, 15 min)",
            f"cores: client {cores['client']}, server {cores['server']}; load client: {info['load_tool']}",
            "ratios: to the direct call of the same run (import: to import httpx); "
            "+rx = added / reference, rx = measured / reference",
        ]
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


async def run(opts: Options, cores: Cores, machine: Machine) -> int:
    results = Results()
    failed: list[str] = []
    lifetime = 300 if opts.quick else 3600
    load_start = loadavg()
    print(f"bench: {machine.command} on {machine.cpu_model}, nproc {machine.nproc}, load {load_start}", file=sys.stderr)
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
    info = {**meta(opts, cores, machine, load_start), "failed": failed}
    print(header(info))
    print()
    print(table(results))
    report = results.to_json(info)
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
    machine = Machine.read(sys.argv[1:] if argv is None else argv)
    only = frozenset(filter(None, args.only.split(",")))
    if unknown := only - set(BENCHMARKS):
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    cores = Cores.detect(pin=not args.no_pin)
    cores.pin_self()
    if args.load == "wrk" and shutil.which("wrk") is None:
        parser.error("--load wrk: wrk is not installed (apt-get install wrk)")
    wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    return asyncio.run(run(Options(args.quick, args.out, only, wrk), cores, machine))


if __name__ == "__main__":
    raise SystemExit(main())
