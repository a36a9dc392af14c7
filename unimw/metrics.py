"""The GenAI client metrics and unimw's own, recorded once per finished call.

Instruments and their advised buckets follow ``gen-ai-metrics.md``; every
attribute has a bounded set of values (a model not in the policy is
``_OTHER``, and so is a vendor's own error code unimw does not know), so a caller
cannot grow a metric's cardinality.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry import metrics
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_TOKEN_TYPE,
    GenAiTokenTypeValues,
)
from opentelemetry.semconv._incubating.metrics.gen_ai_metrics import (
    GEN_AI_CLIENT_OPERATION_DURATION,
    GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK,
    GEN_AI_CLIENT_TOKEN_USAGE,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT

from unimw.attributes import (
    BREAKER_CHANGES,
    BREAKER_STATE,
    BUDGET_REFUSALS,
    CACHE_HIT,
    CACHE_REQUESTS,
    COST,
    DURATION_BUCKETS,
    OTHER,
    PLAN,
    PROVIDER,
    SCHEMA_URL,
    TAG,
    TARGET,
    TENANT,
    TOKEN_BUCKETS,
)
from unimw.errors import KNOWN_CODES, UnimwError, UpstreamError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.util.types import AttributeValue

    from unimw.calls import Call

    Attributes = dict[str, AttributeValue]

INPUT: Final = GenAiTokenTypeValues.INPUT.value
OUTPUT: Final = GenAiTokenTypeValues.COMPLETION.value


@dataclass(frozen=True, slots=True, eq=False)
class Upstream:
    """What telemetry says about one provider of the policy (one per provider: compared by identity)."""

    name: str  #: gen_ai.provider.name
    address: str | None
    port: int | None
    propagate: bool  #: whether requests to it carry traceparent

    @property
    def attributes(self) -> Attributes:
        """``gen_ai.provider.name``, and ``server.address`` and ``server.port`` when both are known."""
        if self.address is None or self.port is None:
            return {GEN_AI_PROVIDER_NAME: self.name}
        return {GEN_AI_PROVIDER_NAME: self.name, SERVER_ADDRESS: self.address, SERVER_PORT: self.port}


def error_type(error: BaseException | None) -> str:
    """``error.type``: the OpenAI error code, the upstream's HTTP status, or the exception's class."""
    if isinstance(error, UpstreamError):
        return error.code or str(error.status)
    if isinstance(error, UnimwError):
        return error.code or error.type
    if error is None:
        return OTHER
    cls = type(error)
    return f"{cls.__module__}.{cls.__qualname__}"


def metric_error_type(error: BaseException | None) -> str:
    """``error.type`` with bounded values, for metrics: a vendor's own code that unimw does not know is
    ``_OTHER``; an upstream error with no code is its HTTP status (every other value is one of a fixed set)."""
    if isinstance(error, UpstreamError) and error.code is not None and error.code not in KNOWN_CODES:
        return OTHER
    return error_type(error)


#: Distinct values of one tag key a metric attribute takes, per process; later ones are ``_OTHER``.
MAX_TAG_VALUES = 100
#: Distinct attribute sets of calls whose metric attributes are kept for the next call alike.
MAX_KEPT = 256

#: What a call's duration and token attributes depend on: operation, public model, upstream, response model,
#: error.type.
_PointKey = tuple[str, str, "Upstream | None", "str | None", "str | None"]
#: The attributes of a call's duration (and time to first chunk), input tokens and output tokens.
_Points = tuple["Attributes", "Attributes", "Attributes"]


class Metrics:
    """The instruments of one gateway, on the host's meter provider unless given another."""

    def __init__(
        self,
        meter_provider: MeterProvider | None,
        routes: Mapping[str, Attributes],
        *,
        tenants: frozenset[str] = frozenset(),
        tags: tuple[str, ...] = (),
    ) -> None:
        meter = metrics.get_meter("unimw", meter_provider=meter_provider, schema_url=SCHEMA_URL)
        self._routes = routes
        # Metric attributes must stay few: tenants the app brings (thousands, millions) are counted by
        # plan, only those the policy declares by name; of a call's tags, only the keys the policy names.
        self._tenants = tenants
        self._tags = tags
        #: The values seen of each metric tag key: the first MAX_TAG_VALUES, then ``_OTHER`` (callers write them).
        self._tag_values: dict[str, set[str]] = {key: set() for key in tags}
        self._kept: dict[_PointKey, _Points] = {}
        self._duration = meter.create_histogram(
            GEN_AI_CLIENT_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._first_chunk = meter.create_histogram(
            GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._tokens = meter.create_histogram(
            GEN_AI_CLIENT_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._cache_requests = meter.create_counter(
            CACHE_REQUESTS, unit="{request}", description="Response cache lookups, by hit."
        )
        self._refusals = meter.create_counter(
            BUDGET_REFUSALS, unit="{request}", description="Calls refused by a rate limit or budget."
        )
        self._cost = meter.create_counter(COST, unit="USD", description="What tenants were charged for calls.")
        self._breaker_changes = meter.create_counter(
            BREAKER_CHANGES, unit="{change}", description="Circuit breakers that changed state, by target and state."
        )

    def breaker_changed(self, target: str, state: str) -> None:
        """Count one change of a breaker (targets are the policy's models: a bounded set)."""
        self._breaker_changes.add(1, {TARGET: target, BREAKER_STATE: state})

    def cache_lookup(self, call: Call, hit: bool) -> None:
        """Count one response-cache lookup in ``unimw.cache.requests``."""
        attributes: Attributes = {CACHE_HIT: hit, GEN_AI_REQUEST_MODEL: self._model(call), **self._who(call)}
        self._cache_requests.add(1, attributes)

    def record(self, call: Call, upstream: Upstream | None, decision: str, cost_usd: float) -> None:
        """Duration, time to first chunk, tokens, cost and refusals of one finished call.

        The SDK copies, checks and hashes the attributes of every measurement
        whatever it is given (some 90,000 instructions a point, under
        callgrind), so what is left to save here is making them: the
        attribute dicts of a call are made once per distinct set of values and
        reused (:meth:`_points`), some 3,500 instructions a call fewer.
        """
        model = self._model(call)
        failure = metric_error_type(call.error) if call.status == "error" else None
        key = (call.operation.name, model, upstream, call.reading.response_model or None, failure)
        points = self._kept.get(key) or self._points(key)
        ended = call.ended_at if call.ended_at is not None else time.perf_counter()  # set when settled after
        self._duration.record(ended - call.started, points[0])
        if call.stream and call.first_chunk_at is not None:
            self._first_chunk.record(call.first_chunk_at - call.started, points[0])
        if (usage := call.usage) is not None and not call.cache_hit:
            self._tokens.record(usage.input_tokens, points[1])
            self._tokens.record(usage.output_tokens, points[2])
        if cost_usd or decision == "refused":
            by_tenant: Attributes = {GEN_AI_REQUEST_MODEL: model, **self._who(call)}
            if cost_usd and call.target is not None and upstream is not None:
                by_tag = {TAG + key: self._tag_value(key, call.tags[key]) for key in self._tags if key in call.tags}
                self._cost.add(
                    cost_usd,
                    {**by_tenant, GEN_AI_PROVIDER_NAME: upstream.name, PROVIDER: call.target.provider, **by_tag},
                )
            if failure is not None and decision == "refused":
                self._refusals.add(1, {**by_tenant, ERROR_TYPE: failure})

    def _points(self, key: _PointKey) -> _Points:
        """The attributes of a call's duration and of its two token counts, kept for the next call alike.

        Only the first :data:`MAX_KEPT` sets are kept: the response model is the upstream's to name.
        """
        operation, model, upstream, response_model, failure = key
        attributes: Attributes = {GEN_AI_OPERATION_NAME: operation, GEN_AI_REQUEST_MODEL: model}
        if upstream is not None:
            attributes.update(upstream.attributes)
        elif (route := self._routes.get(model)) is not None:  # no target was called: what the route says
            attributes.update((k, route[k]) for k in (GEN_AI_PROVIDER_NAME, SERVER_ADDRESS, SERVER_PORT) if k in route)
        if response_model:
            attributes[GEN_AI_RESPONSE_MODEL] = response_model
        if failure is not None:
            attributes[ERROR_TYPE] = failure
        points = (attributes, {**attributes, GEN_AI_TOKEN_TYPE: INPUT}, {**attributes, GEN_AI_TOKEN_TYPE: OUTPUT})
        if len(self._kept) < MAX_KEPT:
            self._kept[key] = points
        return points

    def _tag_value(self, key: str, value: str) -> str:
        seen = self._tag_values[key]
        if value in seen:
            return value
        if len(seen) < MAX_TAG_VALUES:
            seen.add(value)
            return value
        return OTHER

    def _who(self, call: Call) -> Attributes:
        """The tenant (when the policy declares it) and the plan of a call, as metric attributes."""
        who: Attributes = {}
        if call.caller.tenant in self._tenants:
            who[TENANT] = call.caller.tenant
        if (plan := call.caller.plan) is not None:
            who[PLAN] = plan
        return who

    def _model(self, call: Call) -> str:
        """The public name called: a name not in the policy is ``_OTHER`` (bounded cardinality)."""
        model = call.request.get("model")
        return model if isinstance(model, str) and model in self._routes else OTHER
