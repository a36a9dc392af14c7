"""A client hanging up mid-stream over a real socket: the upstream call stops and the call is settled."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from starlette.applications import Starlette

from tests.conftest import policy_for
from tests.servers import hang_up_after, serve
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import UnimwMiddleware


def test_hanging_up_mid_stream_settles_the_call(upstream: OpenAIUpstream, upstream_url: str, tmp_path: Path) -> None:
    records = tmp_path / "usage.jsonl"
    config = tmp_path / "policies.yaml"
    config.write_text(yaml.safe_dump(policy_for(upstream_url, usage={"jsonl": str(records)})))
    upstream.plan("up-main", "slow")  # 0.2 s between words: the whole answer would take about 2 s
    body = {"model": "gpt-main", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with serve(UnimwMiddleware(Starlette(), config=config)) as url:
        started = time.monotonic()
        hang_up_after(url, body, events=3)  # the role chunk and two words
        deadline = time.monotonic() + 5
        while not records.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    record = json.loads(records.read_text())
    assert record["status"] == "cancelled"
    assert record["output_tokens"] <= 4  # what was produced before the hang-up, not the whole answer
    assert time.monotonic() - started < 1.8  # the gateway stopped reading the upstream instead of draining it
