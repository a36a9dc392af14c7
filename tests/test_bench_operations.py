"""The operations benchmark, run with tiny counts so it can never rot. No thresholds on the numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_operations_benchmark_runs_and_reports_each_row() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.operations", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rows = [tuple(line.split()[:2]) for line in done.stdout.splitlines()[1:]]
    assert rows == [
        ("plain", "chat"),
        ("plain", "responses"),
        ("plain", "embeddings"),
        ("stream", "chat"),
        ("stream", "responses"),
    ]
