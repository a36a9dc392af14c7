"""Best and median of each figure across several result files: ``python -m bench.summarize a.json b.json``.

"Best" is the lowest value (and lowest added cost and ratio), except for
throughput (req/s) where it is the highest. The ratios to the direct call of
each run are the figures that compare across runs on a machine whose speed
drifts; the runs' commits, commands and load averages are listed first, so a
busy run can be told from a slow build. Files written before the bench
reported ratios have none: their ratio columns stay empty.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def runs(reports: list[tuple[Path, dict[str, Any]]]) -> str:
    """One line a run: file, commit, load average at start and end, command."""
    lines = []
    for path, report in reports:
        meta = report.get("meta", {})
        load = " → ".join(" ".join(f"{x:.2f}" for x in meta[k]) for k in ("loadavg_start", "loadavg_end") if k in meta)
        lines.append(
            f"{path.name}: {meta.get('commit') or '?'}"
            f"{' (modified)' if meta.get('modified') else ''}, load {load or '?'}, {meta.get('command', '?')}"
        )
    return "\n".join(lines)


def summarize(paths: list[Path]) -> str:
    reports = [(path, json.loads(path.read_text())) for path in paths]
    rows: dict[str, dict[str, Any]] = {}
    for _, report in reports:
        for row in report["rows"]:
            entry = rows.setdefault(row["key"], {**row, "values": [], "addeds": [], "ratios": []})
            entry["values"].append(row["value"])
            if row["added"] is not None:
                entry["addeds"].append(row["added"])
            if row.get("ratio") is not None:
                entry["ratios"].append(row["ratio"])
                entry["ratio_of"] = row["ratio_of"]
    head = (
        "figure",
        "unit",
        "best",
        "median",
        "added: best",
        "added: median",
        "ratio: best",
        "ratio: median",
        "ratio of",
        "runs",
        "target",
    )
    lines = [head]
    for entry in rows.values():
        higher_is_better = entry["unit"] == "req/s"
        lines.append(
            (
                entry["label"],
                entry["unit"],
                *_best_median(entry["values"], higher_is_better),
                *_best_median(entry["addeds"], higher_is_better),
                *_best_median(entry["ratios"], higher_is_better),
                entry.get("ratio_of") or "—",
                str(len(entry["values"])),
                entry["target"] or "—",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    left = {0, 8}
    text = [
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return runs(reports) + "\n\n" + "\n".join(text)


def _best_median(values: list[float], higher_is_better: bool) -> tuple[str, str]:
    if not values:
        return "—", "—"
    best = max(values) if higher_is_better else min(values)
    return f"{best:,.2f}", f"{statistics.median(values):,.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.summarize", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="JSON files written by python -m bench.run")
    args = parser.parse_args(argv)
    print(summarize(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
