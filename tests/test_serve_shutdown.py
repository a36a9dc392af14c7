"""`unimw serve` stopping with streams open: they finish within --shutdown-grace, else are cancelled, and every
call is settled (its usage record written) before the process exits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.test_serve import free_port, wait_until_up

WORDS = " ".join(f"w{i}" for i in range(40))  # the mock quotes it back, a piece per chunk


def start(tmp_path: Path, chunk_delay: float, grace: float) -> tuple[subprocess.Popen[bytes], str, Path]:
    records = tmp_path / "usage.jsonl"
    config = tmp_path / "policies.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "providers": {"mock": {"kind": "mock", "options": {"chunk_delay": chunk_delay}}},
                "models": {"mock-echo": {"provider": "mock", "model": "mock-echo"}},
                "usage": {"jsonl": str(records)},
            }
        )
    )
    port = free_port()
    argv = ["serve", "--config", str(config), "--port", str(port), "--shutdown-grace", str(grace)]
    process = subprocess.Popen([sys.executable, "-m", "unimw.cli", *argv], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base + "/health", process)
    return process, base, records


def stream_then_stop(process: subprocess.Popen[bytes], base: str) -> tuple[list[str], float]:
    """Open a stream, SIGTERM the server after its first chunk, read what still comes; the lines and the
    seconds from the signal to the process's exit."""
    body = {"model": "mock-echo", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    lines: list[str] = []
    with httpx.Client(timeout=30) as http, http.stream("POST", base + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        stopped = 0.0
        try:
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                if not stopped and line.startswith("data: "):
                    process.send_signal(signal.SIGTERM)
                    stopped = time.monotonic()
        except httpx.RemoteProtocolError:
            pass  # cancelled at the end of the grace period: the connection closes mid-stream
    process.wait(timeout=30)
    return lines, time.monotonic() - stopped


def test_a_stream_that_finishes_within_the_grace_period_is_whole(tmp_path: Path) -> None:
    process, base, records = start(tmp_path, chunk_delay=0.02, grace=20)
    lines, _ = stream_then_stop(process, base)
    assert lines[-1] == "data: [DONE]"
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert (record["status"], record["stream"]) == ("ok", True)


def test_a_stream_past_the_grace_period_is_cancelled_and_settled_before_exit(tmp_path: Path) -> None:
    process, base, records = start(tmp_path, chunk_delay=0.5, grace=1)  # 40 pieces: 20 s of stream
    lines, seconds = stream_then_stop(process, base)
    assert "data: [DONE]" not in lines
    assert seconds < 10  # the grace period, not the stream's 20 s
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert (record["status"], record["stream"]) == ("cancelled", True)
    assert record["output_tokens"] > 0  # charged for the pieces it produced
