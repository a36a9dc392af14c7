"""The one place a call ends: settle, release or fill the cache, let the operation keep it, record, trace.

:meth:`Finisher.finish` runs once per call, whatever ended it (an answer, an
error, a refusal, a cache hit, the end of a stream, a reader that left).
Each of its steps is isolated: a step that fails is logged and the others
still run, so a store that is down cannot leave the span open or the
single-flight waiters waiting, and nothing here can turn a call that was
answered and charged into an error for its caller. A cancellation that
arrives while a step awaits its store is held until every step has run.
"""

from __future__ import annotations

import asyncio
import logging
import time

from unimw.cache import ResponseCache
from unimw.calls import Call
from unimw.hooks import Hooks
from unimw.limits import Limiter
from unimw.records import Recorder, UsageRecord
from unimw.tracing import Tracing
from unimw.usage import MICRO, cost_micros

logger = logging.getLogger("unimw")


class Finisher:
    """Settles, stores, records and traces calls for one gateway."""

    def __init__(
        self, limiter: Limiter, cache: ResponseCache, recorder: Recorder, tracing: Tracing, hooks: Hooks
    ) -> None:
        self._limiter = limiter
        self._cache = cache
        self._recorder = recorder
        self._tracing = tracing
        self._hooks = hooks

    async def finish(self, call: Call) -> None:
        """Settle, store, record and trace ``call``: once, each step whatever became of the others."""
        if call.finished:
            return
        call.finished = True
        call.cost = cost = self.cost(call)
        cancelled: asyncio.CancelledError | None = None
        try:
            if call.hold is not None:
                call.alerts = await self._limiter.settle(call.hold, call.usage, cost, answered=call.answered)
        except asyncio.CancelledError as exc:
            cancelled = exc
        except Exception:
            logger.exception("unimw: settling call %s failed", call.request_id)
        try:
            if call.cache is not None and not call.cache_hit:
                await self._fill_cache(call)
        except asyncio.CancelledError as exc:
            cancelled = exc
        except Exception:
            logger.exception("unimw: the cache step failed for call %s", call.request_id)
        try:
            if call.status == "ok" and call.answer is not None:  # a free cache hit too: it is this call's answer
                await call.operation.remember(call)
        except asyncio.CancelledError as exc:
            cancelled = exc
        except Exception:
            logger.exception("unimw: the %s operation could not keep call %s", call.operation.name, call.request_id)
        try:
            for alert in call.alerts:
                self._hooks.budget_alert(alert)
            if self._recorder.enabled and (call.admitted or call.cache_hit):
                self._recorder.record(self._record(call, cost))
        except Exception:
            logger.exception("unimw: recording call %s failed", call.request_id)
        try:
            self._tracing.finish(call, cost)
        except Exception:
            logger.exception("unimw: tracing call %s failed", call.request_id)
            self._tracing.end(call)
        if cancelled is not None:
            raise cancelled

    def cost(self, call: Call) -> int:
        """What the call is charged, in micro-USD: its usage at the answering target's price."""
        if call.target is None or call.usage is None or (call.cache_hit and not self._cache.charges_hits):
            return 0
        return cost_micros(self._limiter.price(call.target.name), call.usage)

    async def _fill_cache(self, call: Call) -> None:
        assert call.cache is not None
        answer = call.answer if call.status == "ok" and call.answered else None
        good = answer is not None and call.operation.cacheable(answer)
        target = call.target.name if call.target else None
        await self._cache.finish(call.cache, answer if good else None, target, call.error)

    def _record(self, call: Call, cost: int) -> UsageRecord:
        usage, target = call.usage, call.target
        model = call.request.get("model")
        return UsageRecord(
            request_id=call.request_id,
            tenant=call.caller.tenant,
            end_user=call.caller.end_user,
            model=model if isinstance(model, str) else "",
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
            operation=call.operation.name,
            plan=call.caller.plan,
            tags=call.tags,
            rerouted_from=call.rerouted_from,
        )
