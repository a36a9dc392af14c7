"""What tracing costs per call: ``python -m bench.tracing [--calls N] [--rounds R]``.

In-process ``Gateway.chat_completions`` against the ``mock`` provider (no
network: what is timed is the gateway itself), plain and streamed, under:

``absent``   the gateway's tracing stubbed out: the floor the others are compared with
``off``      no tracer or meter provider: the OpenTelemetry API's no-ops (a host app without OTel)
``sampled``  SDK providers, every trace sampled out: spans do not record, metrics do
``sdk``      SDK providers: spans batched to an exporter that drops them, metrics aggregated in memory
``content``  as ``sdk``, with prompts and completions captured on the span

Rounds alternate between the configurations so that drift hits them alike.
Prints p50 and mean µs per call, and what each adds to ``absent``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from bench.measure import percentile
from unimw import Gateway

CONFIGS = ("absent", "off", "sampled", "sdk", "content")
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]


class DropSpans(SpanExporter):
    """An exporter that accepts every batch and does nothing with it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def policy(capture: bool) -> dict[str, Any]:
    return {
        "providers": {"mock": {"kind": "mock"}},
        "models": {"mock-echo": {"provider": "mock", "model": "mock-echo"}},
        "tracing": {"capture_content": capture},
    }


def untraced(gw: Gateway) -> Gateway:
    """``gw`` with its tracing replaced by do-nothing methods (the dispatcher shares the same object)."""

    async def attempt(
        operation: str, request: Any, target: Any, number: int, run: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        return await run(target)

    tracing: Any = gw._tracing
    tracing.start = lambda call: None
    tracing.detach = lambda token: None
    tracing.finish = lambda call, cost: None
    tracing.attempt = attempt
    return gw


def gateway(config: str) -> tuple[Gateway, Callable[[], None]]:
    """The gateway for ``config``, and what shuts its providers down."""
    if config in ("absent", "off"):
        made = Gateway.from_dict(policy(False))
        return untraced(made) if config == "absent" else made, lambda: None
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF) if config == "sampled" else TracerProvider()
    # A queue deep enough for a tight loop: a full queue drops spans, which would flatter the figures.
    tracer_provider.add_span_processor(BatchSpanProcessor(DropSpans(), max_queue_size=1 << 16))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    made = Gateway.from_dict(
        policy(config == "content"), tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    return made, shutdown


def caller(gw: Gateway, stream: bool) -> Callable[[], Awaitable[None]]:
    body = {"model": "mock-echo", "messages": MESSAGES}

    async def plain() -> None:
        await gw.chat_completions(dict(body))

    async def streamed() -> None:
        async for _ in await gw.stream_chat_completions(dict(body)):
            pass

    return streamed if stream else plain


async def timed(call: Callable[[], Awaitable[None]], count: int) -> list[float]:
    """µs per call, ``count`` calls in a row."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        await call()
        out.append((clock() - start) / 1000)
    return out


async def measure(calls: int, rounds: int, warmup: int) -> dict[tuple[str, str], list[float]]:
    made = {config: gateway(config) for config in CONFIGS}
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for kind in ("plain", "stream"):
            callers = {config: caller(gw, kind == "stream") for config, (gw, _) in made.items()}
            for call in callers.values():
                await timed(call, warmup)
            for _ in range(rounds):
                for config, call in callers.items():
                    gc.collect()
                    samples.setdefault((kind, config), []).extend(await timed(call, calls))
    finally:
        for gw, shutdown in made.values():
            await gw.aclose()
            shutdown()
    return samples


def report(samples: dict[tuple[str, str], list[float]], calls: int, rounds: int) -> str:
    lines = [
        f"tracing cost per in-process call, mock provider: {calls} calls x {rounds} rounds per row",
        f"{'call':<7}{'config':<9}{'p50 µs':>9}{'mean µs':>9}{'+p50 µs':>9}{'+mean µs':>10}",
    ]
    for kind in ("plain", "stream"):
        base = samples[(kind, "absent")]
        base_p50, base_mean = percentile(sorted(base), 50), statistics.fmean(base)
        for config in CONFIGS:
            values = samples[(kind, config)]
            p50, mean = percentile(sorted(values), 50), statistics.fmean(values)
            added = "" if config == "absent" else f"{p50 - base_p50:>+9.1f}{mean - base_mean:>+10.1f}"
            lines.append(f"{kind:<7}{config:<9}{p50:>9.1f}{mean:>9.1f}{added}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per configuration per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args(argv)
    samples = asyncio.run(measure(args.calls, args.rounds, args.warmup))
    print(report(samples, args.calls, args.rounds))


if __name__ == "__main__":
    main()
