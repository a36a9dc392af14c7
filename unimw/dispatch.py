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

A tenant that brings its own key for a provider (``credentials``: provider
name -> key) has its attempts on that provider's targets made through the
adapter for that key (:class:`~unimw.own_keys.OwnKeys`), leased for the
attempt and, for a stream, until the stream has ended or been closed. Such
attempts neither cool a target down nor skip one that is cooling: cooldown
is the standing of the policy's key, shared by every caller, and a
tenant's own key says nothing about it (nor it about that key).

The dispatcher is the only caller of adapters, so it is the boundary where
their errors are redacted: every :class:`UpstreamError` out of an adapter,
raised before the first chunk or in the middle of a stream, has the
secrets of the key it was called with (the policy's, or the tenant's)
blanked out (:mod:`unimw.redaction`) before anything else (the attempt's
span, the cache, the client) sees it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from unimw.adapters.base import Adapter, Target
from unimw.errors import UpstreamError, UpstreamTimeout
from unimw.own_keys import Lease, OwnKeys
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
    """Retries, fallback and cooldown over the adapters of one gateway (and of its tenants' own keys)."""

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
        own_keys: OwnKeys | None = None,
    ) -> None:
        self._router = router
        redactors = redactors or {}
        # The policy's adapters live as long as the gateway: their leases are permanent, made once.
        self._leases = {name: Lease(adapter, redactors.get(name, _NO_SECRETS)) for name, adapter in adapters.items()}
        self._own_keys = own_keys
        self._settings = settings
        self._retries = retries or {}
        self._clock = clock
        self._sleep = sleep
        self._cool_until: dict[str, float] = {}
        self._observer: Observer = observer or _Unobserved()

    async def complete(
        self,
        route: Route,
        operation: str,
        request: JSON,
        ask: Ask[JSON],
        *,
        credentials: Mapping[str, str] | None = None,
    ) -> tuple[Target, JSON]:
        """The answer to ``request`` of the first target that answered, and that target.

        ``ask`` makes one upstream request; ``operation`` and ``request`` are for the observer.
        ``credentials`` are the caller's own keys by provider name, used instead of the policy's.
        """

        async def attempt(target: Target) -> JSON:
            lease = await self._lease(target, credentials)
            try:
                return await ask(lease.adapter, target)
            except UpstreamError as error:
                lease.redactor.error(error)
                raise
            finally:
                await lease.release()

        return await self._first_success(route, operation, request, attempt, credentials)

    async def stream(
        self,
        route: Route,
        operation: str,
        request: JSON,
        ask: Ask[AsyncIterator[JSON]],
        *,
        credentials: Mapping[str, str] | None = None,
    ) -> tuple[Target, AsyncIterator[JSON]]:
        """The chunk stream of the first target that produced a first chunk, and that target.

        Close the stream if it is not read to its end: that closes the upstream and releases its adapter.
        """

        async def attempt(target: Target) -> AsyncIterator[JSON]:
            lease = await self._lease(target, credentials)
            chunks: AsyncIterator[JSON] | None = None
            try:
                chunks = await ask(lease.adapter, target)
                first = await anext(chunks)
            except BaseException as error:
                if isinstance(error, UpstreamError):
                    lease.redactor.error(error)
                try:
                    if chunks is not None:
                        await aclose(chunks)
                finally:
                    await lease.release()
                if isinstance(error, StopAsyncIteration):
                    raise UpstreamError("The upstream sent an empty stream.", status=502) from None
                raise
            rest = _rest(first, chunks, lease)
            await anext(rest)  # primed: from now on closing it releases the lease, even before it is read
            return rest

        return await self._first_success(route, operation, request, attempt, credentials)

    async def _lease(self, target: Target, credentials: Mapping[str, str] | None) -> Lease:
        """The adapter (and redactor) for an attempt on ``target``: the caller's own key's, else the policy's."""
        if credentials is None or (key := credentials.get(target.provider)) is None:
            return self._leases[target.provider]
        if self._own_keys is None:
            raise RuntimeError("credentials were given to a dispatcher made without own_keys")
        return await self._own_keys.acquire(target.provider, key)

    async def _first_success(
        self,
        route: Route,
        operation: str,
        request: JSON,
        attempt: Callable[[Target], Awaitable[T]],
        credentials: Mapping[str, str] | None,
    ) -> tuple[Target, T]:
        def own(target: Target) -> bool:
            return credentials is not None and target.provider in credentials

        targets = self._available(self._router.order(route), own)
        last_error: UpstreamError | None = None
        number = 0
        for position, target in enumerate(targets):
            has_next = position + 1 < len(targets)
            # Cooldown is the policy key's standing, shared by every caller: an attempt with the caller's
            # own key neither sets nor clears it, so one tenant's rate limit does not send everyone elsewhere.
            shared = not own(target)
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
                        if shared:
                            self._cool(target, error)
                        break
                    await self._sleep(wait)
                else:
                    if shared:
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

    def _available(self, targets: tuple[Target, ...], own: Callable[[Target], bool]) -> tuple[Target, ...]:
        """``targets`` without those cooling down (unless that leaves none); ``own`` ones, on the caller's key, stay."""
        if not self._cool_until:
            return targets
        now = self._clock()
        warm = tuple(t for t in targets if own(t) or self._cool_until.get(t.name, 0.0) <= now)
        return warm or targets

    def _cool(self, target: Target, error: UpstreamError) -> None:
        seconds = max(self._settings.cooldown, error.retry_after or 0.0)
        if self._settings.cooldown:
            self._cool_until[target.name] = self._clock() + seconds


_NO_SECRETS = Redactor(())


async def _rest(first: JSON, chunks: AsyncIterator[JSON], lease: Lease) -> AsyncIterator[JSON]:
    """A stream from its first chunk on: it redacts the errors of the rest, and closes the upstream and
    releases the adapter's lease however it ends, even when closed before it was read.

    Started (primed) by the dispatcher up to its first ``yield``, so that closing it before the first
    chunk was read still runs the ``finally``. A generator rather than an object with an ``async def
    __anext__``, which made a coroutine per item: 1,000 fewer instructions a chunk (callgrind).
    """
    try:
        yield None  # type: ignore[misc]  # the priming step, never seen by a reader
        yield first
        async for chunk in chunks:
            yield chunk
    except UpstreamError as error:
        lease.redactor.error(error)
        raise
    finally:
        try:
            await aclose(chunks)
        finally:
            await lease.release()
