"""Context window overflow and content filter 400s, from each vendor's wire, recovered by the alias.

Each vendor's loopback upstream answers its exact recorded 400 (``tests/fixtures/error_kinds/<vendor>.json``);
the client is the ``openai`` SDK, and the counts are the upstream calls each model received.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import sdk
from tests.otel import Telemetry
from tests.upstreams import ScriptedUpstream
from unimw import Gateway

pytestmark = pytest.mark.anyio

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
#: The first target is dear and the overflow target cheap, so a cost charged to the wrong one shows.
DEAR = {"input": 100, "output": 200}
CHEAP = {"input": 1, "output": 2}


@dataclass(frozen=True)
class Wire:
    """One vendor wire: its provider kind, three of its model ids, and the ids of its recorded 400s."""

    kind: str
    small: str
    mid: str
    big: str
    too_long: tuple[str, ...]  #: the vendor's context-length 400s
    plain_code: str | None  #: the code its plain 400 (``plain``) reaches the client with
    filtered: str | None = None  #: its content filter 400, if it has one


WIRES = {
    "openai": Wire(
        "openai",
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1",
        ("context_length", "context_length_compatible"),
        "string_above_max_length",
        filtered="content_filter",
    ),
    "anthropic": Wire(
        "anthropic",
        "claude-haiku-4-5",
        "claude-sonnet-4-5",
        "claude-sonnet-5",
        ("prompt_too_long", "context_limit"),
        "invalid_request_error",
        filtered="content_filtered",
    ),
    "gemini": Wire("gemini", "gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro", ("input_too_long",), None),
}
TOO_LONG = [pytest.param(vendor, case, id=f"{vendor}-{case}") for vendor, w in WIRES.items() for case in w.too_long]


@dataclass
class Vendor:
    wire: Wire
    upstream: ScriptedUpstream
    provider: dict[str, Any]


@pytest.fixture
def vendor(request: pytest.FixtureRequest) -> Vendor:
    """The vendor named by the test's ``vendor`` parameter, its fresh loopback upstream and its provider entry."""
    name: str = request.param
    fixture, server, path = {
        "openai": ("upstream", "_openai_server", "/v1"),
        "anthropic": ("claude", "_anthropic_server", ""),
        "gemini": ("gemini", "_gemini_server", "/v1beta"),
    }[name]
    upstream = request.getfixturevalue(fixture)
    url = request.getfixturevalue(server)[1] + path
    return Vendor(WIRES[name], upstream, {"kind": name, "base_url": url, "api_key": "sk-vendor-test", "timeout": 5})


def policy(vendor: Vendor, records: Path, **alias: Any) -> dict[str, Any]:
    """Three models on the vendor (small < mid < big in context window) and the alias ``long``."""
    wire = vendor.wire
    return {
        "providers": {"vendor": vendor.provider},
        "models": {
            "small": {"provider": "vendor", "model": wire.small, "price": DEAR, "context_window": 8000},
            "mid": {"provider": "vendor", "model": wire.mid, "price": DEAR, "context_window": 4000},
            "big": {"provider": "vendor", "model": wire.big, "price": CHEAP, "context_window": 16000},
        },
        "aliases": {"long": {"targets": ["small", "mid"], **alias}},
        "dispatch": {"retries": 1, "backoff": "1ms", "cooldown": 60},
        "usage": {"jsonl": str(records)},
    }


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gateway in made:
        await gateway.aclose()


async def ask(client: openai.AsyncOpenAI, stream: bool, **extra: Any) -> tuple[str, str, tuple[int, int]]:
    """The answer's text, model and (prompt, completion) tokens, asked whole or as a stream."""
    if not stream:
        completion = await client.chat.completions.create(model="long", messages=HELLO, **extra)
        assert completion.usage is not None
        usage = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
        return completion.choices[0].message.content or "", completion.model, usage
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="long", messages=HELLO, stream=True, stream_options={"include_usage": True}, **extra
        )
    ]
    assert chunks[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[0].model, (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def hello_from(model: str) -> str:
    return f"Hello from {model}! The capital of France is Paris."


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("vendor", "case"), TOO_LONG, indirect=["vendor"])
async def test_a_context_length_400_moves_to_the_overflow_target(
    vendor: Vendor, case: str, stream: bool, gateways: list[Gateway], tmp_path: Path, telemetry: Telemetry
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    path = tmp_path / "usage.jsonl"
    gateway = Gateway.from_dict(policy(vendor, path, on_context_overflow=["big"]), **telemetry.providers)
    gateways.append(gateway)
    upstream.plan(wire.small, f"recorded:{case}")

    text, model, (prompt, completion) = await ask(sdk(gateway), stream)

    assert (text, model) == (hello_from(wire.big), wire.big)
    assert upstream.calls == {wire.small: 1, wire.big: 1}  # never the same model again, never mid
    await gateway.flush()
    [record] = records(path)
    assert {k: record[k] for k in ("model", "provider", "upstream_model", "status", "stream")} == {
        "model": "long",
        "provider": "vendor",
        "upstream_model": wire.big,
        "status": "ok",
        "stream": stream,
    }
    assert (record["input_tokens"], record["output_tokens"]) == (prompt, completion)
    assert record["cost_usd"] == (prompt * CHEAP["input"] + completion * CHEAP["output"]) / 1_000_000
    call = telemetry.span("chat long")["attributes"]
    assert call["unimw.recovery"] == "context_length_exceeded"
    assert call["unimw.target"] == "big"
    first, second = (telemetry.span(f"chat {m}")["attributes"] for m in (wire.small, wire.big))
    assert (first["unimw.attempt"], first["error.type"]) == (1, "context_length_exceeded")
    assert (second["unimw.attempt"], "error.type" in second) == (2, False)

    # The overflow was the request's fault, not the target's: it is not cooled down.
    await ask(sdk(gateway), stream)
    assert upstream.calls == {wire.small: 2, wire.big: 1}


@pytest.mark.parametrize(("vendor", "case"), TOO_LONG, indirect=["vendor"])
async def test_without_on_context_overflow_the_next_larger_target_answers(
    vendor: Vendor, case: str, gateways: list[Gateway], tmp_path: Path
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    settings = policy(vendor, tmp_path / "usage.jsonl")
    settings["aliases"]["long"]["targets"] = ["small", "mid", "big"]  # mid holds less than small: skipped
    gateway = Gateway.from_dict(settings)
    gateways.append(gateway)
    upstream.plan(wire.small, f"recorded:{case}")

    text, model, _ = await ask(sdk(gateway), stream=False)

    assert (text, model) == (hello_from(wire.big), wire.big)
    assert upstream.calls == {wire.small: 1, wire.big: 1}


@pytest.mark.parametrize(("vendor", "case"), TOO_LONG, indirect=["vendor"])
async def test_with_no_larger_target_the_context_length_400_is_returned_at_once(
    vendor: Vendor, case: str, gateways: list[Gateway], tmp_path: Path
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    gateway = Gateway.from_dict(policy(vendor, tmp_path / "usage.jsonl"))  # targets small, then mid (smaller)
    gateways.append(gateway)
    upstream.plan(wire.small, f"recorded:{case}")

    with pytest.raises(openai.BadRequestError) as caught:
        await ask(sdk(gateway), stream=False)

    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")
    assert upstream.calls == {wire.small: 1}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("vendor", ["openai", "anthropic", "gemini"], indirect=True)
async def test_a_plain_400_is_returned_at_once(
    vendor: Vendor, stream: bool, gateways: list[Gateway], tmp_path: Path
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    settings = policy(vendor, tmp_path / "usage.jsonl", on_context_overflow=["big"], on_content_filter=["big"])
    gateway = Gateway.from_dict(settings)
    gateways.append(gateway)
    upstream.plan(wire.small, "recorded:plain")

    with pytest.raises(openai.BadRequestError) as caught:
        await ask(sdk(gateway), stream)

    assert (caught.value.status_code, caught.value.code) == (400, wire.plain_code)
    assert upstream.calls == {wire.small: 1}  # no retry, no fallback


FILTERED = [pytest.param(v, id=v) for v, w in WIRES.items() if w.filtered]


@pytest.mark.parametrize("vendor", FILTERED, indirect=True)
async def test_a_content_filter_400_is_returned_at_once(
    vendor: Vendor, gateways: list[Gateway], tmp_path: Path
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    gateway = Gateway.from_dict(policy(vendor, tmp_path / "usage.jsonl", on_context_overflow=["big"]))
    gateways.append(gateway)
    upstream.plan(wire.small, f"recorded:{wire.filtered}")

    with pytest.raises(openai.BadRequestError) as caught:
        await ask(sdk(gateway), stream=False)

    assert caught.value.code == "content_filter"
    assert upstream.calls == {wire.small: 1}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("vendor", FILTERED, indirect=True)
async def test_a_content_filter_400_goes_to_on_content_filter(
    vendor: Vendor, stream: bool, gateways: list[Gateway], tmp_path: Path, telemetry: Telemetry
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    settings = policy(vendor, tmp_path / "usage.jsonl", on_content_filter=["big"])
    gateway = Gateway.from_dict(settings, **telemetry.providers)
    gateways.append(gateway)
    upstream.plan(wire.small, f"recorded:{wire.filtered}")

    text, model, _ = await ask(sdk(gateway), stream)

    assert (text, model) == (hello_from(wire.big), wire.big)
    assert upstream.calls == {wire.small: 1, wire.big: 1}
    assert telemetry.span("chat long")["attributes"]["unimw.recovery"] == "content_filter"
    assert telemetry.span(f"chat {wire.small}")["attributes"]["error.type"] == "content_filter"


# -- the context check, before any call ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("vendor", ["openai"], indirect=True)
async def test_the_context_check_skips_a_small_target_without_calling_it(
    vendor: Vendor, stream: bool, gateways: list[Gateway], tmp_path: Path, telemetry: Telemetry
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    settings = policy(vendor, tmp_path / "usage.jsonl", context_check=True)
    settings["models"]["small"]["context_window"] = 100
    settings["aliases"]["long"]["targets"] = ["small", "big"]
    gateway = Gateway.from_dict(settings, **telemetry.providers)
    gateways.append(gateway)

    # HELLO is about 3 + 4 + 8 = 15 tokens: it fits in 100 alone, not with 100 tokens of answer.
    text, model, _ = await ask(sdk(gateway), stream, max_tokens=100)
    assert (text, model) == (hello_from(wire.big), wire.big)
    assert upstream.calls == {wire.big: 1}
    assert telemetry.span("chat long")["attributes"]["unimw.context.skipped"] == ("small",)

    text, model, _ = await ask(sdk(gateway), stream, max_tokens=50)
    assert (text, model) == (hello_from(wire.small), wire.small)
    assert upstream.calls == {wire.big: 1, wire.small: 1}


@pytest.mark.parametrize("vendor", ["openai"], indirect=True)
async def test_the_context_check_goes_to_the_overflow_targets_when_no_target_fits(
    vendor: Vendor, gateways: list[Gateway], tmp_path: Path
) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    settings = policy(vendor, tmp_path / "usage.jsonl", on_context_overflow=["big"])
    settings["dispatch"]["context_check"] = True  # for every route, the alias saying nothing
    for model in ("small", "mid"):
        settings["models"][model]["context_window"] = 100
    gateway = Gateway.from_dict(settings)
    gateways.append(gateway)

    text, model, _ = await ask(sdk(gateway), stream=False, max_tokens=200)

    assert (text, model) == (hello_from(wire.big), wire.big)
    assert upstream.calls == {wire.big: 1}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("vendor", ["openai"], indirect=True)
async def test_the_context_check_refuses_what_no_target_holds_with_no_upstream_call(
    vendor: Vendor, stream: bool, gateways: list[Gateway], tmp_path: Path
) -> None:
    settings = policy(vendor, tmp_path / "usage.jsonl", on_context_overflow=["big"], context_check=True)
    gateway = Gateway.from_dict(settings)
    gateways.append(gateway)

    with pytest.raises(openai.BadRequestError) as caught:
        await ask(sdk(gateway), stream, max_tokens=20_000)

    assert caught.value.body == {
        "message": "This request needs about 20015 tokens (an estimate of its prompt and its max tokens), more than "
        "any model of `long` holds (at most 16000). Please reduce the length of the messages or the max tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert not vendor.upstream.calls


@pytest.mark.parametrize("vendor", ["openai"], indirect=True)
async def test_the_context_check_is_off_unless_asked(vendor: Vendor, gateways: list[Gateway], tmp_path: Path) -> None:
    wire, upstream = vendor.wire, vendor.upstream
    settings = policy(vendor, tmp_path / "usage.jsonl", on_context_overflow=["big"])
    settings["models"]["small"]["context_window"] = 10
    gateway = Gateway.from_dict(settings)
    gateways.append(gateway)

    text, model, _ = await ask(sdk(gateway), stream=False, max_tokens=100)

    assert (text, model) == (hello_from(wire.small), wire.small)
    assert upstream.calls == {wire.small: 1}


async def test_the_built_in_windows_pick_the_larger_target(
    _openai_server: tuple[ScriptedUpstream, str], upstream: ScriptedUpstream, gateways: list[Gateway]
) -> None:
    """gpt-4o (128,000 tokens) overflows; gpt-4o-mini holds as much, so gpt-4.1 (1,047,576) answers."""
    provider = {"kind": "openai", "base_url": _openai_server[1] + "/v1", "api_key": "sk-test"}
    gateway = Gateway.from_dict(
        {
            "providers": {"openai": provider},
            "models": {m: {"provider": "openai", "model": m} for m in ("gpt-4o", "gpt-4o-mini", "gpt-4.1")},
            "aliases": {"long": {"targets": ["gpt-4o", "gpt-4o-mini", "gpt-4.1"]}},
        }
    )
    gateways.append(gateway)
    upstream.plan("gpt-4o", "recorded:context_length")

    _, model, _ = await ask(sdk(gateway), stream=False)

    assert model == "gpt-4.1"
    assert upstream.calls == {"gpt-4o": 1, "gpt-4.1": 1}
