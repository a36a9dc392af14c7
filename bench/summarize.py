"""Best and median of each figure across several result files: ``python -m bench.summarize a.json b.json``.

"Best" is the lowest value (and lowest added cost), except for throughput (req/s) where it is the highest.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def summarize(paths: list[Path]) -> str:
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            entry = rows.setdefault(row["key"], {**row, "values": [], "addeds": []})
            entry["values"].append(row["value"])
            if row["added"] is not None:
                entry["addeds"].append(row["added"])
    head = ("figure", "unit", "best", "median", "added: best", "added: median", "runs", "target")
    lines = [head]
    for entry in rows.values():
        higher_is_better = entry["unit"] == "req/s"
        lines.append(
            (
                entry["label"],
                entry["unit"],
                *_best_median(entry["values"], higher_is_better),
                *_best_median(entry["addeds"], higher_is_better),
                str(len(entry["values"])),
                entry["target"] or "—",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


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
