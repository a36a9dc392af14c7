"""Sending a request to the targets of a route until one answers.

* Retryable failures (429, 5xx, timeouts, broken connections) are retried
  on the same target with bounded exponential backoff, or after the
  upstream's ``Retry-After`` when it asks for a short enough wait.
* A rate-limited or timed-out target is not retried while the route has
  another target: the next one is tried at once.
* A target that failed is cooled down (skipped while others remain).
* A target that keeps failing has its circuit breaker opened
  (:mod:`unimw.breaker`): no call tries it until its probe answers, and a
  call whose every target is open gets 503 ``circuit_open`` with no attempt.
* A stream may fall back only before its first chunk: once a chunk has
  reached the caller, a failure is the caller's to see.
* Errors that another attempt cannot fix (400, 401, 404, ...) are raised
  at once, but for two 400s that another model may not give
  (:mod:`unimw.context_window`): a request too long for the target's
  context window moves to the alias's ``on_context_overflow`` targets (or
  its next ones known to hold more), and a content filter's refusal to its
  ``on_content_filter`` targets; neither cools the target down. With the
  route's context check on, targets that cannot hold the request's
  estimated tokens are skipped before any call.
* Each attempt's duration (to the first chunk, for a stream) goes to the
  router's latency figures, when an alias orders by them; a retryable
  failure counts against its target there (:mod:`unimw.latency`).

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
span, the cache, the client) sees it. It is also where an answer the
adapter could not read (a field of the wrong type or missing, where the
vendor documents one: the translation's ``TypeError``, ``KeyError``, ...)
becomes a 502 ``bad_upstream_response``, as unparseable JSON does, rather
than a 500; the exception goes to the log, its text to no one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from unimw.adapters.base import Adapter, Target
from unimw.context_window import ContextWindows
from unimw.errors import CircuitOpen, UpstreamError, UpstreamTimeout
from unimw.own_keys import Lease, OwnKeys
from unimw.redaction import Redactor
from unimw.routing import Route, Router
from unimw.wire import JSON, aclose

if TYPE_CHECKING:
    from unimw.breaker import Breakers
    from unimw.policy import Dispatch, Policy

T = TypeVar("T")

logger = logging.getLogger("unimw.dispatch")

#: What a translation raises reading an upstream answer not in the shape its vendor documents.
MISREAD = (AttributeError, KeyError, IndexError, TypeError, ValueError)


#: One upstream request of an operation: ``(adapter, target) -> its answer``.
Ask = Callable[[Adapter, Target], Awaitable[T]]


class Observer(Protocol):
    """Runs one upstream attempt of ``operation`` for ``request``, watching it: ``run(target)`` is the attempt."""

    async def attempt(
        self, operation: str, request: JSON, target: Target, number: int, run: Callable[[Target], Awaitable[T]]
    ) -> T: ...

    def skipped(self, targets: tuple[str, ...]) -> None:
        """``targets`` were left out before any attempt: their context window cannot hold the request."""
        ...

    def moved(self, reason: str) -> None:
        """The call moved on after a 400 for ``reason`` (``context_length_exceeded`` or ``content_filter``)."""
        ...

    def broken(self, targets: tuple[str, ...]) -> None:
        """``targets`` were left out: their circuit breaker is open."""
        ...


class Tally(Protocol):
    """Where a call counts its attempts, so that those of a continuation are numbered after the first ones."""

    attempts: int


class _Unobserved:
    async def attempt(
        self, operation: str, request: JSON, target: Target, number: int, run: Callable[[Target], Awaitable[T]]
    ) -> T:
        return await run(target)

    def skipped(self, targets: tuple[str, ...]) -> None:
        pass

    def moved(self, reason: str) -> None:
        pass

    def broken(self, targets: tuple[str, ...]) -> None:
        pass


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
        stream_timeouts: Mapping[str, StreamTimeouts] | None = None,
        windows: ContextWindows | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self._router = router
        self._windows = windows or ContextWindows()
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
        self._stream_timeouts = stream_timeouts or {}
        #: Circuit breakers of the policy's targets (None: off); a reload hands them to the next dispatcher.
        self.breakers = breakers

    async def complete(
        self,
        route: Route,
        operation: str,
        request: JSON,
        ask: Ask[JSON],
        *,
        credentials: Mapping[str, str] | None = None,
        needs: int | None = None,
    ) -> tuple[Target, JSON]:
        """The answer to ``request`` of the first target that answered, and that target.

        ``ask`` makes one upstream request; ``operation`` and ``request`` are for the observer.
        ``credentials`` are the caller's own keys by provider name, used instead of the policy's.
        ``needs`` is the request's estimated size in tokens, for the context check (None: no check).
        """

        async def attempt(target: Target) -> JSON:
            lease = await self._lease(target, credentials)
            try:
                return await ask(lease.adapter, target)
            except UpstreamError as error:
                lease.redactor.error(error)
                raise
            except MISREAD as error:
                raise misread(error, target.name) from error
            finally:
                await lease.release()

        return await self._first_success(route, operation, request, attempt, credentials, needs)

    async def stream(
        self,
        route: Route,
        operation: str,
        request: JSON,
        ask: Ask[AsyncIterator[JSON]],
        *,
        credentials: Mapping[str, str] | None = None,
        needs: int | None = None,
        tally: Tally | None = None,
    ) -> tuple[Target, AsyncIterator[JSON]]:
        """The chunk stream of the first target that produced a first chunk, and that target.

        Close the stream if it is not read to its end: that closes the upstream and releases its adapter.
        ``tally`` numbers the attempts on from its count, and keeps counting them.
        """

        async def attempt(target: Target) -> AsyncIterator[JSON]:
            limits = self._stream_timeouts.get(target.name, _NO_LIMITS)
            lease = await self._lease(target, credentials)
            chunks: AsyncIterator[JSON] | None = None
            try:
                async with asyncio.timeout(limits.first_token):
                    chunks = await ask(lease.adapter, target)
                    first = await anext(chunks)
            except BaseException as error:
                failure = error
                if isinstance(error, TimeoutError) and limits.first_token is not None:  # the deadline above
                    failure = UpstreamTimeout(f"The upstream sent no first chunk within {limits.first_token:g} s.")
                elif isinstance(error, MISREAD):
                    failure = misread(error, target.name)
                if isinstance(failure, UpstreamError):
                    lease.redactor.error(failure)
                try:
                    if chunks is not None:
                        await aclose(chunks)
                finally:
                    await lease.release()
                if isinstance(error, StopAsyncIteration):
                    raise UpstreamError("The upstream sent an empty stream.", status=502) from None
                if failure is not error:
                    raise failure from None
                raise
            broke = None
            if self.breakers is not None and (credentials is None or target.provider not in credentials):
                broke = self.breakers.failed  # a failure mid-answer counts against the target as one before it
            rest = _rest(first, chunks, lease, limits.stall, target.name, broke)
            await anext(rest)  # primed: from now on closing it releases the lease, even before it is read
            return rest

        return await self._first_success(route, operation, request, attempt, credentials, needs, tally)

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
        needs: int | None,
        tally: Tally | None = None,
    ) -> tuple[Target, T]:
        def own(target: Target) -> bool:
            return credentials is not None and target.provider in credentials

        targets = self._router.order(route, request)
        if needs is not None:
            targets, skipped = self._windows.plan(route, targets, needs)
            if skipped:
                self._observer.skipped(skipped)
        broken: list[str] = []  # targets left out: their breaker is open
        breakers = self.breakers
        if breakers is not None:
            if breakers.shared:  # the process's own store needs no reading: no coroutine per call for it
                await breakers.refresh()
            if breakers.open:
                targets, broken = _unbroken(targets, breakers, own)
                if broken:
                    self._observer.broken(tuple(broken))
        queue = list(self._available(targets, own))
        tried: set[str] = set()
        latency = self._router.latency  # None unless an alias is least_latency
        last_error: UpstreamError | None = None
        number = tally.attempts if tally is not None else 0
        while queue:
            target = queue.pop(0)
            tried.add(target.name)
            has_next = bool(queue)
            # Cooldown is the policy key's standing, shared by every caller: an attempt with the caller's
            # own key neither sets nor clears it, so one tenant's rate limit does not send everyone elsewhere.
            shared = not own(target)
            probe = None  # the breakers, when this attempt is the probe of the target's
            if breakers is not None and shared and target.name in breakers.open:
                if not await breakers.admit(target.name):
                    broken.append(target.name)
                    self._observer.broken(tuple(broken))  # the call's span: every one so far
                    continue
                probe = breakers
            retries = self._retries.get(target.provider, self._settings.retries)
            for tries in range(retries + 1):
                number += 1
                if tally is not None:
                    tally.attempts = number
                started = time.perf_counter() if latency is not None else 0.0
                try:
                    result = await self._observer.attempt(operation, request, target, number, attempt)
                except UpstreamError as error:
                    if not error.retryable:
                        if probe is not None:  # an answer all the same: the target is up
                            await probe.answered(target.name)
                        queue = self._recover(error, route, target, tuple(queue), tried, needs, own)
                        last_error = error
                        break
                    if latency is not None and shared:
                        latency.failed(target.name, time.perf_counter() - started)
                    last_error = error
                    if breakers is not None and shared and await breakers.failed(target.name):
                        self._cool(target, error)
                        break  # open now: no more attempts on it
                    wait = self._wait(error, tries)
                    moves_on = has_next and (
                        isinstance(error, UpstreamTimeout) or (error.status == 429 and not self._waits_here(error))
                    )
                    if wait is None or moves_on or tries == retries:
                        if shared:
                            self._cool(target, error)
                        break
                    await self._sleep(wait)
                else:
                    if latency is not None:  # a stream's attempt ends at its first chunk
                        latency.observe(target.name, time.perf_counter() - started)
                    if shared:
                        self._cool_until.pop(target.name, None)
                    if probe is not None:
                        await probe.answered(target.name)
                    return target, result
        if last_error is None:  # every route has a target: none was tried, as every one's breaker is open
            assert breakers is not None
            raise CircuitOpen(broken, breakers.retry_after(broken))
        raise last_error

    def _recover(
        self,
        error: UpstreamError,
        route: Route,
        failed: Target,
        rest: tuple[Target, ...],
        tried: set[str],
        needs: int | None,
        own: Callable[[Target], bool],
    ) -> list[Target]:
        """The targets a call goes on to after a 400 no retry fixes (see the module docstring); raises ``error``
        when there are none. The failed target is not cooled down: the fault is the request's, not its."""
        targets = self._windows.after(error, route, failed, rest, tried, needs)
        if not targets:
            raise error
        self._observer.moved(error.default_code or "")  # the kind's own code: context_length_exceeded, content_filter
        return list(self._available(targets, own))

    def _waits_here(self, error: UpstreamError) -> bool:
        """A 429 whose Retry-After is short enough (``retry_after_same_target_up_to``) to wait for on its target."""
        limit = self._settings.retry_after_same_target_up_to
        return limit > 0 and error.retry_after is not None and error.retry_after <= limit

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


def misread(error: Exception, target: str) -> UpstreamError:
    """The 502 for an answer of ``target`` its adapter could not read (logged with its traceback, for a look)."""
    logger.warning("unimw: the answer of %s could not be read", target, exc_info=error)
    return UpstreamError(
        f"The upstream's answer could not be read ({type(error).__name__}).",
        status=502,
        code="bad_upstream_response",
    )


def _unbroken(
    targets: tuple[Target, ...], breakers: Breakers, own: Callable[[Target], bool]
) -> tuple[tuple[Target, ...], list[str]]:
    """``targets`` but those whose breaker is open (half-open ones stay, for their probe), and those left out."""
    kept, left = [], []
    for target in targets:
        if not own(target) and breakers.state(target.name) == "open":
            left.append(target.name)
        else:
            kept.append(target)
    return tuple(kept), left


@dataclass(frozen=True, slots=True)
class StreamTimeouts:
    """A target's limits on a stream: the wait for its first chunk, and the silence between two (None: none)."""

    first_token: float | None = None
    stall: float | None = None


_NO_LIMITS = StreamTimeouts()


def stream_timeouts(policy: Policy) -> dict[str, StreamTimeouts]:
    """Each model's stream limits: its own, else its provider's (models with neither are left out)."""
    limits = {}
    for name, model in policy.models.items():
        provider = policy.providers[model.provider]
        first = model.first_token_timeout if model.first_token_timeout is not None else provider.first_token_timeout
        stall = model.stall_timeout if model.stall_timeout is not None else provider.stall_timeout
        if first is not None or stall is not None:
            limits[name] = StreamTimeouts(first, stall)
    return limits


async def _rest(
    first: JSON,
    chunks: AsyncIterator[JSON],
    lease: Lease,
    stall: float | None = None,
    target: str = "",
    broke: Callable[[str], Awaitable[bool]] | None = None,
) -> AsyncIterator[JSON]:
    """A stream from its first chunk on: it redacts the errors of the rest, and closes the upstream and
    releases the adapter's lease however it ends, even when closed before it was read. A retryable
    failure is counted against ``target``'s breaker (``broke``).

    Started (primed) by the dispatcher up to its first ``yield``, so that closing it before the first
    chunk was read still runs the ``finally``. A generator rather than an object with an ``async def
    __anext__``, which made a coroutine per item: 1,000 fewer instructions a chunk (callgrind).
    """
    try:
        yield None  # type: ignore[misc]  # the priming step, never seen by a reader
        yield first
        if stall is None:
            async for chunk in chunks:
                yield chunk
            return
        while True:  # each chunk within ``stall`` of the one before
            try:
                async with asyncio.timeout(stall):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamTimeout(f"The upstream stream stalled for {stall:g} s.") from None
            yield chunk
    except UpstreamError as error:
        lease.redactor.error(error)
        if broke is not None and error.retryable:
            await broke(target)
        raise
    except MISREAD as error:
        failure = misread(error, target)
        if broke is not None:
            await broke(target)
        raise failure from error
    finally:
        try:
            await aclose(chunks)
        finally:
            await lease.release()
