"""How many messages, input items and embeddings inputs one request may carry, through the official SDK.

At each bound the request reaches the upstream; one past it gets OpenAI's
400 (``array_above_max_length``, naming the field) and no upstream call.
Messages and input items go in ``extra_body``, which the SDK sends as they
are: its typed transform of 10,000 messages takes seconds (measured 7 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.conftest import sdk
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.operations.chat_validation import MAX_MESSAGES
from unimw.operations.embeddings import MAX_INPUTS
from unimw.operations.responses_validation import MAX_INPUT_ITEMS

pytestmark = pytest.mark.anyio


def messages(count: int) -> list[Any]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(count)]


async def chat(client: openai.AsyncOpenAI, count: int) -> Any:
    return await client.chat.completions.create(model="gpt-main", messages=[], extra_body={"messages": messages(count)})


async def responses(client: openai.AsyncOpenAI, count: int) -> Any:
    return await client.responses.create(model="gpt-main", input=[], extra_body={"input": messages(count)})


async def embeddings(client: openai.AsyncOpenAI, count: int) -> Any:
    return await client.embeddings.create(model="embed", input=["hi"] * count)


CASES = [
    pytest.param(chat, MAX_MESSAGES, "messages", "up-main", id="chat-messages"),
    pytest.param(responses, MAX_INPUT_ITEMS, "input", "up-main", id="responses-input"),
    pytest.param(embeddings, MAX_INPUTS, "input", "up-embed", id="embeddings-input"),
]


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(models={"embed": {"provider": "primary", "model": "up-embed"}})


@pytest.mark.parametrize(("send", "bound", "param", "upstream_model"), CASES)
async def test_as_many_as_the_bound_reach_the_upstream(
    gateway: Gateway, upstream: OpenAIUpstream, send: Any, bound: int, param: str, upstream_model: str
) -> None:
    async with sdk(gateway) as client:
        await send(client, bound)
    assert upstream.calls == {upstream_model: 1}


@pytest.mark.parametrize(("send", "bound", "param", "upstream_model"), CASES)
async def test_one_past_the_bound_is_a_400_naming_the_field_and_calls_no_upstream(
    gateway: Gateway, upstream: OpenAIUpstream, send: Any, bound: int, param: str, upstream_model: str
) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await send(client, bound + 1)
    assert caught.value.body == {
        "message": f"Invalid '{param}': array too long. Expected an array with maximum length {bound}, "
        f"but got an array with length {bound + 1} instead.",
        "type": "invalid_request_error",
        "param": param,
        "code": "array_above_max_length",
    }
    assert upstream.calls == {}
