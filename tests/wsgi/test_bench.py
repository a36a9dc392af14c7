"""The WSGI door's benchmark, run with tiny counts so it can never rot. No thresholds on the numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_wsgi_benchmark_runs_and_reports_each_row() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.wsgi", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert rows == ["chat", "stream", "a2wsgi"]
    assert all(" added " in line and " ratio wsgi/asgi " in line for line in done.stdout.splitlines()[1:])
