"""The soak benchmark, run small so it can never rot: every call gets one outcome, and no cut answer passes as whole.

No assertion on speed or memory: those are the benchmark's to measure. The fault draws are seeded, so the
faulty upstream's tally is exact for a given seed and call count, but which calls meet which fault depends on
scheduling: only totals are asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS, WARMUP = 120, 20
OUTCOMES = {"complete", "stream error", "broken", "cut as complete"}


def test_a_small_soak_run_reports_every_call_and_never_a_cut_answer_as_complete(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    argv = ["-m", "bench.soak", "--calls", str(CALLS), "--warmup", str(WARMUP), "--concurrency", "8", "--out", str(out)]
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["figures"]
    outcomes = figures["outcomes"]
    assert sum(outcomes.values()) == CALLS
    assert {o for o in outcomes if not o.startswith("error ")} <= OUTCOMES
    assert "cut as complete" not in outcomes
    assert outcomes["complete"] > 0
    # Every call reached the faulty target first (cooldown off), some more than once (retries, fallbacks).
    assert sum(figures["faults_drawn"].values()) >= CALLS + WARMUP
    assert figures["rss_end_mb"] > 0 and figures["calls_per_s"] > 0
