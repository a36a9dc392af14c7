"""The Gateway: owns the pipeline every call goes through, whatever the door."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from unimw.adapters import adapter_class
from unimw.adapters.base import Adapter
from unimw.cache import ResponseCache, strip_control
from unimw.calls import Call, ChunkStream
from unimw.dispatch import Dispatcher
from unimw.errors import AuthenticationFailed, ModelNotFound, UnimwError
from unimw.limits import Hold, Limiter
from unimw.loader import build_policy, load_policy
from unimw.policy import Policy
from unimw.records import Recorder, UsageRecord
from unimw.redaction import Redactor, provider_secrets
from unimw.routing import Router
from unimw.stores import cache_store, limit_store
from unimw.streams import aiter_of, replay
from unimw.tenants import Caller, Tenants, output_cap
from unimw.tracing import Tracing
from unimw.usage import MICRO, cost_micros
from unimw.validation import validate_chat
from unimw.wire import JSON, model_object, request_id

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from starlette.types import ASGIApp

    from unimw.transport import GatewayTransport


@dataclass(slots=True)
class Answer:
    """What a door sends back: a completion or a chunk stream, and extra headers."""

    body: JSON | ChunkStream
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
    are given (see :mod:`unimw.tracing`).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.policy = policy
        self.created = int(time.time())
        self.tenants = Tenants(policy)
        self.limiter = Limiter(policy, limit_store(policy.tenancy.store), clock)
        self.recorder = Recorder(policy.usage)
        self._router = Router(policy)
        self._adapters: dict[str, Adapter] = {
            name: adapter_class(provider.kind)(provider) for name, provider in policy.providers.items()
        }
        self.tracing = Tracing(
            policy, self._router.routes, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        retries = {name: p.retries for name, p in policy.providers.items() if p.retries is not None}
        redactors = {name: Redactor(provider_secrets(p)) for name, p in policy.providers.items()}
        self._dispatcher = Dispatcher(
            self._router, self._adapters, policy.dispatch, redactors=redactors, retries=retries, observer=self.tracing
        )
        self._limits_on = self.limiter.enabled
        settings = policy.cache
        store = cache_store(settings.store, max_entries=settings.max_entries, max_bytes=settings.max_bytes, clock=clock)
        self.cache = ResponseCache(policy, self._router, store)
        self._cache_on = any(self.cache.applies(route) for route in self._router.routes.values())

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> Gateway:
        """A gateway for the policy file at ``path``."""
        return cls(load_policy(path, env), tracer_provider=tracer_provider, meter_provider=meter_provider)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.time,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> Gateway:
        """A gateway for a policy given as data (already interpolated).

        ``clock`` (seconds since the epoch) drives limit windows; tests move it.
        """
        return cls(
            build_policy(dict(data)), clock=clock, tracer_provider=tracer_provider, meter_provider=meter_provider
        )

    async def chat_completions(
        self, body: JSON, *, tenant: str | None = None, end_user: str | None = None
    ) -> JSON | AsyncIterator[JSON]:
        """Answer a chat request: a ``chat.completion``, or its chunks when ``stream`` is true.

        ``tenant`` is trusted as given (in-process callers are the app
        itself); limits and model access for it apply as for HTTP callers.
        For a stream, everything up to the first chunk happens before this
        returns, so errors are raised here; close the iterator if you stop
        reading early (``contextlib.aclosing``), so the call is settled.
        """
        if tenant is not None and self.tenants.tenant(tenant) is None:
            raise AuthenticationFailed(f"Unknown tenant {tenant!r}.")
        answer = await self.handle_chat(body, Caller(tenant, end_user))
        return answer.body

    async def handle_chat(
        self, body: Any, caller: Caller, rid: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """The chat pipeline; doors call this with the caller they identified and the request headers.

        The call's span is the current span while the pipeline runs; a
        stream's stays open after this returns, until the stream is finished.
        """
        call = Call(rid or request_id(), caller, validate_chat(body))
        token = self.tracing.start(call)
        try:
            return await self._chat(call, headers or {})
        finally:
            self.tracing.detach(token)

    async def _chat(self, call: Call, headers: Mapping[str, str]) -> Answer:
        request, caller = call.request, call.caller
        try:
            call.route = route = self._router.resolve(request["model"])
            call.request = self.tenants.authorize(caller, route, request)
            call.stream = bool(request.get("stream"))
            answer = Answer(call.request, {})
            if self._cache_on and self.cache.applies(route):
                call.cache = await self.cache.lookup(route, call.request, caller.tenant, headers)
                if call.cache.status != "bypass":
                    self.tracing.cache_lookup(call, hit=call.cache.completion is not None)
                answer.headers["x-unimw-cache"] = call.cache.status
                if call.cache.completion is not None and not self.cache.charges_hits:
                    return await self._serve_hit(call, call.cache.completion, answer)
            call.request = strip_control(call.request)  # unimw's own field: never for the upstream
            if self._limits_on:
                await self._reserve(call, answer)
            call.admitted = True
            if call.cache is not None and call.cache.completion is not None:
                return await self._serve_hit(call, call.cache.completion, answer)
            return await self._dispatch(call, answer)
        except UnimwError as error:
            call.status, call.error = "error", error
            await self._finish(call)
            raise
        except BaseException as error:  # the client left (cancelled), or a bug: settled and traced all the same
            call.status = "cancelled" if isinstance(error, asyncio.CancelledError) else "error"
            call.error = error
            await asyncio.shield(self._finish(call))
            raise

    async def _reserve(self, call: Call, answer: Answer) -> None:
        assert call.route is not None
        if self.limiter.needs_output_cap(call.caller) and output_cap(call.request) is None:
            # The reservation must be a true worst case, so an uncapped request gets the default cap.
            call.request = {**call.request, "max_completion_tokens": self.policy.tenancy.default_max_tokens}
        answer.hold = call.hold = await self.limiter.reserve(call.caller, call.route, call.request)

    async def _dispatch(self, call: Call, answer: Answer) -> Answer:
        assert call.route is not None
        request = call.request
        if call.stream:
            wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            upstream = request if wants_usage else {**request, "stream_options": {"include_usage": True}}
            call.target, chunks = await self._dispatcher.stream(call.route, upstream)
            assemble = call.cache is not None or self.tracing.captures_output
            answer.body = ChunkStream(call, chunks, self._finish, client_wants_usage=wants_usage, assemble=assemble)
            return answer
        call.target, completion = await self._dispatcher.complete(call.route, request)
        call.observe_completion(completion)
        await self._finish(call)
        answer.body = completion
        return answer

    async def _serve_hit(self, call: Call, completion: JSON, answer: Answer) -> Answer:
        """A cached answer, as the caller asked for it: whole, or replayed as a stream."""
        call.cache_hit = call.admitted = True
        call.target = self._router.target(call.cache.target) if call.cache is not None else None
        call.observe_completion(completion)
        call.answered = self.cache.charges_hits
        if call.stream:
            wants_usage = bool((call.request.get("stream_options") or {}).get("include_usage"))
            chunks = aiter_of(replay(completion, include_usage=True))
            answer.body = ChunkStream(call, chunks, self._finish, client_wants_usage=wants_usage)
            return answer
        await self._finish(call)
        answer.body = completion
        return answer

    async def _finish(self, call: Call) -> None:
        """Settle, record and trace a call: once, however it ended."""
        if call.finished:
            return
        call.finished = True
        price = self.limiter.price(call.target.name) if call.target else None
        cost = cost_micros(price, call.usage) if price is not None and call.usage is not None else 0
        if call.cache_hit and not self.cache.charges_hits:
            cost = 0
        await self.limiter.settle(call.hold, call.usage, cost, answered=call.answered)
        if call.cache is not None and not call.cache_hit:
            ok = call.status == "ok" and call.answered
            target = call.target.name if call.target else None
            await self.cache.finish(call.cache, call.completion if ok else None, target, call.error)
        if self.recorder.enabled and (call.admitted or call.cache_hit):
            self.recorder.record(self._record(call, cost))
        self.tracing.finish(call, cost)

    def _record(self, call: Call, cost: int) -> UsageRecord:
        usage = call.usage
        target = call.target
        return UsageRecord(
            request_id=call.request_id,
            tenant=call.caller.tenant,
            end_user=call.caller.end_user,
            model=str(call.request.get("model")),
            provider=target.provider if target else None,
            upstream_model=target.model if target else None,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cached_tokens=usage.cached_tokens if usage else 0,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            cost_usd=cost / MICRO if call.answered else 0.0,
            latency_ms=round((time.perf_counter() - call.started) * 1000, 3),
            cache_hit=call.cache_hit,
            status=call.status,
            stream=call.stream,
            timestamp=time.time(),
        )

    def models(self, *, tenant: str | None = None) -> JSON:
        """``GET /models``: every public model and alias the tenant may use."""
        caller = Caller(tenant)
        names = [name for name in self._router.routes if self.tenants.allows(caller, name)]
        return {"object": "list", "data": [self._model_object(name) for name in names]}

    def model(self, name: str, *, tenant: str | None = None) -> JSON:
        """``GET /models/{name}``."""
        if name not in self._router.routes or not self.tenants.allows(Caller(tenant), name):
            raise ModelNotFound(name)
        return self._model_object(name)

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

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
        await self.recorder.aclose()
        await self.limiter.aclose()
        await self.cache.aclose()

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
        return model_object(name, owner, self.created)
