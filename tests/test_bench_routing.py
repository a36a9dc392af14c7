"""bench/routing.py, run quick so it can never rot. No thresholds on the numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.routing import main


def test_the_routing_bench_times_every_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "routing.json"
    assert main(["--quick", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())["ns_per_call"]
    assert list(figures) == [
        "fallback",
        "weighted",
        "sticky",
        "least_latency",
        "cheapest",
        "when (tenant, plan, header; none matches)",
        "when (tools, structured, tokens; none matches)",
        "least_latency: the sample per attempt",
    ]
    assert all(ns > 0 for ns in figures.values())
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("bench.routing on Python ") and len(printed) == 1 + len(figures)
    assert printed[2].lstrip().startswith("weighted") and printed[2].endswith(" µs)")
