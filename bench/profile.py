"""Profile the in-process hot path with pyinstrument: ``python -m bench.profile [--stream] [--calls N]``.

Starts the fake upstream on the other core, makes ``--calls`` sequential
``Gateway.chat_completions`` calls under the profiler and prints where the
time goes (``pip install 'unimw[bench]'`` for pyinstrument).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import clients
from bench.procs import Cores, Processes
from bench.run import start_upstream
from unimw import Gateway

if TYPE_CHECKING:
    from pyinstrument import Profiler


async def profile(calls: int, stream: bool, interval: float) -> Profiler:
    from pyinstrument import Profiler

    cores = Cores.detect(pin=True)
    cores.pin_self()
    with tempfile.TemporaryDirectory(prefix="unimw-profile-") as tmp, Processes(Path(tmp)) as procs:
        upstream = start_upstream(procs, cores, lifetime=600)
        async with Gateway.from_dict(clients.policy(upstream.url + "/v1")) as gateway:
            call = clients.gateway_stream(gateway) if stream else clients.gateway_chat(gateway)
            for _ in range(200):
                await call()
            profiler = Profiler(interval=interval, async_mode="disabled")
            deadline = time.monotonic() + 120
            start = time.perf_counter()
            profiler.start()
            done = 0
            while done < calls and time.monotonic() < deadline:
                await call()
                done += 1
            profiler.stop()
            elapsed = time.perf_counter() - start
    print(f"{done} {'streamed ' if stream else ''}calls, {elapsed / done * 1e6:.1f} µs per call (profiler on)")
    return profiler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--stream", action="store_true", help="profile 50-chunk streamed calls")
    parser.add_argument("--interval", type=float, default=0.0001, help="sampling interval in seconds")
    parser.add_argument("--all", action="store_true", help="show library frames too")
    parser.add_argument("--html", type=Path, help="also write an HTML profile here")
    args = parser.parse_args(argv)
    profiler = asyncio.run(profile(args.calls, args.stream, args.interval))
    print(profiler.output_text(unicode=True, color=False, show_all=args.all))
    if args.html is not None:
        args.html.write_text(profiler.output_html())
        print(f"html: {args.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
