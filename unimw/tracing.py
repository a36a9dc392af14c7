"""OpenTelemetry: a span for every call and every upstream attempt, and the GenAI metrics.

The spans of one call, named and shaped by the GenAI semantic conventions::

    <the host app's current span: its HTTP server span, when mounted>
    └─ chat {requested model}   CLIENT  the gateway call (Gateway.handle → Finisher.finish)
       ├─ chat {upstream model} CLIENT  attempt 1  (error.type and status when it failed)
       └─ chat {upstream model} CLIENT  attempt 2  (a retry, or the next target of an alias)

The gateway span ends when the call is finished: after the answer for a plain
call; when the stream ends, fails or is closed for a stream. An attempt span
covers one upstream request: the whole exchange for a plain call, the opening
of the stream up to its first chunk for a stream; it carries the request fields
its adapter had to leave out (the adapter's ``dropped_params``).

Most calls make one attempt, and a second span would only repeat the call's:
unless the policy asks for them always (``tracing.attempt_spans``), attempt
spans are made only for calls that make a second attempt. The first attempt
runs without a span, its times and outcome noted; when a second one starts,
the first's span is made after the fact with those times. A call that makes
one attempt is its span alone, with that attempt's dropped fields on it.

Each span gets one attributes dict when it starts and one when it ends (the
SDK's cost is per span and per call of it, more than per attribute).

Attribute and metric names: the conventions' own are imported from
``opentelemetry-semantic-conventions`` (never typed out), and unimw's are in
the one table of :mod:`unimw.attributes`. With no SDK configured the spans do not record
and nothing is built for them: a call costs one no-op span and a few lookups.

Secrets never reach telemetry: request headers are never read here, provider
keys are in nothing recorded here, and error messages come from the adapters
with the provider's key already blanked out. Prompts and completions are
recorded only when asked (:func:`content_modes`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

from opentelemetry import context, trace
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
    GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
    GenAiTokenTypeValues,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.trace import SpanKind, Status, StatusCode

from unimw.attributes import (
    ALIAS,
    ATTEMPT,
    BREAKER_CHANGED,
    BREAKER_SKIPPED,
    BREAKER_STATE,
    BUDGET_ALERT,
    BUDGET_DECISION,
    BUDGET_LIMIT,
    BUDGET_QUANTITY,
    BUDGET_THRESHOLD,
    BUDGET_USED,
    CACHE_HIT,
    CACHE_STATUS,
    CONTEXT_SKIPPED,
    COST_USD,
    DROPPED_PARAMS,
    END_USER,
    OPERATION_DETAILS,
    PLAN,
    PROVIDER,
    RECOVERY,
    REQUEST_ID,
    REROUTED_FROM,
    RESUMED_TO,
    ROUTE_ARM,
    ROUTE_STRATEGY,
    SCHEMA_URL,
    STATUS,
    STREAM_RESUMED,
    STREAM_RESUMES,
    STREAM_SKIPPED_EVENTS,
    TAG,
    TARGET,
    TENANT,
)
from unimw.errors import BudgetExceeded, RateLimited, ServiceUnavailable, UnimwError
from unimw.http import PROPAGATE_TRACE
from unimw.metrics import Metrics, Upstream, error_type
from unimw.usage import MICRO
from unimw.wire import JSON

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from unimw.adapters.base import Adapter, Target
    from unimw.calls import Call
    from unimw.continuation import Resumed
    from unimw.errors import UpstreamError
    from unimw.policy import Policy, Provider
    from unimw.routing import Route

    Attributes = dict[str, AttributeValue]

T = TypeVar("T")

INPUT: Final = GenAiTokenTypeValues.INPUT.value
OUTPUT: Final = GenAiTokenTypeValues.COMPLETION.value
#: The standard switch for content capture (opentelemetry-util-genai's name and values).
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_MODES = {
    "true": (True, False),
    "span_only": (True, False),
    "event_only": (False, True),
    "span_and_event": (True, True),
    "false": (False, False),
    "no_content": (False, False),
}
_REFUSALS: Final = (RateLimited, BudgetExceeded, ServiceUnavailable)
_NO_FACTS: Final[Mapping[str, object]] = {}
_PRIVATE_SUFFIXES: Final = (".local", ".localhost", ".internal", ".lan", ".home.arpa", ".svc")


def content_modes(policy_flag: bool, environ: Mapping[str, str]) -> tuple[bool, bool]:
    """Where prompts and completions go: ``(on the span, in an event)``.

    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, when set, decides:
    ``true`` (the legacy form) or ``SPAN_ONLY`` → span, ``EVENT_ONLY`` → event,
    ``SPAN_AND_EVENT`` → both, ``false`` or ``NO_CONTENT`` → neither. Unset (or
    unrecognised), the policy's ``tracing.capture_content`` turns on the span.
    """
    return _MODES.get(environ.get(CAPTURE_CONTENT_ENV, "").strip().lower(), (policy_flag, False))


def self_hosted(url: str | None) -> bool:
    """Whether ``url`` is on the operator's own network rather than a vendor's.

    Loopback, private and link-local addresses, ``localhost``, single-label
    hosts (``http://vllm:8000``, a compose service) and ``.local``, ``.internal``,
    ``.svc``, ``.lan`` names count; anything else is a third party.
    """
    host = urlsplit(url).hostname if url else None
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(_PRIVATE_SUFFIXES)
    return address.is_private or address.is_loopback or address.is_link_local


def _description(error: BaseException | None) -> str:
    # Only our own messages (upstream ones already redacted by the dispatcher): another exception's text
    # could hold anything.
    return error.message if isinstance(error, UnimwError) else error_type(error)


def _upstream(provider: Provider, adapter: type[Adapter], propagate_all: bool | None) -> Upstream:
    url = provider.base_url or adapter.default_base_url
    address = port = None
    if url:
        parts = urlsplit(url)
        address = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = None
    if provider.propagate_trace is not None:
        propagate = provider.propagate_trace
    elif propagate_all is not None:
        propagate = propagate_all
    else:
        propagate = self_hosted(provider.base_url)
    return Upstream(adapter.provider_name, address, port, propagate)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class _FirstAttempt:
    """A failed first attempt that has no span yet: what its span needs if a second attempt follows."""

    parent: Span  #: the span it ran under (the call's)
    name: str
    attributes: Attributes
    start: int  #: ns since the epoch, as the SDK's span times
    end: int
    description: str


#: The failed first attempt of the call running in this context, while it has no span. The attempts of
#: a call, and the end of a call that failed, run in the context the call started in: nothing else sees it.
_FIRST: ContextVar[_FirstAttempt | None] = ContextVar("unimw_first_attempt", default=None)


class Tracing:
    """Spans and metrics for one gateway, on the host's providers unless given others.

    Built by the :class:`~unimw.gateway.Gateway`; the pipeline calls
    :meth:`start` and :meth:`finish` around each call and reports each
    response-cache lookup to :meth:`cache_lookup`; the dispatcher calls
    :meth:`attempt` around each upstream request.
    """

    def __init__(
        self,
        policy: Policy,
        routes: Mapping[str, Route],
        adapters: Mapping[str, Adapter],
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._adapters = adapters
        self._tracer = trace.get_tracer("unimw", tracer_provider=tracer_provider, schema_url=SCHEMA_URL)
        settings = policy.tracing
        self.content_on_span, self.content_in_event = content_modes(settings.capture_content, environ)
        self._upstreams = {
            name: _upstream(p, type(adapters[name]), settings.propagate) for name, p in policy.providers.items()
        }
        #: Per public name: what its spans say about its route (whatever the operation).
        self._routes = {name: self._route_facts(route) for name, route in routes.items()}
        #: Per (operation, public name): the call span's name and the attributes it starts with.
        self._starts: dict[tuple[str, str], tuple[str, Attributes]] = {}
        #: Whether a call's span has recorded yet. Until then, a call's request attributes are built only
        #: once its span turns out to record (with no SDK, never); from then on, they are in the one dict
        #: its span starts with.
        self._recorded = False
        #: Per (public name, target that answered): what call spans say of the target (:meth:`_answerer`).
        self._answered_by: dict[tuple[str | None, str], Attributes] = {}
        self._every_attempt = settings.attempt_spans == "always"
        self._metrics = Metrics(
            meter_provider, self._routes, tenants=frozenset(policy.tenants), tags=tuple(policy.usage.tags)
        )

    def propagates(self, provider: str) -> bool:
        """Whether requests to ``provider`` (its name in the policy) carry the trace context."""
        return self._upstreams[provider].propagate

    @property
    def captures_output(self) -> bool:
        """Whether finished calls need their whole answer (a stream's assembled) for the content."""
        return self.content_on_span or self.content_in_event

    # ── the gateway span ─────────────────────────────────────────────────────

    def start(self, call: Call) -> object:
        """Open the call's span as a child of the current one and make it current; detach with the token."""
        operation = call.operation.name
        model = call.request.get("model")
        known = None
        if isinstance(model, str):
            known = self._starts.get((operation, model)) or self._start_of(operation, model)
        if known is not None:
            name, first = known
        else:  # an unknown name (refused later): no span name from arbitrary input
            name, first = operation, {GEN_AI_OPERATION_NAME: operation}
            if isinstance(model, str):
                first[GEN_AI_REQUEST_MODEL] = model
        if self._recorded:  # one attributes dict, at the start
            attributes = {**first, REQUEST_ID: call.request_id, **call.operation.request_attributes(call.request)}
            span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
            recording = span.is_recording()
        else:  # no request attributes built for a span that may not record
            span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=first)
            if recording := span.is_recording():
                span.set_attributes({REQUEST_ID: call.request_id, **call.operation.request_attributes(call.request)})
                self._recorded = True
        call.span = span
        if not recording and not span.get_span_context().is_valid:
            return None  # no OpenTelemetry at all: nothing to make current
        return context.attach(trace.set_span_in_context(span))

    def rerouted(self, call: Call) -> None:
        """The call now goes to another name than it asked for (its plan's ``on_budget``): its span says so."""
        span: Span | None = call.span
        model = call.request.get("model")
        if span is None or not span.is_recording() or not isinstance(model, str):
            return
        known = self._start_of(call.operation.name, model)
        if known is not None:
            name, attributes = known
            span.update_name(name)
            span.set_attributes({**attributes, REROUTED_FROM: call.rerouted_from or ""})

    def within(self, call: Call) -> AbstractContextManager[object]:
        """The call's span made current (for what runs while its stream is read, outside the pipeline)."""
        span: Span | None = call.span
        if span is None or not span.is_recording():
            return nullcontext()
        return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    def cut(self, call: Call, target: Target, error: UpstreamError) -> None:
        """The call's stream failed mid-answer and is to be continued. Its attempts so far were one, noted on
        the call's span: that attempt gets a span of its own now, from the dispatch to the cut, as the
        continuation's attempts get theirs (an attempt that had a span keeps it, ended at its first chunk)."""
        span: Span | None = call.span
        if span is None or not span.is_recording() or call.attempts != 1 or self._every_attempt:
            return
        operation = call.operation.name
        attributes = self._attempt_attributes(operation, {}, target, 1, self._upstreams[target.provider], ())
        attributes[ERROR_TYPE] = error_type(error)
        attempt = self._tracer.start_span(
            f"{operation} {target.model}",
            context=trace.set_span_in_context(span),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=call.dispatched,
        )
        attempt.set_status(Status(StatusCode.ERROR, _description(error)))
        attempt.end()

    def resumed(self, call: Call, switch: Resumed) -> None:
        """The call's stream failed mid-answer and goes on at another attempt: an event on its span says where."""
        span: Span | None = call.span
        if span is None or not span.is_recording():
            return
        span.add_event(
            STREAM_RESUMED,
            {
                TARGET: switch.target.name,
                PROVIDER: switch.target.provider,
                ERROR_TYPE: error_type(switch.error),
                RESUMED_TO: switch.to.name,
            },
        )
        span.set_attribute(STREAM_RESUMES, len(call.resumed))

    def _start_of(self, operation: str, model: str) -> tuple[str, Attributes] | None:
        """The name and attributes a span for ``model`` starts with (those samplers may look at), made once."""
        key = (operation, model)
        if (known := self._starts.get(key)) is not None:
            return known
        route = self._routes.get(model)
        if route is None:
            return None
        self._starts[key] = known = (f"{operation} {model}", {**route, GEN_AI_OPERATION_NAME: operation})
        return known

    def detach(self, token: object) -> None:
        """Make the span that was current before :meth:`start` current again (the call's span stays open)."""
        if token is not None:
            context.detach(token)  # type: ignore[arg-type]

    def finish(self, call: Call, cost: int) -> None:
        """Record the call's outcome on its span and in the metrics, and end the span. ``cost`` is in micro-USD."""
        span: Span | None = call.span
        if span is None:
            return
        call.span = None  # ended exactly once, even if recording the outcome fails half-way
        upstream = self._upstreams.get(call.target.provider) if call.target is not None else None
        decision = _budget_decision(call)
        cost_usd = cost / MICRO if call.answered else 0.0
        try:
            self._metrics.record(call, upstream, decision, cost_usd)
            if span.is_recording():
                failure = error_type(call.error) if call.status == "error" else None
                outcome = self._outcome(call, upstream, failure, decision, cost_usd)
                if (first := _FIRST.get()) is not None and first.parent is span:
                    # A failed first attempt with no second one has no span: the call's tells what it left out.
                    _FIRST.set(None)
                    if (dropped := first.attributes.get(DROPPED_PARAMS)) is not None:
                        outcome[DROPPED_PARAMS] = dropped
                span.set_attributes(outcome)
                for alert in call.alerts:
                    span.add_event(
                        BUDGET_ALERT,
                        {TENANT: alert.tenant or "", BUDGET_QUANTITY: alert.quantity, BUDGET_THRESHOLD: alert.threshold,
                         BUDGET_USED: alert.used, BUDGET_LIMIT: alert.limit},
                    )  # fmt: skip
                if failure is not None:
                    span.set_status(Status(StatusCode.ERROR, _description(call.error)))
                if self.content_on_span or self.content_in_event:
                    self._content(span, call)
        finally:
            span.end(end_time=_ended_ns(call))

    def end(self, call: Call) -> None:
        """End the call's span if :meth:`finish` could not (it ends it itself otherwise)."""
        if call.span is not None:
            span, call.span = call.span, None
            span.end()

    def cache_lookup(self, call: Call, hit: bool) -> None:
        """Count one response-cache lookup."""
        self._metrics.cache_lookup(call, hit)

    # ── attempt spans ────────────────────────────────────────────────────────

    async def attempt(
        self, operation: str, request: JSON, target: Target, number: int, run: Callable[[Target], Awaitable[T]]
    ) -> T:
        """Run one upstream attempt, in its own span when it needs one (the dispatcher's
        :class:`~unimw.dispatch.Observer`)."""
        parent = trace.get_current_span()  # the call's span
        # With no SDK (or the call sampled out) the call's span is a no-op one, current all the same.
        if not parent.is_recording():
            if self._upstreams[target.provider].propagate:
                return await self._propagated(target, run)
            return await run(target)
        if number > 1 or self._every_attempt:
            return await self._spanned(parent, operation, request, target, number, run)
        # No span of its own (the only attempt so far of a recorded call): its times and outcome noted.
        upstream = self._upstreams[target.provider]
        dropped = self._adapters[target.provider].dropped_params(request, target)
        start = time.time_ns()
        token = context.attach(context.set_value(PROPAGATE_TRACE, True)) if upstream.propagate else None
        try:
            result = await run(target)
        except asyncio.CancelledError:
            raise  # nothing follows a cancelled attempt: the call's span says it was
        except BaseException as error:
            # What its span says, should a second attempt follow.
            attributes = self._attempt_attributes(operation, request, target, number, upstream, dropped)
            attributes[ERROR_TYPE] = error_type(error)
            name = f"{operation} {target.model}"
            _FIRST.set(_FirstAttempt(parent, name, attributes, start, time.time_ns(), _description(error)))
            raise
        finally:
            if token is not None:
                context.detach(token)
        if dropped:
            parent.set_attribute(DROPPED_PARAMS, dropped)
        return result

    def skipped(self, targets: tuple[str, ...]) -> None:
        """The context check left ``targets`` out: noted on the call's span (current while it dispatches)."""
        trace.get_current_span().set_attribute(CONTEXT_SKIPPED, targets)

    def moved(self, reason: str) -> None:
        """The call moved on after a 400 (the failed attempt's span says which): noted on the call's span."""
        trace.get_current_span().set_attribute(RECOVERY, reason)

    def broken(self, targets: tuple[str, ...]) -> None:
        """Targets left out, their breaker open: noted on the call's span."""
        trace.get_current_span().set_attribute(BREAKER_SKIPPED, targets)

    def breaker_changed(self, target: str, state: str) -> None:
        """A breaker changed state here: counted, and an event on the span of the call that changed it (current)."""
        self._metrics.breaker_changed(target, state)
        trace.get_current_span().add_event(BREAKER_CHANGED, {TARGET: target, BREAKER_STATE: state})

    @staticmethod
    async def _propagated(target: Target, run: Callable[[Target], Awaitable[T]]) -> T:
        """An attempt of a call that records nothing, to a provider that gets the trace context all the same:
        a sampled-out call's tells the upstream not to sample either."""
        token = context.attach(context.set_value(PROPAGATE_TRACE, True))
        try:
            return await run(target)
        finally:
            context.detach(token)

    async def _spanned(
        self,
        parent: Span,
        operation: str,
        request: JSON,
        target: Target,
        number: int,
        run: Callable[[Target], Awaitable[T]],
    ) -> T:
        """An attempt in its own span (after the first one's, made now if it has none yet)."""
        upstream = self._upstreams[target.provider]
        if (first := _FIRST.get()) is not None and first.parent is parent:
            _FIRST.set(None)  # dated when it ran, not now
            earlier = self._tracer.start_span(
                first.name, kind=SpanKind.CLIENT, attributes=first.attributes, start_time=first.start
            )
            earlier.set_status(Status(StatusCode.ERROR, first.description))
            earlier.end(end_time=first.end)
        attributes = self._attempt_attributes(operation, request, target, number, upstream)
        span = self._tracer.start_span(f"{operation} {target.model}", kind=SpanKind.CLIENT, attributes=attributes)
        current = trace.set_span_in_context(span)
        if upstream.propagate:
            current = context.set_value(PROPAGATE_TRACE, True, current)
        token = context.attach(current)
        try:
            return await run(target)
        except asyncio.CancelledError:
            span.set_attribute(STATUS, "cancelled")
            raise
        except BaseException as error:
            span.set_attribute(ERROR_TYPE, error_type(error))
            span.set_status(Status(StatusCode.ERROR, _description(error)))
            raise
        finally:
            context.detach(token)
            span.end()

    def _attempt_attributes(
        self,
        operation: str,
        request: JSON,
        target: Target,
        number: int,
        upstream: Upstream,
        dropped: tuple[str, ...] | None = None,
    ) -> Attributes:
        attributes: Attributes = {
            GEN_AI_OPERATION_NAME: operation,
            GEN_AI_PROVIDER_NAME: upstream.name,
            GEN_AI_REQUEST_MODEL: target.model,
            TARGET: target.name,
            PROVIDER: target.provider,
            ATTEMPT: number,
        }
        if upstream.address is not None and upstream.port is not None:
            attributes[SERVER_ADDRESS] = upstream.address
            attributes[SERVER_PORT] = upstream.port
        if dropped is None:
            dropped = self._adapters[target.provider].dropped_params(request, target)
        if dropped:
            attributes[DROPPED_PARAMS] = dropped
        return attributes

    # ── attributes ───────────────────────────────────────────────────────────

    def _route_facts(self, route: Route) -> Attributes:
        attributes: Attributes = {
            GEN_AI_REQUEST_MODEL: route.name,
            ROUTE_STRATEGY: route.strategy,
        }
        if route.is_alias:
            attributes[ALIAS] = route.name
        upstreams = [self._upstreams[t.provider] for t in route.targets]
        if len({u.name for u in upstreams}) == 1:
            attributes[GEN_AI_PROVIDER_NAME] = upstreams[0].name
        servers = {(u.address, u.port) for u in upstreams}
        if len(servers) == 1 and upstreams[0].address is not None and upstreams[0].port is not None:
            attributes[SERVER_ADDRESS] = upstreams[0].address
            attributes[SERVER_PORT] = upstreams[0].port
        return attributes

    def _outcome(
        self, call: Call, upstream: Upstream | None, failure: str | None, decision: str, cost_usd: float
    ) -> Attributes:
        attributes: Attributes = {
            STATUS: call.status,
            CACHE_HIT: call.cache_hit,
            BUDGET_DECISION: decision,
            COST_USD: cost_usd,
        }
        caller = call.caller
        if caller.tenant is not None:
            attributes[TENANT] = caller.tenant
        if caller.end_user is not None:
            attributes[END_USER] = caller.end_user
        if caller.rules is not None and (plan := caller.plan) is not None:
            attributes[PLAN] = plan
        if call.rerouted_from is not None:
            attributes[REROUTED_FROM] = call.rerouted_from
        if call.route is not None and call.route.arm is not None:
            attributes[ROUTE_ARM] = call.route.arm
        if call.tags:
            for key, value in call.tags.items():
                attributes[TAG + key] = value
        if call.cache is not None:
            attributes[CACHE_STATUS] = call.cache.status
        if (target := call.target) is not None:
            model = call.request.get("model")
            answered = (model if isinstance(model, str) else None, target.name)
            attributes.update(self._answered_by.get(answered) or self._answerer(answered, target, upstream))
        reading = call.reading
        if reading.response_id:
            attributes[GEN_AI_RESPONSE_ID] = reading.response_id
        if reading.response_model:
            attributes[GEN_AI_RESPONSE_MODEL] = reading.response_model
        if reading.finish_reasons:
            attributes[GEN_AI_RESPONSE_FINISH_REASONS] = reading.finish_reasons
        if reading.skipped_events:
            attributes[STREAM_SKIPPED_EVENTS] = reading.skipped_events
        if (usage := call.usage) is not None:
            attributes[GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
            attributes[GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            if usage.cached_tokens:
                attributes[GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cached_tokens
            if usage.cache_write_tokens:
                attributes[GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = usage.cache_write_tokens
            if usage.reasoning_tokens:
                attributes[GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        if call.stream and call.first_chunk_at is not None:
            attributes[GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = call.first_chunk_at - call.started
        if failure is not None:
            attributes[ERROR_TYPE] = failure
        return attributes

    def _answerer(self, key: tuple[str | None, str], target: Target, upstream: Upstream | None) -> Attributes:
        """What a call span says of the ``target`` that answered the public name ``key[0]``: the target
        and its provider, and those of ``gen_ai.provider.name``, ``server.address`` and ``server.port``
        the span did not start with (when every target of the route shares them). Made once per name and
        target (both from the policy)."""
        model = key[0]
        attributes: Attributes = {TARGET: target.name, PROVIDER: target.provider}
        if upstream is not None:
            route = self._routes.get(model, _NO_FACTS) if model is not None else _NO_FACTS
            attributes.update((k, v) for k, v in upstream.attributes.items() if k not in route)
        self._answered_by[key] = attributes
        return attributes

    def _content(self, span: Span, call: Call) -> None:
        content = call.operation.content(call.request, call.answer)
        if self.content_on_span:
            span.set_attributes(content)
        if self.content_in_event:
            span.add_event(OPERATION_DETAILS, content)


def _ended_ns(call: Call) -> int | None:
    """When the call's answer was complete, in ns since the epoch, if it was settled after that (None: now)."""
    if call.ended_at is None:
        return None
    return time.time_ns() - round((time.perf_counter() - call.ended_at) * 1e9)


def _budget_decision(call: Call) -> str:
    hold = call.hold
    if hold is not None:
        return "reserved" if hold.metered else "unmetered"
    if not call.admitted and isinstance(call.error, _REFUSALS):
        return "refused"
    return "none"
