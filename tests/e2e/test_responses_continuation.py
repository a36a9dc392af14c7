"""A ``/v1/responses`` stream that fails after its first event is continued elsewhere: the SDK gets one response.

Translated targets are continued at the chat level, as chat streams are: the text delivered so far goes back
as a prefill to a target that accepts one, and its chunks carry on the same output item. A native Responses
stream is not continued. Upstreams are the loopback OpenAI and Anthropic servers with scripted faults; the
client is the official SDK on the gateway's in-process transport.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

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
QUESTION = "What is the capital of France?"
HELLO: Any = [{"role": "user", "content": QUESTION}]
VLLM = {"continue_final_message": True, "add_generation_prompt": False}
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def make(
    make_gateway: Callable[..., Gateway], upstream_url: str, _anthropic_server: tuple[AnthropicUpstream, str]
) -> Callable[..., Gateway]:
    """Gateways with the conftest policy plus Claude (which accepts a prefill), a vLLM-style model and a model
    on a provider that speaks Responses natively; ``primary`` adds settings to the conftest's primary provider."""

    def build(
        *, aliases: dict[str, Any] | None = None, primary: dict[str, Any] | None = None, **overrides: Any
    ) -> Gateway:
        providers = {
            "primary": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-primary-secret", "timeout": 1,
                        **(primary or {})},
            "native": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-native", "timeout": 1,
                       "options": {"responses": True}},
            "claude": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-ant-x", "timeout": 2},
        }  # fmt: skip
        models = {
            "sonnet": {"provider": "claude", "model": SONNET, "price": {"input": 3, "output": 15}},
            "llama": {"provider": "primary", "model": "up-llama", "prefill": True, "prefill_params": VLLM},
            "native": {"provider": "native", "model": "up-native"},
            **overrides.pop("models", {}),
        }
        return make_gateway(providers=providers, models=models, aliases=aliases or {}, **overrides)

    return build


async def events_of(client: openai.AsyncOpenAI, model: str, **asked: Any) -> list[Any]:
    stream = await client.responses.create(model=model, input=QUESTION, stream=True, **asked)
    return [event async for event in stream]


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def chat_usage(client: openai.AsyncOpenAI, model: str, messages: Any) -> tuple[int, int]:
    """``(prompt, completion)`` tokens the gateway reports for ``messages`` streamed from ``model`` as chat."""
    stream = await client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    (usage,) = [c.usage async for c in stream if c.usage is not None]
    return usage.prompt_tokens, usage.completion_tokens


def assert_one_response(events: list[Any]) -> Any:
    """The events make one well-formed response (one id, numbered in order, one item's deltas); its final form."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1
    assert [e.type for e in events].count("response.created") == 1
    assert [e.type for e in events].count("response.output_item.added") == 1
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len({(e.item_id, e.output_index, e.content_index) for e in deltas}) == 1
    assert events[-1].type == "response.completed"
    final = events[-1].response
    assert final.status == "completed" and final.id == events[0].response.id
    assert final.output_text == text_of(events)
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == text_of(events) and done.item_id == deltas[0].item_id
    return final


async def test_an_anthropic_stream_cut_mid_answer_is_continued_on_the_same_target(
    make: Callable[..., Gateway], claude: AnthropicUpstream
) -> None:
    client = sdk(make())
    claude.plan(SONNET, "stream_error")  # an overloaded_error event after the first word, "Hello"
    events = await events_of(client, "sonnet")
    assert text_of(events) == full(SONNET)
    final = assert_one_response(events)
    assert claude.calls[SONNET] == 2
    assert claude.requests[1]["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}
    # One usage: the failed attempt's estimate (its prompt, the word it sent) plus the continuation's.
    second = await chat_usage(client, "sonnet", [*HELLO, {"role": "assistant", "content": "Hello"}])
    assert (final.usage.input_tokens, final.usage.output_tokens) == (
        estimate_prompt_tokens({"messages": HELLO}) + second[0],
        estimate_text_tokens("Hello") + second[1],
    )


async def test_the_sdk_stream_helper_gets_the_whole_continued_response(
    make: Callable[..., Gateway], claude: AnthropicUpstream
) -> None:
    claude.plan(SONNET, "stream_error")
    async with sdk(make()).responses.stream(model="sonnet", input=QUESTION) as stream:
        texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(texts) == final.output_text == full(SONNET)
    assert claude.calls[SONNET] == 2


@pytest.mark.parametrize("fault", ["drop", "stall", "malformed"])
async def test_an_openai_compatible_stream_continues_where_the_model_accepts_a_prefill(
    make: Callable[..., Gateway], upstream: OpenAIUpstream, fault: str
) -> None:
    gateway = make(primary={"stall_timeout": "300ms", "timeout": 10, "malformed_events": "fail"})
    upstream.plan("up-llama", fault)
    events = await events_of(sdk(gateway), "llama", max_output_tokens=100)
    assert text_of(events) == full("up-llama")
    assert assert_one_response(events).max_output_tokens == 100  # the caller's cap, as asked
    assert upstream.calls == {"up-llama": 2}
    continued, delivered = upstream.requests[1], "Hello from up-llama!"
    assert continued["messages"] == [*HELLO, {"role": "assistant", "content": delivered}]
    # The cap is lowered by what was delivered.
    assert (upstream.requests[0]["max_completion_tokens"], continued["max_completion_tokens"]) == (
        100,
        100 - estimate_text_tokens(delivered),
    )
    assert {k: continued[k] for k in VLLM} == VLLM
    assert "continue_final_message" not in upstream.requests[0]


async def test_a_cut_stream_moves_to_the_next_target_that_accepts_a_prefill_priced_per_attempt(
    make: Callable[..., Gateway], upstream: OpenAIUpstream, claude: AnthropicUpstream, tmp_path: Path
) -> None:
    records = tmp_path / "usage.jsonl"
    gateway = make(
        aliases={"mixed": {"targets": ["gpt-main", "gpt-backup", "native", "sonnet"]}},
        models={"gpt-main": {"provider": "primary", "model": "up-main", "price": {"input": 1, "output": 2}}},
        usage={"jsonl": str(records)},
    )
    client = sdk(gateway)
    upstream.plan("up-main", "drop")
    events = await events_of(client, "mixed")
    delivered = "Hello from up-main!"
    assert text_of(events) == delivered + full(SONNET)
    final = assert_one_response(events)
    assert upstream.calls == {"up-main": 1}  # gpt-backup and native would answer anew: skipped
    assert claude.calls[SONNET] == 1
    assert claude.requests[0]["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": delivered}]}
    await gateway.flush()
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    first = (estimate_prompt_tokens({"messages": HELLO}), estimate_text_tokens(delivered))
    second = await chat_usage(client, "sonnet", [*HELLO, {"role": "assistant", "content": delivered}])
    assert (record["provider"], record["upstream_model"]) == ("claude", SONNET)
    assert (record["input_tokens"], record["output_tokens"]) == (first[0] + second[0], first[1] + second[1])
    assert (final.usage.input_tokens, final.usage.output_tokens) == (first[0] + second[0], first[1] + second[1])
    # Each attempt at its own price: gpt-main 1 and 2 USD per 1M tokens, sonnet 3 and 15.
    assert record["cost_usd"] == (first[0] * 1 + first[1] * 2 + second[0] * 3 + second[1] * 15) / 1e6


async def test_a_stream_cut_before_any_text_starts_afresh_on_any_target(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    upstream.plan("up-main", "drop:0")  # only the role delta came: nothing to prefill
    events = await events_of(sdk(make()), "smart")
    assert text_of(events) == full("up-main")
    assert_one_response(events)
    assert upstream.calls == {"up-main": 2}
    assert upstream.requests[1]["messages"] == HELLO


async def test_the_stored_response_holds_the_whole_continued_text(
    make: Callable[..., Gateway], claude: AnthropicUpstream
) -> None:
    client = sdk(make())
    claude.plan(SONNET, "stream_error")
    events = await events_of(client, "sonnet")
    response_id = events[-1].response.id
    stored = await client.responses.retrieve(response_id)
    assert stored.output_text == full(SONNET) and stored.status == "completed"
    await client.responses.create(model="sonnet", input="And of Italy?", previous_response_id=response_id)
    assert claude.requests[-1]["messages"][:2] == [
        {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": full(SONNET)}]},
    ]


async def test_the_switch_is_on_the_call_span(
    make: Callable[..., Gateway], claude: AnthropicUpstream, telemetry: Telemetry
) -> None:
    gateway = make(telemetry=telemetry)
    claude.plan(SONNET, "stream_error")
    assert text_of(await events_of(sdk(gateway), "sonnet")) == full(SONNET)
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


def assert_failed(events: list[Any], message: str) -> None:
    """The stream ends ``response.failed`` with ``message``, never ``completed``."""
    assert "response.output_text.delta" in [e.type for e in events]
    assert "response.completed" not in [e.type for e in events]
    last = events[-1]
    assert (last.type, last.response.status) == ("response.failed", "failed")
    assert message in last.response.error.message


async def test_without_a_target_that_accepts_a_prefill_the_caller_gets_the_original_failure(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    upstream.plan("up-main", "drop")
    assert_failed(await events_of(sdk(make()), "smart"), "closed the connection")
    assert upstream.calls == {"up-main": 1}  # gpt-backup would have repeated the answer: never asked


@pytest.mark.parametrize("prefill", [None, True], ids=["default", "prefill-true"])
async def test_a_native_responses_stream_is_not_continued(
    make: Callable[..., Gateway], upstream: OpenAIUpstream, claude: AnthropicUpstream, prefill: bool | None
) -> None:
    # Its events are the vendor's own (ids, items): another attempt's chunks cannot carry them on faithfully,
    # even where the model is said to take a prefill, nor can Claude, after it on the route.
    native = {"provider": "native", "model": "up-native", **({"prefill": prefill} if prefill else {})}
    gateway = make(models={"native": native}, aliases={"both": {"targets": ["native", "sonnet"]}})
    upstream.plan("up-native", "drop")
    events = await events_of(sdk(gateway), "both")
    assert text_of(events) == "Hello from up-native!"
    assert_failed(events, "closed the connection")
    assert upstream.calls == {"up-native": 1}
    assert claude.calls[SONNET] == 0


async def test_a_native_model_said_to_take_a_prefill_continues_a_translated_stream_through_chat(
    make: Callable[..., Gateway], upstream: OpenAIUpstream
) -> None:
    native = {"provider": "native", "model": "up-native", "prefill": True, "prefill_params": VLLM}
    gateway = make(models={"native": native}, aliases={"both": {"targets": ["gpt-main", "native"]}})
    upstream.plan("up-main", "drop")
    events = await events_of(sdk(gateway), "both")
    delivered = "Hello from up-main!"
    assert text_of(events) == delivered + full("up-native")  # it does not start with the prefill: all follows
    assert_one_response(events)
    assert upstream.calls == {"up-main": 1, "up-native": 1}
    assert upstream.urls == ["/v1/chat/completions", "/v1/chat/completions"]  # the continuation is a chat request
    assert upstream.requests[1]["messages"] == [*HELLO, {"role": "assistant", "content": delivered}]


async def test_a_tool_call_stream_is_not_continued(make: Callable[..., Gateway], claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "stream_error")  # after the first (empty) delta of the tool call's arguments
    stream = await sdk(make()).responses.create(model="sonnet", input=QUESTION, tools=[WEATHER], stream=True)
    events: list[Any] = [event async for event in stream]
    assert [e.item.type for e in events if e.type == "response.output_item.added"] == ["function_call"]
    assert (events[-1].type, events[-1].response.error.message) == ("response.failed", "Overloaded")
    assert claude.calls[SONNET] == 1


async def test_a_failed_continuation_never_masks_the_original_error(
    make: Callable[..., Gateway], claude: AnthropicUpstream
) -> None:
    claude.plan(SONNET, "stream_error", "400")  # the continuation is refused with a 400
    assert_failed(await events_of(sdk(make()), "sonnet"), "Overloaded")
    assert claude.calls[SONNET] == 2


async def test_continuation_can_be_turned_off(make: Callable[..., Gateway], claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "stream_error")
    assert_failed(await events_of(sdk(make(dispatch={"stream_resumes": 0})), "sonnet"), "Overloaded")
    assert claude.calls[SONNET] == 1


async def test_resumes_are_bounded(make: Callable[..., Gateway], claude: AnthropicUpstream) -> None:
    claude.plan(SONNET, "stream_error", "stream_error", "stream_error")
    assert_failed(await events_of(sdk(make(dispatch={"stream_resumes": 2})), "sonnet"), "Overloaded")
    assert claude.calls[SONNET] == 3
