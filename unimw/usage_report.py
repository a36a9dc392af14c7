"""Spend reports: usage records grouped and summed, and the limits a tenant's store counters are read against.

Records are read one line at a time, so a usage file of any size is summed
in the memory its groups take. Money is summed as integer micro-dollars
(each record's ``cost_usd`` rounded to the micro-dollar, then added), so a
total is exactly the sum of its groups and never drifts the way float sums do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from unimw.plans import Rules, layered
from unimw.policy import Policy
from unimw.usage import MICRO
from unimw.wire import loads

#: Record fields a report can group by, besides ``tag:<key>``.
FIELDS = ("tenant", "plan", "model", "end_user", "provider", "operation")
TAG = "tag:"
#: The group of a record without the field or tag (so groups always add up to the total).
MISSING = "-"

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def group_key(text: str) -> str:
    """A ``--by`` key, checked: a record field or ``tag:<key>``; ValueError names the choices."""
    if text in FIELDS or (text.startswith(TAG) and len(text) > len(TAG)):
        return text
    raise ValueError(f"cannot group by {text!r}: use one of {', '.join(FIELDS)} or tag:<key>")


def instant(text: str, now: float) -> float:
    """Seconds since the epoch for ``2026-11-01T00:00:00Z`` (no zone: UTC) or a span back from ``now``
    (``90m``, ``12h``, ``7d``, ``2w``); ValueError otherwise."""
    if match := _RELATIVE.match(text):
        try:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])}).total_seconds()
        except OverflowError:
            raise ValueError(f"{text!r} reaches further back than dates go") from None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a time (2026-11-01T00:00:00Z) nor a span back (7d, 12h)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def usd(micros: int) -> float:
    """Micro-dollars as USD: the nearest float, which prints as the exact micro-dollar amount."""
    return micros / MICRO


def format_usd(micros: int) -> str:
    """Micro-dollars as ``1,234.567890``: every digit kept, no float in between."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICRO)
    return f"{sign}{whole:,}.{frac:06d}"


@dataclass(slots=True)
class Totals:
    """What a group of calls used. ``errors`` counts status ``error`` (a cancelled call is the caller's doing)."""

    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0

    def add(self, other: Totals) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_micros += other.cost_micros

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": usd(self.cost_micros),
        }


@dataclass(slots=True)
class Report:
    """Records summed per group (the values of the ``by`` keys, in order), with their total."""

    by: tuple[str, ...]
    groups: dict[tuple[str, ...], Totals] = field(default_factory=dict)
    total: Totals = field(default_factory=Totals)
    malformed: int = 0  #: lines that were not usage records, skipped
    first_malformed: int | None = None  #: line number of the first of them

    def sorted_groups(self) -> list[tuple[tuple[str, ...], Totals]]:
        """Dearest first; groups of equal cost by their values, so the order never depends on the file's."""
        return sorted(self.groups.items(), key=lambda item: (-item[1].cost_micros, item[0]))

    def as_json(self) -> dict[str, Any]:
        return {
            "groups": [
                {"by": dict(zip(self.by, values, strict=True)), **totals.as_json()}
                for values, totals in self.sorted_groups()
            ],
            "total": self.total.as_json(),
        }


@dataclass(frozen=True, slots=True)
class _Record:
    """The fields of one usage line that a report reads."""

    values: dict[str, str | None]
    tags: dict[str, Any]
    timestamp: float
    totals: Totals


def _text_or_none(line: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = line.get(name, default)
    if value is not None and not isinstance(value, str):
        raise TypeError(name)
    return value


def _whole(line: dict[str, Any], name: str) -> int:
    value = line[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(name)
    return value


def _number(line: dict[str, Any], name: str) -> float:
    value = line[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(name)
    return float(value)


def _parse(text: bytes | str) -> _Record:
    """One JSONL line as a record; ValueError, TypeError or KeyError when it is not one.

    Fields added to records over time (``operation``, ``plan``, ``tags``)
    may be missing, so older files still read.
    """
    line = loads(text)
    if not isinstance(line, dict):
        raise TypeError("not an object")
    tags = line.get("tags") or {}
    if not isinstance(tags, dict):
        raise TypeError("tags")
    model = line["model"]
    status = line["status"]
    if not isinstance(model, str) or not isinstance(status, str):
        raise TypeError("model or status")
    values = {
        "tenant": _text_or_none(line, "tenant"),
        "plan": _text_or_none(line, "plan"),
        "model": model,
        "end_user": _text_or_none(line, "end_user"),
        "provider": _text_or_none(line, "provider"),
        "operation": _text_or_none(line, "operation", "chat"),
    }
    totals = Totals(
        calls=1,
        errors=int(status == "error"),
        input_tokens=_whole(line, "input_tokens"),
        output_tokens=_whole(line, "output_tokens"),
        cost_micros=round(_number(line, "cost_usd") * MICRO),
    )
    return _Record(values, tags, _number(line, "timestamp"), totals)


def summarize(
    lines: Iterable[bytes | str],
    by: Sequence[str] = ("tenant",),
    *,
    since: float | None = None,
    until: float | None = None,
    tenant: str | None = None,
) -> Report:
    """Sum the records among ``lines`` per group of ``by`` keys (see :func:`group_key`).

    Only records from ``since`` (inclusive) to ``until`` (exclusive) count,
    and only ``tenant``'s when it is given. Blank lines are ignored; any
    other line that is not a record is counted as malformed and skipped.
    """
    keys = tuple(dict.fromkeys(by))  # a key given twice is one column
    report = Report(keys)
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = _parse(text)
        except (ValueError, TypeError, KeyError):
            report.malformed += 1
            if report.first_malformed is None:
                report.first_malformed = number
            continue
        if (since is not None and record.timestamp < since) or (until is not None and record.timestamp >= until):
            continue
        if tenant is not None and record.values["tenant"] != tenant:
            continue
        values = tuple(_value(record, key) for key in keys)
        group = report.groups.get(values)
        if group is None:
            group = report.groups[values] = Totals()
        group.add(record.totals)
        report.total.add(record.totals)
    return report


def _value(record: _Record, key: str) -> str:
    value = record.tags.get(key[len(TAG) :]) if key.startswith(TAG) else record.values[key]
    return MISSING if value is None else str(value)


_COLUMNS = ("calls", "errors", "input_tokens", "output_tokens", "cost_usd")


def render_table(report: Report) -> str:
    """The report as aligned text: one row per group, dearest first, then the total."""

    def cells(totals: Totals) -> list[str]:
        counts = (totals.calls, totals.errors, totals.input_tokens, totals.output_tokens)
        return [f"{n:,}" for n in counts] + [format_usd(totals.cost_micros)]

    rows = [[*report.by, *_COLUMNS]]
    rows += [[*values, *cells(totals)] for values, totals in report.sorted_groups()]
    rows.append(["total", *[""] * (len(report.by) - 1), *cells(report.total)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    labels = len(report.by)
    lines = []
    for row in rows:
        padded = [
            cell.ljust(width) if i < labels else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


class UnknownTenant(LookupError):
    """A tenant whose limits the policy cannot say: undeclared with no plan, or on a plan it does not have."""


def tenant_rules(policy: Policy, tenant: str, plan: str | None = None) -> Rules:
    """The rules (plan and limits) ``tenant`` is held to; UnknownTenant if the policy cannot say.

    A declared tenant has its plan's limits with its own over them. A
    tenant the app names but the policy does not declare has the limits of
    ``plan``, else of ``tenancy.default_plan``; overrides the app gives it
    per call are not in the policy, so they are not here either.
    """
    declared = policy.tenants.get(tenant)
    if declared is not None:
        if plan is not None and plan != declared.plan:
            raise UnknownTenant(f"tenant {tenant!r} is declared on plan {declared.plan!r}, not {plan!r}")
        return layered(declared.plan, policy.plans.get(declared.plan or ""), declared, None)
    plan = plan or policy.tenancy.default_plan
    if plan is None:
        raise UnknownTenant(
            f"no tenant {tenant!r}, and no tenancy.default_plan to give it limits: name one with --plan"
        )
    if plan not in policy.plans:
        raise UnknownTenant(f"no plan {plan!r} in the policy")
    return layered(plan, policy.plans[plan], None, None)


def limit_json(what: str, used: float, limit: float) -> dict[str, Any]:
    """One row of :meth:`Limiter.report <unimw.limits.Limiter.report>` (``what`` is ``<quantity> per <window>``)
    as JSON: requests and tokens as whole numbers, USD as USD."""
    quantity, _, per = what.partition(" per ")
    amounts: tuple[int, int, int] | tuple[float, float, float]
    if quantity == "usd":
        # Counters hold micro-dollars: rounding back to them undoes the float division that made USD.
        spent, cap = round(used * MICRO), round(limit * MICRO)
        amounts = (usd(spent), usd(cap), usd(max(0, cap - spent)))
    else:
        amounts = (int(used), int(limit), max(0, int(limit) - int(used)))
    return {"quantity": quantity, "per": per, **dict(zip(("used", "limit", "remaining"), amounts, strict=True))}
