"""How fast each target has been lately, for ``strategy: least_latency``.

Per target, a decaying average (an EWMA: each sample moves it by
:data:`WEIGHT` of the way) of its recent latency: the time to the first
chunk for a stream, the whole call otherwise, as the dispatcher measures
each attempt. A retryable failure counts against its target as a sample of
:data:`PENALTY` times the slowest average known, so a failing target drops
behind the healthy ones and comes back as it answers again.

The order puts targets never measured first (in the alias's order), then
the others by their average. So that a target that was slow and recovered
is seen again, one that has not been tried for an alias's ``probe_after``
is put first once (exploration by time, not by chance: at most one slow
call per target and interval, whatever the traffic).

The figures are the process's own; with a Redis store
(:class:`~unimw.stores.latency.RedisLatency`), every sample is also sent
to it in a task off the response path, one round trip for the samples
gathered meanwhile, and its answer (every target's shared figures)
replaces the process's: replicas then order by what all of them saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from unimw.adapters.base import Target

logger = logging.getLogger("unimw.latency")

#: How far one sample moves a target's average: 0.3 of the way.
WEIGHT = 0.3
#: A failure counts as a sample this many times the slowest average known (or its own duration, if longer).
PENALTY = 2.0


@dataclass(frozen=True, slots=True)
class Figure:
    """What is known of one target's latency."""

    average: float  #: seconds, decaying
    samples: int
    at: float  #: when it was last sampled (seconds since the epoch)
    failed_at: float | None = None  #: when it last failed


#: One sample: (target, seconds, failed).
Sample = tuple[str, float, bool]


class SharedLatency(Protocol):
    """Where replicas pool their samples (:class:`~unimw.stores.latency.RedisLatency`)."""

    async def push(self, samples: list[Sample], now: float) -> dict[str, Figure]:
        """Add ``samples`` to the shared averages; every target's shared figures after."""
        ...

    async def read(self) -> dict[str, Figure]: ...

    async def aclose(self) -> None: ...


class LatencyBook:
    """The latency figures of the targets of ``least_latency`` aliases (``tracked``), and their order.

    ``clock`` is seconds since the epoch (the gateway's); durations are measured by the dispatcher.
    """

    def __init__(self, tracked: Iterable[str], clock: Callable[[], float], shared: SharedLatency | None = None) -> None:
        self.tracked = frozenset(tracked)
        self._clock = clock
        self._shared = shared
        self.figures: dict[str, Figure] = {}
        #: When each target was last tried or probed: a probe counts at once, so concurrent calls make one.
        self._tried: dict[str, float] = {}
        self._pending: list[Sample] = []
        self._pushing: asyncio.Task[None] | None = None
        self._unshared = False  #: the last push failed (and said so)

    def observe(self, name: str, seconds: float) -> None:
        """An attempt on ``name`` answered (its first chunk, for a stream) after ``seconds``."""
        if name in self.tracked:
            self._add(name, seconds, False)

    def failed(self, name: str, seconds: float) -> None:
        """An attempt on ``name`` failed, after ``seconds``, in a way another attempt might not."""
        if name in self.tracked:
            slowest = max((figure.average for figure in self.figures.values()), default=seconds)
            self._add(name, max(seconds, PENALTY * slowest), True)

    def _add(self, name: str, sample: float, failed: bool) -> None:
        now = self._clock()
        known = self.figures.get(name)
        if known is None:
            average, samples, failed_at = sample, 1, None
        else:
            average, samples, failed_at = (
                known.average + WEIGHT * (sample - known.average),
                known.samples + 1,
                known.failed_at,
            )
        self.figures[name] = Figure(average, samples, now, now if failed else failed_at)
        self._tried[name] = now
        if self._shared is not None:
            self._pending.append((name, sample, failed))
            if self._pushing is None or self._pushing.done():
                self._pushing = asyncio.get_running_loop().create_task(self._push())

    def order(self, targets: tuple[Target, ...], probe_after: float) -> tuple[Target, ...]:
        """``targets``, the fastest lately first: never measured ones before all, one due a probe first."""
        figures = self.figures
        ranked = sorted(targets, key=lambda t: figure.average if (figure := figures.get(t.name)) else -1.0)
        if ranked[0].name not in figures or len(ranked) < 2:
            return tuple(ranked)
        now = self._clock()
        due = min(ranked[1:], key=lambda t: self._tried.get(t.name, 0.0))
        if now - self._tried.get(due.name, 0.0) < probe_after:
            return tuple(ranked)
        self._tried[due.name] = now
        return (due, *(t for t in ranked if t is not due))

    def due(self, name: str, probe_after: float) -> bool:
        """Whether ``name`` would be probed now (for explanations: nothing is marked)."""
        return self._clock() - self._tried.get(name, 0.0) >= probe_after

    def merge(self, figures: Mapping[str, Figure]) -> None:
        """Take the shared figures (they hold this process's samples too)."""
        for name, figure in figures.items():
            if name in self.tracked:
                self.figures[name] = figure
                self._tried[name] = max(self._tried.get(name, 0.0), figure.at)

    async def _push(self) -> None:
        assert self._shared is not None
        while self._pending:
            samples, self._pending = self._pending, []
            try:
                self.merge(await self._shared.push(samples, self._clock()))
            except Exception as error:  # the figures stay this process's own until the store answers again
                if not self._unshared:  # once per outage, not once per batch
                    logger.warning("unimw: latency figures not shared (%s: %s)", type(error).__name__, error)
                self._unshared = True
            else:
                self._unshared = False

    async def flush(self) -> None:
        """Wait until every sample so far has been sent to the shared store."""
        while self._pushing is not None and not self._pushing.done():
            await asyncio.shield(self._pushing)

    async def aclose(self) -> None:
        await self.flush()
        if self._shared is not None:
            await self._shared.aclose()
