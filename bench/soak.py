"""Thousands of mixed calls through ``unimw serve`` with faults injected: ``python -m bench.soak``.

``unimw serve`` fronts an alias ``soak`` whose first target is
:mod:`bench.faulty` (half of its answers are a fault: 429, 500, 503, a reset,
a stream cut in half, a malformed event, a stream without ``[DONE]``) and
whose fallback is the steady :mod:`bench.upstream`. Half of the calls
stream. Retries and cooldown are set so the faulty target keeps being tried
(cooldown off): every call meets the fault mix, not just the first few.

Each call ends in one outcome, judged as its client would:

``complete``      the answer's text equals the upstream's whole answer
``error <status>`` one clean HTTP error, before any answer
``stream error``  the stream ended with an ``error`` event (the answer is known to be cut): a cut the
                  gateway could not continue (the faulty target, the only one that takes a prefill,
                  failed again until ``dispatch.stream_resumes`` ran out)
``broken``        the connection or the SSE framing failed under the client
``cut as complete`` the stream ended normally with less than the whole answer (the one outcome
                  that must never happen)

It prints calls per second, the outcomes, the faults drawn, and the server's
RSS after the warm-up and at the end (growth over thousands of failures is
what a leak looks like). ``--out`` writes them as JSON. Nothing is pinned:
the load client, both upstreams and the server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from bench.procs import ROOT, Processes, free_port, python, read_line, rss_mb, wait_http
from bench.upstream import STREAM_CHUNKS, completion_body

PLAIN_TEXT: str = orjson.loads(completion_body())["choices"][0]["message"]["content"]
STREAM_TEXT = "".join(f"tok{i} " for i in range(1, STREAM_CHUNKS - 1))
API_KEY = "sk-soak"
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


def policy(flaky: str, steady: str) -> dict[str, Any]:
    return {
        "providers": {
            "flaky": {"kind": "openai", "base_url": flaky + "/v1", "api_key": API_KEY},
            "steady": {"kind": "openai", "base_url": steady + "/v1", "api_key": API_KEY},
        },
        "models": {
            # Continues a cut stream as vLLM does: its text so far sent back as the assistant's turn.
            "flaky-model": {"provider": "flaky", "model": "bench-model", "prefill": True, "prefill_params": CONTINUE},
            "steady-model": {"provider": "steady", "model": "bench-model"},
        },
        "aliases": {"soak": {"targets": ["flaky-model", "steady-model"]}},
        "dispatch": {"retries": 1, "backoff": "1ms", "max_retry_after": "0s", "cooldown": "0s"},
    }


async def plain_call(http: aiohttp.ClientSession, url: str) -> str:
    body = {"model": "soak", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    async with http.post(url, json=body) as response:
        data = await response.read()
    if response.status != 200:
        return f"error {response.status}"
    text = orjson.loads(data)["choices"][0]["message"]["content"]
    return "complete" if text == PLAIN_TEXT else "cut as complete"


async def stream_call(http: aiohttp.ClientSession, url: str) -> str:
    body = {"model": "soak", "stream": True, "messages": [{"role": "user", "content": "Count."}]}
    parts: list[str] = []
    async with http.post(url, json=body) as response:
        if response.status != 200:
            await response.read()
            return f"error {response.status}"
        done = False
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                continue
            event = orjson.loads(data)
            if "error" in event:
                return "stream error"
            for choice in event.get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
    if not done:
        return "broken"
    return "complete" if "".join(parts) == STREAM_TEXT else "cut as complete"


async def one_call(http: aiohttp.ClientSession, url: str, stream: bool) -> str:
    try:
        return await asyncio.wait_for((stream_call if stream else plain_call)(http, url), timeout=30)
    except (aiohttp.ClientError, orjson.JSONDecodeError, TimeoutError):
        return "broken"


async def load(url: str, calls: int, concurrency: int) -> tuple[Counter[str], float]:
    """``calls`` calls, half streamed, ``concurrency`` at a time; the outcomes and the seconds taken."""
    outcomes: Counter[str] = Counter()
    numbers = iter(range(calls))

    async def worker(http: aiohttp.ClientSession) -> None:
        for n in numbers:
            outcomes[await one_call(http, url, stream=n % 2 == 1)] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return outcomes, time.perf_counter() - start


def _stats(port: int) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        stats: dict[str, int] = json.load(response)
        return stats


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() if done.returncode == 0 else ""


def run(calls: int, warmup: int, concurrency: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="unimw-soak-") as tmp, Processes(Path(tmp)) as procs:
        steady = procs.start("steady", python("-m", "bench.upstream", "--port", "0", "--lifetime", "3600"))
        steady_port = int(read_line(steady, timeout=20))
        flaky = procs.start("flaky", python("-m", "bench.faulty", "--port", "0", "--seed", str(seed)))
        flaky_port = int(read_line(flaky, timeout=20))
        config = Path(tmp) / "soak.yaml"
        config.write_text(yaml.safe_dump(policy(f"http://127.0.0.1:{flaky_port}", f"http://127.0.0.1:{steady_port}")))
        port = free_port()
        argv = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
        server = procs.start("serve", python("-m", "unimw.cli", *argv), {**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_http(server, port, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{procs.log_tail('serve')}") from None
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        asyncio.run(load(url, warmup, concurrency))
        rss_start = rss_mb(server.pid)
        outcomes, seconds = asyncio.run(load(url, calls, concurrency))
        rss_end = rss_mb(server.pid)
        faults = _stats(flaky_port)
    return {
        "calls": calls,
        "concurrency": concurrency,
        "seconds": round(seconds, 2),
        "calls_per_s": round(calls / seconds, 1),
        "rss_after_warmup_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "outcomes": dict(outcomes.most_common()),
        "faults_drawn": dict(sorted(faults.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1, help="seed of the faulty upstream's draws")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    figures = run(args.calls, args.warmup, args.concurrency, args.seed)
    report = {
        "meta": {
            "command": shlex.join([sys.executable, "-m", "bench.soak", *(argv or sys.argv[1:])]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": _git("rev-parse", "--short", "HEAD"),
            "modified": _git("diff", "--name-only", "HEAD").splitlines(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "figures": figures,
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if figures["outcomes"].get("cut as complete") else 0


if __name__ == "__main__":
    raise SystemExit(main())
