"""Timing loops, statistics, figures with targets, and the printed table."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: A call to time as a whole.
Call = Callable[[], Awaitable[object]]
#: A call that times itself (e.g. to the first byte) and returns µs.
Probe = Callable[[], Awaitable[float]]


@dataclass(frozen=True)
class Stats:
    """Latency of one contender in µs: p50/p90/p99 over all samples, best and median of the per-round p50s."""

    n: int
    p50: float
    p90: float
    p99: float
    best: float
    median: float
    rounds: tuple[float, ...]

    @classmethod
    def of(cls, rounds: list[list[float]]) -> Stats:
        samples = sorted(x for r in rounds for x in r)
        per_round = tuple(percentile(sorted(r), 50) for r in rounds if r)
        return cls(
            n=len(samples),
            p50=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            best=min(per_round),
            median=statistics.median(per_round),
            rounds=per_round,
        )


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class Plan:
    """How much to measure: rounds of ``count`` calls, each round stopped after ``seconds``."""

    rounds: int
    count: int
    warmup: int
    seconds: float

    def scaled(self, factor: float) -> Plan:
        return Plan(self.rounds, max(1, int(self.count * factor)), max(1, int(self.warmup * factor)), self.seconds)


async def _run_round(call: Call | Probe, count: int, seconds: float, probe: bool) -> list[float]:
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)
    out: list[float] = []
    for _ in range(count):
        if probe:
            out.append(await call())  # type: ignore[arg-type]
            if clock() > deadline:
                break
            continue
        start = clock()
        await call()
        end = clock()
        out.append((end - start) / 1000)
        if end > deadline:
            break
    return out


async def contest(calls: Mapping[str, Call | Probe], plan: Plan, *, probe: bool = False) -> dict[str, Stats]:
    """Time each contender in interleaved rounds, so drift of the machine hits all of them alike.

    The order alternates from round to round to cancel out any advantage of
    going first (a warm cache, a sleeping core).
    """
    for call in calls.values():
        for _ in range(plan.warmup):
            await call()
    rounds: dict[str, list[list[float]]] = {name: [] for name in calls}
    names = list(calls)
    for i in range(plan.rounds):
        for name in names if i % 2 == 0 else reversed(names):
            gc.collect()
            rounds[name].append(await _run_round(calls[name], plan.count, plan.seconds, probe))
    return {name: Stats.of(r) for name, r in rounds.items()}


#: What a target bounds: the figure, what it adds to its baseline, or its ratio to the reference.
Bound = Literal["value", "added", "ratio"]


@dataclass(frozen=True)
class Target:
    """A bound on a figure's value, on what it adds to its baseline, or on its ratio (``on``)."""

    op: str  # "<=" or ">="
    limit: float
    text: str
    on: Bound = "value"

    def met(self, value: float, added: float | None, ratio: float | None) -> bool | None:
        subject = {"value": value, "added": added, "ratio": ratio}[self.on]
        if subject is None:
            return None
        return subject <= self.limit if self.op == "<=" else subject >= self.limit


@dataclass
class Figure:
    """One row of the table: a measured value, maybe against a baseline, maybe with a target.

    The machine this runs on is shared and its speed drifts from day to day,
    so each figure that can be is also a ratio to a reference measured in the
    same run (the direct call, as a rule): ``added / reference`` when
    ``ratio_on`` is ``"added"`` (the default: what unimw adds, as a share of
    the direct call), ``value / reference`` when it is ``"value"`` (throughput,
    CPU per request, import time). The reference is the baseline unless one
    is given.
    """

    key: str
    label: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str | None = None
    target: Target | None = None
    note: str | None = None
    reference: float | None = None
    reference_label: str | None = None
    ratio_on: Literal["added", "value"] = "added"

    @property
    def added(self) -> float | None:
        return None if self.baseline is None else self.value - self.baseline

    @property
    def _reference(self) -> tuple[float | None, str | None]:
        if self.reference is not None:
            return self.reference, self.reference_label
        return self.baseline, self.baseline_label

    @property
    def ratio(self) -> float | None:
        reference, _ = self._reference
        numerator = self.added if self.ratio_on == "added" else self.value
        # A reference of zero or less (an added time lost in noise) would make the ratio meaningless.
        if numerator is None or reference is None or reference <= 0:
            return None
        return numerator / reference

    @property
    def ratio_of(self) -> str | None:
        """What the ratio divides by what, for a reader of the table."""
        if self.ratio is None:
            return None
        return f"{'added' if self.ratio_on == 'added' else 'measured'} / {self._reference[1]}"

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.added, self.ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "baseline": self.baseline,
            "baseline_label": self.baseline_label,
            "added": self.added,
            "reference": self._reference[0] if self.ratio is not None else None,
            "ratio": self.ratio,
            "ratio_of": self.ratio_of,
            "target": self.target.text if self.target else None,
            "target_on": self.target.on if self.target else None,
            "met": self.met,
            "note": self.note,
        }


@dataclass(frozen=True)
class Skipped:
    """A figure this run could not measure, and why (a missing feature, tool or package)."""

    key: str
    label: str
    reason: str


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    series: dict[str, Stats] = field(default_factory=dict)

    def add(self, items: list[Figure | Skipped]) -> None:
        for item in items:
            (self.figures if isinstance(item, Figure) else self.skipped).append(item)  # type: ignore[arg-type]

    def to_json(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        figures: dict[str, float] = {}
        for f in self.figures:
            figures[f.key] = f.value
            if f.added is not None:
                figures[f.key + ".added"] = f.added
            if f.ratio is not None:
                figures[f.key + ".ratio"] = f.ratio
        return {
            "meta": dict(meta),
            "figures": figures,
            "rows": [f.to_dict() for f in self.figures],
            "series": {name: asdict(s) for name, s in self.series.items()},
            "skipped": [asdict(s) for s in self.skipped],
        }


def fmt(value: float | None, unit: str, signed: bool = False) -> str:
    if value is None:
        return "—"
    digits = 0 if abs(value) >= 100 or unit == "req/s" else 1 if abs(value) >= 10 or unit != "ms" else 2
    return f"{value:{'+' if signed else ''},.{digits}f} {unit}".rstrip()


def fmt_ratio(figure: Figure) -> str:
    """``+0.23x`` for what is added over the reference, ``0.23x`` for the figure over it."""
    ratio = figure.ratio
    if ratio is None:
        return "—"
    digits = 2 if abs(ratio) < 10 else 1
    return f"{ratio:{'+' if figure.ratio_on == 'added' else ''}.{digits}f}x"


def table(results: Results) -> str:
    """The figures, the per-contender latency statistics and the skipped figures, as text."""
    head = ("figure", "measured", "baseline", "added", "ratio", "ratio of", "target", "met?")
    rows = [
        (
            f.label,
            fmt(f.value, f.unit),
            f"{fmt(f.baseline, f.unit)} ({f.baseline_label})" if f.baseline is not None else "—",
            fmt(f.added, f.unit, signed=True),
            fmt_ratio(f),
            f.ratio_of or "—",
            f.target.text if f.target else "—",
            {True: "yes", False: "NO", None: "—"}[f.met],
        )
        for f in results.figures
    ]
    out = [_grid(head, rows, left=frozenset({0, 5}))]
    if results.series:
        stats_head = ("latency series (µs)", "n", "p50", "p90", "p99", "best p50", "median p50")
        stats_rows = [
            (name, str(s.n), *(f"{v:,.1f}" for v in (s.p50, s.p90, s.p99, s.best, s.median)))
            for name, s in results.series.items()
        ]
        out.append(_grid(stats_head, stats_rows))
    if results.skipped:
        out.append("\n".join(f"skipped  {s.label}: {s.reason}" for s in results.skipped))
    return "\n\n".join(out)


def _grid(head: tuple[str, ...], rows: Sequence[tuple[str, ...]], left: frozenset[int] = frozenset({0})) -> str:
    """Columns padded to their widest cell: text in ``left`` columns to the left, numbers to the right."""
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (head, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
