"""One gateway call from start to finish, and the stream that ends it.

A :class:`Call` carries what the steps learn about a call (who, which
route, the reservation, the target that answered, what the answer said).
It is finished exactly once, by :meth:`unimw.finishing.Finisher.finish`,
from one of two places: the ``finally`` of the pipeline for a call that
did not become a stream, or :class:`CallStream` for one that did, when its
last chunk is read, when it fails mid-way, or when the reader closes it,
even before reading a chunk. On a networked limit store the finish returns
before the call is settled: the settlement (and the alerts, record and span
end that follow from it) runs in a task of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unimw.errors import StreamTooLong
from unimw.operations.base import Operation, Reading, StreamWatch
from unimw.tenants import Caller
from unimw.usage import MICRO, Usage, estimate_text_tokens
from unimw.wire import JSON, aclose

if TYPE_CHECKING:
    from unimw.adapters.base import Target
    from unimw.cache import Lookup
    from unimw.concurrency import Slot
    from unimw.continuation import Resumed
    from unimw.limits import BudgetAlert, Hold
    from unimw.routing import Route

#: No caller identified yet (the tenant step has not run, or refused the call).
NOBODY = Caller(None)


@dataclass(slots=True)
class Call:
    """The state of one call as it moves through the pipeline."""

    operation: Operation
    request_id: str
    request: JSON  #: the body as given, then as validated and adjusted by the steps
    caller: Caller = NOBODY
    route: Route | None = None
    stream: bool = False
    hold: Hold | None = None
    slot: Slot | None = None  #: its place under the concurrency limits, given back when it is finished
    target: Target | None = None
    #: What the answer (or the chunks so far) said: usage, ids, finish reasons.
    reading: Reading = field(default_factory=Reading)
    usage: Usage | None = None  #: what the caller is charged for (the reading's, or an estimate)
    #: True once the upstream produced output the caller is charged for.
    answered: bool = False
    status: str = "ok"  #: ``ok``, ``error`` or ``cancelled``
    #: Past the limits (refused calls are traced but not recorded as usage).
    admitted: bool = False
    error: BaseException | None = None
    started: float = field(default_factory=time.perf_counter)
    first_chunk_at: float | None = None
    #: Upstream attempts so far (a stream's), numbered across the call, continuations included.
    attempts: int = 0
    #: When a stream's dispatch began (ns since the epoch): the start of its first attempt's span, should it
    #: need one after the fact (a cut that is continued).
    dispatched: int = 0
    span: Any = None
    finished: bool = False
    cache: Lookup | None = None
    cache_hit: bool = False
    #: The whole answer, when there is one to store or capture (a stream's is assembled).
    answer: JSON | None = None
    #: Budget thresholds this call's settlement crossed (reported on its span, delivered to the policy's hook).
    alerts: list[BudgetAlert] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  #: what the call is for (:mod:`unimw.tags`)
    rerouted_from: str | None = None  #: the name asked for, when the plan's on_budget sent the call elsewhere
    cost: int = 0  #: what the caller is charged, in micro-USD, once the call is finished
    #: When the answer was complete (``perf_counter``), set when the settlement runs after it: the span's end and
    #: the call's duration are taken from here, not from when the settlement finished.
    ended_at: float | None = None
    #: Attempts of a stream that failed mid-answer and were continued elsewhere (:mod:`unimw.continuation`).
    resumed: list[Resumed] = field(default_factory=list)

    def answered_with(self, answer: JSON) -> None:
        """The upstream (or the cache) gave a whole answer."""
        self.answered = True
        self.answer = answer
        self.reading = self.operation.read(answer)
        # A compatible server may leave usage out: then it is estimated from what came back.
        self.usage = self.reading.usage or self.estimate(estimate_text_tokens(self.operation.output_text(answer)))

    def failed(self, error: BaseException) -> None:
        self.status = "cancelled" if isinstance(error, asyncio.CancelledError) else "error"
        self.error = error

    def estimate(self, output_tokens: int) -> Usage:
        """Usage the vendor never reported: the prompt estimate plus the output seen (estimated)."""
        return Usage(self.operation.prompt_tokens(self.request), output_tokens)


Finish = Callable[[Call], Awaitable[None]]


class CallStream:
    """The chunks of a streamed call, each passed by the operation's watcher; finishes the call however
    iteration ends.

    Closing it (``aclose``, or ``contextlib.aclosing``) before the end stops
    the upstream and settles what was produced, even if no chunk was read.

    ``max_output`` bounds the text it may carry (the watch's
    :meth:`~unimw.operations.base.StreamWatch.output_bytes`): the chunk that
    passes it is the last handed out (the caller is charged for what it
    got), then the upstream is stopped and the stream fails with
    :class:`~unimw.errors.StreamTooLong`. What an assembled answer holds is
    bounded with it.
    """

    __slots__ = ("_chunks", "_done", "_finish", "_items", "_max_output", "_price", "call", "watch")

    def __init__(
        self,
        call: Call,
        chunks: AsyncIterator[JSON],
        watch: StreamWatch,
        finish: Finish,
        price: Callable[[Call], int] | None = None,
        max_output: int | None = None,
    ) -> None:
        self.call = call
        self._chunks = chunks
        self.watch = watch  #: the operation's watcher, which doors hand back to the operation for an error event
        self._finish = finish
        #: What the call costs so far, in micro-USD, when the caller is to be told on the usage event.
        self._price = price
        self._max_output = max_output
        self._done = False
        self._items = self._run()

    def __aiter__(self) -> AsyncIterator[JSON]:
        # ``async for`` reads the generator itself: an ``async def __anext__`` here made a coroutine per
        # chunk (callgrind: 1,000 instructions a chunk). Closing stays this object's (``aclose``).
        return self._items

    def __anext__(self) -> Awaitable[JSON]:
        return self._items.__anext__()

    async def _run(self) -> AsyncIterator[JSON]:
        call, watch, price, limit = self.call, self.watch, self._price, self._max_output
        try:
            async for chunk in self._chunks:
                if call.first_chunk_at is None:
                    call.first_chunk_at = time.perf_counter()
                if (seen := watch.see(chunk)) is not None:
                    if price is not None and call.operation.reports_usage(seen):
                        seen = self._priced(seen)
                    yield seen
                if limit is not None and watch.output_bytes() > limit:
                    raise StreamTooLong(limit)
        except GeneratorExit:
            raise  # closed where it handed out a chunk: ``aclose`` finishes the call
        except BaseException as error:  # an upstream failure, a cancelled reader, or a bug: settled all the same
            await self._end(error)
            raise
        await self._end(None)

    def _priced(self, event: JSON) -> JSON:
        assert self._price is not None
        call = self.call
        call.reading = self.watch.reading()
        call.usage = call.reading.usage or call.estimate(self.watch.produced_tokens())
        return call.operation.with_cost(event, self._price(call) / MICRO)

    async def aclose(self) -> None:
        """Stop reading (the client left): close the upstream and finish the call."""
        if not self._done:
            await aclose(self._items)
            await self._end(asyncio.CancelledError())

    async def _end(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        call = self.call
        if error is not None:
            call.failed(error)
        call.reading = self.watch.reading()
        if not call.cache_hit:
            call.answered = True  # the first chunk reached the caller: the prompt was used
        call.usage = call.reading.usage or call.estimate(self.watch.produced_tokens())
        if error is None:
            call.answer = self.watch.answer()
        try:
            if error is not None:
                await aclose(self._chunks)
        finally:
            await self._finish(call)
