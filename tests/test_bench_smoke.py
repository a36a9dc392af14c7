"""The benchmark, run with tiny counts so it can never rot. No thresholds on the numbers.

The run itself is checked for shape: every figure present, each ratio to the
direct call consistent with the row it belongs to, the machine stated. The
ratio arithmetic and target checks are pure, so they get exact unit tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.measure import Figure, Results, Target, table

ROOT = Path(__file__).resolve().parent.parent

#: Figures every run measures, whatever is installed (wrk or not, LiteLLM or not, Redis or not).
FIGURES = [
    "direct.raw.p50_us",
    "direct.aiohttp.p50_us",
    "direct.httpx.p50_us",
    "inproc.chat.p50_us",
    "inproc.chat.p50_us.added",
    "inproc.chat_vs_httpx.p50_us.added",
    "stream.raw.p50_us",
    "stream.raw_chunks.p50_us",
    "stream.aiohttp.p50_us",
    "stream.aiohttp_chunks.p50_us",
    "stream.httpx.p50_us",
    "inproc.stream.p50_us",
    "inproc.stream.per_chunk_us",
    "inproc.stream.per_chunk_us.added",
    "inproc.stream_vs_chunks.per_chunk_us.added",
    "inproc.stream_vs_raw.per_chunk_us.added",
    "http.direct.p50_us",
    "http.serve.p50_us",
    "http.serve.p50_us.added",
    "http.fastapi.p50_us",
    "http.fastapi.p50_us.added",
    "ttfb.direct.p50_us",
    "ttfb.serve.p50_us",
    "ttfb.serve.p50_us.added",
    "ttfb.fastapi.p50_us",
    "ttfb.serve.added_vs_plain_us",
    "throughput.upstream.rps",
    "throughput.upstream.cpu_ms_per_req",
    "throughput.serve.rps",
    "throughput.serve.cpu_ms_per_req",
    "throughput.passthrough.rps",
    "throughput.passthrough.cpu_ms_per_req",
    "throughput.serve.rps_vs_passthrough",
    "throughput.serve.cpu_vs_passthrough",
    "throughput.unpinned.upstream.rps",
    "throughput.unpinned.serve.rps",
    "throughput.serve_workers.rps",
    "throughput.serve_workers.rps_vs_upstream",
    "throughput.serve_workers.cpu_ms_per_req",
    "import.httpx_ms",
    "import.unimw_ms",
    "import.gateway_ms",
    "import.wall_ms",
    "import.wall_best_ms",
    "import.rss_mb",
    "import.gateway_rss_mb",
    "import.openai_sdk_loaded",
    "memory.rss_growth_mb",
    "cache.inproc.p50_us",
    "cache.http.p50_us",
    "limits.memory.p50_us",
    "limits.memory_offline.p50_us",
    "tracing.sdk.p50_us",
]

#: Figures reported as a ratio to the direct call of the same run (or, for import, to ``import httpx``).
RATIOS = [
    "direct.raw.p50_us",
    "direct.httpx.p50_us",
    "inproc.chat.p50_us",
    "inproc.chat_vs_httpx.p50_us",
    "stream.raw_chunks.p50_us",
    "inproc.stream.per_chunk_us",
    "inproc.stream_vs_chunks.per_chunk_us",
    "inproc.stream_vs_raw.per_chunk_us",
    "http.serve.p50_us",
    "http.fastapi.p50_us",
    "ttfb.serve.p50_us",
    "ttfb.fastapi.p50_us",
    "ttfb.serve.added_vs_plain_us",
    "throughput.serve.rps",
    "throughput.serve.cpu_ms_per_req",
    "throughput.passthrough.rps",
    "throughput.passthrough.cpu_ms_per_req",
    "throughput.serve.rps_vs_passthrough",
    "throughput.serve.cpu_vs_passthrough",
    "throughput.unpinned.serve.rps",
    "throughput.serve_workers.rps",
    "throughput.serve_workers.rps_vs_upstream",
    "throughput.serve_workers.cpu_ms_per_req",
    "import.unimw_ms",
    "import.gateway_ms",
    "import.wall_ms",
    "import.rss_mb",
    "import.gateway_rss_mb",
    "cache.inproc.p50_us",
    "cache.http.p50_us",
    "limits.memory.p50_us",
    "limits.memory_offline.p50_us",
    "tracing.sdk.p50_us",
]

#: Where a ratio's numerator is what the figure adds to its baseline, not the figure itself.
ADDED_RATIOS = {
    "inproc.chat.p50_us",
    "inproc.chat_vs_httpx.p50_us",
    "inproc.stream.per_chunk_us",
    "inproc.stream_vs_chunks.per_chunk_us",
    "inproc.stream_vs_raw.per_chunk_us",
    "http.serve.p50_us",
    "http.fastapi.p50_us",
    "ttfb.serve.p50_us",
    "ttfb.fastapi.p50_us",
    "limits.memory.p50_us",
    "limits.memory_offline.p50_us",
    "tracing.sdk.p50_us",
}

META = ["cpu_model", "nproc", "python", "loadavg_start", "loadavg_end", "commit", "modified", "command", "cwd"]


# --- the ratio arithmetic -----------------------------------------------------------------------


def test_an_added_ratio_divides_what_is_added_by_the_baseline() -> None:
    figure = Figure("k", "through the server", 150.0, "µs", baseline=100.0, baseline_label="direct")
    assert (figure.added, figure.ratio, figure.ratio_of) == (50.0, 0.5, "added / direct")


def test_an_added_ratio_can_be_over_a_reference_other_than_the_baseline() -> None:
    figure = Figure("k", "limits", 130.0, "µs", 120.0, "no limits", reference=200.0, reference_label="direct aiohttp")
    assert (figure.added, figure.ratio, figure.ratio_of) == (10.0, 0.05, "added / direct aiohttp")


def test_a_value_ratio_divides_the_figure_itself() -> None:
    figure = Figure("k", "req/s", 500.0, "req/s", 2000.0, "direct", ratio_on="value")
    assert (figure.added, figure.ratio, figure.ratio_of) == (-1500.0, 0.25, "measured / direct")


def test_a_value_ratio_needs_no_baseline() -> None:
    figure = Figure("k", "hit", 30.0, "µs", reference=120.0, reference_label="direct", ratio_on="value")
    assert (figure.added, figure.ratio) == (None, 0.25)


def test_no_reference_or_one_of_zero_or_less_gives_no_ratio_and_no_verdict() -> None:
    assert Figure("k", "alone", 1.0, "µs").ratio is None
    assert Figure("k", "zero", 1.0, "µs", baseline=0.0, baseline_label="z").ratio is None
    below = Figure("k", "below", 5.0, "µs", -2.0, "noise", Target("<=", 1.0, "≤ 1.0x", on="ratio"), ratio_on="value")
    assert (below.ratio, below.met) == (None, None)
    assert Figure("k", "no base", 1.0, "µs", reference=2.0, reference_label="r").ratio is None


@pytest.mark.parametrize(
    ("target", "met"),
    [
        (Target("<=", 1.3, "≤ 1.3x", on="ratio"), True),
        (Target("<=", 1.2, "≤ 1.2x", on="ratio"), False),
        (Target(">=", 1.25, "≥ 1.25x", on="ratio"), True),
        (Target("<=", 24, "≤ +24", on="added"), False),
        (Target("<=", 125, "≤ 125", on="value"), True),
    ],
)
def test_a_target_bounds_the_value_the_added_or_the_ratio(target: Target, met: bool) -> None:
    figure = Figure("k", "import", 125.0, "ms", 100.0, "httpx", target, ratio_on="value")
    assert figure.met is met


def test_the_table_shows_each_ratio_and_what_it_is_over() -> None:
    results = Results()
    results.add(
        [
            Figure("a", "through serve", 150.0, "µs", 100.0, "direct"),
            Figure(
                "b",
                "serve req/s",
                500.0,
                "req/s",
                2000.0,
                "direct",
                Target(">=", 0.25, "≥ 0.25x", "ratio"),
                ratio_on="value",
            ),
        ]
    )
    lines = table(results).splitlines()
    assert lines[0].split() == ["figure", "measured", "baseline", "added", "ratio", "ratio", "of", "target", "met?"]
    assert "+0.50x" in lines[2] and "added / direct" in lines[2]
    assert "0.25x" in lines[3] and lines[3].rstrip().endswith("yes")


def test_the_json_holds_each_ratio_next_to_its_figure() -> None:
    results = Results()
    results.add([Figure("a", "through serve", 150.0, "µs", 100.0, "direct"), Figure("b", "alone", 3.0, "µs")])
    report = results.to_json({})
    assert report["figures"] == {"a": 150.0, "a.added": 50.0, "a.ratio": 0.5, "b": 3.0}
    assert [(row["ratio"], row["ratio_of"]) for row in report["rows"]] == [(0.5, "added / direct"), (None, None)]


# --- the quick run ------------------------------------------------------------------------------


def _numerator(row: dict[str, Any]) -> float:
    return float(row["added"] if row["key"] in ADDED_RATIOS else row["value"])


@pytest.mark.timeout(300)
def test_quick_bench_runs_and_reports_every_figure_with_its_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    report = json.loads(out.read_text())
    meta = report["meta"]
    assert meta["failed"] == []
    assert [key for key in META if key not in meta] == []
    assert meta["nproc"] >= 1 and len(meta["loadavg_start"]) == len(meta["loadavg_end"]) == 3
    assert "-m bench.run --quick --out" in meta["command"] and meta["python"] == sys.version.split()[0]
    figures = report["figures"]
    missing = [key for key in FIGURES if key not in figures]
    assert not missing, f"figures missing from the report: {missing}"
    assert [key for key in RATIOS if key + ".ratio" not in figures] == []
    for key, value in figures.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
    rows = {row["key"]: row for row in report["rows"]}
    for key in RATIOS:
        row = rows[key]
        assert row["ratio"] == figures[key + ".ratio"], key
        assert math.isclose(row["ratio"], _numerator(row) / row["reference"], rel_tol=1e-9), row
    assert rows["throughput.serve.rps"]["reference"] == figures["throughput.upstream.rps"]
    assert rows["throughput.serve.cpu_ms_per_req"]["reference"] == figures["throughput.upstream.cpu_ms_per_req"]
    assert rows["throughput.passthrough.rps"]["reference"] == figures["throughput.upstream.rps"]
    assert rows["throughput.serve.rps_vs_passthrough"]["reference"] == figures["throughput.passthrough.rps"]
    # --workers is measured against one worker and the upstream placed as it is (every process on every core).
    assert rows["throughput.serve_workers.rps"]["reference"] == figures["throughput.unpinned.serve.rps"]
    assert rows["throughput.serve_workers.rps_vs_upstream"]["reference"] == figures["throughput.unpinned.upstream.rps"]
    assert rows["import.unimw_ms"]["reference"] == figures["import.httpx_ms"]
    assert rows["ttfb.serve.added_vs_plain_us"]["reference"] == figures["http.serve.p50_us.added"]
    assert rows["inproc.stream_vs_raw.per_chunk_us"]["reference"] == figures["stream.raw_chunks.p50_us"] / 50
    if "limits.redis.p50_us" in figures:  # a redis-server to start, or one answering on 6379
        assert "limits.redis.p50_us.ratio" in figures
        assert figures["limits.redis.round_trips_response_path"] <= figures["limits.redis.round_trips"]
    if "concurrency.redis.p50_us" in figures:  # the lease is the one round trip before the answer
        assert figures["concurrency.redis.round_trips_response_path"] == 1.0
    # What this run cannot measure is reported as skipped, with a reason, never as a number.
    skipped = {row["key"]: row["reason"] for row in report["skipped"]}
    assert all(reason for reason in skipped.values()) and not set(skipped) & set(figures)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("bench.run at ") and any(line.startswith("load average: ") for line in lines[:8])
    assert any(line.split()[:2] == ["figure", "measured"] and "met?" in line for line in lines)
