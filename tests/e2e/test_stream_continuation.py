"""A chat stream that fails after its first chunk is continued elsewhere: the SDK gets one whole answer.

Upstreams are the loopback OpenAI and Anthropic servers with scripted faults; the client is the
official SDK on the gateway's in-process transport. The continuation request carries what was
delivered as a final assistant turn (a prefill), sent only to targets that accept one.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from tests.conftest import sdk
from tests.otel import Telemetry
from tests.upstreams import full
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway
from unimw.attributes import RESUMED_TO, STREAM_RESUMED, STREAM_RESUMES
from unimw.usage import estimate_prompt_tokens, estimate_text_tokens

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5-20250929"
HELLO: Any = [{"role": "user", "content": "What is the capital of France?"}]
VLLM = {"continue_final_message": True, "add_generation_prompt": False}
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def make(
    make_gateway: Callable[..., Gateway], upstream_url: str, _anthropic_server: tuple[AnthropicUpstream, str]
) -> Callable[..., Gateway]:
    """Gateways with the conftest policy plus Claude (which accepts a prefill) and a vLLM-style model;
    ``primary`` adds settings to the conftest's primary provider."""

    def build(
        *, aliases: dict[str, Any] | None = None, primary: dict[str, Any] | None = None, **overrides: Any
    ) -> Gateway:
        providers = {
            "primary": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-primary-secret", "timeout": 1,
                        **(primary or {})},
            "claude": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-ant-x", "timeout": 2},
        }  # fmt: skip
        models = {
            "sonnet": {"provider": "claude", "model": SONNET, "price": {"input": 3, "output": 15}},
            "llama": {"provider": "primary", "model": "up-llama", "prefill": True, "prefill_params": VLLM},
            **overrides.pop("models", {}),
        }
        return make_gateway(providers=providers, models=models, aliases=aliases or {}, **overrides)

    return build


async def usage_of(client: openai.AsyncOpenAI, model: str, messages: Any) -> tuple[int, int]:
    """``(prompt, completion)`` tokens the gateway reports for ``messages`` streamed from ``model``."""
    stream = await client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    (usage,) = [c.usage async for c in stream if c.usage is not None]
    return usage.prompt_tokens, usage.completion_tokens


async def read(stream: AsyncIterator[ChatCompletionChunk]) -> tuple[str, list[ChatCompletionChunk]]:
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


async def test_an_anthropic_stream_cut_mid_answer_is_continued_on_the_same_target(
    make: Callable[..., Gateway], claude: AnthropicUpstream
) -> None:
    client = sdk(make())
    claude.plan(SONNET, "stream_error")  # an overloaded_error event after the first word, "Hello"
    stream = await client.chat.completions.create(
        model="sonnet", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = await read(stream)
    assert text == full(SONNET)
    assert claude.calls[SONNET] == 2
    assert claude.requests[1]["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role] == ["assistant"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # One usage chunk: the failed attempt's estimate (its prompt, the word it sent) plus the continuation's.
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1
    second = await usage_of(client, "sonnet", [*HELLO, {"role": "assistant", "content": "Hello"}])
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (
        estimate_prompt_tokens({"messages": HELLO}) + second[0],
        estimate_text_tokens("Hello") + second[1],
    )


@pytest.mark.parametrize("fault", ["drop", "stall", "malformed"])
async def test_an_openai_compatible_stream_continues_where_the_model_accepts_a_prefill(
    make: Callable[..., Gateway], upstream: OpenAIUpstream, fault: str
) -> None:
    # timeout 10 s: only the stall limit can end the 30 s silence within the bound below; a malformed event
    # fails the stream only when the provider says so
    gateway = make(primary={"stall_timeout": "300ms", "timeout": 10, "malformed_events": "fail"})
    upstream.plan("up-llama", fault)
    started = time.monotonic()
    text, _ = await read(await sdk(gateway).chat.completions.create(model="llama", messages=HELLO, stream=True))
    assert text == full("up-llama")
    assert time.monotonic() - started < 5  # the stall ended at stall_timeout, not the 30 s the upstream waits
    assert upstream.calls == {"up-llama": 2}
    continued = upstream.requests[1]
    assert continued["messages"][-1] == {"role": "assistant", "content": "Hello from up-llama!"}
    assert {k: continued[k] for k in VLLM} == VLLM
    assert "continue_final_message" not in upstream.requests[0]


async def test_a_cut_stream_moves_to_the_next_target_that_accepts_a_prefill(
    make: Callable[..., Gateway], upstream: OpenAIUpstream, claude: AnthropicUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make(
        aliases={"mixed": {"targets": ["gpt-main", "gpt-backup", "sonnet"]}},
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 1, "output": 2}}},
        usage={"jsonl": str(records)},
    )
    client = sdk(gateway)
    upstream.plan("up-main", "drop")
    text, _ = await read(await client.chat.completions.create(model="mixed", messages=HELLO, stream=True))
    delivered = "Hello from up-main!"
    # Claude continues its own text after a prefill it does not start with: all of it follows what was sent.
    assert text == delivered + full(SONNET)
    assert upstream.calls == {"up-main": 1}  # gpt-backup speaks OpenAI's wire: it would answer anew, so it is skipped
    assert claude.calls[SONNET] == 1
    assert claude.requests[0]["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": delivered}]}
    await gateway.flush()
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    first = (estimate_prompt_tokens({"messages": HELLO}), estimate_text_tokens(delivered))
    second = await usage_of(client, "sonnet", [*HELLO, {"role": "assistant", "content": delivered}])
    assert (record["provider"], record["upstream_model"]) == ("claude", SONNET)
    assert (record["input_tokens"], record["output_tokens"]) == (first[0] + second[0], first[1] + second[1])
    # Each attempt at its own price: gpt-main 1 and 2 USD per 1M tokens, sonnet 3 and 15.
    assert record["cost_usd"] == (first[0] * 1 + first[1] * 2 + second[0] * 3 + second[1] * 15) / 1e6


async def test_a_stream_cut_before_any_text_starts_afresh_on_any_target(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    upstream.plan("up-main", "drop:0")  # only the role delta reached the caller: nothing to prefill
    text, _ = await read(await sdk(make()).chat.completions.create(model="smart", messages=HELLO, stream=True))
    assert text == full("up-main")  # the same target, asked again as it was
    assert upstream.calls == {"up-main": 2}
    assert upstream.requests[1]["messages"] == HELLO


async def test_a_late_first_token_fails_over_before_anything_reached_the_caller(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make(primary={"first_token_timeout": "300ms", "timeout": 10}, dispatch={"retries": 0})
    upstream.plan("up-main", "late:20")
    started = time.monotonic()
    text, _ = await read(await sdk(gateway).chat.completions.create(model="smart", messages=HELLO, stream=True))
    assert text == full("up-backup")
    assert time.monotonic() - started < 5
    assert upstream.calls == {"up-main": 1, "up-backup": 1}


async def test_stream_limits_do_not_cut_a_slow_whole_answer(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make(primary={"first_token_timeout": "200ms", "stall_timeout": "200ms", "timeout": 10})
    upstream.plan("up-main", "delay:0.6")
    completion = await sdk(gateway).chat.completions.create(model="gpt-main", messages=HELLO)
    assert completion.choices[0].message.content == full("up-main")
    assert upstream.calls == {"up-main": 1}


async def test_a_model_overrides_its_providers_stream_limits(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    gateway = make(
        primary={"first_token_timeout": "200ms", "timeout": 10},
        models={"gpt-main": {"provider": "primary", "model": "up-main", "first_token_timeout": "5s"}},
    )
    upstream.plan("up-main", "late:0.6")
    text, _ = await read(await sdk(gateway).chat.completions.create(model="smart", messages=HELLO, stream=True))
    assert text == full("up-main")  # its own limit, 5 s, waited for the late first chunk
    assert upstream.calls == {"up-main": 1}


async def test_an_unparseable_event_is_skipped_and_counted_on_the_span(
    make: Callable[..., Gateway], upstream: OpenAIUpstream, telemetry: Telemetry
) -> None:
    gateway = make(telemetry=telemetry)
    upstream.plan("up-main", "malformed")
    async with httpx.AsyncClient(transport=gateway.transport(), base_url="http://unimw/v1") as http:
        body = {"model": "gpt-main", "messages": HELLO, "stream": True}
        response = await http.post("/chat/completions", json=body)
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]) == full("up-main")
    assert response.text.endswith("data: [DONE]\n\n") and "unimw_" not in response.text
    assert upstream.calls == {"up-main": 1}
    await gateway.flush()
    assert telemetry.span("chat gpt-main")["attributes"]["unimw.stream.skipped_events"] == 1


async def test_a_whole_stream_without_done_is_complete(make: Callable[..., Gateway], upstream: OpenAIUpstream) -> None:
    upstream.plan("up-main", "nodone")
    stream = await sdk(make()).chat.completions.create(
        model="gpt-main", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    text, chunks = await read(stream)
    assert text == full("up-main")
    assert [c.usage is not None for c in chunks].count(True) == 1
    assert upstream.calls == {"up-main": 1}


async def test_without_a_target_that_accepts_a_prefill_the_caller_gets_the_original_error(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    upstream.plan("up-main", "drop")
    stream = await sdk(make()).chat.completions.create(model="smart", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="closed the connection"):
        await read(stream)
    assert upstream.calls == {"up-main": 1}  # gpt-backup would have repeated the answer: never asked


@pytest.mark.parametrize("asked", [{"n": 2}, {"logprobs": True}], ids=["several-choices", "logprobs"])
async def test_a_stream_that_cannot_be_rejoined_whole_keeps_its_error(
    make: Callable[..., Gateway], upstream: OpenAIUpstream, asked: dict[str, Any]
) -> None:
    upstream.plan("up-llama", "drop")  # llama takes a prefill: only the request's shape stops the continuation
    stream = await sdk(make()).chat.completions.create(model="llama", messages=HELLO, stream=True, **asked)
    with pytest.raises(openai.APIError, match="closed the connection"):
        await read(stream)
    assert upstream.calls == {"up-llama": 1}


async def test_a_tool_call_stream_is_not_continued(make: Callable[..., Gateway], claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "stream_error")  # after the first delta of the tool call's arguments
    stream = await sdk(make()).chat.completions.create(model="sonnet", messages=HELLO, tools=TOOLS, stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        await read(stream)
    assert claude.calls[SONNET] == 1


async def test_a_failed_continuation_never_masks_the_original_error(
    make: Callable[..., Gateway], claude: AnthropicUpstream
) -> None:
    claude.plan(SONNET, "stream_error", "400")  # the continuation is refused with a 400
    stream = await sdk(make()).chat.completions.create(model="sonnet", messages=HELLO, stream=True)
    with pytest.raises(openai.APIError, match="Overloaded"):
        await read(stream)
    assert claude.calls[SONNET] == 2


async def test_continuation_can_be_turned_off(make: Callable[..., Gateway], claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "stream_error")
    stream = await sdk(make(dispatch={"stream_resumes": 0})).chat.completions.create(
        model="sonnet", messages=HELLO, stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        await read(stream)
    assert claude.calls[SONNET] == 1


async def test_resumes_are_bounded(make: Callable[..., Gateway], claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "stream_error", "stream_error", "stream_error")
    stream = await sdk(make(dispatch={"stream_resumes": 2})).chat.completions.create(
        model="sonnet", messages=HELLO, stream=True
    )
    with pytest.raises(openai.APIError, match="Overloaded"):
        await read(stream)
    assert claude.calls[SONNET] == 3


async def test_the_switch_is_on_the_call_span(
    make: Callable[..., Gateway], claude: AnthropicUpstream, telemetry: Telemetry
) -> None:
    gateway = make(telemetry=telemetry)
    claude.plan(SONNET, "stream_error")
    text, _ = await read(await sdk(gateway).chat.completions.create(model="sonnet", messages=HELLO, stream=True))
    assert text == full(SONNET)
    await gateway.flush()
    span = telemetry.span("chat sonnet")
    assert span["attributes"][STREAM_RESUMES] == 1
    assert [e for e in span["events"] if e[0] == STREAM_RESUMED] == [
        (
            STREAM_RESUMED,
            {
                "unimw.target": "sonnet",
                "unimw.provider": "claude",
                "error.type": "server_is_overloaded",
                RESUMED_TO: "sonnet",
            },
        )
    ]


@pytest.mark.parametrize(
    ("attempt_spans", "first_status"),
    [
        ("retries", "ERROR"),  # the cut attempt had no span of its own (the only one so far): made at the cut
        ("always", "UNSET"),  # it had one, ended at its first chunk: kept as it was
    ],
)
async def test_each_attempt_of_a_continued_stream_has_a_span_under_the_call(
    make: Callable[..., Gateway], claude: AnthropicUpstream, telemetry: Telemetry, attempt_spans: str, first_status: str
) -> None:
    gateway = make(telemetry=telemetry, tracing={"attempt_spans": attempt_spans})
    claude.plan(SONNET, "stream_error")
    text, _ = await read(await sdk(gateway).chat.completions.create(model="sonnet", messages=HELLO, stream=True))
    assert text == full(SONNET)
    await gateway.flush()
    assert telemetry.tree() == ["chat sonnet", f"  chat {SONNET}", f"  chat {SONNET}"]
    attempts = [s for s in telemetry.spans() if s["parent"] == "chat sonnet"]
    assert [(s["status"], s["attributes"]["unimw.attempt"], s["attributes"].get("error.type")) for s in attempts] == [
        (first_status, 1, "server_is_overloaded" if first_status == "ERROR" else None),
        ("UNSET", 2, None),
    ]
    call = telemetry.span("chat sonnet")
    assert attempts[0]["trace_id"] == attempts[1]["trace_id"] == call["trace_id"]
