"""200 concurrent calls through gunicorn's threaded workers: all answered, the shared budget exact."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import redis
import yaml

from tests.conftest import policy_for, sdk_http
from tests.redis_support import require_redis, unique
from tests.upstreams.openai_app import OpenAIUpstream
from tests.wsgi.helpers import HELLO

ROOT = Path(__file__).resolve().parent.parent.parent
CALLS, LIMIT = 200, 150


def test_two_gthread_workers_share_one_budget_exactly(
    upstream: OpenAIUpstream, upstream_url: str, tmp_path: Path
) -> None:
    url = require_redis()
    tenant = unique("acme")
    config = tmp_path / "policies.yaml"
    policy = policy_for(
        upstream_url,
        tenancy={"default": tenant, "resolve": [], "store": url},
        tenants={tenant: {"limits": [{"per": "minute", "requests": LIMIT}]}},
    )
    config.write_text(yaml.safe_dump(policy))
    # The listening socket is bound here and handed over, so no other process can take the port meanwhile.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    command = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "2"]
    command += [
        "--bind",
        f"fd://{listener.fileno()}",
        "--graceful-timeout",
        "5",
        "--preload",
        "tests.wsgi.gunicorn_app:app",
    ]
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "UNIMW_CONFIG": str(config)},
        pass_fds=[listener.fileno()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _ready(base), "gunicorn did not start"
        outcomes = asyncio.run(_calls(base))
    finally:
        server.terminate()
        try:
            _, errors = server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            _, errors = server.communicate(timeout=5)
        listener.close()
    assert {kind: outcomes.count(kind) for kind in set(outcomes)} == {"ok": LIMIT, "429": CALLS - LIMIT}, errors
    assert upstream.calls == {"up-main": LIMIT}
    client = redis.Redis.from_url(url)
    try:
        total = client.hget(f"unimw:lim:t:{tenant}:minute:requests:a", "_total")
    finally:
        client.close()
    assert int(total or 0) == LIMIT


def _ready(base: str) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(0.05)
    return False


async def _calls(base: str) -> list[str]:
    limits = httpx.Limits(max_connections=CALLS, max_keepalive_connections=CALLS)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="-", max_retries=0, http_client=sdk_http(http))

        async def one() -> str:
            try:
                await client.chat.completions.create(model="gpt-main", messages=HELLO)
                return "ok"
            except openai.RateLimitError as error:
                return "429" if error.code == "rate_limit_exceeded" else f"other 429: {error.code}"
            except openai.APIError as error:
                return f"other: {error!r}"

        return await asyncio.gather(*(one() for _ in range(CALLS)))
