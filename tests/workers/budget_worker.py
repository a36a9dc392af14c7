"""One replica of an app: a Gateway on the shared Redis store, firing concurrent calls.

Run by tests as ``python -m tests.workers.budget_worker POLICY_JSON API_KEY CALLS START_AT``;
prints ``{"ok": n, "refused": m, "other": k}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import openai

from tests.conftest import sdk_http
from unimw import Gateway


async def main(policy: dict[str, object], api_key: str, calls: int, start_at: float) -> dict[str, int]:
    async with Gateway.from_dict(policy) as gateway, httpx.AsyncClient(transport=gateway.transport()) as http:
        client = openai.AsyncOpenAI(
            base_url="http://unimw/v1", api_key=api_key, http_client=sdk_http(http), max_retries=0
        )
        messages = [{"role": "user", "content": "What is the capital of France?"}]

        async def one() -> str:
            try:
                await client.chat.completions.create(model="gpt-main", messages=messages, max_tokens=5)  # type: ignore[arg-type]
                return "ok"
            except openai.RateLimitError as error:
                return "refused" if error.code == "insufficient_quota" else "other"
            except openai.APIError:
                return "other"

        await asyncio.sleep(max(0.0, start_at - time.time()))  # every replica starts together
        outcomes = await asyncio.gather(*(one() for _ in range(calls)))
    return {kind: outcomes.count(kind) for kind in ("ok", "refused", "other")}


if __name__ == "__main__":
    policy_json, key, count, start = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(json.loads(policy_json), key, int(count), float(start)))))
