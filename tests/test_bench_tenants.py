"""The many-tenants memory benchmark, run small so it can never rot: its report's shape and its exact counts.

No assertion on bytes or speed: those are the benchmark's to measure, not a test's to guess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TENANTS, WARMUP, TRACED = 2000, 100, 500

META = {
    "command",
    "date",
    "commit",
    "python",
    "machine",
    "nproc",
    "cpu",
    "rss_source",
    "tenant_id",
    "loadavg_1m_at_start",
    "loadavg_1m_at_end",
}
RUN = {
    "variant",
    "tenants",
    "warmup_tenants",
    "calls_per_tenant",
    "counters_per_tenant",
    "rss_before_bytes",
    "rss_after_bytes",
    "rss_growth_bytes",
    "bytes_per_tenant",
    "bytes_per_tenant_caches_full",
    "max_rss_bytes",
    "counters",
    "counters_before",
    "store",
    "limiter_cache",
    "rules_cache",
    "calls",
    "seconds",
    "calls_per_second",
    "checkpoints",
    "sample_tenant",
}
#: The first measured tenant (number 10**9) is on the pro plan; one call of "hi" costs 183 micro-dollars.
SAMPLE = {
    "id": "00000000-0000-0000-0000-00003b9aca00",
    "limits": [["requests per hour", 1.0, 1000.0], ["usd per month", 0.000183, 50.0]],
}


def bench(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "tenants.json"
    argv = ["--tenants", str(TENANTS), "--warmup", str(WARMUP), "--trace-tenants", str(TRACED), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench.tenants", *argv], cwd=ROOT, capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["meta"]["command"] == " ".join(["python -m bench.tenants", *argv])
    return done.stdout, report


def test_the_tenants_benchmark_reports_every_figure_and_exactly_the_counters_it_made(tmp_path: Path) -> None:
    stdout, report = bench(tmp_path)
    assert set(report) == {"meta", "variants", "traced"}
    assert set(report["meta"]) == META
    assert list(report["variants"]) == ["plan", "end_user"]
    everyone = TENANTS + WARMUP
    for variant, per_tenant in (("plan", 2), ("end_user", 3)):
        run = report["variants"][variant]
        assert set(run) == RUN | {"reachable_bytes"}
        assert (run["variant"], run["tenants"], run["warmup_tenants"], run["calls_per_tenant"]) == (
            variant,
            TENANTS,
            WARMUP,
            1,
        )
        assert (run["counters_per_tenant"], run["counters"], run["counters_before"]) == (
            per_tenant,
            per_tenant * everyone,
            per_tenant * WARMUP,
        )
        # An hourly log and a monthly total per tenant; the end user's daily total is a second calendar counter.
        assert run["store"] == {
            "sliding": everyone,
            "fixed": (per_tenant - 1) * everyone,
            "once": 0,
            "entries": everyone,
        }
        # Tenants on a plan as is share its rules: the rules cache keeps nothing for them.
        assert (run["limiter_cache"], run["rules_cache"], run["calls"]) == (everyone, 0, TENANTS)
        assert run["bytes_per_tenant_caches_full"] is None  # 2,100 entries: neither cache fills
        assert [c["tenants"] for c in run["checkpoints"]] == list(range(200, TENANTS + 1, 200))
        assert [(c["limiter_cache"], c["rules_cache"]) for c in run["checkpoints"]] == [
            (WARMUP + n, 0) for n in range(200, TENANTS + 1, 200)
        ]
        assert run["rss_growth_bytes"] == run["rss_after_bytes"] - run["rss_before_bytes"]
        assert set(run["reachable_bytes"]) == {"store", "limiter_cache", "rules_cache"}
        assert run["sample_tenant"] == SAMPLE
    traced = report["traced"]
    assert set(traced) == RUN | {"tracemalloc"}
    assert (traced["variant"], traced["tenants"], traced["counters"]) == ("plan", TRACED, 2 * (TRACED + WARMUP))
    assert set(traced["tracemalloc"]) == {"traced_bytes", "traced_peak_bytes", "bytes_per_tenant", "by_file", "by_line"}
    assert {"where", "bytes", "bytes_per_tenant", "blocks"} == set(traced["tracemalloc"]["by_line"][0])
    rows = [line.split()[:3] for line in stdout.splitlines()[2:4]]
    assert rows == [["plan", str(TENANTS), str(2 * everyone)], ["end_user", str(TENANTS), str(3 * everyone)]]
