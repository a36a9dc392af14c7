"""Sending a request to the targets of a route until one answers.

* Retryable failures (429, 5xx, timeouts, broken connections) are retried
  on the same target with bounded exponential backoff, or after the
  upstream's ``Retry-After`` when it asks for a short enough wait.
* A rate-limited or timed-out target is not retried while the route has
  another target: the next one is tried at once.
* A target that failed is cooled down (skipped while others remain).
* A stream may fall back only before its first chunk: once a chunk has
  reached the caller, a failure is the caller's to see.
* Errors that another attempt cannot fix (400, 401, 404, ...) are raised
  at once.

Each attempt runs through an :class:`Observer` (tracing puts a span around
it), numbered from 1 across all the targets of the call.

The dispatcher is the only caller of adapters, so it is the boundary where
their errors are redacted: every :class:`UpstreamError` out of an adapter,
raised before the first chunk or in the middle of a stream, has the
provider's secrets blanked out (:mod:`unimw.redaction`) before anything
else (the attempt's span, the cache, the client) sees it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from unimw.adapters.base import Adapter, Target
from unimw.errors import UpstreamError, UpstreamTimeout
from unimw.policy import Dispatch
from unimw.redaction import Redactor
from unimw.routing import Route, Router
from unimw.wire import JSON, aclose

T = TypeVar("T")


#: One upstream request of an operation: ``(adapter, target) -> its answer``.
Ask = Callable[[Adapter, Target], Awaitable[T]]


class Observer(Protocol):
    """Runs one upstream attempt of ``operation`` for ``request``, watching it: ``run(target)`` is the attempt."""

    async def attempt(
        self, operation: str, request: JSON, target: Target, number: int, run: Callable[[Target], Awaitable[T]]
    ) -> T: ...


class _Unobserved:
    async def attempt(
        self, operation: str, request: JSON, target: Target, number: int, run: Callable[[Target], Awaitable[T]]
    ) -> T:
        return await run(target)


class Dispatcher:
    """Retries, fallback and cooldown over the adapters of one gateway."""

    def __init__(
        self,
        router: Router,
        adapters: Mapping[str, Adapter],
        settings: Dispatch,
        *,
        redactors: Mapping[str, Redactor] | None = None,
        retries: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: Observer | None = None,
    ) -> None:
        self._router = router
        self._adapters = adapters
        self._redactors = redactors or {}
        self._settings = settings
        self._retries = retries or {}
        self._clock = clock
        self._sleep = sleep
        self._cool_until: dict[str, float] = {}
        self._observer: Observer = observer or _Unobserved()

    async def complete(self, route: Route, operation: str, request: JSON, ask: Ask[JSON]) -> tuple[Target, JSON]:
        """The answer to ``request`` of the first target that answered, and that target.

        ``ask`` makes one upstream request; ``operation`` and ``request`` are for the observer.
        """

        async def attempt(target: Target) -> JSON:
            try:
                return await ask(self._adapters[target.provider], target)
            except UpstreamError as error:
                self._redact(target, error)
                raise

        return await self._first_success(route, operation, request, attempt)

    async def stream(
        self, route: Route, operation: str, request: JSON, ask: Ask[AsyncIterator[JSON]]
    ) -> tuple[Target, AsyncIterator[JSON]]:
        """The chunk stream of the first target that produced a first chunk, and that target."""

        async def attempt(target: Target) -> tuple[JSON, AsyncIterator[JSON]]:
            try:
                chunks = await ask(self._adapters[target.provider], target)
            except UpstreamError as error:
                self._redact(target, error)
                raise
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                raise UpstreamError("The upstream sent an empty stream.", status=502) from None
            except UpstreamError as error:
                self._redact(target, error)
                await aclose(chunks)
                raise
            except BaseException:
                await aclose(chunks)
                raise
            return first, chunks

        target, (first, rest) = await self._first_success(route, operation, request, attempt)
        return target, self._rest_of_stream(target, first, rest)

    def _redact(self, target: Target, error: UpstreamError) -> None:
        if (redactor := self._redactors.get(target.provider)) is not None:
            redactor.error(error)

    async def _rest_of_stream(self, target: Target, first: JSON, rest: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
        try:
            yield first
            async for chunk in rest:
                yield chunk
        except UpstreamError as error:
            self._redact(target, error)
            raise
        finally:
            await aclose(rest)

    async def _first_success(
        self, route: Route, operation: str, request: JSON, attempt: Callable[[Target], Awaitable[T]]
    ) -> tuple[Target, T]:
        targets = self._available(self._router.order(route))
        last_error: UpstreamError | None = None
        number = 0
        for position, target in enumerate(targets):
            has_next = position + 1 < len(targets)
            retries = self._retries.get(target.provider, self._settings.retries)
            for tries in range(retries + 1):
                number += 1
                try:
                    result = await self._observer.attempt(operation, request, target, number, attempt)
                except UpstreamError as error:
                    if not error.retryable:
                        raise
                    last_error = error
                    wait = self._wait(error, tries)
                    moves_on = has_next and (error.status == 429 or isinstance(error, UpstreamTimeout))
                    if wait is None or moves_on or tries == retries:
                        self._cool(target, error)
                        break
                    await self._sleep(wait)
                else:
                    self._cool_until.pop(target.name, None)
                    return target, result
        assert last_error is not None  # every route has a target
        raise last_error

    def _wait(self, error: UpstreamError, tries: int) -> float | None:
        """Seconds before retrying the same target, or ``None`` to move on."""
        settings = self._settings
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= settings.max_retry_after else None
        backoff = min(settings.max_backoff, settings.backoff * 2.0**tries)
        return backoff * (0.75 + random.random() / 4)

    def _available(self, targets: tuple[Target, ...]) -> tuple[Target, ...]:
        """``targets`` without those cooling down, unless that leaves none."""
        if not self._cool_until:
            return targets
        now = self._clock()
        warm = tuple(t for t in targets if self._cool_until.get(t.name, 0.0) <= now)
        return warm or targets

    def _cool(self, target: Target, error: UpstreamError) -> None:
        seconds = max(self._settings.cooldown, error.retry_after or 0.0)
        if self._settings.cooldown:
            self._cool_until[target.name] = self._clock() + seconds
