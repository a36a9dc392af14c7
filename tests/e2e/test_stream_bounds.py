"""An upstream that streams without end is stopped at ``server.max_stream_output_bytes``.

The loopback upstream's ``endless`` stream sends ``"endless "`` deltas until
the client hangs up. The caller gets what came up to the bound, then the
stream's error event; the upstream is hung up on, and the call is charged
for what was delivered.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import sdk
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway

pytestmark = pytest.mark.anyio

BOUND = 8000
WORD = "endless "  # 8 bytes: the bound is passed by the 1001st
HI: Any = [{"role": "user", "content": "hi"}]
MESSAGE = (
    f"The answer passed the limit of {BOUND} bytes of output for one stream (server.max_stream_output_bytes); "
    "the upstream was stopped there."
)


async def hung_up(upstream: OpenAIUpstream) -> list[int]:
    """The words of each endless stream, once the upstream saw the hang-up (within 5 s)."""
    assert await asyncio.to_thread(upstream.endless_ended.wait, 5)
    return upstream.endless_words


async def test_an_endless_chat_stream_ends_with_an_error_event_at_the_bound(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make_gateway(server={"max_stream_output_bytes": BOUND}, usage={"jsonl": str(records)})
    upstream.plan("up-main", "endless")
    text: list[str] = []
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="gpt-main", messages=HI, stream=True)
        with pytest.raises(openai.APIError) as caught:
            async for part in stream:
                text.append(part.choices[0].delta.content or "" if part.choices else "")
    assert caught.value.body == {
        "message": MESSAGE,
        "type": "upstream_error",
        "param": None,
        "code": "stream_output_too_large",
    }
    assert "".join(text) == WORD * (BOUND // len(WORD) + 1)  # up to the chunk that passed the bound
    assert len(await hung_up(upstream)) == 1
    assert upstream.calls == {"up-main": 1}  # neither retried nor continued
    await gateway.flush()
    record = json.loads(records.read_text())
    assert (record["status"], record["output_tokens"]) == ("error", (BOUND + len(WORD)) // 4)


async def test_an_endless_stream_behind_responses_ends_with_response_failed(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make_gateway(server={"max_stream_output_bytes": BOUND})
    upstream.plan("up-main", "endless")
    async with sdk(gateway) as client:
        stream = await client.responses.create(model="gpt-main", input="hi", stream=True)
        events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == WORD * (BOUND // len(WORD) + 1)
    last = events[-1]
    assert last.type == "response.failed"
    assert last.response.error is not None
    assert (last.response.error.code, last.response.error.message) == ("server_error", MESSAGE)
    assert len(await hung_up(upstream)) == 1


async def test_a_stream_within_the_bound_is_whole(
    make_gateway: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    answer = "Hello from up-main! The capital of France is Paris."
    gateway = make_gateway(server={"max_stream_output_bytes": len(answer)})
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(model="gpt-main", messages=HI, stream=True)
        text = "".join([part.choices[0].delta.content or "" async for part in stream if part.choices])
    assert text == answer
