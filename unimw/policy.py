"""The policy: policies.yaml as frozen pydantic models, checked as a whole.

Field-level problems are pydantic's to find. Problems that need the whole
file (a model naming a provider that does not exist, an alias cycle) are
raised as :class:`PolicyError` with the path of the offending value, so the
loader can point at its line. A provider's ``kind`` and ``options`` are
plain data here: the loader checks them against the adapter registry, so
the policy depends on no adapter.

Every field has a description: :meth:`Policy.model_json_schema` is the
published schema (``unimw schema``), and docs/policy.md is checked against it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    StrictBool,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# Defined apart, for the steps to use without pydantic; re-exported here, where the policy is described.
from unimw.notation import DURATION as _DURATION
from unimw.notation import DURATION_HELP as DURATION_HELP
from unimw.notation import TAG_KEY as TAG_KEY
from unimw.notation import load_callable as load_callable
from unimw.notation import parse_duration as parse_duration

Path = tuple[str | int, ...]


class PolicyError(ValueError):
    """A policy that is well-formed field by field but wrong as a whole."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


#: Seconds, written as a number or as a duration; published as either, since users write ``1h``.
Seconds = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DURATION.pattern}],
            "description": DURATION_HELP,
        }
    ),
]


def duration_field(default: float | None, meaning: str) -> Any:
    """A :data:`Seconds` field whose description says what it is for and how it is written.

    A field's description replaces its type's in the schema, so the type's is repeated here.
    """
    return Field(default=default, description=f"{meaning} In {DURATION_HELP}.")


def _store_url(url: str) -> str:
    if not url.startswith(("memory://", "redis://", "rediss://", "unix://")):
        raise ValueError(f"store must be memory:// or redis://host:port/db, got {url!r}")
    return url


StoreURL = Annotated[str, AfterValidator(_store_url)]


def _importable(path: str) -> str:
    # Checked when the policy is read, so `unimw check` names the line of a typo.
    try:
        load_callable(path)
    except (ImportError, AttributeError, TypeError) as exc:
        raise ValueError(f"cannot use {path!r}: {exc}") from None
    return path


#: A ``"package.module:function"`` path to a callable that can be imported.
CallablePath = Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$"), AfterValidator(_importable)]


class _Frozen(BaseModel):
    # Validators are built on first validation (the first policy read), not when unimw is imported.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Provider(_Frozen):
    """Where requests go: one upstream endpoint speaking one wire protocol."""

    kind: str = Field(
        description="The wire protocol, which picks the adapter: openai (OpenAI and every compatible server), "
        "anthropic, gemini or mock."
    )
    base_url: str | None = Field(
        default=None,
        description="The endpoint (http:// or https://); unset: the vendor's own. Required for a compatible "
        "server other than OpenAI.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The provider's key; write ${VAR} to take it from the environment, never the key itself.",
    )
    headers: dict[str, str] = Field(default={}, description="Extra headers sent on every call to this provider.")
    timeout: Seconds = duration_field(60.0, "Per attempt: the longest wait for the next bytes of the answer.")
    connect_timeout: Seconds = duration_field(5.0, "To open a connection.")
    first_token_timeout: Seconds | None = duration_field(
        None,
        "Streams: the longest wait for the first chunk (headers included); past it the attempt fails over "
        "before anything reached the caller. Unset: timeout alone.",
    )
    stall_timeout: Seconds | None = duration_field(
        None,
        "Streams: the longest silence between two chunks; past it the stream is continued elsewhere "
        "(dispatch.stream_resumes). Unset: timeout alone. Whole (non-streamed) answers are not cut by it.",
    )
    malformed_events: Literal["skip", "fail"] = Field(
        default="skip",
        description="A stream event that is not a JSON object, on any kind's wire, is skipped (and counted on the "
        "call's span as unimw.stream.skipped_events), or fails the stream like a cut (fail).",
    )
    retries: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Extra attempts on this provider (0 to 10), instead of dispatch.retries; unset: dispatch.retries.",
    )
    options: dict[str, Any] = Field(
        default={}, description="Settings of the kind (e.g. azure for openai, latency for mock); see its options."
    )
    propagate_trace: bool | None = Field(
        default=None,
        description="Send the call's W3C traceparent to this provider. Unset: tracing.propagate decides, and when "
        "that is unset too, only self-hosted providers get it.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
        return url.rstrip("/") if url else url


class Price(_Frozen):
    """USD per 1M tokens."""

    input: float = Field(default=0.0, ge=0, description="USD per 1M input (prompt) tokens.")
    output: float = Field(default=0.0, ge=0, description="USD per 1M output tokens, reasoning included.")
    cached_input: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens read from the vendor's prompt cache; unset: input."
    )
    cache_write: float | None = Field(
        default=None,
        ge=0,
        description="USD per 1M input tokens written to the vendor's prompt cache (5-minute writes, where the "
        "lifetimes are priced apart); unset: input.",
    )
    cache_write_1h: float | None = Field(
        default=None,
        ge=0,
        description="USD per 1M input tokens written to the prompt cache to live one hour (ttl: 1h); "
        "unset: cache_write.",
    )


#: Where :class:`PromptCache` may add a breakpoint.
CacheBreakpoint = Literal["tools", "system", "last_user"]


class PromptCache(_Frozen):
    """Prompt-cache breakpoints added to a model's requests where the caller marked none.

    For wire protocols that mark breakpoints per request (``kind: anthropic``'s ``cache_control``); the
    others ignore it, their vendors caching prompt prefixes by themselves.
    """

    breakpoints: list[CacheBreakpoint] = Field(
        min_length=1,
        description="Where to mark, in order of preference while fewer than 4 breakpoints are set: tools (the last "
        "tool), system (the last system block), last_user (the last block of a trailing user turn); each only "
        "where the caller marked nothing.",
    )
    ttl: Literal["5m", "1h"] | None = Field(
        default=None, description="The lifetime of the breakpoints added, 5m or 1h; unset: the vendor's default (5m)."
    )

    @field_validator("breakpoints")
    @classmethod
    def _once_each(cls, breakpoints: list[str]) -> list[str]:
        if len(set(breakpoints)) != len(breakpoints):
            raise ValueError("each breakpoint may be listed once")
        return breakpoints


class Model(_Frozen):
    """A public model name, served by one provider under its own name."""

    provider: str = Field(description="The provider that serves it: a name under providers.")
    model: str = Field(description="The vendor's model id (for Azure deployments API: the deployment name).")
    price: Price | None = Field(
        default=None,
        description="What its tokens cost, for budgets and usage records; unset: the built-in list price of "
        "well-known models, else 0.",
    )
    params: dict[str, Any] = Field(
        default={},
        description="Request fields merged into every request for this model (the caller's own fields win), "
        "in the vendor's own request format.",
    )
    prefill: bool | None = Field(
        default=None,
        description="Whether it continues an assistant turn the request ends with (a prefill), which is how a "
        "stream cut mid-answer is continued here. Unset: its kind's default (anthropic yes; openai, gemini and "
        "mock no).",
    )
    prefill_params: dict[str, Any] = Field(
        default={},
        description="Request fields merged into a continuation request only, for servers that need to be told "
        "(vLLM: {continue_final_message: true, add_generation_prompt: false}).",
    )
    first_token_timeout: Seconds | None = duration_field(None, "Overrides its provider's first_token_timeout.")
    stall_timeout: Seconds | None = duration_field(None, "Overrides its provider's stall_timeout.")
    owned_by: str | None = Field(default=None, description="owned_by in /v1/models; unset: the provider's name.")
    context_window: int | None = Field(
        default=None,
        gt=0,
        description="Tokens its context holds (prompt and answer); unset: the built-in figure of well-known models, "
        "else unknown (never skipped by the context check, never moved to as larger).",
    )
    prompt_cache: PromptCache | None = Field(
        default=None,
        description="Prompt-cache breakpoints the gateway adds where the caller marked none (anthropic models); "
        "unset: only the caller's own.",
    )


class WeightedTarget(_Frozen):
    """One target of an alias; a bare string is a target of weight 1."""

    model: str = Field(description="A model or another alias.")
    weight: float = Field(
        default=1.0, gt=0, description="Relative share of first attempts under the weighted strategy."
    )


def _target(value: Any) -> Any:
    return {"model": value} if isinstance(value, str) else value


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


#: One name, or several (any of them matches).
Names = Annotated[list[str], BeforeValidator(_listed, json_schema_input_type=str | list[str]), Field(min_length=1)]
#: A header's name as RFC 9110 writes a token.
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
#: The conditions of a ``when`` rule, in the order they are explained.
CONDITIONS = ("tenant", "plan", "tags", "headers", "tools", "images", "structured", "tokens_over")


class RouteRule(_Frozen):
    """One ``when`` rule of an alias: if every condition it sets holds, its targets are tried instead of the
    alias's own. Rules are tried in order; the first that matches wins."""

    tenant: Names | None = Field(default=None, description="The caller's tenant is this one (or one of these).")
    plan: Names | None = Field(default=None, description="The caller's plan is this one (or one of these).")
    tags: dict[Annotated[str, Field(pattern=TAG_KEY.pattern)], Names] | None = Field(
        default=None,
        description="Each tag (from metadata or X-Unimw-Tags) has this value (or one of these values).",
    )
    headers: dict[str, Names] | None = Field(
        default=None, description="Each request header has this value (or one of these values); names in any case."
    )
    tools: StrictBool | None = Field(default=None, description="true: the request offers tools; false: it offers none.")
    images: StrictBool | None = Field(default=None, description="true: a message carries an image; false: none does.")
    structured: StrictBool | None = Field(
        default=None,
        description="true: the request wants structured output (response_format json_schema or json_object); "
        "false: it does not.",
    )
    tokens_over: int | None = Field(
        default=None,
        ge=0,
        description="The request's estimated prompt tokens (about four characters of text a token, 1000 an image "
        "or file) are more than this.",
    )
    targets: list[Annotated[WeightedTarget, BeforeValidator(_target, json_schema_input_type=str | WeightedTarget)]] = (
        Field(min_length=1, description="What is tried when the rule matches, by the alias's strategy.")
    )

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for name in headers or ():
            if not HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return headers

    @model_validator(mode="after")
    def _some_condition(self) -> RouteRule:
        if all(getattr(self, name) is None for name in CONDITIONS):
            raise ValueError(
                f"a when rule needs a condition ({', '.join(CONDITIONS)}); the alias's own targets are the default"
            )
        return self


class Alias(_Frozen):
    """One public name for several targets, tried by a strategy."""

    targets: list[Annotated[WeightedTarget, BeforeValidator(_target, json_schema_input_type=str | WeightedTarget)]] = (
        Field(min_length=1, description="Models or aliases, as names or as {model, weight}; aliases are flattened.")
    )
    strategy: Literal["fallback", "weighted", "least_latency", "cheapest"] = Field(
        default="fallback",
        description="fallback: in order, the next on failure; weighted: the first drawn by weight, the rest "
        "as fallbacks; least_latency: the fastest lately first; cheapest: the cheapest for the request first.",
    )
    sticky: Literal["tenant", "end_user"] | None = Field(
        default=None,
        description="weighted only: draw the first target from a hash of the tenant's (or end user's) id, so each "
        "caller stays on one arm; unset: a random draw per call.",
    )
    when: list[RouteRule] = Field(
        default=[], description="Rules tried in order; the first that matches picks the targets instead of targets."
    )
    probe_after: Seconds = duration_field(
        30.0, "least_latency: a target tried no more often than this is tried first once, to see if it got faster."
    )
    on_context_overflow: list[str] = Field(
        default=[],
        description="Models or aliases tried, in order, when a target answers that the request is longer than its "
        "context window (or the context check finds none fits); unset: the next targets with a known larger window.",
    )
    on_content_filter: list[str] = Field(
        default=[],
        description="Models or aliases tried, in order, when a target's content filter refuses the request; "
        "unset: the refusal is returned.",
    )
    context_check: bool | None = Field(
        default=None,
        description="Skip targets whose context_window cannot hold the request's estimated tokens before calling "
        "them; unset: dispatch.context_check.",
    )


class Breaker(_Frozen):
    """A circuit breaker per target: one that keeps failing is left alone for a while, by every replica."""

    failures: int = Field(
        default=0,
        ge=0,
        description="Retryable failures of a target (5xx, 429, timeouts, broken connections, each attempt) within "
        "window that open its breaker; 0: no breakers.",
    )
    window: Seconds = duration_field(30.0, "How far back failures are counted, from the first one counted.")
    open_for: Seconds = duration_field(
        30.0,
        "How long an open breaker keeps calls off its target (the alias's other targets answer; with none, 503 "
        "circuit_open at once). Then one call at a time is let through as a probe: its success closes the "
        "breaker, its failure opens it again.",
    )


class Dispatch(_Frozen):
    """How hard to try: retries per target, backoff, cooldown of failed targets."""

    retries: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Extra attempts on the same target (0 to 10) after a 5xx, a timeout or a broken connection.",
    )
    backoff: Seconds = duration_field(0.25, "Wait before the first retry; doubled on each retry, with jitter.")
    max_backoff: Seconds = duration_field(8.0, "The longest wait between retries.")
    retry_after_same_target_up_to: Seconds = duration_field(
        0.0,
        "A 429 whose Retry-After is this long or shorter is retried on the same target after that wait, while "
        "retries remain, instead of moving to the alias's next target at once; 0: always move on.",
    )
    max_retry_after: Seconds = duration_field(
        10.0, "The longest Retry-After honoured before moving on to the next target."
    )
    cooldown: Seconds = duration_field(
        5.0,
        "After a retryable failure a target is skipped for this long while other targets of its alias remain; "
        "0 turns cooldown off.",
    )
    breaker: Breaker = Field(
        default=Breaker.model_construct(),
        description="Circuit breakers per target; kept in tenancy.store, so replicas sharing a Redis store share them.",
    )
    stream_resumes: int = Field(
        default=2,
        ge=0,
        le=10,
        description="How many times one chat stream, or Responses stream served by translation, that failed after "
        "its first chunk is continued (its text so far sent as a prefill to a target that accepts one); 0: the "
        "caller gets the error event (response.failed) instead.",
    )
    context_check: bool = Field(
        default=False,
        description="Skip targets whose context_window cannot hold a chat request's estimated tokens (prompt plus "
        "max tokens) before calling them; an alias's context_check decides for its calls.",
    )


class Server(_Frozen):
    """Bounds of what the doors accept, and of what one stream may send."""

    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, description="Largest request body, in bytes; a larger one gets 413."
    )
    max_stream_output_bytes: int | None = Field(
        default=8 * 1024 * 1024,
        gt=0,
        description="Most text one stream may carry (answer, tool arguments, reasoning and refusals, in UTF-8 "
        "bytes; a continued stream's attempts together); past it the upstream is stopped and the stream ends with "
        "an error event (upstream_error / stream_output_too_large). The default is some 16 times the longest "
        "answer models allow (128k tokens). null: no limit.",
    )
    max_concurrent_calls: int | None = Field(
        default=None,
        gt=0,
        description="Calls in flight at once in this process, every tenant together (a stream until it ends); "
        "one more waits up to concurrency_wait, then gets 429. Unset: no limit.",
    )
    concurrency_wait: Seconds = duration_field(
        0.0,
        "How long a call over a concurrency limit (max_concurrent_calls, a plan's max_concurrent) waits for a "
        "call to end before it gets 429; 0 answers at once.",
    )


Window = Literal["minute", "hour", "day", "month"]


class Limit(_Frozen):
    """At most ``requests`` / ``tokens`` / ``usd`` per window.

    ``minute`` and ``hour`` slide (any 60 s holds at most the limit);
    ``day`` and ``month`` are calendar windows in ``tenancy.reset_timezone``.
    """

    per: Window = Field(
        description="The window: minute and hour slide, day and month are calendar windows in tenancy.reset_timezone."
    )
    requests: int | None = Field(default=None, gt=0, description="Requests per window.")
    tokens: int | None = Field(default=None, gt=0, description="Tokens (input plus output) per window.")
    usd: float | None = Field(default=None, gt=0, description="Spend per window, in USD.")
    scope: Literal["tenant", "end_user"] = Field(
        default="tenant",
        description="tenant: one counter for the tenant; end_user: one per end user of the tenant.",
    )

    @model_validator(mode="after")
    def _something_limited(self) -> Limit:
        if self.requests is None and self.tokens is None and self.usd is None:
            raise ValueError("a limit needs at least one of requests, tokens or usd")
        return self


class GlobalLimit(Limit):
    """A limit shared by every tenant, on one public model or one provider."""

    model: str | None = Field(default=None, description="The model limited (exactly one of model or provider).")
    provider: str | None = Field(default=None, description="The provider limited (exactly one of model or provider).")

    @model_validator(mode="after")
    def _one_subject(self) -> GlobalLimit:
        if (self.model is None) == (self.provider is None):
            raise ValueError("a global limit names exactly one of model or provider")
        return self


API_KEY_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class BudgetStep(_Frozen):
    """Near a budget, send calls to a cheaper model or alias instead of refusing them later."""

    at: float = Field(gt=0, le=1, description="The fraction of a USD limit spent from which this step applies.")
    use: str = Field(description="The model or alias calls go to from then on, until the window ends.")
    models: list[str] | None = Field(
        default=None, description="The requested names this step reroutes; unset: every name but use itself."
    )


class Plan(_Frozen):
    """What a class of tenants may use and how much: the rules of every tenant on it."""

    models: list[str] | None = Field(
        default=None, description="Public models and aliases its tenants may use; unset: all."
    )
    max_tokens: int | None = Field(
        default=None, gt=0, description="Cap on output tokens per request (the request's own cap is lowered to it)."
    )
    max_concurrent: int | None = Field(
        default=None,
        gt=0,
        description="Calls in flight at once per tenant (a stream until it ends), across every replica when "
        "tenancy.store is redis://, else in this process; one more waits up to server.concurrency_wait, then gets "
        "429. Unset: no limit.",
    )
    limits: list[Limit] = Field(default=[], description="Rate limits and budgets, one set of counters per tenant.")
    cache_scope: Literal["tenant", "global"] | None = Field(
        default=None, description="Cache scope for its tenants' calls; unset: the cache's own setting."
    )
    alerts: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        default=None, description="Budget alert thresholds for its tenants; unset: tenancy.alerts.at."
    )
    on_budget: list[BudgetStep] = Field(
        default=[], description="Where calls go once a share of a USD limit is spent (the highest step reached)."
    )
    byok: list[str] = Field(
        default=[],
        description="Providers its tenants must bring their own key for; their calls never use the policy's key.",
    )


class Tenant(Plan):
    """One customer declared in the policy: how it authenticates, its plan, and what differs from the plan.

    Its ``limits`` replace its plan's limit of the same window and scope and
    add to the others; set fields replace the plan's; ``byok`` adds to it.
    """

    plan: str | None = Field(default=None, description="The plan it is on (a name under plans); unset: none.")
    api_keys: list[Annotated[str, Field(pattern=API_KEY_HASH.pattern)]] = Field(
        default=[],
        description="Keys that identify this tenant, stored hashed as sha256:<64 hex digits> "
        "(unimw hash-key <key> prints it).",
    )
    models: list[str] | None = Field(
        default=None, description="Public models and aliases this tenant may use; unset: its plan's, else all."
    )
    limits: list[Limit] = Field(
        default=[], description="Its own limits: each replaces its plan's with the same per and scope."
    )
    cache_scope: Literal["tenant", "global"] | None = Field(
        default=None, description="Cache scope for its calls; unset: its plan's, else the cache's own setting."
    )
    alerts: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        default=None, description="Budget alert thresholds; unset: its plan's, else tenancy.alerts.at."
    )
    on_budget: list[BudgetStep] = Field(
        default=[], description="Where its calls go once a share of a USD limit is spent; unset: its plan's."
    )
    byok: list[str] = Field(
        default=[], description="Providers it must bring its own key for, besides those its plan names."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _hashed(cls, keys: Any) -> Any:
        # Before the pattern, so a plain key gets this message rather than the pattern's.
        for key in keys if isinstance(keys, list) else ():
            if isinstance(key, str) and not API_KEY_HASH.match(key):
                raise ValueError(
                    "api_keys are stored hashed: write sha256:<64 lowercase hex digits> "
                    "(python -m unimw.cli hash-key <key> prints it)"
                )
        return keys


class HeaderSource(_Frozen):
    """The tenant's id is the value of a request header, set by the app's own auth in front."""

    header: str = Field(description="The header's name, e.g. X-Tenant-Id.")
    plan_header: str | None = Field(
        default=None, description="A header naming the tenant's plan, set by the same auth (e.g. X-Tenant-Plan)."
    )


class CallableSource(_Frozen):
    """The tenant is what a function of the app returns."""

    callable: CallablePath = Field(
        description="A module:function given the ASGI scope (sync or async), returning an Identity, "
        "a tenant id or None."
    )


class KeyLookupSource(_Frozen):
    """The bearer key is looked up, by its SHA-256, by a function of the app (keys the app issues)."""

    key_lookup: CallablePath = Field(
        description="A module:function given the key's digest (sha256:<hex>), sync or async, returning an "
        "Identity, a tenant id, or None for a key it does not know."
    )
    ttl: Seconds = duration_field(60.0, "How long an answer naming a tenant is kept: a revoked key works this long.")
    negative_ttl: Seconds = duration_field(
        30.0, "How long an unknown key is remembered as unknown, so a flood of bad keys costs one lookup each."
    )
    max_entries: int = Field(default=100_000, gt=0, description="Answers kept at most (each kind, least recent out).")
    timeout: Seconds = duration_field(2.0, "The longest wait for the lookup; past it the call gets 503.")


def _source_kind(value: Any) -> str:
    if isinstance(value, dict):
        for kind in ("header", "key_lookup"):
            if kind in value:
                return kind
        return "callable"
    return "api_key"


#: ``api_key``, ``{header: X-Tenant-Id}``, ``{callable: "module:function"}`` or ``{key_lookup: ...}``;
#: told apart by shape, so an error names the field that is wrong rather than every alternative.
TenantSource = Annotated[
    Annotated[Literal["api_key"], Tag("api_key")]
    | Annotated[HeaderSource, Tag("header")]
    | Annotated[CallableSource, Tag("callable")]
    | Annotated[KeyLookupSource, Tag("key_lookup")],
    Discriminator(_source_kind),
]


class Alerts(_Frozen):
    """Budget thresholds: fractions of a limit that fire an alert once per window."""

    at: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        default=[0.8, 1.0], description="Fractions of a limit (above 0, at most 1) at which an alert fires."
    )
    call: CallablePath | None = Field(
        default=None, description="A module:function called with each BudgetAlert, besides the log and the span."
    )


class Tenancy(_Frozen):
    """How callers are identified and how their limits are kept."""

    resolve: list[TenantSource] = Field(
        default=["api_key"],
        description="Where the tenant comes from, tried in order; the first that names a tenant wins: api_key "
        "(the bearer key, matched by SHA-256), {header: X-Tenant-Id}, {callable: module:function} or "
        "{key_lookup: module:function}.",
    )
    default: str | None = Field(
        default=None, description="Tenant for callers no source identifies; unset: they get 401."
    )
    default_plan: str | None = Field(
        default=None,
        description="The plan of a tenant that is not declared under tenants and whose resolver names no plan; "
        "unset: such a tenant gets 401.",
    )
    end_user_header: str | None = Field(
        default="X-End-User", description="Where an end user's id comes from, besides the request's user field."
    )
    default_max_tokens: int = Field(
        default=4096,
        gt=0,
        description="Output tokens reserved for a request that sets no cap (and the cap it is given when the "
        "tenant has token or USD limits).",
    )
    reset_timezone: str = Field(default="UTC", description="The IANA time zone in which day and month windows reset.")
    store: StoreURL = Field(
        default="memory://",
        description="Where counters are kept: memory:// (this process) or redis://host:port/db (shared by replicas).",
    )
    on_store_error: Literal["closed", "open"] = Field(
        default="closed",
        description="When the store cannot be reached: closed refuses with 503, open lets calls through unmetered.",
    )
    alerts: Alerts = Field(default=Alerts.model_construct(), description="Budget alerts.")

    @field_validator("reset_timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}") from None
        return zone


class CacheRule(_Frozen):
    """Cache settings for one model or alias; unset fields follow the cache section."""

    enabled: bool | None = Field(default=None, description="Cache this model; unset: cache.enabled.")
    ttl: Seconds | None = duration_field(None, "How long its entries live; unset: cache.ttl.")
    scope: Literal["tenant", "global"] | None = Field(default=None, description="Its scope; unset: cache.scope.")
    when: Literal["always", "temperature_zero"] | None = Field(
        default=None, description="Which of its requests are cached; unset: cache.when."
    )


class Cache(_Frozen):
    """The response cache: exact-match, per tenant unless a model says global."""

    enabled: bool = Field(default=False, description="Cache answers (models can opt in or out under models).")
    store: StoreURL = Field(
        default="memory://",
        description="memory:// (in process, LRU and TTL) or redis://host:port/db (shared by every replica).",
    )
    ttl: Seconds = duration_field(3600.0, "How long an entry lives.")
    max_entries: int = Field(default=10_000, gt=0, description="Entries the memory store holds at most.")
    max_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="Bytes the memory store holds at most.")
    scope: Literal["tenant", "global"] = Field(
        default="tenant", description="tenant: one tenant never sees another's entries; global: shared."
    )
    when: Literal["always", "temperature_zero"] = Field(
        default="always", description="Which requests are cached: all, or only those asking for temperature 0."
    )
    charge: Literal["free", "full"] = Field(
        default="free",
        description="A hit is free (no tokens, no budget, no rate limit) or charged in full as the original call was.",
    )
    wait: Seconds = duration_field(30.0, "How long identical concurrent requests wait for the one call in flight.")
    models: dict[str, CacheRule] = Field(default={}, description="Settings per model or alias, over these.")


class ResponsesSettings(_Frozen):
    """Where /v1/responses keeps stored responses (store: true), for previous_response_id and GET."""

    store: StoreURL = Field(
        default="memory://",
        description="memory:// (in process, LRU and TTL) or redis://host:port/db (shared by every replica).",
    )
    ttl: Seconds = duration_field(30 * 86400.0, "How long a stored response (and the conversation to it) is kept.")
    max_entries: int = Field(default=10_000, gt=0, description="Responses the memory store holds at most.")
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="Bytes the memory store holds at most.")


class UsageSinks(_Frozen):
    """Where a record of every settled call goes."""

    call: CallablePath | None = Field(
        default=None, description="A module:function called with each UsageRecord, off the response path."
    )
    jsonl: str | None = Field(default=None, description="A file that gets one JSON line per call.")
    tags: list[Annotated[str, Field(pattern=TAG_KEY.pattern)]] = Field(
        default=[],
        description="Tag keys (from metadata or X-Unimw-Tags) that become attributes of the unimw.cost metric; "
        "every tag reaches records and spans, only these reach metrics.",
    )
    return_cost: bool = Field(
        default=False,
        description="Tell the caller what a call cost: an x-unimw-cost header, and x_unimw.cost_usd on a "
        "stream's usage chunk.",
    )


class TracingSettings(_Frozen):
    """OpenTelemetry: what spans may carry, and whether the trace goes upstream."""

    capture_content: bool = Field(
        default=False,
        description="Prompts and completions on the call span (gen_ai.input.messages, ...); "
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT, when set, decides instead.",
    )
    propagate: bool | None = Field(
        default=None,
        description="W3C traceparent for the providers that do not set propagate_trace: true for all of them, "
        "false for none; unset: only self-hosted ones get it, not third-party vendors.",
    )
    attempt_spans: Literal["retries", "always"] = Field(
        default="retries",
        description="A span for each upstream attempt under the call's: retries, only when the call made more than "
        "one (the first one's span then made with its real times); always, for a single attempt too.",
    )


class Policy(_Frozen):
    """An unimw policy (policies.yaml): providers, models, aliases, tenants and their limits, cache and tracing."""

    model_config = ConfigDict(
        title="unimw policy", json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"}
    )

    providers: dict[str, Provider] = Field(
        default={}, description="Upstream endpoints by name: where requests go and how."
    )
    models: dict[str, Model] = Field(
        default={}, description="Public model names, each served by one provider under the vendor's id."
    )
    aliases: dict[str, Alias] = Field(
        default={}, description="Public names for several targets, tried in order or by weight."
    )
    # Default sections are made with model_construct (their fields' defaults, unvalidated as a call would leave
    # them): calling a model builds its validator, which defer_build leaves to the first policy read.
    dispatch: Dispatch = Field(default=Dispatch.model_construct(), description="Retries, backoff and cooldown.")
    server: Server = Field(default=Server.model_construct(), description="Bounds of the HTTP doors.")
    tenancy: Tenancy = Field(
        default=Tenancy.model_construct(), description="How callers are identified and their limits kept."
    )
    plans: dict[str, Plan] = Field(
        default={}, description="Classes of tenants (free, pro, ...): models, limits and budgets per tenant."
    )
    tenants: dict[str, Tenant] = Field(
        default={}, description="Customers declared by name: keys, plan, and what differs from the plan."
    )
    limits: list[GlobalLimit] = Field(
        default=[], description="Limits shared by every tenant, on one model or one provider."
    )
    usage: UsageSinks = Field(
        default=UsageSinks.model_construct(),
        description="Where a record of every call goes, its tags, and cost for the caller.",
    )
    cache: Cache = Field(default=Cache.model_construct(), description="The response cache.")
    responses: ResponsesSettings = Field(
        default=ResponsesSettings.model_construct(),
        description="The store of /v1/responses (previous_response_id, GET, DELETE).",
    )
    tracing: TracingSettings = Field(default=TracingSettings.model_construct(), description="OpenTelemetry settings.")

    def check(self) -> None:
        """Raise :class:`PolicyError` for the first cross-reference problem."""
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise PolicyError(
                    ("models", name, "provider"),
                    f"model {name!r} uses provider {model.provider!r}, which is not defined in providers",
                )
        for name in self.aliases:
            if name in self.models:
                raise PolicyError(("aliases", name), f"alias {name!r} has the same name as a model")
        for name in self.aliases:
            self.expand(name)
        for name, alias in self.aliases.items():
            self._check_recovery(name, alias)
            self._check_alias(name, alias)
        public = self.models.keys() | self.aliases.keys()
        for section, rules in (("plans", self.plans), ("tenants", self.tenants)):
            for name, rule in rules.items():
                self._check_rules((section, name), rule, public)
        for name, tenant in self.tenants.items():
            if tenant.plan is not None and tenant.plan not in self.plans:
                raise PolicyError(
                    ("tenants", name, "plan"), f"tenant {name!r} is on plan {tenant.plan!r}, which is not in plans"
                )
        if self.tenancy.default is not None and self.tenancy.default not in self.tenants:
            raise PolicyError(("tenancy", "default"), f"default tenant {self.tenancy.default!r} is not in tenants")
        if self.tenancy.default_plan is not None and self.tenancy.default_plan not in self.plans:
            raise PolicyError(
                ("tenancy", "default_plan"), f"default plan {self.tenancy.default_plan!r} is not in plans"
            )
        for name in self.cache.models:
            if name not in public:
                raise PolicyError(
                    ("cache", "models", name), f"cache rule for {name!r}, which is neither a model nor an alias"
                )
        for i, limit in enumerate(self.limits):
            if limit.model is not None and limit.model not in self.models:
                raise PolicyError(("limits", i, "model"), f"limit on {limit.model!r}, which is not a model")
            if limit.provider is not None and limit.provider not in self.providers:
                raise PolicyError(("limits", i, "provider"), f"limit on {limit.provider!r}, which is not a provider")

    def _check_recovery(self, name: str, alias: Alias) -> None:
        for field in ("on_context_overflow", "on_content_filter"):
            for i, target in enumerate(getattr(alias, field)):
                if target == name:
                    raise PolicyError(("aliases", name, field, i), f"{field} of alias {name!r} names the alias itself")
                if target not in self.models and target not in self.aliases:
                    raise PolicyError(
                        ("aliases", name, field, i),
                        f"{field} of alias {name!r} names {target!r}, which is neither a model nor an alias",
                    )

    def _check_rules(self, at: Path, rule: Plan, public: set[str]) -> None:
        kind = "plan" if at[0] == "plans" else "tenant"
        for i, allowed in enumerate(rule.models or ()):
            if allowed not in public:
                raise PolicyError(
                    (*at, "models", i),
                    f"{kind} {at[1]!r} may use {allowed!r}, which is neither a model nor an alias",
                )
        for i, step in enumerate(rule.on_budget):
            if step.use not in public:
                raise PolicyError(
                    (*at, "on_budget", i, "use"), f"on_budget uses {step.use!r}, which is neither a model nor an alias"
                )
            for j, name in enumerate(step.models or ()):
                if name not in public:
                    raise PolicyError(
                        (*at, "on_budget", i, "models", j),
                        f"on_budget reroutes {name!r}, which is neither a model nor an alias",
                    )
            if not any(limit.usd for limit in rule.limits) and kind == "plan":
                raise PolicyError((*at, "on_budget", i), f"plan {at[1]!r} has on_budget but no USD limit to measure")
        for i, provider in enumerate(rule.byok):
            if provider not in self.providers:
                raise PolicyError((*at, "byok", i), f"byok names {provider!r}, which is not a provider")

    def _check_alias(self, name: str, alias: Alias) -> None:
        """The parts of an alias that name other things: its rules' targets and plans, and sticky's strategy."""
        if alias.sticky is not None and alias.strategy != "weighted":
            raise PolicyError(("aliases", name, "sticky"), f"alias {name!r} is sticky, which needs strategy: weighted")
        for i, rule in enumerate(alias.when):
            self.expand_rule(name, i)
            for j, plan in enumerate(rule.plan or ()):
                if plan not in self.plans:
                    raise PolicyError(
                        ("aliases", name, "when", i, "plan", j),
                        f"a when rule names plan {plan!r}, which is not in plans",
                    )

    def expand_rule(self, alias: str, index: int) -> list[tuple[str, float]]:
        """The concrete models behind the targets of ``when`` rule ``index`` of ``alias``, as :meth:`expand`."""
        rule = self.aliases[alias].when[index]
        where = f"when rule {index} of alias {alias!r}"
        return self._flatten(rule.targets, ("aliases", alias, "when", index, "targets"), where, ())

    def expand(self, name: str, _seen: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        """The concrete models behind ``name``, in order, with weights.

        Aliases may point at aliases; they are flattened here, and a cycle or
        a dangling name is a :class:`PolicyError`.
        """
        if name in self.models:
            return [(name, 1.0)]
        if name in _seen:
            cycle = " -> ".join((*_seen[_seen.index(name) :], name))
            raise PolicyError(("aliases", _seen[0]), f"alias cycle: {cycle}")
        return self._flatten(
            self.aliases[name].targets, ("aliases", name, "targets"), f"alias {name!r}", (*_seen, name)
        )

    def _flatten(
        self, targets: list[WeightedTarget], at: Path, where: str, seen: tuple[str, ...]
    ) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for i, target in enumerate(targets):
            if target.model not in self.models and target.model not in self.aliases:
                raise PolicyError(
                    (*at, i), f"{where} points at {target.model!r}, which is neither a model nor an alias"
                )
            for model, weight in self.expand(target.model, seen):
                if model not in (m for m, _ in out):
                    out.append((model, weight * target.weight))
        return out
