"""What tracing costs per call: ``python -m bench.tracing [--instructions] [--rounds R] [--calls N]``.

In-process ``Gateway.chat_completions`` against the ``mock`` provider (no
network: what is measured is the gateway itself), plain and streamed, under:

``absent``   the gateway's tracing stubbed out: the floor the others are compared with
``off``      no tracer or meter provider: the OpenTelemetry API's no-ops (a host app without OTel)
``sampled``  SDK providers, every trace sampled out: spans do not record, metrics do
``sdk``      SDK providers: spans batched to an exporter that drops them, metrics aggregated in memory
``content``  as ``sdk``, with prompts and completions captured on the span
``spans``    an SDK tracer provider only (metrics the API's no-ops)
``metrics``  an SDK meter provider only (spans the API's no-ops)
``floor``    tracing stubbed out, and in its place only the SDK calls a traced call needs, with every
             attribute made in advance (a span started with those samplers see, made current, given the
             rest, ended; each metric recorded): what no change to unimw alone can go below

Two ways to measure, both printing what each configuration adds to ``absent``
and to ``off``:

* timed (the default): many short rounds, one per configuration in turn (the
  order rotating), each a few calls; a configuration's cost is the median,
  over the rounds, of its round's p50 minus the baseline's p50 in the same
  round. A round lasts a millisecond or so, so a neighbour's burst hits both
  sides of a difference alike and only a few differences, which the median
  drops. Still µs on a shared machine: indicative.
* ``--instructions``: instructions per call under ``valgrind --tool=callgrind``
  (which counts every instruction the process runs, whatever else the
  machine does), from two runs per configuration that differ only in the
  number of calls: ``(I(warmup + calls) - I(warmup)) / calls``, so start-up,
  imports and warm-up cancel out. Two runs of the same tree agree to within
  a few thousand instructions (under 0.5 %): the figure to decide a change by.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from bench.measure import percentile
from unimw import Gateway
from unimw.attributes import REQUEST_ID
from unimw.operations import CHAT

CONFIGS = ("absent", "off", "sampled", "sdk", "content", "spans", "metrics", "floor")
KINDS = ("plain", "stream")
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
Call = Callable[[], Awaitable[object]]
ROOT = Path(__file__).resolve().parent.parent


class DropSpans(SpanExporter):
    """An exporter that accepts every batch and does nothing with it."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def mock_policy(capture: bool = False) -> dict[str, Any]:
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


def sdk_providers(sampled: bool = True) -> tuple[TracerProvider, MeterProvider, Callable[[], None]]:
    """What an app that uses OpenTelemetry has: an SDK tracer provider batching spans to an exporter
    (one that drops them: exporting is the exporter's cost, not unimw's) and an SDK meter provider;
    and what shuts them down."""
    tracer_provider = TracerProvider(sampler=None if sampled else ALWAYS_OFF)
    # A queue deep enough for a tight loop: a full queue drops spans, which would flatter the figures. The
    # worker exports each time 512 spans are queued, never on a timer: a timer's wake-ups depend on how
    # long the run takes, which would make the instruction counts vary with the machine's load.
    processor = BatchSpanProcessor(DropSpans(), max_queue_size=1 << 16, schedule_delay_millis=3_600_000)
    tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    def shutdown() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return tracer_provider, meter_provider, shutdown


async def gateway(config: str, stream: bool = False) -> tuple[Gateway, Callable[[], None]]:
    """The gateway for ``config``, and what shuts its providers down. ``stream``: which kind of call the
    ``floor`` configuration replays."""
    policy = mock_policy(config == "content")
    if config in ("absent", "off"):
        made = Gateway.from_dict(policy)
        return untraced(made) if config == "absent" else made, lambda: None
    tracer_provider, meter_provider, shutdown = sdk_providers(sampled=config != "sampled")
    if config == "floor":
        return await sdk_floor(policy, stream, tracer_provider, meter_provider), shutdown
    providers: dict[str, Any] = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
    if config in ("spans", "metrics"):
        del providers["meter_provider" if config == "spans" else "tracer_provider"]
    return Gateway.from_dict(policy, **providers), shutdown


async def sdk_floor(
    policy: Mapping[str, Any], stream: bool, tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Gateway:
    """A gateway whose tracing makes, per call, only the SDK calls the real one must make, with the
    span's name, attributes and metric points of a real call made in advance."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    seen_spans = TracerProvider()
    seen_spans.add_span_processor(SimpleSpanProcessor(exporter))
    seen = Gateway.from_dict(policy, tracer_provider=seen_spans, meter_provider=MeterProvider(metric_readers=[reader]))
    request = {"model": "mock-echo", "messages": MESSAGES, **({"stream": True} if stream else {})}
    tracing: Any = seen._tracing
    name, first = tracing._start_of("chat", "mock-echo")
    starts = {*first, REQUEST_ID, *CHAT.request_attributes(request)}
    await caller(seen, stream)()
    await seen.aclose()
    (span,) = exporter.get_finished_spans()
    start = {k: v for k, v in (span.attributes or {}).items() if k in starts}
    end = {k: v for k, v in (span.attributes or {}).items() if k not in starts}
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        (metric.name, dict(point.attributes or {}), getattr(point, "sum", getattr(point, "value", 0)))
        for scope in data.resource_metrics[0].scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    meter = meter_provider.get_meter("unimw")
    instruments = {name: meter.create_histogram(name) for name, _, _ in points}
    records = [(instruments[name].record, value, attributes) for name, attributes, value in points]
    tracer = tracer_provider.get_tracer("unimw")

    def begin(call: Any) -> object:
        call.span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=start)
        return context.attach(trace.set_span_in_context(call.span))

    def finish(call: Any, cost: int) -> None:
        for record, value, attributes in records:
            record(value, attributes)
        call.span.set_attributes(end)
        call.span.end()

    made = untraced(Gateway.from_dict(policy))
    stub: Any = made._tracing
    stub.start, stub.detach, stub.finish = begin, context.detach, finish
    return made


def caller(gw: Gateway, stream: bool) -> Call:
    body = {"model": "mock-echo", "messages": MESSAGES}

    async def plain() -> None:
        await gw.chat_completions(dict(body))

    async def streamed() -> None:
        async for _ in await gw.stream_chat_completions(dict(body)):
            pass

    return streamed if stream else plain


# ── timed: short alternating rounds, median of per-round differences ──────────


async def _round(call: Call, count: int) -> float:
    """The p50 µs of ``count`` calls in a row."""
    times = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        await call()
        times.append(clock() - start)
    times.sort()
    return percentile(times, 50) / 1000


async def paired_rounds(calls: Mapping[str, Call], rounds: int, per_round: int, warmup: int) -> dict[str, list[float]]:
    """Each contender's p50 µs per round; round ``i`` of every contender ran back to back.

    The order rotates from round to round, so no contender always follows the
    same one (a warm cache, a core that was asleep). No ``gc.collect()``
    between rounds: collections happen as the calls allocate, and a p50
    leaves out the calls they land in.
    """
    for call in calls.values():
        for _ in range(warmup):
            await call()
    names = list(calls)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(await _round(calls[name], per_round))
    return out


def added(per_round: Mapping[str, list[float]], name: str, base: str) -> float:
    """What ``name`` adds to ``base``: the median over rounds of the difference of their p50s."""
    return statistics.median(a - b for a, b in zip(per_round[name], per_round[base], strict=True))


async def timed(
    configs: Sequence[str], kinds: Sequence[str], rounds: int, per_round: int, warmup: int
) -> dict[str, dict[str, list[float]]]:
    """Per kind of call, each configuration's per-round p50s."""
    out = {}
    for kind in kinds:
        made = {config: await gateway(config, kind == "stream") for config in configs}
        try:
            calls = {config: caller(gw, kind == "stream") for config, (gw, _) in made.items()}
            out[kind] = await paired_rounds(calls, rounds, per_round, warmup)
        finally:
            for gw, shutdown in made.values():
                await gw.aclose()
                shutdown()
    return out


def timed_report(results: Mapping[str, Mapping[str, list[float]]], rounds: int, per_round: int) -> str:
    lines = [
        f"tracing cost per in-process call, mock provider: {rounds} rounds x {per_round} calls per configuration;",
        "added = median over rounds of (p50 - the baseline's p50 in the same round)",
        f"{'call':<7}{'config':<9}{'p50 µs':>9}{'+ over absent':>15}{'+ over off':>12}",
    ]
    for kind, per_round_p50 in results.items():
        for config, values in per_round_p50.items():
            over_absent = over_off = ""
            if config != "absent" and "absent" in per_round_p50:
                over_absent = f"{added(per_round_p50, config, 'absent'):>+15.1f}"
            if config not in ("absent", "off") and "off" in per_round_p50:
                over_off = f"{added(per_round_p50, config, 'off'):>+12.1f}"
            lines.append(f"{kind:<7}{config:<9}{statistics.median(values):>9.1f}{over_absent:>15}{over_off}")
    return "\n".join(lines)


# ── instructions under callgrind ─────────────────────────────────────────────


async def _child(config: str, kind: str, calls: int) -> None:
    """Make ``calls`` calls under ``config`` and exit: what callgrind counts."""
    gw, shutdown = await gateway(config, kind == "stream")
    call = caller(gw, kind == "stream")
    try:
        for _ in range(calls):
            await call()
    finally:
        await gw.aclose()
        shutdown()


def callgrind_available() -> bool:
    try:
        return subprocess.run(["valgrind", "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_COLLECTED = re.compile(rb"==\d+== Collected : (\d+)")


def _counted(config: str, kind: str, calls: int, out_dir: str) -> subprocess.Popen[bytes]:
    """A child process counting its instructions under callgrind (hash seed fixed: same work each run)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    # Any core will do (what is counted does not depend on it), even from a process pinned to one.
    anywhere = ["taskset", "-c", f"0-{(os.cpu_count() or 1) - 1}"] if shutil.which("taskset") else []
    argv = [
        *anywhere,
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_dir}/callgrind.%p",
        sys.executable,
        "-m",
        "bench.tracing",
        "--child",
        config,
        kind,
        str(calls),
    ]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _collected(proc: subprocess.Popen[bytes], timeout: float) -> int:
    _, err = proc.communicate(timeout=timeout)
    found = _COLLECTED.search(err)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed ({proc.returncode}): {err[-2000:].decode(errors='replace')}")
    return int(found.group(1))


def instructions(
    jobs: Sequence[tuple[str, str]], calls: int, warmup: int, parallel: int = 2, timeout: float = 900.0
) -> dict[tuple[str, str], float]:
    """Instructions per call for each ``(config, kind)``: two callgrind runs each, ``parallel`` at a time."""
    runs = [(job, n) for job in jobs for n in (warmup, warmup + calls)]
    counts: dict[tuple[tuple[str, str], int], int] = {}
    with tempfile.TemporaryDirectory(prefix="unimw-callgrind-") as out_dir:
        running: list[tuple[tuple[tuple[str, str], int], subprocess.Popen[bytes]]] = []
        try:
            for run in runs:
                running.append((run, _counted(*run[0], run[1], out_dir)))
                if len(running) >= parallel:
                    done, proc = running.pop(0)
                    counts[done] = _collected(proc, timeout)
            while running:
                done, proc = running.pop(0)
                counts[done] = _collected(proc, timeout)
        finally:
            for _, proc in running:
                proc.kill()
                proc.wait()
    return {job: (counts[(job, warmup + calls)] - counts[(job, warmup)]) / calls for job in jobs}


def instructions_report(counted: Mapping[tuple[str, str], float], calls: int, warmup: int) -> str:
    lines = [
        f"tracing cost per in-process call, mock provider: instructions per call under callgrind "
        f"((I({warmup} + {calls} calls) - I({warmup} calls)) / {calls})",
        f"{'call':<7}{'config':<9}{'instr':>10}{'+ over absent':>15}{'+ over off':>12}",
    ]
    for (config, kind), value in counted.items():
        absent, off = counted.get(("absent", kind)), counted.get(("off", kind))
        over_absent = "" if absent is None or config == "absent" else f"{value - absent:>+15,.0f}"
        over_off = "" if off is None or config in ("absent", "off") else f"{value - off:>+12,.0f}"
        lines.append(f"{kind:<7}{config:<9}{value:>10,.0f}{over_absent:>15}{over_off:>12}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--instructions", action="store_true", help="count instructions under callgrind instead")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"a subset of {','.join(CONFIGS)}")
    parser.add_argument("--kinds", default=",".join(KINDS), help="plain, stream or both")
    parser.add_argument("--rounds", type=int, default=400, help="timed: rounds per configuration")
    parser.add_argument("--calls", type=int, help="timed: calls a round (20); --instructions: calls counted (1000)")
    parser.add_argument("--warmup", type=int, help="calls before measuring (timed: 500, --instructions: 200)")
    parser.add_argument("--child", nargs=3, metavar=("CONFIG", "KIND", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        config, kind, count = args.child
        asyncio.run(_child(config, kind, int(count)))
        return
    configs = [c for c in CONFIGS if c in args.configs.split(",")]
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    if args.instructions:
        calls, warmup = args.calls or 1000, args.warmup if args.warmup is not None else 200
        jobs = [(config, kind) for kind in kinds for config in configs]
        print(instructions_report(instructions(jobs, calls, warmup), calls, warmup))
        return
    calls, warmup = args.calls or 20, args.warmup if args.warmup is not None else 500
    print(timed_report(asyncio.run(timed(configs, kinds, args.rounds, calls, warmup)), args.rounds, calls))


if __name__ == "__main__":
    main()
