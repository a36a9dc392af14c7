"""Usage records: one per settled call, delivered to sinks off the response path.

Records are queued and written by a background task, so a slow sink (a
file on a busy disk, a callable that posts to a billing system) never holds
a response back. ``aclose`` drains the queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unimw import _read_as_unimw
from unimw.notation import load_callable
from unimw.wire import dumps

if TYPE_CHECKING:
    from unimw.policy import UsageSinks

logger = logging.getLogger("unimw.records")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one call used and cost."""

    request_id: str
    tenant: str | None
    end_user: str | None
    model: str  #: public name the caller asked for
    provider: str | None  #: provider that answered (None if none did)
    upstream_model: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: float
    latency_ms: float
    cache_hit: bool
    status: str  #: ``ok``, ``error`` or ``cancelled``
    stream: bool
    timestamp: float
    operation: str = "chat"  #: ``gen_ai.operation.name`` of the call (``chat``, ...)
    plan: str | None = None  #: the tenant's plan, when it is on one
    tags: dict[str, str] = field(default_factory=dict)  #: from the request's metadata and X-Unimw-Tags
    rerouted_from: str | None = None  #: the name asked for, when a plan's on_budget sent the call elsewhere
    cache_write_tokens: int = 0  #: input tokens written to the vendor's prompt cache (``cached_tokens`` were read)
    arm: str | None = None  #: the target a sticky weighted alias placed the caller on (its experiment arm)


class Recorder:
    """Fans records out to the policy's sinks from one background task."""

    def __init__(self, sinks: UsageSinks) -> None:
        self._call: Callable[[UsageRecord], Any] | None = load_callable(sinks.call) if sinks.call else None
        self._jsonl = sinks.jsonl
        self._queue: asyncio.Queue[UsageRecord] | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._call is not None or self._jsonl is not None

    def record(self, record: UsageRecord) -> None:
        if not self.enabled:
            return
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._drain(self._queue))
        self._queue.put_nowait(record)

    async def _drain(self, queue: asyncio.Queue[UsageRecord]) -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._deliver(batch)
            except Exception:
                logger.exception("unimw: a usage sink failed; %d record(s) lost", len(batch))
            finally:
                for _ in batch:
                    queue.task_done()

    async def _deliver(self, batch: list[UsageRecord]) -> None:
        if self._jsonl is not None:
            lines = b"".join(dumps(dataclasses.asdict(r)) + b"\n" for r in batch)
            await asyncio.to_thread(_append, self._jsonl, lines)
        if self._call is not None:
            for record in batch:
                result = self._call(record)
                if inspect.isawaitable(result):
                    await result

    async def flush(self) -> None:
        """Wait until every record queued so far is delivered."""
        if self._queue is not None and self._worker is not None and not self._worker.done():
            await self._queue.join()

    async def aclose(self) -> None:
        await self.flush()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


# Loaded with the first policy or gateway, maybe after unimw's names were first read: its public names (and
# those of the modules it loaded) read as unimw's too, as those loaded with ``from unimw import Gateway`` do.
_read_as_unimw()
