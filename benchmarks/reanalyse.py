"""Analyse committed transfer benchmarks again from their saved runs: JSON, table and PNG, no training.

    python benchmarks/reanalyse.py                                            # every transfer_*.jsonl
    python benchmarks/reanalyse.py transfer_mlp_california_cpu --by-seeds    # and the drift at 2, 3, ... seeds
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

from common import RESULTS, report

from ezmup_plus.diagnostics import Run, analyse, read_runs


def drift_by_seed_count(runs: Sequence[Run], parametrizations: Sequence[str], axis: str) -> str:
    """The drift and its interval on the first k seeds, for each k: how fast more seeds narrow it."""
    labels = sorted({r.seed for r in runs})
    lines = []
    for k in range(2, len(labels) + 1):
        subset = [r for r in runs if r.seed in labels[:k]]
        cells = []
        for t in (analyse(subset, p, axis=axis) for p in parametrizations):
            low, high = t.drift_interval or (math.nan, math.nan)
            bounds = f"[{low:.2f}, {high:.2f}], {high - low:.2f} wide"
            cells.append(f"{t.parametrization} ({t.seeds} seeds) {t.drift:.2f} {bounds}")
        lines.append(f"{k} seeds: " + "; ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmark names (default: every transfer_*.jsonl in --out)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--by-seeds", action="store_true",
                        help="also print the drift with its interval on the first 2, 3, ... seeds")
    args = parser.parse_args()
    for name in args.names or sorted(p.stem for p in args.out.glob("transfer_*.jsonl")):
        runs = read_runs(args.out / f"{name}.jsonl")
        summary = args.out / f"{name}.json"
        previous = json.loads(summary.read_text()) if summary.exists() else {}
        axis = "depth" if len({r.depth for r in runs}) > 1 else "width"
        parametrizations = list(dict.fromkeys(r.parametrization for r in runs))
        print(f"--- {name}")
        report(name, runs, parametrizations, axis=axis, out=args.out, settings=previous.get("settings"),
               seconds=previous.get("seconds"))
        if args.by_seeds:
            print(drift_by_seed_count(runs, parametrizations, axis))


if __name__ == "__main__":
    main()
