"""The Gateway: owns the one pipeline every call goes through, whatever the door and the operation.

::

    identify tenant → validate → resolve route → authorize → cache lookup → concurrency slot → reserve
        → dispatch (retries, fallback) → finish: settle → cache store → record → trace

:meth:`Gateway.handle` runs these steps for any :class:`~unimw.operations.Operation`;
what differs between operations is the operation's, never a step's. A call
is finished in one place (:class:`~unimw.finishing.Finisher`), from the
``finally`` below or from the stream it became.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from unimw.adapters import adapter_class
from unimw.cache import ResponseCache, strip_control
from unimw.calls import Call, CallStream
from unimw.context_window import ContextWindows, estimate_tokens, known_windows
from unimw.continuation import ContinuedStream, Resumed, prefills
from unimw.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from unimw.identity import Identity
from unimw.operations.chat import CHAT
from unimw.stores.base import StoreUnavailable
from unimw.tags import tags_of
from unimw.tenants import Caller, Tenants
from unimw.usage import MICRO
from unimw.wire import JSON, aiter_of, model_object, request_id

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from starlette.types import ASGIApp

    from unimw.adapters.base import Adapter, Target
    from unimw.concurrency import SharedSlots, Slot, Slots
    from unimw.limits import Hold
    from unimw.operations import Operation
    from unimw.policy import Policy
    from unimw.stores.base import CacheStore, LimitStore
    from unimw.transport import GatewayTransport


@dataclass(frozen=True, slots=True)
class Inbound:
    """Who a door says is calling: the request's headers and ASGI scope, or a caller the app vouches for."""

    headers: Mapping[str, str] = field(default_factory=dict)
    scope: Mapping[str, Any] | None = None
    request_id: str | None = None
    #: Set by in-process callers (the app itself): trusted as given, not looked up from headers.
    caller: Caller | None = None
    #: A tenant the app vouches for with its plan and overrides (with ``caller``'s end user, if any).
    identity: Identity | None = None


class GatewayOptions(TypedDict, total=False):
    """What :class:`Gateway` takes besides the policy (see its docstring)."""

    clock: Callable[[], float]
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    operations: Iterable[Operation]
    limit_store: LimitStore | None
    cache_store: CacheStore | None
    sleep: Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class Answer:
    """What a door sends back: a whole answer or a stream of chunks, and extra headers."""

    body: JSON | CallStream
    headers: dict[str, str]
    hold: Hold | None = None  #: the call's reservation, whose rate-limit headers go out too

    def response_headers(self) -> dict[str, str]:
        """Every extra header for the HTTP response (built on demand: in-process callers need none)."""
        return {**self.headers, **self.hold.headers} if self.hold is not None else self.headers


class Gateway:
    """OpenAI-compatible endpoints over the providers of one policy.

    Use it as an async context manager (or call :meth:`aclose`) so that its
    upstream connections and stores are closed. Spans and metrics go to the
    global OpenTelemetry providers unless ``tracer_provider`` / ``meter_provider``
    are given (see :mod:`unimw.tracing`). ``clock`` (seconds since the
    epoch) drives limit windows and cache expiry. ``operations`` adds operations to
    those the doors serve (chat completions). ``limit_store`` and
    ``cache_store`` replace the stores the policy names by URL with objects
    of the app's own (see :mod:`unimw.stores.base` for what they must do).
    ``sleep`` waits between retries (tests pass one that only records).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        operations: Iterable[Operation] = (),
        limit_store: LimitStore | None = None,
        cache_store: CacheStore | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # The steps that only a gateway's construction names load with the first gateway, not with this module:
        # what mounting a gateway imports stays about an ``import httpx`` (tests/test_import_cost.py).
        from unimw import stores
        from unimw.breaker import breakers
        from unimw.concurrency import Slots
        from unimw.dispatch import Dispatcher, stream_timeouts
        from unimw.finishing import Finisher
        from unimw.hooks import Hooks
        from unimw.limits import Limiter
        from unimw.operations import DEFAULT_OPERATIONS
        from unimw.own_keys import OwnKeys
        from unimw.records import Recorder
        from unimw.redaction import Redactor, provider_secrets
        from unimw.routing import Router
        from unimw.tracing import Tracing

        self.policy = policy
        self.created = int(time.time())
        self._reloading = _Reloading(
            {"clock": clock, "tracer_provider": tracer_provider, "meter_provider": meter_provider,
             "operations": tuple(operations), "sleep": sleep},
            limit_store,
            cache_store,
        )  # fmt: skip
        self._reloading.generations.append(self)
        self._live = self  #: the gateway whose policy new calls run under (another after a reload)
        self.operations: dict[str, Operation] = {op.path: op.bind(policy) for op in (*DEFAULT_OPERATIONS, *operations)}
        self._tenants = Tenants(policy, clock)
        self._prefill, self._prefill_params = prefills(policy)  # which models continue a cut stream, and how
        #: Calls in flight per tenant and in all (knows no policy: a new one keeps counting); tenants' shared on Redis.
        self._slots = Slots(shared=_shared_slots(policy.tenancy.store), clock=clock)
        self._limiter = Limiter(policy, limit_store or stores.limit_store(policy.tenancy.store), clock)
        self._router = Router(policy, clock=clock)
        self._adapters: dict[str, Adapter] = {
            name: adapter_class(provider.kind)(provider) for name, provider in policy.providers.items()
        }
        self._tracing = Tracing(
            policy, self._router.routes, self._adapters, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        self._dispatcher = Dispatcher(
            self._router,
            self._adapters,
            policy.dispatch,
            redactors={name: Redactor(provider_secrets(p)) for name, p in policy.providers.items()},
            retries={name: p.retries for name, p in policy.providers.items() if p.retries is not None},
            sleep=sleep,
            observer=self._tracing,
            own_keys=(own_keys := OwnKeys(policy.providers)),
            stream_timeouts=stream_timeouts(policy),
            windows=ContextWindows(known_windows(policy)),
            breakers=breakers(policy.dispatch.breaker, policy.tenancy.store, clock),
        )
        if self._dispatcher.breakers is not None:
            self._dispatcher.breakers.changed = self._tracing.breaker_changed
        self._own_keys = own_keys
        settings = policy.cache
        if cache_store is None:
            cache_store = stores.cache_store(
                settings.store, max_entries=settings.max_entries, max_bytes=settings.max_bytes, clock=clock
            )
        self._cache = ResponseCache(policy, self._router, cache_store)
        self._recorder = Recorder(policy.usage)
        self._hooks = Hooks(policy)
        self._finisher = Finisher(self._limiter, self._cache, self._recorder, self._tracing, self._hooks)
        self._limits_on = self._limiter.enabled
        self._cache_on = any(self._cache.applies(route) for route in self._router.routes.values())
        self._return_cost = policy.usage.return_cost
        self._price = self._finisher.cost if self._return_cost else None

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike[str], env: Mapping[str, str] | None = None, **options: Unpack[GatewayOptions]
    ) -> Gateway:
        """A gateway for the policy file at ``path`` (``${VAR}`` from ``env``, else the environment)."""
        from unimw.loader import load_policy  # the policy's models load with the first policy, not with unimw

        return cls(load_policy(path, env), **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **options: Unpack[GatewayOptions]) -> Gateway:
        """A gateway for a policy given as data (already interpolated)."""
        from unimw.loader import build_policy

        return cls(build_policy(dict(data)), **options)

    # ── in-process API ───────────────────────────────────────────────────────

    async def chat_completions(
        self, body: JSON, *, tenant: str | Identity | None = None, end_user: str | None = None
    ) -> JSON:
        """Answer a chat request with a ``chat.completion``.

        ``tenant`` is trusted as given (in-process callers are the app
        itself): a declared tenant's name, or an :class:`Identity` for one
        that lives in the app's own database. Limits and model access apply
        as for HTTP callers; no tenant means the policy's default one. For
        the answer as chunks, use :meth:`stream_chat_completions`.
        """
        if isinstance(body, dict) and body.get("stream") is True:
            raise InvalidRequest("Use stream_chat_completions for a streamed answer.", param="stream")
        answer = await self.handle(CHAT, body, _vouched(tenant, end_user))
        assert isinstance(answer.body, dict)
        return answer.body

    async def stream_chat_completions(
        self, body: JSON, *, tenant: str | Identity | None = None, end_user: str | None = None
    ) -> AsyncIterator[JSON]:
        """Answer a chat request with its ``chat.completion.chunk`` objects.

        Everything up to the first chunk happens before this returns, so
        errors before the answer began are raised here. Close the iterator if
        you stop reading early (``contextlib.aclosing``), so the call is
        settled at once.
        """
        streamed = {**body, "stream": True} if isinstance(body, dict) else body  # anything else is refused as a 400
        answer = await self.handle(CHAT, streamed, _vouched(tenant, end_user))
        assert isinstance(answer.body, CallStream)
        return answer.body

    def forget_key(self, digest: str) -> bool:
        """Revoke a key the app issued, now: drop what the ``key_lookup`` sources remember of its digest
        (``sha256:<hex>``, as :func:`unimw.tenants.hash_key` gives). Without this, a revoked key works until its
        cached answer expires (``ttl``). True if something was remembered."""
        return self._live._tenants.forget_key(digest)

    # ── the pipeline ─────────────────────────────────────────────────────────

    async def handle(self, operation: Operation, body: Any, inbound: Inbound) -> Answer:
        """Run one call of ``operation`` through the pipeline; doors call this with what they received.

        The call's span is the current span while the pipeline runs; a
        stream's stays open after this returns, until the stream is finished.
        After a :meth:`reload`, the call runs under the policy live when it began, to its end.
        """
        live = self._live
        if live is not self:
            return await live.handle(live.operations.get(operation.path, operation), body, inbound)
        call = Call(operation, inbound.request_id or request_id(), body if isinstance(body, dict) else {})
        token = self._tracing.start(call)
        self._reloading.in_flight += 1  # until the call is finished: a retired policy's parts close after
        answer: Answer | None = None
        try:
            answer = await self._run(call, body, inbound)
            return answer
        except BaseException as error:
            call.failed(error)
            raise
        finally:
            self._tracing.detach(token)
            if answer is None or not isinstance(answer.body, CallStream):
                await self._finish(call)
                if answer is not None and self._return_cost:
                    answer.headers["x-unimw-cost"] = _usd(call.cost)

    async def _finish(self, call: Call) -> None:
        """Finish ``call`` (once, whether it ended here or as a stream); a retired policy's last call lets its
        upstream connections close."""
        try:
            await self._finisher.finish(call)
        finally:
            state = self._reloading
            state.in_flight -= 1
            if state.in_flight == 0 and state.drained is not None:
                state.drained.set()

    async def _run(self, call: Call, body: Any, inbound: Inbound) -> Answer:
        call.caller = await self._identify(inbound, body)
        call.request = request = call.operation.validate(body)
        call.tags = tags_of(request, inbound.headers)
        call.route = self._router.resolve(request["model"])
        answer = Answer(request, {})
        if self._tenants.rules_of(call.caller).on_budget:
            await self._reroute(call, answer)
        if call.route.per_call:  # its when rules, its sticky arm
            call.route = self._router.place_call(call.route, call, inbound.headers)
        call.request = self._authorize(call)
        route = call.route
        await call.operation.prepare(call)
        request = call.request
        call.stream = call.operation.is_stream(request)
        if self._cache_on and self._cache.applies(route):
            scope = self._tenants.rules_of(call.caller).cache_scope
            if call.caller.credentials.keys() & {t.provider for t in route.targets}:
                scope = "tenant"  # an answer paid for with a tenant's own key is never given to another tenant
            call.cache = await self._cache.lookup(
                call.operation, route, request, call.caller.tenant, inbound.headers, scope
            )
            if call.cache.status != "bypass":
                self._tracing.cache_lookup(call, hit=call.cache.answer is not None)
            answer.headers["x-unimw-cache"] = call.cache.status
            if call.cache.answer is not None and not self._cache.charges_hits:
                return self._serve_hit(call, call.cache.answer, answer)
        call.request = strip_control(call.request)  # unimw's own field: never for the upstream
        server, most = self.policy.server, self._tenants.rules_of(call.caller).max_concurrent
        if most is not None or server.max_concurrent_calls is not None:  # given back when the call is finished
            call.slot = await self._take_slot(call.caller.tenant, most)
        if self._limits_on:
            answer.hold = call.hold = await self._reserve(call)
        call.admitted = True
        if call.cache is not None and call.cache.answer is not None:
            return self._serve_hit(call, call.cache.answer, answer)
        answer.body = await self._dispatch(call)
        return answer

    async def _take_slot(self, tenant: str | None, most: int | None) -> Slot:
        """A place under the tenant's and the gateway's concurrency limits. A shared store that cannot be reached
        is answered as for limits (``tenancy.on_store_error``): 503, or the call goes on under the gateway's alone."""
        server = self.policy.server
        try:
            return await self._slots.take(tenant, most, server.max_concurrent_calls, server.concurrency_wait)
        except StoreUnavailable as exc:
            if self.policy.tenancy.on_store_error == "closed":
                raise ServiceUnavailable(
                    "The usage store is unreachable, so concurrency limits cannot be checked. Please try again later.",
                    code="limits_unavailable",
                ) from exc
            logging.getLogger("unimw").warning("unimw: store unreachable, concurrency not limited per tenant: %s", exc)
            return await self._slots.take(None, None, server.max_concurrent_calls, server.concurrency_wait)

    async def _identify(self, inbound: Inbound, body: Any) -> Caller:
        end_user = inbound.caller.end_user if inbound.caller is not None else None
        if inbound.identity is not None:
            return self._tenants.caller(inbound.identity, end_user)
        if (caller := inbound.caller) is not None:
            tenant = caller.tenant or self.policy.tenancy.default
            return self._tenants.caller(Identity(tenant), end_user) if tenant is not None else caller
        return await self._tenants.identify(inbound.headers, inbound.scope, body if isinstance(body, dict) else None)

    def _authorize(self, call: Call) -> JSON:
        assert call.route is not None
        call.route, cap = self._tenants.authorize(call.caller, call.route, asked=call.rerouted_from)
        return call.operation.with_output_cap(call.request, cap) if cap is not None else call.request

    async def _reroute(self, call: Call, answer: Answer) -> None:
        """Near a budget, send the call where the tenant's plan says (``on_budget``) instead of refusing it later.

        The caller may use the name it asked for; the plan vouches for where it goes instead.
        """
        assert call.route is not None
        asked = call.route.name
        if not self._tenants.allows(call.caller, asked):
            return  # refused as asked for, by the authorize step
        share = await self._limiter.spent_share(call.caller)
        step = None
        for candidate in self._tenants.rules_of(call.caller).on_budget:  # lowest threshold first
            applies = asked in candidate.models if candidate.models is not None else asked != candidate.use
            if share >= candidate.at and applies:
                step = candidate
        if step is None:
            return
        call.route = self._router.resolve(step.use)
        call.request = {**call.request, "model": step.use}
        call.rerouted_from = asked
        answer.headers["x-unimw-rerouted-from"] = asked
        self._tracing.rerouted(call)

    async def _reserve(self, call: Call) -> Hold | None:
        assert call.route is not None
        operation, request = call.operation, call.request
        default_cap = self.policy.tenancy.default_max_tokens
        if self._limiter.needs_output_cap(call.caller) and operation.output_cap(request) is None:
            # The reservation must be a true worst case, so an uncapped request gets the default cap.
            call.request = request = operation.with_output_cap(request, default_cap)
        prompt, output = operation.prompt_tokens(request), operation.worst_output_tokens(request, default_cap)
        return await self._limiter.reserve(call.caller, call.route, prompt, output)

    async def _dispatch(self, call: Call) -> JSON | CallStream:
        assert call.route is not None
        operation, request = call.operation, call.request
        # The context check is for chat (and Responses) requests: an embeddings window holds each input alone.
        needs = None
        if call.route.context_check and operation.name == CHAT.name:
            needs = estimate_tokens(request, operation.output_cap(request))
        if call.stream:
            upstream = operation.stream_request(request)
            resumes = self.policy.dispatch.stream_resumes
            chats: dict[str, JSON] = {}  # by target: the chat request its chunks answer, when they may be continued

            async def ask(adapter: Adapter, target: Target) -> AsyncIterator[JSON]:
                chat = operation.chat_stream_request(adapter, upstream) if resumes else None
                if chat is None:
                    return await operation.stream(adapter, upstream, target)
                chats[target.name] = chat
                return await adapter.stream(chat, target)

            call.dispatched = time.time_ns()
            call.target, chunks = await self._dispatcher.stream(
                call.route, operation.name, upstream, ask, credentials=call.caller.credentials, needs=needs, tally=call
            )
            if (chat := chats.get(call.target.name)) is not None:
                chunks = operation.from_chat_stream(self._continued(call, chat, chunks), upstream)
            watch = operation.watch(request, assemble=call.cache is not None or self._tracing.captures_output)
            return CallStream(
                call, chunks, watch, self._finish, self._price, self.policy.server.max_stream_output_bytes
            )
        call.target, answer = await self._dispatcher.complete(
            call.route,
            operation.name,
            request,
            lambda adapter, target: operation.complete(adapter, request, target),
            credentials=call.caller.credentials,
            needs=needs,
        )
        call.answered_with(answer)
        return answer

    def _continued(self, call: Call, chat: JSON, chunks: AsyncIterator[JSON]) -> ContinuedStream:
        """``chunks`` (answering the chat request ``chat``), continued on a target that accepts a prefill should
        they fail mid-answer."""
        assert call.route is not None and call.target is not None
        route, operation = call.route, call.operation

        async def resume(
            request_for: Callable[[Target], JSON], targets: tuple[Target, ...]
        ) -> tuple[Target, AsyncIterator[JSON]]:
            with self._tracing.within(call):  # its attempts' spans under the call's, wherever the stream is read
                return await self._dispatcher.stream(
                    route.only(targets),
                    operation.name,
                    request_for(targets[0]),
                    lambda adapter, target: adapter.stream(request_for(target), target),
                    credentials=call.caller.credentials,
                    tally=call,
                )

        def resumed(switch: Resumed) -> None:
            call.resumed.append(switch)
            call.target = switch.to
            self._tracing.resumed(call, switch)

        stream = ContinuedStream(
            chunks,
            call.target,
            chat,
            wants_usage=operation.wants_usage(call.request),
            targets=route.targets,
            prefill=self._prefill,
            params=self._prefill_params,
            resumes=self.policy.dispatch.stream_resumes,
            resume=resume,
            prompt_tokens=CHAT.prompt_tokens,  # of the chat request, whatever the operation
            on_resume=resumed,
            on_cut=lambda target, error: self._tracing.cut(call, target, error),
        )
        return stream

    def _serve_hit(self, call: Call, cached: JSON, answer: Answer) -> Answer:
        """A cached answer, as the caller asked for it: whole, or replayed as a stream."""
        call.cache_hit = call.admitted = True
        call.target = self._router.target(call.cache.target) if call.cache is not None else None
        cached = call.operation.from_cache(cached, call.request)
        call.answered_with(cached)
        call.answered = self._cache.charges_hits
        if call.stream:
            watch = call.operation.watch(call.request, assemble=False)
            chunks = aiter_of(call.operation.replay(cached))
            answer.body = CallStream(
                call, chunks, watch, self._finish, self._price, self.policy.server.max_stream_output_bytes
            )
        else:
            answer.body = cached
        return answer

    async def handle_resource(self, operation: Operation, method: str, path: str, inbound: Inbound) -> JSON:
        """``method`` on something an operation keeps (``GET /responses/{id}``), for the caller a door received."""
        live = self._live
        if live is not self:
            return await live.handle_resource(live.operations.get(operation.path, operation), method, path, inbound)
        caller = await self._identify(inbound, None)
        return await operation.resource(method, path, caller)

    # ── models ───────────────────────────────────────────────────────────────

    def models(self, *, tenant: str | Identity | None = None) -> JSON:
        """``GET /models``: every public model and alias the tenant may use."""
        live = self._live
        return live._models(live._caller_of(tenant))

    def model(self, name: str, *, tenant: str | Identity | None = None) -> JSON:
        """``GET /models/{name}``."""
        live = self._live
        return live._model(live._caller_of(tenant), name)

    async def handle_models(self, inbound: Inbound, name: str | None = None) -> JSON:
        """``GET /models`` (or one model) for the caller a door received; 401 as for any call."""
        live = self._live
        caller = await live._identify(inbound, None)
        if (breakers := live._dispatcher.breakers) is not None:
            await breakers.refresh()  # what every replica sees, within a second
        return live._models(caller) if name is None else live._model(caller, name)

    def _models(self, caller: Caller) -> JSON:
        names = [name for name in self._router.routes if self._tenants.allows(caller, name)]
        return {"object": "list", "data": [self._model_object(name) for name in names]}

    def _model(self, caller: Caller, name: str) -> JSON:
        if name not in self._router.routes or not self._tenants.allows(caller, name):
            raise ModelNotFound(name)
        return self._model_object(name)

    def _caller_of(self, tenant: str | Identity | None) -> Caller:
        tenant = tenant if tenant is not None else self.policy.tenancy.default  # as for calls
        if tenant is None:
            return Caller(None)
        return self._tenants.caller(tenant if isinstance(tenant, Identity) else Identity(tenant))

    # ── doors ────────────────────────────────────────────────────────────────

    def asgi_app(self, prefix: str = "/v1") -> ASGIApp:
        """An ASGI app serving the OpenAI routes under ``prefix``, to mount in a host app."""
        from unimw.asgi import GatewayApp

        return GatewayApp(self, prefix=prefix)

    def transport(self, prefix: str = "/v1") -> GatewayTransport:
        """An ``httpx`` transport that sends requests straight to this gateway, with no socket.

        Give the client a ``base_url`` ending in ``prefix``, e.g. ``http://unimw/v1``.
        """
        from unimw.transport import GatewayTransport

        return GatewayTransport(self.asgi_app(prefix=prefix))

    # ── reloading ────────────────────────────────────────────────────────────

    @property
    def live_policy(self) -> Policy:
        """The policy new calls run under: ``policy`` until a :meth:`reload`, the reloaded one after."""
        return self._live.policy

    async def reload(self, source: Policy | str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Policy:
        """Serve a new policy (a path, read as :meth:`from_yaml` does, or a built one) from the next call on.

        The new file is loaded first: a :class:`~unimw.loader.ConfigError` (with its file and line) leaves
        the gateway as it was. Calls and streams in flight finish under the policy they began with; its
        upstream connections close once the last of them is finished. What the policy does not define
        carries over: the limit and cache stores (so counters and cached answers), unless the new policy
        names another store, the cooldown of failing targets and their circuit breakers (under the new
        policy's thresholds). Returns the policy now live.
        """
        from unimw.policy import Policy

        if isinstance(source, Policy):
            policy = source
        else:
            from unimw.loader import load_policy

            policy = load_policy(source, env)
        live, state = self._live, self._reloading
        limit_store, cache_store = state.limit_store, state.cache_store
        if limit_store is None and policy.tenancy.store == live.policy.tenancy.store:
            limit_store = live._limiter.store
        if cache_store is None and _cache_store_of(policy) == _cache_store_of(live.policy):
            cache_store = live._cache.store
        fresh = Gateway(policy, limit_store=limit_store, cache_store=cache_store, **state.options)
        fresh.created = live.created
        fresh._dispatcher._cool_until = live._dispatcher._cool_until  # a failing target stays skipped
        retired = live._reloading
        same_store = policy.tenancy.store == live.policy.tenancy.store
        slots: Slots | None = None
        if same_store:  # calls in flight under the old policy still hold their concurrency slots
            slots, fresh._slots = fresh._slots, live._slots
            retired.owns_slots = False
        kept, built = live._dispatcher.breakers, fresh._dispatcher.breakers
        if kept is not None and built is not None and same_store:
            kept.settings, kept.changed = built.settings, built.changed  # open breakers stay open
            fresh._dispatcher.breakers = kept
            retired.owns_breakers = False
        else:
            built = None
        retired.owns_limit_store = limit_store is not live._limiter.store
        retired.owns_cache_store = cache_store is not live._cache.store
        self._live = fresh  # one assignment: every call from now on starts under the new policy
        if built is not None:
            await built.aclose()  # made for nothing: the kept breakers serve the new policy
        if slots is not None:
            await slots.aclose()  # likewise
        state.generations = [g for g in state.generations if not g._reloading.closed] + [fresh]
        retiring = asyncio.ensure_future(live._retire())
        state.retiring.add(retiring)
        retiring.add_done_callback(state.retiring.discard)
        return policy

    async def _retire(self) -> None:
        """Close this (replaced) policy's parts once no call of it is in flight."""
        state = self._reloading
        if state.in_flight:
            state.drained = asyncio.Event()
            await state.drained.wait()
        try:
            await self._close()
        except Exception:  # a connection that fails to close must not end the process's next reload
            logging.getLogger("unimw").exception("unimw: error while closing a replaced policy's connections")

    # ── lifecycle ────────────────────────────────────────────────────────────

    async def flush(self) -> None:
        """Wait until every call finished so far is settled (on a store that settles after the answer), its
        usage record delivered and its alert hooks run."""
        for gateway in self._reloading.generations:
            if not gateway._reloading.closed:
                await gateway._flush()

    async def _flush(self) -> None:
        await self._finisher.flush()
        await self._hooks.aclose()
        await self._recorder.flush()
        await self._router.flush()

    async def aclose(self) -> None:
        """Close upstream connections, settle what is still pending, deliver records and alerts, close the stores
        (those of every policy a :meth:`reload` replaced too)."""
        state = self._reloading
        for task in state.retiring:
            task.cancel()
        await asyncio.gather(*state.retiring, return_exceptions=True)
        for gateway in state.generations:
            await gateway._close()

    async def _close(self) -> None:
        state = self._reloading
        if state.closed:
            return
        state.closed = True
        for adapter in self._adapters.values():
            await adapter.aclose()
        await self._own_keys.aclose()
        for operation in self.operations.values():
            await operation.aclose()
        await self._finisher.flush()  # before the hooks, the records and the limit store it needs
        await self._hooks.aclose()
        await self._recorder.aclose()
        if state.owns_limit_store:
            await self._limiter.aclose()
        if state.owns_cache_store:
            await self._cache.aclose()
        if state.owns_slots:
            await self._slots.aclose()
        if state.owns_breakers and self._dispatcher.breakers is not None:
            await self._dispatcher.breakers.aclose()
        await self._router.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _model_object(self, name: str) -> JSON:
        route = self._router.routes[name]
        if route.is_alias:
            owner = "unimw"
        else:
            model = self.policy.models[name]
            owner = model.owned_by or route.targets[0].provider
        adapters = {type(self._adapters[t.provider]) for t in route.targets}
        served = [op.path.lstrip("/") for op in self.operations.values() if any(op.serves(a) for a in adapters)]
        # An extension field (SDKs ignore it): which of the gateway's routes this model answers, and, with
        # breakers on, the state of each of its targets' breakers (as this process last saw them).
        extension: JSON = {"operations": served}
        if (breakers := self._dispatcher.breakers) is not None:
            extension["breakers"] = {t.name: breakers.state(t.name) for t in route.targets}
        return {**model_object(name, owner, self.created), "x_unimw": extension}


@dataclass(slots=True, eq=False)
class _Reloading:
    """What a gateway keeps for :meth:`Gateway.reload`: how to build the next policy's parts, and when its own
    (once replaced) may close."""

    options: dict[str, Any]  #: what the gateway was given besides the policy and the stores
    limit_store: LimitStore | None  #: the app's own stores, given to every policy's parts
    cache_store: CacheStore | None
    in_flight: int = 0  #: calls begun under this gateway's policy and not yet finished
    drained: asyncio.Event | None = None  #: set when the last of them finishes, once the policy is replaced
    owns_limit_store: bool = True  #: False once a reload passed the store on to the next policy
    owns_cache_store: bool = True
    owns_breakers: bool = True
    owns_slots: bool = True
    closed: bool = False
    #: Of the gateway the app holds: every policy's gateway so far (itself first), and their retirements.
    generations: list[Gateway] = field(default_factory=list)
    retiring: set[asyncio.Future[None]] = field(default_factory=set)


def _shared_slots(store: str) -> SharedSlots | None:
    """Where tenants' calls in flight are counted across replicas: the limits' Redis store (None: per process)."""
    if store.startswith("memory://"):
        return None
    from unimw.stores.concurrency import RedisSlots

    return RedisSlots(store)


def _cache_store_of(policy: Policy) -> tuple[str, int | None, int | None]:
    settings = policy.cache
    return settings.store, settings.max_entries, settings.max_bytes


def _vouched(tenant: str | Identity | None, end_user: str | None) -> Inbound:
    """What an in-process caller (the app itself) says about who is calling."""
    if isinstance(tenant, Identity):
        return Inbound(caller=Caller(tenant.tenant, end_user), identity=tenant)
    return Inbound(caller=Caller(tenant, end_user))


def _usd(micros: int) -> str:
    """Micro-USD as a decimal USD string with no float rounding: ``0.000123``."""
    return f"{micros // MICRO}.{micros % MICRO:06d}"
