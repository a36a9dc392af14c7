"""Usage records as rows of the app's database, written in batches by a thread of their own.

The gateway's recorder hands each record over off the response path; the
ORM is synchronous, so the rows are written by a background thread with
``bulk_create`` (everything queued at that moment, up to ``BATCH`` rows per
statement) and never on an event loop. A policy's own ``usage.call`` still
gets every record: :func:`with_sink` chains it.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unimw.notation import load_callable
from unimw.records import UsageRecord

if TYPE_CHECKING:
    from unimw.policy import Policy

logger = logging.getLogger("unimw.django")

BATCH = 500

#: The sink records go to; set by :func:`with_sink` (one runtime per process).
_active: tuple[DatabaseSink, Callable[[UsageRecord], Any] | None] | None = None


def deliver(record: UsageRecord) -> Any:
    """The policy's ``usage.call`` while the Django sink is on: queue the row, then the app's own callable."""
    if _active is None:
        return None
    sink, forward = _active
    sink.put(record)
    return forward(record) if forward is not None else None


def with_sink(policy: Policy, sink: DatabaseSink) -> Policy:
    """``policy`` with its usage records also going to ``sink``."""
    global _active
    forward = load_callable(policy.usage.call) if policy.usage.call else None
    _active = (sink, forward)
    usage = policy.usage.model_copy(update={"call": f"{__name__}:deliver"})
    return policy.model_copy(update={"usage": usage})


class DatabaseSink:
    """Rows for usage records, written by one thread in batches; :meth:`flush` waits for them."""

    def __init__(self, database: str = "default") -> None:
        self._database = database
        self._queue: queue.Queue[UsageRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="unimw-usage-rows", daemon=True)
        self._thread.start()

    def put(self, record: UsageRecord) -> None:
        self._queue.put_nowait(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record put so far is written (or failed); False if ``timeout`` passed first."""
        done = self._queue.all_tasks_done
        deadline = time.monotonic() + timeout
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put_nowait(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        from django import db

        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                records = [r for r in batch if r is not None]
                try:
                    if records:
                        self._write(records)
                except Exception:
                    logger.exception("unimw: usage rows not written; %d record(s) lost", len(records))
                finally:
                    db.close_old_connections()
                    for _ in batch:
                        self._queue.task_done()
                if len(records) < len(batch):
                    return
        finally:
            db.connections.close_all()

    def _write(self, records: list[UsageRecord]) -> None:
        from unimw.django.models import UsageRecord as Row

        Row.objects.using(self._database).bulk_create([row(r) for r in records], batch_size=BATCH)


def row(record: UsageRecord) -> Any:
    """The unsaved model instance for ``record``."""
    from django.conf import settings

    from unimw.django.models import UsageRecord as Row

    at = datetime.datetime.fromtimestamp(record.timestamp, tz=datetime.UTC)
    if not settings.USE_TZ:
        at = at.replace(tzinfo=None)
    return Row(
        at=at,
        **{name: getattr(record, name) for name in Row.RECORD_FIELDS},
    )
