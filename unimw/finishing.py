"""The one place a call ends: free its concurrency slot, settle, release or fill the cache, let the operation
keep it, record, trace.

:meth:`Finisher.finish` runs once per call, whatever ended it (an answer, an
error, a refusal, a cache hit, the end of a stream, a reader that left).
Each of its steps is isolated: a step that fails is logged and the others
still run, so a store that is down cannot leave the span open or the
single-flight waiters waiting, and nothing here can turn a call that was
answered and charged into an error for its caller. A cancellation that
arrives while a step awaits its store is held until every step has run.

On a limit store whose settlement is a round trip (Redis: ``settles_later``)
the answer does not wait for it. ``finish`` fills the cache and lets the
operation keep the answer, then hands the settlement, and what needs its
outcome (budget alerts, the usage record, the span's end), to a task of
its own and returns: the caller waits for one round trip (the reservation),
not two. That task belongs to no request, so a caller that is cancelled
(a client that left) cannot cancel it; :meth:`Finisher.flush` waits for
every one, and the gateway's ``flush`` and ``aclose`` call it, so nothing is
left unsettled when the gateway closes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from unimw.cache import ResponseCache
from unimw.calls import Call
from unimw.continuation import without
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
        self._settles_later = limiter.settles_later
        #: Settlements still running after their call's answer (each removes itself when done).
        self._later: set[asyncio.Task[None]] = set()

    async def finish(self, call: Call) -> None:
        """Settle, store, record and trace ``call``: once, each step whatever became of the others."""
        if call.finished:
            return
        call.finished = True
        if call.slot is not None:
            call.slot.release()  # first, and with no await: nothing can keep the place taken
        call.cost = cost = self.cost(call)
        hold = call.hold
        later = self._settles_later and hold is not None and hold.metered and not hold.settled
        cancelled: asyncio.CancelledError | None = None
        try:
            if hold is not None and not later:
                await self._settle(call, cost)
        except asyncio.CancelledError as exc:
            cancelled = exc
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
        if later:
            call.ended_at = time.perf_counter()  # what the caller waited for ends here
            task = asyncio.get_running_loop().create_task(self._settle_later(call, cost))
            self._later.add(task)
            task.add_done_callback(self._later.discard)
        else:
            self._close(call, cost)
        if cancelled is not None:
            raise cancelled

    async def flush(self) -> None:
        """Wait until every settlement started so far has run (with its alerts, record and span).

        Waiting does not cancel them, even if the waiter is cancelled. Those
        of an event loop that has ended are gone with it: close the gateway
        before its loop ends.
        """
        loop = asyncio.get_running_loop()
        while pending := [task for task in self._later if not task.done() and task.get_loop() is loop]:
            await asyncio.wait(pending)

    async def _settle(self, call: Call, cost: int) -> None:
        """Replace the call's reservation by what it used; a failure is logged and the reservation stands
        (the tenant is over-counted by the difference until the window passes, never under-counted)."""
        assert call.hold is not None
        try:
            call.alerts = await self._limiter.settle(call.hold, call.usage, cost, answered=call.answered)
        except Exception:
            logger.exception("unimw: settling call %s failed", call.request_id)

    async def _settle_later(self, call: Call, cost: int) -> None:
        try:
            await self._settle(call, cost)
        except asyncio.CancelledError:
            # Only the end of the event loop cancels this task (a gateway that was never closed).
            logger.error("unimw: the settlement of call %s was cancelled before it ran", call.request_id)
            raise
        finally:
            self._close(call, cost)

    def _close(self, call: Call, cost: int) -> None:
        """What needs the settlement's outcome: deliver its alerts, record the call, end its span."""
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

    def cost(self, call: Call) -> int:
        """What the call is charged, in micro-USD: its usage at the answering target's price (and, for a
        stream continued elsewhere, what each failed attempt produced at its own target's price)."""
        if call.target is None or call.usage is None or (call.cache_hit and not self._cache.charges_hits):
            return 0
        usage, earlier = call.usage, 0
        for switch in call.resumed:
            earlier += cost_micros(self._limiter.price(switch.target.name), switch.usage)
            usage = without(usage, switch.usage)
        return earlier + cost_micros(self._limiter.price(call.target.name), usage)

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
            latency_ms=round(((call.ended_at or time.perf_counter()) - call.started) * 1000, 3),
            cache_hit=call.cache_hit,
            status=call.status,
            stream=call.stream,
            timestamp=time.time(),
            operation=call.operation.name,
            plan=call.caller.plan,
            tags=call.tags,
            rerouted_from=call.rerouted_from,
            cache_write_tokens=usage.cache_write_tokens if usage else 0,
            arm=call.route.arm if call.route is not None else None,
        )
