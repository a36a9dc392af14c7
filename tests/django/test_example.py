"""The example Django project runs with one command and answers the openai SDK (``run.sh --once``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "django_project" / "run.sh"


def test_example_project_answers_once() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--once"], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        'plain: This is a mock reply from unimw (no model was called). You said: "Hello, Django!"',
        'streamed: This is a mock reply from unimw (no model was called). You said: "Stream it."',
        "usage rows: 2",
    ]
