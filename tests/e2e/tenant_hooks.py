"""Callables a test policy names by "module:function"."""

from __future__ import annotations

from typing import Any

from unimw.identity import Identity
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


#: The plans of the app's customers, by customer number (an app would read them from its own table).
PLANS = ("free", "pro", "enterprise")


def org_identity(scope: dict[str, Any]) -> Identity | None:
    """An app's resolver for customers it keeps itself: ``X-Org: <prefix>:<n>`` is customer n.

    Every 1000th customer (n % 1000 == 7) has bought a bigger hourly quota than its plan's.
    """
    for name, value in scope.get("headers", []):
        if name == b"x-org":
            prefix, _, number = value.decode().partition(":")
            n = int(number)
            bigger = [{"per": "hour", "requests": 5}] if n % 1000 == 7 else []
            return Identity(f"{prefix}-{n}", plan=PLANS[n % 3], limits=bigger)  # type: ignore[arg-type]
    return None
