"""The benchmark, run with tiny counts so it can never rot. No thresholds on the numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Figures every run measures, whatever is installed (wrk or not, LiteLLM or not).
FIGURES = [
    "direct.raw.p50_us",
    "direct.aiohttp.p50_us",
    "direct.httpx.p50_us",
    "inproc.chat.p50_us",
    "inproc.chat.p50_us.added",
    "inproc.chat_vs_httpx.p50_us.added",
    "stream.raw.p50_us",
    "stream.aiohttp.p50_us",
    "stream.aiohttp_chunks.p50_us",
    "stream.httpx.p50_us",
    "inproc.stream.p50_us",
    "inproc.stream.per_chunk_us",
    "inproc.stream.per_chunk_us.added",
    "inproc.stream_vs_chunks.per_chunk_us.added",
    "http.direct.p50_us",
    "http.serve.p50_us",
    "http.serve.p50_us.added",
    "http.fastapi.p50_us",
    "http.fastapi.p50_us.added",
    "ttfb.direct.p50_us",
    "ttfb.serve.p50_us",
    "ttfb.serve.p50_us.added",
    "ttfb.fastapi.p50_us",
    "throughput.upstream.rps",
    "throughput.serve.rps",
    "throughput.serve.cpu_ms_per_req",
    "import.wall_ms",
    "import.wall_best_ms",
    "import.rss_mb",
    "import.openai_sdk_loaded",
    "memory.rss_growth_mb",
    "cache.inproc.p50_us",
    "cache.http.p50_us",
    "limits.memory.p50_us",
    "limits.memory_offline.p50_us",
    "tracing.sdk.p50_us",
]


@pytest.mark.timeout(300)
def test_quick_bench_runs_and_reports_every_figure(tmp_path: Path) -> None:
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
    assert report["meta"]["failed"] == []
    figures = report["figures"]
    missing = [key for key in FIGURES if key not in figures]
    assert not missing, f"figures missing from the report: {missing}"
    for key, value in figures.items():
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
    # Slots for features still to land are reported as skipped, with a reason, never as numbers.
    for skipped in report["skipped"]:
        assert skipped["key"] not in figures and skipped["reason"]
    assert "figure" in run.stdout and "met?" in run.stdout
