"""``unimw serve --reload``, run as a user would: rewrite the policy file, send SIGHUP, the next call uses it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import yaml

from tests.conftest import policy_for
from tests.test_serve import free_port, wait_until_up
from tests.upstreams.openai_app import OpenAIUpstream

WAIT = 30.0
RELOADED = "unimw: reloaded the policy from "
REFUSED = "unimw: the policy was not reloaded, the one before stays: "


def policy(upstream_url: str, target: str) -> dict[str, Any]:
    return policy_for(upstream_url, aliases={"smart": {"targets": [target], "strategy": "fallback"}})


class Server:
    """A ``unimw serve --reload`` process, its port and what it logged (a file, read as it grows)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def logged(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, times: int = 1) -> str:
        """The log once ``text`` is in it ``times`` times (at most :data:`WAIT` seconds)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if (logged := self.logged()).count(text) >= times:
                return logged
            assert self.process.poll() is None, f"the server exited: {self.logged()}"
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged {times} times in {WAIT} s: {self.logged()}")

    def ask(self) -> str:
        """The upstream model that answered a call of ``smart`` (on a new connection)."""
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1", api_key="x", max_retries=0, timeout=WAIT
        ) as client:
            answer = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}])
        return answer.model


@contextmanager
def serving(config: Path, *flags: str) -> Iterator[Server]:
    port = free_port()
    log = config.with_suffix(".log")
    with log.open("wb") as sink:
        command = [sys.executable, "-m", "unimw.cli", "serve", "--reload", "--config", str(config)]
        process = subprocess.Popen([*command, "--port", str(port), *flags], stdout=sink, stderr=sink)
    server = Server(process, port, log)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", process, timeout=WAIT)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)


def test_sighup_reloads_the_file_and_a_broken_one_keeps_the_policy_before(
    tmp_path: Path, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy(upstream_url, "gpt-main"), sort_keys=False))
    with serving(config) as server:
        assert server.ask() == "up-main"

        config.write_text(yaml.safe_dump(policy(upstream_url, "gpt-backup"), sort_keys=False))
        os.kill(server.process.pid, signal.SIGHUP)
        server.wait_for(RELOADED + str(config))
        assert server.ask() == "up-backup"

        broken = yaml.safe_dump(policy(upstream_url, "gpt-main"), sort_keys=False)
        broken = broken.replace("strategy: fallback", "strategy: sideways")
        line = broken.splitlines().index("    strategy: sideways") + 1
        config.write_text(broken)
        os.kill(server.process.pid, signal.SIGHUP)
        logged = server.wait_for(REFUSED)
        assert f"{REFUSED}{config}:{line}: aliases.smart.strategy" in logged
        assert server.ask() == "up-backup"  # still the policy loaded before
        assert server.process.poll() is None
    assert dict(upstream.calls) == {"up-main": 1, "up-backup": 2}


def test_with_workers_the_parent_passes_sighup_to_each_worker(
    tmp_path: Path, upstream: OpenAIUpstream, upstream_url: str
) -> None:
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy(upstream_url, "gpt-main"), sort_keys=False))
    with serving(config, "--workers", "2") as server:
        assert server.ask() == "up-main"
        config.write_text(yaml.safe_dump(policy(upstream_url, "gpt-backup"), sort_keys=False))
        os.kill(server.process.pid, signal.SIGHUP)
        server.wait_for(RELOADED + str(config), times=2)  # one line per worker
        assert [server.ask() for _ in range(6)] == ["up-backup"] * 6
        assert "restarting processes" not in server.logged()
    assert dict(upstream.calls) == {"up-main": 1, "up-backup": 6}
