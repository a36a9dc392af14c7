"""`unimw serve` and the README's demo command, run as a user would run them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not come up in {timeout} s")


def test_unimw_serve_answers_with_the_mock() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "unimw.cli", "serve", "--config", str(ROOT / "policies.yaml"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/health", process)
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        completion = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "ping"}])
        assert (
            completion.choices[0].message.content
            == 'This is a mock reply from unimw (no model was called). You said: "ping"'
        )
        assert [m.id for m in client.models.list()][:1] == ["mock-echo"]
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_unimw_serve_refuses_a_broken_policy(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("providers:\n  p: {kind: nope}\n")
    result = subprocess.run(
        [sys.executable, "-m", "unimw.cli", "serve", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert f"{path}:2: providers.p.kind: unknown provider kind 'nope'" in result.stderr


def test_the_readme_demo_command() -> None:
    """`bash examples/run.sh` from the README (with --once, so that it returns)."""
    env = {**os.environ, "PORT": str(free_port())}
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "run.sh"), "--once"], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    assert (
        'POST /v1/chat/completions -> This is a mock reply from unimw (no model was called). You said: "What can unimw do for my app?"'
        in result.stdout
    )
    assert "GET  /notes          -> {}" in result.stdout
