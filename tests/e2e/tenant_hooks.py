"""Callables a test policy names by "module:function"."""

from __future__ import annotations

from typing import Any

from unimw.limits import BudgetAlert

alerts: list[BudgetAlert] = []


def tenant_from_scope(scope: dict[str, Any]) -> str | None:
    """The host app's own auth, as a tenant source: here, an organisation header."""
    for name, value in scope.get("headers", []):
        if name == b"x-user-org":
            return str(value.decode())
    return None


def record_alert(alert: BudgetAlert) -> None:
    alerts.append(alert)


async def record_alert_later(alert: BudgetAlert) -> None:
    """An async alert hook, as a real one posting to a chat or billing system would be."""
    alerts.append(alert)


def broken_sink(record: object) -> None:
    raise RuntimeError("the billing system is down")


async def tenant_from_scope_async(scope: dict[str, Any]) -> str | None:
    """The same, as an async function (an auth lookup that awaits a database, say)."""
    return tenant_from_scope(scope)


records: list[object] = []


def record_usage(record: object) -> None:
    records.append(record)


def broken_alert(alert: BudgetAlert) -> None:
    raise RuntimeError("the chat webhook is down")
