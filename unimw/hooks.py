"""The policy's user callables, run off the response path.

A budget alert hook is the app's own code (a Slack message, an e-mail, a
database write): it may be slow, and it may raise. Neither may hold a
response back or turn a call that was answered and charged into an error,
so each hook runs on the next turn of the event loop, its failure logged,
an async hook's task kept until it ends (and awaited by :meth:`aclose`).
Usage records have their own queue (:mod:`unimw.records`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from unimw.limits import BudgetAlert
from unimw.notation import load_callable

if TYPE_CHECKING:
    from unimw.policy import Policy

logger = logging.getLogger("unimw.hooks")


class Hooks:
    """Delivers budget alerts to the log and to the policy's ``tenancy.alerts.call``."""

    def __init__(self, policy: Policy) -> None:
        path = policy.tenancy.alerts.call
        self._alert_hook: Callable[[BudgetAlert], Any] | None = load_callable(path) if path else None
        self._tasks: set[asyncio.Task[Any]] = set()

    def budget_alert(self, alert: BudgetAlert) -> None:
        logger.warning(
            "unimw: %s reached %d%% of its %s limit (%s of %s)",
            alert.tenant or alert.counter,
            round(alert.threshold * 100),
            alert.quantity,
            alert.used,
            alert.limit,
        )
        if self._alert_hook is not None:
            asyncio.get_running_loop().call_soon(self._run, self._alert_hook, alert)

    def _run(self, hook: Callable[[BudgetAlert], Any], alert: BudgetAlert) -> None:
        try:
            result = hook(alert)
        except Exception:
            logger.exception("unimw: the budget alert hook failed for %s", alert.counter)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("unimw: the budget alert hook failed", exc_info=error)

    async def aclose(self) -> None:
        """Wait for the hooks still running (a hook scheduled but not started runs first)."""
        await asyncio.sleep(0)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
