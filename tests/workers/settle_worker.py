"""A process that makes one plain and one streamed call on the shared Redis store, then exits at once.

Run by tests as ``python -m tests.workers.settle_worker POLICY_JSON NOW DELAY``. Its store waits DELAY seconds
before each settlement's round trip (a slow link), so both answers are back long before their settlements, and
only the gateway's closing can still settle them before the process exits. Prints the costs the caller was told
and how many settlements had run when the answers were back, and at exit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import httpx
import openai

from tests.conftest import sdk_http
from unimw import Gateway
from unimw.stores.base import Counter
from unimw.stores.redis import RedisLimitStore


class SlowLink(RedisLimitStore):
    """The Redis store behind a link that takes ``delay`` seconds before each settlement."""

    def __init__(self, url: str, delay: float) -> None:
        super().__init__(url)
        self.delay = delay
        self.settled = 0

    async def settle(
        self, call_id: str, counters: Sequence[Counter], reserved: Sequence[int], actual: Sequence[int], now: float
    ) -> tuple[int, ...]:
        await asyncio.sleep(self.delay)
        totals = await super().settle(call_id, counters, reserved, actual, now)
        self.settled += 1
        return totals


async def main(policy: dict[str, Any], now: float, delay: float) -> dict[str, Any]:
    store = SlowLink(policy["tenancy"]["store"], delay)
    gateway = Gateway.from_dict(policy, limit_store=store, clock=lambda: now)
    async with gateway, httpx.AsyncClient(transport=gateway.transport()) as http:
        client = openai.AsyncOpenAI(base_url="http://unimw/v1", api_key="x", http_client=sdk_http(http), max_retries=0)
        messages: Any = [{"role": "user", "content": "hi"}]
        raw = await client.chat.completions.with_raw_response.create(model="gpt-main", messages=messages, max_tokens=50)
        stream = await client.chat.completions.create(
            model="gpt-main", messages=messages, max_tokens=50, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        extra = chunks[-1].model_extra or {}
        settled_when_answered = store.settled
    return {
        "costs": [raw.headers["x-unimw-cost"], extra["x_unimw"]["cost_usd"]],
        "settled_when_answered": settled_when_answered,
        "settled_at_exit": store.settled,
    }


if __name__ == "__main__":
    policy_json, now, delay = sys.argv[1:4]
    print(json.dumps(asyncio.run(main(json.loads(policy_json), float(now), float(delay)))))
