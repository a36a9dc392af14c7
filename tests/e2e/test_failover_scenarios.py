"""The failover matrix: every way an upstream fails that a gateway is judged on, each run and judged the same way.

Each scenario scripts the primary target of a loopback upstream to fail one way (the OpenAI-wire and
Anthropic-wire fakes of ``tests/upstreams``), serves a fresh gateway with uvicorn on a loopback port, and
asks it once with the official ``openai`` SDK, streamed and not where the scenario applies. The gateway's
lifespan closes it when the server stops, so every record and span is in by the time the test judges.

It is judged as the client would judge it, and then by the books:

* the client gets a whole answer (for a stream: the text of the upstream's full answer, one ``id``, one
  finish, one usage chunk) or one clean OpenAI-style error of the right class, at once;
* each fake received exactly the calls expected, and the gateway waited exactly as expected (its
  ``sleep`` is injected and only records);
* the one usage record names the answering target's model, its tokens are the ones the client saw,
  and its cost is those tokens at that target's price, in micro-dollars;
* the call is one span tree, whose names and key attributes are given in full.

``docs/failures.md`` has the table of these scenarios and the test of each.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import openai
import pytest
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from starlette.applications import Starlette

from tests.conftest import policy_for
from tests.otel import Telemetry
from tests.servers import serve
from tests.upstreams import anthropic_app, full, openai_app
from tests.upstreams.anthropic_app import AnthropicUpstream
from tests.upstreams.openai_app import OpenAIUpstream
from unimw import Gateway, UnimwMiddleware
from unimw.attributes import (
    ATTEMPT,
    COST_USD,
    PROVIDER,
    RECOVERY,
    RESUMED_TO,
    STATUS,
    STREAM_RESUMED,
    STREAM_RESUMES,
    STREAM_SKIPPED_EVENTS,
    TARGET,
)
from unimw.usage import MICRO, estimate_prompt_tokens, estimate_text_tokens

if TYPE_CHECKING:
    import httpx2

HELLO: Any = [{"role": "user", "content": "What is the capital of France?"}]
SONNET = "claude-sonnet-4-5-20250929"
VLLM = {"continue_final_message": True, "add_generation_prompt": False}
#: USD per 1M tokens, so that tokens x price is micro-dollars; each target's differs, so a cost at the wrong one shows.
PRICES = {
    "gpt-main": {"input": 10, "output": 20},
    "gpt-backup": {"input": 1, "output": 2},
    "llama": {"input": 5, "output": 7},
    "sonnet": {"input": 3, "output": 15},
}
#: Public model -> (provider, upstream model).
TARGETS = {
    "gpt-main": ("primary", "up-main"),
    "gpt-backup": ("backup", "up-backup"),
    "llama": ("primary", "up-llama"),
    "sonnet": ("claude", SONNET),
}


# ── running a scenario ──────────────────────────────────────────────────────


@dataclass
class Outcome:
    """What one call gave the client."""

    text: str | None = None
    models: set[str] = field(default_factory=set)  #: the ``model`` of the answer (of every chunk, for a stream)
    ids: set[str] = field(default_factory=set)
    finishes: list[str] = field(default_factory=list)
    usage: tuple[int, int] | None = None  #: (prompt, completion) tokens, as the client read them
    usages: int = 0  #: how many usage chunks a stream had
    error: openai.APIError | None = None
    seconds: float = 0.0


#: A span as judged: (its name indented by its depth, its status, its attributes among KEYS, its events).
Span = tuple[str, str, dict[str, Any], list[tuple[str, dict[str, Any]]]]


@dataclass
class Run:
    """A scenario's calls, and what the gateway and its upstreams did about them."""

    outcomes: list[Outcome]
    calls: dict[str, int]  #: the calls each upstream model received, on either fake
    records: list[dict[str, Any]]
    spans: list[Span]  #: the call's span tree
    waits: list[float]  #: every wait the gateway asked for between attempts

    @property
    def outcome(self) -> Outcome:
        [one] = self.outcomes
        return one

    @property
    def record(self) -> dict[str, Any]:
        [one] = self.records
        return one


#: The span attributes each scenario is judged on (the rest, ids, ports and times, are the tracing tests').
KEYS = (
    ATTEMPT,
    TARGET,
    PROVIDER,
    STATUS,
    ERROR_TYPE,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    COST_USD,
    RECOVERY,
    STREAM_RESUMES,
    STREAM_SKIPPED_EVENTS,
)


def ask(client: openai.OpenAI, model: str, stream: bool) -> Outcome:
    """Ask ``model`` HELLO, as a stream (with its usage chunk) or not, and keep what the client got."""
    outcome = Outcome()
    started = time.monotonic()
    try:
        if stream:
            with client.chat.completions.create(
                model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
            ) as chunks:
                texts: list[str] = []
                for chunk in chunks:
                    outcome.models.add(chunk.model)
                    outcome.ids.add(chunk.id)
                    for choice in chunk.choices:
                        texts.append(choice.delta.content or "")
                        outcome.finishes += [choice.finish_reason] if choice.finish_reason else []
                    if chunk.usage is not None:
                        outcome.usages += 1
                        outcome.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    outcome.text = "".join(texts)
        else:
            completion = client.chat.completions.create(model=model, messages=HELLO)
            outcome.models.add(completion.model)
            outcome.ids.add(completion.id)
            outcome.text = completion.choices[0].message.content
            outcome.finishes = [c.finish_reason for c in completion.choices]
            assert completion.usage is not None
            outcome.usage = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    except openai.APIError as error:
        outcome.error = error
    outcome.seconds = time.monotonic() - started
    return outcome


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One HTTP client for the SDK in every scenario: making one costs about 0.1 s (its TLS context)."""
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def scenario(
    http: httpx.Client,
    upstream: OpenAIUpstream,
    claude: AnthropicUpstream,
    upstream_url: str,
    _anthropic_server: tuple[AnthropicUpstream, str],
    tmp_path: Path,
) -> Callable[..., Run]:
    """Run a scenario: a gateway on the matrix policy (with ``primary`` settings added to the primary
    provider), served over loopback; ``model`` asked ``times`` times."""

    def run(model: str, stream: bool, *, times: int = 1, primary: Any = None) -> Run:
        records = tmp_path / "usage.jsonl"
        records.unlink(missing_ok=True)
        providers = {
            "primary": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-primary-secret", "timeout": 1,
                        **(primary or {})},
            "claude": {"kind": "anthropic", "base_url": _anthropic_server[1], "api_key": "sk-ant-x", "timeout": 1},
        }  # fmt: skip
        policy = policy_for(
            upstream_url,
            providers=providers,
            models={
                "gpt-main": {"provider": "primary", "model": "up-main", "context_window": 8000},
                "gpt-backup": {"provider": "backup", "model": "up-backup", "context_window": 16000},
                "llama": {"provider": "primary", "model": "up-llama", "prefill": True, "prefill_params": VLLM},
                "sonnet": {"provider": "claude", "model": SONNET},
            },
            aliases={
                "smart": {"targets": ["gpt-main", "gpt-backup"]},  # the healthy fallback speaks OpenAI's wire
                "mixed": {"targets": ["gpt-main", "sonnet"]},  # ... or Anthropic's, which accepts a prefill
                "resumable": {"targets": ["llama", "gpt-backup"]},  # a primary that continues its own answer
            },
            dispatch={
                "retries": 1,
                "backoff": "10ms",
                "cooldown": "60s",
                "retry_after_same_target_up_to": "2s",
            },
            usage={"jsonl": str(records)},
        )
        for name, price in PRICES.items():
            policy["models"][name]["price"] = price
        telemetry = Telemetry()
        waits: list[float] = []

        async def sleep(seconds: float) -> None:  # no real wait: the waits asked for are judged instead
            waits.append(seconds)

        gateway = Gateway.from_dict(policy, sleep=sleep, **telemetry.providers)
        with served(gateway, http) as client:
            outcomes = [ask(client, model, stream) for _ in range(times)]
        lines = records.read_text().splitlines() if records.exists() else []
        calls = {**upstream.calls, **claude.calls}
        return Run(outcomes, calls, [json.loads(line) for line in lines], key_spans(telemetry), waits)

    return run


@contextmanager
def served(gateway: Gateway, http: httpx.Client) -> Iterator[openai.OpenAI]:
    """The SDK on ``gateway`` served by uvicorn; on exit the server stops and its lifespan closes the gateway,
    which settles, records and traces every call before this returns."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await gateway.aclose()

    app = UnimwMiddleware(Starlette(lifespan=lifespan), gateway=gateway)
    with serve(app, lifespan="on") as url:
        http_client = cast("httpx2.Client", http)  # the SDK is typed against its httpx fork, whose Client this matches
        yield openai.OpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0, http_client=http_client)


def key_spans(telemetry: Telemetry) -> list[Span]:
    """Each span as judged, in the order of :meth:`Telemetry.tree`."""
    return [
        ("  " * depth + span["name"], span["status"], {k: v for k, v in span["attributes"].items() if k in KEYS},
         span["events"])
        for depth, span in telemetry.walk()
    ]  # fmt: skip


# ── judging ─────────────────────────────────────────────────────────────────

BACKOFF = "backoff"  #: a first retry's wait: the policy's 10 ms backoff with its jitter (x 0.75 to 1)


def openai_usage(body: Any) -> tuple[int, int]:
    """(prompt, completion) tokens the OpenAI-wire fake reports for ``body``, by its own formula."""
    message, _ = openai_app.answer(body)
    usage = openai_app.usage(body, message)
    return usage["prompt_tokens"], usage["completion_tokens"]


def claude_usage(claude: AnthropicUpstream, body: Any) -> tuple[int, int]:
    """(prompt, completion) tokens the Anthropic fake reports for ``body``, in OpenAI's sense (input
    includes what was read from and written to the prompt cache)."""
    prompt = claude.prompt(body)
    content, _ = anthropic_app.answer(body)
    total = prompt["input_tokens"] + prompt["cache_creation_input_tokens"] + prompt["cache_read_input_tokens"]
    return total, anthropic_app.output_tokens(content)


def hello_usage(target: str) -> tuple[int, int]:
    """What ``target``'s upstream reports for HELLO asked afresh (OpenAI-wire targets)."""
    return openai_usage({"model": TARGETS[target][1], "messages": HELLO})


def micros(target: str, usage: tuple[int, int]) -> int:
    """``usage`` at ``target``'s price, in micro-dollars (prices are USD per 1M tokens)."""
    return usage[0] * PRICES[target]["input"] + usage[1] * PRICES[target]["output"]


def answered(outcome: Outcome, *, text: str, model: str, usage: tuple[int, int], stream: bool) -> None:
    """The client got one whole answer: ``text``, from ``model``, with ``usage``, under one id."""
    assert outcome.error is None, outcome.error
    assert outcome.text == text
    assert outcome.models == {model}
    assert len(outcome.ids) == 1
    assert outcome.finishes == ["stop"]
    assert outcome.usage == usage
    assert outcome.usages == (1 if stream else 0)


def recorded(
    record: dict[str, Any], *, asked: str, target: str | None, usage: tuple[int, int], cost: int, stream: bool
) -> None:
    """The one usage record: the answering ``target`` (None: none answered), ``usage`` and ``cost`` (micro-USD)."""
    provider, upstream_model = TARGETS[target] if target else (None, None)
    assert {k: record[k] for k in ("model", "provider", "upstream_model", "status", "stream")} == {
        "model": asked,
        "provider": provider,
        "upstream_model": upstream_model,
        "status": "ok" if target else "error",
        "stream": stream,
    }
    assert (record["input_tokens"], record["output_tokens"]) == usage
    assert record["cost_usd"] == cost / MICRO


def call_span(asked: str, target: str, usage: tuple[int, int], cost: int, events: Any = (), **extra: Any) -> Span:
    """The call's span, answered by ``target``."""
    provider, upstream_model = TARGETS[target]
    attributes = {
        TARGET: target,
        PROVIDER: provider,
        STATUS: "ok",
        GEN_AI_RESPONSE_MODEL: upstream_model,
        GEN_AI_USAGE_INPUT_TOKENS: usage[0],
        GEN_AI_USAGE_OUTPUT_TOKENS: usage[1],
        COST_USD: cost / MICRO,
        **extra,
    }
    return f"chat {asked}", "UNSET", attributes, list(events)


def failed_call_span(asked: str, error: str) -> Span:
    """The call's span, when no target answered."""
    return f"chat {asked}", "ERROR", {STATUS: "error", ERROR_TYPE: error, COST_USD: 0.0}, []


def attempt_span(number: int, target: str, error: str | None = None) -> Span:
    """Attempt ``number``'s span (``error``: its error.type, when it failed)."""
    provider, upstream_model = TARGETS[target]
    attributes = {ATTEMPT: number, TARGET: target, PROVIDER: provider}
    if error is not None:
        attributes[ERROR_TYPE] = error
    return f"  chat {upstream_model}", "ERROR" if error else "UNSET", attributes, []


def resumed(failed: str, error: str, to: str) -> tuple[str, dict[str, Any]]:
    """The call span's event for a stream that failed at ``failed`` with ``error`` and went on at ``to``."""
    return STREAM_RESUMED, {
        TARGET: failed,
        PROVIDER: TARGETS[failed][0],
        ERROR_TYPE: error,
        RESUMED_TO: to,
    }


def waited(waits: list[float], expected: tuple[float | str, ...]) -> None:
    """The gateway asked for exactly the ``expected`` waits (a Retry-After exactly; BACKOFF within its jitter)."""
    assert len(waits) == len(expected), waits
    for wait, want in zip(waits, expected, strict=True):
        assert 0.0075 <= wait <= 0.01 if want == BACKOFF else wait == want, waits


STREAMS = [pytest.param(False, id="plain"), pytest.param(True, id="stream")]


# ── 1-7: failures before the first byte are answered by a retry or the fallback ──────────────────────


@dataclass(frozen=True)
class Early:
    """A failure of the primary before anything reached the client, and how the call gets its answer."""

    faults: tuple[str, ...]  #: planned on up-main
    answers: str  #: the target that answers
    calls: dict[str, int]
    waits: tuple[float | str, ...]
    attempts: tuple[tuple[str, str | None], ...]  #: (target, error.type) of each attempt span
    primary: dict[str, Any] = field(default_factory=dict)  #: settings of the primary provider
    streams: tuple[bool, ...] = (False, True)


EARLY = {
    # 1. A 429 whose Retry-After is short (up to retry_after_same_target_up_to) is waited for on the target ...
    "429-retry-after-short": Early(
        ("429:1",), "gpt-main", {"up-main": 2}, (1.0,), (("gpt-main", "rate_limit_exceeded"), ("gpt-main", None))
    ),
    # ... a longer one sends the call to the fallback at once.
    "429-retry-after-long": Early(
        ("429:30",),
        "gpt-backup",
        {"up-main": 1, "up-backup": 1},
        (),
        (("gpt-main", "rate_limit_exceeded"), ("gpt-backup", None)),
    ),
    # 2. A 429 without Retry-After: the fallback at once.
    "429-no-retry-after": Early(
        ("429:none",),
        "gpt-backup",
        {"up-main": 1, "up-backup": 1},
        (),
        (("gpt-main", "rate_limit_exceeded"), ("gpt-backup", None)),
    ),
    # 3. A 500 once: retried on the same target after the backoff.
    "500-once": Early(("500",), "gpt-main", {"up-main": 2}, (BACKOFF,), (("gpt-main", "500"), ("gpt-main", None))),
    # 4. A 503 every time: the retry, then the fallback.
    "503-always": Early(
        ("503", "503"),
        "gpt-backup",
        {"up-main": 2, "up-backup": 1},
        (BACKOFF,),
        (("gpt-main", "server_is_overloaded"), ("gpt-main", "server_is_overloaded"), ("gpt-backup", None)),
    ),
    # 5. The connection reset before any header: as a 5xx.
    "reset-before-headers": Early(
        ("reset", "reset"),
        "gpt-backup",
        {"up-main": 2, "up-backup": 1},
        (BACKOFF,),
        (("gpt-main", "upstream_unreachable"), ("gpt-main", "upstream_unreachable"), ("gpt-backup", None)),
    ),
    # 6. No answer at all: the provider's timeout fires, and the fallback answers at once.
    "no-answer": Early(
        ("hang",),
        "gpt-backup",
        {"up-main": 1, "up-backup": 1},
        (),
        (("gpt-main", "upstream_timeout"), ("gpt-backup", None)),
        primary={"timeout": "300ms"},
    ),
    # 7. A stream's first token 2 s late: first_token_timeout (0.3 s) fires, and the fallback answers at once.
    "first-token-late": Early(
        ("late:2",),
        "gpt-backup",
        {"up-main": 1, "up-backup": 1},
        (),
        (("gpt-main", "upstream_timeout"), ("gpt-backup", None)),
        primary={"first_token_timeout": "300ms"},
        streams=(True,),
    ),
}
EARLY_CASES = [
    pytest.param(case, stream, id=f"{name}-{'stream' if stream else 'plain'}")
    for name, case in EARLY.items()
    for stream in case.streams
]


@pytest.mark.parametrize(("case", "stream"), EARLY_CASES)
def test_a_failure_before_the_first_byte_gets_a_whole_answer(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, case: Early, stream: bool
) -> None:
    upstream.plan("up-main", *case.faults)
    run = scenario("smart", stream, primary=case.primary)

    usage = hello_usage(case.answers)
    cost = micros(case.answers, usage)
    upstream_model = TARGETS[case.answers][1]
    answered(run.outcome, text=full(upstream_model), model=upstream_model, usage=usage, stream=stream)
    assert run.outcome.seconds < 1.5  # the 30 s hang and the 2 s late token were not waited out
    assert run.calls == case.calls
    waited(run.waits, case.waits)
    recorded(run.record, asked="smart", target=case.answers, usage=usage, cost=cost, stream=stream)
    attempts = [attempt_span(n, target, error) for n, (target, error) in enumerate(case.attempts, 1)]
    assert run.spans == [call_span("smart", case.answers, usage, cost), *attempts]


# ── 15: the answering target's model, usage and price, across wires ──────────────────────────────────


@pytest.mark.parametrize("stream", STREAMS)
def test_the_answering_targets_model_and_usage_are_reported(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, claude: AnthropicUpstream, stream: bool
) -> None:
    upstream.plan("up-main", "503", "503")
    run = scenario("mixed", stream)  # gpt-main (10 and 20 USD per 1M tokens), then sonnet (3 and 15)

    usage = claude_usage(claude, claude.requests[0])
    cost = micros("sonnet", usage)
    answered(run.outcome, text=full(SONNET), model=SONNET, usage=usage, stream=stream)
    assert run.calls == {"up-main": 2, SONNET: 1}
    waited(run.waits, (BACKOFF,))
    recorded(run.record, asked="mixed", target="sonnet", usage=usage, cost=cost, stream=stream)
    assert run.spans == [
        call_span("mixed", "sonnet", usage, cost),
        attempt_span(1, "gpt-main", "server_is_overloaded"),
        attempt_span(2, "gpt-main", "server_is_overloaded"),
        attempt_span(3, "sonnet"),
    ]


# ── 4, 13: what no other attempt can fix is one clean error, at once ─────────────────────────────────


@dataclass(frozen=True)
class Refused:
    """A failure the client is to see: as which SDK exception, status and code, after which calls."""

    model: str  #: asked for
    faults: tuple[str, ...]  #: planned on up-main
    exception: type[openai.APIStatusError]
    status: int
    code: str
    calls: dict[str, int]
    waits: tuple[float | str, ...]
    attempts: tuple[str, ...]  #: error.type of each attempt span (on gpt-main)


REFUSED = {
    # 4. A 503 every time and no fallback: the bounded retries (1), then the 503.
    "503-no-fallback": Refused(
        "gpt-main",
        ("503", "503", "503"),
        openai.InternalServerError,
        503,
        "server_is_overloaded",
        {"up-main": 2},
        (BACKOFF,),
        ("server_is_overloaded", "server_is_overloaded"),
    ),
    # 13. A content filter's 400 (the alias has no on_content_filter): returned at once, the fallback not asked.
    "content-filter-400": Refused(
        "smart",
        ("recorded:content_filter",),
        openai.BadRequestError,
        400,
        "content_filter",
        {"up-main": 1},
        (),
        (),
    ),
}


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("case", [pytest.param(case, id=name) for name, case in REFUSED.items()])
def test_a_failure_no_other_attempt_fixes_is_one_clean_error(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, case: Refused, stream: bool
) -> None:
    upstream.plan("up-main", *case.faults)
    run = scenario(case.model, stream)

    error = run.outcome.error
    assert type(error) is case.exception  # for a stream too: raised by create(), before any chunk
    assert (error.status_code, error.code) == (case.status, case.code)
    assert isinstance(error.body, dict) and set(error.body) == {"message", "type", "param", "code"}
    assert run.outcome.text is None and run.outcome.seconds < 1.0
    assert run.calls == case.calls
    waited(run.waits, case.waits)
    recorded(run.record, asked=case.model, target=None, usage=(0, 0), cost=0, stream=stream)
    attempts = [attempt_span(n, "gpt-main", error) for n, error in enumerate(case.attempts, 1)]
    assert run.spans == [failed_call_span(case.model, case.code), *attempts]


# ── 12: a context-length 400 moves to the target with the larger window ──────────────────────────────


@pytest.mark.parametrize("stream", STREAMS)
def test_a_context_length_400_moves_to_the_larger_window_and_cools_nothing(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, stream: bool
) -> None:
    upstream.plan("up-main", "recorded:context_length")  # gpt-main holds 8,000 tokens, gpt-backup 16,000
    run = scenario("smart", stream, times=2)  # the second call shows gpt-main was not cooled down (60 s)

    moved, main = hello_usage("gpt-backup"), hello_usage("gpt-main")
    first, second = run.outcomes
    answered(first, text=full("up-backup"), model="up-backup", usage=moved, stream=stream)
    answered(second, text=full("up-main"), model="up-main", usage=main, stream=stream)
    assert run.calls == {"up-main": 2, "up-backup": 1}  # one each for the first call: never gpt-main again
    assert run.waits == []
    recorded(run.records[0], asked="smart", target="gpt-backup", usage=moved, cost=micros("gpt-backup", moved),
             stream=stream)  # fmt: skip
    recorded(run.records[1], asked="smart", target="gpt-main", usage=main, cost=micros("gpt-main", main), stream=stream)
    assert run.spans == [
        call_span("smart", "gpt-backup", moved, micros("gpt-backup", moved), **{RECOVERY: "context_length_exceeded"}),
        attempt_span(1, "gpt-main", "context_length_exceeded"),
        attempt_span(2, "gpt-backup"),
        call_span("smart", "gpt-main", main, micros("gpt-main", main)),
    ]  # fmt: skip


# ── 8, 9: a stream cut or stalled mid-answer is continued where a prefill is accepted ────────────────

#: 8. the connection cut after three words; 9. 30 s of silence after three words, ended by stall_timeout.
CUTS = [
    pytest.param("drop", {}, "upstream_unreachable", id="cut"),
    pytest.param("stall", {"stall_timeout": "300ms"}, "upstream_timeout", id="stall"),
]


@dataclass
class Continued:
    """A stream of ``llama`` cut mid-answer and continued on llama itself, which takes a prefill (as vLLM does
    with ``continue_final_message``): what the client and the books should show."""

    run: Run
    usage: tuple[int, int]
    cost: int


def continued_on_llama(scenario: Callable[..., Run], upstream: OpenAIUpstream, fault: str, primary: Any) -> Continued:
    upstream.plan("up-llama", fault)
    run = scenario("resumable", True, primary=primary)
    delivered = "Hello from up-llama!"  # the first three words
    continuation = upstream.requests[1]
    assert continuation["messages"] == [*HELLO, {"role": "assistant", "content": delivered}]
    assert {k: continuation[k] for k in VLLM} == VLLM
    # Estimated for the attempt that was cut (it never reported its usage), plus what the continuation reports.
    before = (estimate_prompt_tokens({"messages": HELLO}), estimate_text_tokens(delivered))
    after = openai_usage(continuation)
    usage = (before[0] + after[0], before[1] + after[1])
    return Continued(run, usage, micros("llama", before) + micros("llama", after))


@pytest.mark.parametrize(("fault", "primary", "error"), CUTS)
def test_a_stream_cut_mid_answer_is_continued_whole(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, fault: str, primary: Any, error: str
) -> None:
    continued = continued_on_llama(scenario, upstream, fault, primary)
    run, usage, cost = continued.run, continued.usage, continued.cost

    answered(run.outcome, text=full("up-llama"), model="up-llama", usage=usage, stream=True)
    assert run.outcome.seconds < 1.5  # the stall ended at stall_timeout
    assert run.calls == {"up-llama": 2}  # gpt-backup would answer anew, repeating the start: never asked
    assert run.waits == []
    recorded(run.record, asked="resumable", target="llama", usage=usage, cost=cost, stream=True)
    resumes = {STREAM_RESUMES: 1}
    assert run.spans[0] == call_span("resumable", "llama", usage, cost, [resumed("llama", error, "llama")], **resumes)


@pytest.mark.parametrize(("fault", "primary", "error"), CUTS)
def test_a_continued_stream_has_a_span_for_each_attempt(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, fault: str, primary: Any, error: str
) -> None:
    continued = continued_on_llama(scenario, upstream, fault, primary)
    assert continued.run.spans[1:] == [attempt_span(1, "llama", error), attempt_span(2, "llama")]


def test_a_stream_cut_mid_answer_is_continued_on_an_anthropic_fallback(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, claude: AnthropicUpstream
) -> None:
    upstream.plan("up-main", "drop")  # gpt-main's wire would answer a prefill anew: sonnet, next, continues it
    run = scenario("mixed", True)

    delivered = "Hello from up-main!"
    continuation = claude.requests[0]
    assert continuation["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": delivered}]}
    before = (estimate_prompt_tokens({"messages": HELLO}), estimate_text_tokens(delivered))
    after = claude_usage(claude, continuation)
    usage = (before[0] + after[0], before[1] + after[1])
    cost = micros("gpt-main", before) + micros("sonnet", after)  # each part at its own target's price
    outcome = run.outcome
    # The fake Claude continues only its own words: after another model's, its whole answer follows them.
    assert (outcome.error, outcome.text) == (None, delivered + full(SONNET))
    assert (len(outcome.ids), outcome.finishes, outcome.usage, outcome.usages) == (1, ["stop"], usage, 1)
    assert run.calls == {"up-main": 1, SONNET: 1}
    assert run.waits == []
    recorded(run.record, asked="mixed", target="sonnet", usage=usage, cost=cost, stream=True)
    assert run.spans[0][2:] == call_span(
        "mixed", "sonnet", usage, cost, [resumed("gpt-main", "upstream_unreachable", "sonnet")],
        **{STREAM_RESUMES: 1, GEN_AI_RESPONSE_MODEL: "up-main"},
    )[2:]  # fmt: skip


def test_a_stream_continued_elsewhere_names_one_model(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, claude: AnthropicUpstream
) -> None:
    """The client sees one answer under one name, the first attempt's (its first chunks already said it), and so
    does the span's gen_ai.response.model; the target that finished it is the span's unimw.target and the record's
    provider and upstream model."""
    upstream.plan("up-main", "drop")
    run = scenario("mixed", True)
    assert run.outcome.models == {"up-main"}
    assert run.spans[0][2][GEN_AI_RESPONSE_MODEL] == "up-main"
    assert (run.spans[0][2][TARGET], run.record["provider"], run.record["upstream_model"]) == (
        "sonnet",
        TARGETS["sonnet"][0],
        SONNET,
    )


# ── 10, 11: a stream with one malformed event, or without [DONE], is whole as it came ────────────────


@pytest.mark.parametrize(
    ("fault", "extra"),
    [
        pytest.param("malformed", {STREAM_SKIPPED_EVENTS: 1}, id="malformed-event"),  # 10.
        pytest.param("nodone", {}, id="no-done"),  # 11.
    ],
)
def test_a_stream_whole_but_for_its_framing_is_answered_as_it_came(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, fault: str, extra: dict[str, Any]
) -> None:
    upstream.plan("up-main", fault)
    run = scenario("smart", True)

    usage = hello_usage("gpt-main")
    cost = micros("gpt-main", usage)
    answered(run.outcome, text=full("up-main"), model="up-main", usage=usage, stream=True)
    assert run.calls == {"up-main": 1}
    assert run.waits == []
    recorded(run.record, asked="smart", target="gpt-main", usage=usage, cost=cost, stream=True)
    assert run.spans == [call_span("smart", "gpt-main", usage, cost, **extra)]


# ── 14: a continuation refused never masks the original error ─────────────────────────────────────────


def refused_continuation(scenario: Callable[..., Run], upstream: OpenAIUpstream, claude: AnthropicUpstream) -> Run:
    upstream.plan("up-main", "drop")  # cut after "Hello from up-main!"
    claude.plan(SONNET, "400")  # the continuation, with that text as a prefill, is refused
    return scenario("mixed", True)


def test_a_fallback_that_rejects_the_prefill_leaves_the_original_error(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, claude: AnthropicUpstream
) -> None:
    run = refused_continuation(scenario, upstream, claude)

    delivered = "Hello from up-main!"
    error = run.outcome.error
    assert type(error) is openai.APIError  # the stream's error event: the cut's, not the 400's
    assert error.body == {
        "message": error.message,
        "type": "upstream_error",
        "param": None,
        "code": "upstream_unreachable",
    }
    assert run.outcome.text == delivered and run.outcome.finishes == []
    assert claude.requests[0]["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": delivered}]}
    assert run.calls == {"up-main": 1, SONNET: 1}
    assert run.waits == []
    # Charged for what was delivered (estimated, as the cut attempt never reported it), at gpt-main's price.
    usage = (estimate_prompt_tokens({"messages": HELLO}), estimate_text_tokens(delivered))
    cost = micros("gpt-main", usage)
    provider, upstream_model = TARGETS["gpt-main"]
    assert {k: run.record[k] for k in ("model", "provider", "upstream_model", "status", "stream")} == {
        "model": "mixed",
        "provider": provider,
        "upstream_model": upstream_model,
        "status": "error",
        "stream": True,
    }
    assert (run.record["input_tokens"], run.record["output_tokens"], run.record["cost_usd"]) == (*usage, cost / MICRO)
    root = call_span("mixed", "gpt-main", usage, cost, **{STATUS: "error", ERROR_TYPE: "upstream_unreachable"})
    assert run.spans[0] == (root[0], "ERROR", *root[2:])


def test_a_refused_continuation_is_traced(
    scenario: Callable[..., Run], upstream: OpenAIUpstream, claude: AnthropicUpstream
) -> None:
    run = refused_continuation(scenario, upstream, claude)
    assert run.spans[1:] == [
        attempt_span(1, "gpt-main", "upstream_unreachable"),
        attempt_span(2, "sonnet", "invalid_request_error"),
    ]


def test_the_failover_table_in_the_docs_names_every_scenario_test() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "failures.md").read_text()
    table = docs[docs.index("## The failover matrix") : docs.index("## Measured")]
    named = set(re.findall(r"`(test_\w+)(?:\[|`)", table))
    tests = {name for name in globals() if name.startswith("test_")} - {
        "test_the_failover_table_in_the_docs_names_every_scenario_test"
    }
    assert named == tests
