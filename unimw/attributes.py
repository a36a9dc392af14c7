"""Every telemetry name unimw defines itself: the one table.

The GenAI conventions' own names are imported from
``opentelemetry-semantic-conventions`` where they are used, never typed
out; the names below are unimw's (``unimw.*``) or ones the conventions
define but the package does not carry yet.
"""

from __future__ import annotations

from typing import Final

# Span attributes
REQUEST_ID: Final = "unimw.request.id"  #: the x-request-id of the call
TENANT: Final = "unimw.tenant"  #: the tenant's id (also on the unimw metrics, for tenants the policy declares)
END_USER: Final = "unimw.end_user"  #: the request's ``user`` / end-user id, as the app gave it
PLAN: Final = "unimw.plan"  #: the tenant's plan (also on the unimw metrics)
TAG: Final = "unimw.tag."  #: prefix of a call's tags (``unimw.tag.feature``); on metrics only those the policy names
REROUTED_FROM: Final = "unimw.rerouted_from"  #: the name asked for, when the plan's on_budget sent the call elsewhere
ALIAS: Final = "unimw.alias"  #: the public name called, when it is an alias
#: ``single``, ``fallback``, ``weighted``, ``least_latency`` or ``cheapest``
ROUTE_STRATEGY: Final = "unimw.route.strategy"
ROUTE_ARM: Final = "unimw.route.arm"  #: the target a sticky weighted alias placed the caller on
TARGET: Final = "unimw.target"  #: the public model that answered (or was tried, on an attempt span)
PROVIDER: Final = "unimw.provider"  #: that model's provider, by its name in the policy
ATTEMPT: Final = "unimw.attempt"  #: attempt number within the call, from 1
STATUS: Final = "unimw.status"  #: how the call ended: ``ok``, ``error`` or ``cancelled``
CACHE_HIT: Final = "unimw.cache.hit"  #: answered from the response cache (also on unimw.cache.requests)
CACHE_STATUS: Final = "unimw.cache.status"  #: ``hit``, ``miss`` or ``bypass``, when the cache applies
COST_USD: Final = "unimw.cost.usd"  #: what the tenant is charged for the call
BUDGET_DECISION: Final = "unimw.budget.decision"  #: ``reserved``, ``refused``, ``unmetered`` or ``none``
#: Request fields an adapter left out for its target (the adapter's ``dropped_params``): on the attempt's span,
#: or on the call's when its one attempt has no span of its own.
DROPPED_PARAMS: Final = "unimw.request.dropped_params"
#: How many times the call's stream failed mid-answer and was continued elsewhere (:mod:`unimw.continuation`).
STREAM_RESUMES: Final = "unimw.stream.resumes"
#: Upstream stream events that could not be parsed and were left out (``providers.*.malformed_events: skip``).
STREAM_SKIPPED_EVENTS: Final = "unimw.stream.skipped_events"
#: On the call's span: targets its context check left out before any attempt (their window cannot hold it).
CONTEXT_SKIPPED: Final = "unimw.context.skipped"
#: On the call's span: targets left out because their circuit breaker is open (:mod:`unimw.breaker`).
BREAKER_SKIPPED: Final = "unimw.breaker.skipped"
#: A breaker's new state, ``open``, ``half_open`` or ``closed``: on the unimw.breaker.changes metric and on the
#: ``unimw.breaker.changed`` event of the span of the call that changed it (with ``unimw.target``).
BREAKER_STATE: Final = "unimw.breaker.state"
#: On the call's span: why it moved on after a 400 (``context_length_exceeded`` or ``content_filter``).
RECOVERY: Final = "unimw.recovery"
# Span events (on the gateway span) and their attributes
#: A stream continued elsewhere: ``unimw.target`` / ``unimw.provider`` failed with ``error.type``, and the answer
#: went on at ``unimw.stream.resumed_to``.
STREAM_RESUMED: Final = "unimw.stream.resumed"
RESUMED_TO: Final = "unimw.stream.resumed_to"
BREAKER_CHANGED: Final = "unimw.breaker.changed"
BUDGET_ALERT: Final = "unimw.budget.alert"
BUDGET_QUANTITY: Final = "unimw.budget.quantity"
BUDGET_THRESHOLD: Final = "unimw.budget.threshold"
BUDGET_USED: Final = "unimw.budget.used"
BUDGET_LIMIT: Final = "unimw.budget.limit"
#: The conventions' event for content (``EVENT_ONLY`` / ``SPAN_AND_EVENT``), not in the package yet.
OPERATION_DETAILS: Final = "gen_ai.client.inference.operation.details"
# Metrics
CACHE_REQUESTS: Final = "unimw.cache.requests"  #: counter, {request}: by unimw.cache.hit, model, tenant
BUDGET_REFUSALS: Final = "unimw.budget.refusals"  #: counter, {request}: by tenant, model, error.type
#: counter, USD: by tenant (declared ones), plan, model, gen_ai.provider.name, unimw.provider and the policy's tags
COST: Final = "unimw.cost"
#: counter, {change}: a circuit breaker changed state in this process, by unimw.target and unimw.breaker.state
BREAKER_CHANGES: Final = "unimw.breaker.changes"

OTHER: Final = "_OTHER"  #: the conventions' value for a name that is not one of a known set
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.41.0"  #: the last release defining gen_ai.*

#: Advised bucket boundaries (gen-ai-metrics.md).
DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS: Final = tuple(4**i for i in range(14))  # 1, 4, 16, ... 67108864
