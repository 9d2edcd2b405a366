"""Shared plumbing of the transfer benchmarks: presets, the sweep, the table, JSON and PNG output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ezmup_plus.diagnostics import Run, analyse, lr_sweep, plot_sweep, transfer_table  # noqa: E402

RESULTS = ROOT / "docs" / "results"


def parse_preset(description: str, presets: dict[str, dict]) -> tuple[str, dict, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(presets), default="smoke")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--fresh", action="store_true", help="ignore runs already in the JSONL file")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds instead of the preset's (runs already in the JSONL file are reused)")
    args = parser.parse_args()
    preset = presets[args.preset]
    return args.preset, {**preset, "seeds": args.seeds} if args.seeds else preset, args


def run_transfer(
    name: str,
    train_fn: Callable,
    *,
    parametrizations: Sequence[str],
    widths: Sequence[int],
    lrs: Sequence[float],
    seeds: Sequence[int],
    depths: Sequence[int | None] = (None,),
    axis: str = "width",
    out: Path = RESULTS,
    fresh: bool = False,
    settings: dict | None = None,
) -> dict:
    """Sweep, print the transfer table, write ``<name>.json`` (+ the resumable ``.jsonl``) and ``<name>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{name}.jsonl"
    if fresh and jsonl.exists():
        jsonl.unlink()
    start = time.perf_counter()
    runs = lr_sweep(train_fn, widths=widths, lrs=lrs, seeds=seeds, parametrizations=parametrizations,
                    depths=depths, jsonl_path=jsonl)
    return report(name, runs, parametrizations, axis=axis, out=out, settings=settings,
                  seconds=round(time.perf_counter() - start, 1))


def report(name: str, runs: Sequence[Run], parametrizations: Sequence[str], *, axis: str, out: Path,
           settings: dict | None, seconds: float) -> dict:
    """Analyse the runs: print the table, write ``<name>.json`` and ``<name>.png`` (no training)."""
    transfers = [analyse(runs, p, axis=axis) for p in parametrizations]
    table = transfer_table(transfers, axis=axis)
    print(table)
    summary = {
        "benchmark": name,
        "settings": settings or {},
        "seeds": sorted({r.seed for r in runs}),
        "seconds": seconds,  # training time of the run that wrote this file (runs reused from the JSONL are free)
        "table": table,
        "results": {t.parametrization: t.to_dict() for t in transfers},
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    plot = plot_sweep(runs, out / f"{name}.png", axis=axis, title=name, transfers=transfers)
    print(f"wrote {out / f'{name}.json'} and {plot}")
    return summary
