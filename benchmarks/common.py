"""Shared plumbing of the transfer benchmarks: presets, the sweep, the table, JSON and PNG output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
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
    by_train = [analyse([dataclasses.replace(r, val_loss=r.min_train_loss) for r in runs], p, axis=axis)
                for p in parametrizations]
    train_table = transfer_table(by_train, axis=axis)
    grid = loss_grid(runs, axis)
    print(f"best LR by the minimum training loss instead:\n{train_table}\n{format_grid(grid, axis)}")
    summary = {
        "benchmark": name,
        "settings": settings or {},
        "seeds": sorted({r.seed for r in runs}),
        "seconds": seconds,  # training time of the run that wrote this file (runs reused from the JSONL are free)
        "table": table,
        "results": {t.parametrization: t.to_dict() for t in transfers},
        "table_by_min_train_loss": train_table,
        "results_by_min_train_loss": {t.parametrization: t.to_dict() for t in by_train},
        "grid": grid,
    }
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    plot = plot_sweep(runs, out / f"{name}.png", axis=axis, title=name, transfers=transfers)
    print(f"wrote {out / f'{name}.json'} and {plot}")
    return summary


def loss_grid(runs: Sequence[Run], axis: str = "width") -> list[dict]:
    """Per (parametrization, scale, LR): mean and standard deviation over seeds of the minimum training loss
    and of the final validation loss, of the runs that did not diverge, and how many diverged."""
    cells: dict[tuple, list[Run]] = {}
    for r in runs:
        cells.setdefault((r.parametrization, getattr(r, axis), r.lr), []).append(r)
    rows = []
    for (p, scale, lr), group in sorted(cells.items(), key=lambda item: (item[0][0] != "sp", *item[0])):  # SP first
        ok = [r for r in group if not r.diverged]
        row = {"parametrization": p, axis: scale, "log2_lr": math.log2(lr), "seeds": len(group),
               "diverged": len(group) - len(ok)}
        for field in ("min_train_loss", "val_loss"):
            values = [getattr(r, field) for r in ok]
            row[field] = statistics.fmean(values) if values else None
            row[f"{field}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def format_grid(grid: Sequence[dict], axis: str = "width") -> str:
    """One line per (parametrization, scale): 'min train / val' loss, mean+-sd over the seeds that did not
    diverge, at each grid LR; (k): k seeds diverged; x: all did."""
    lrs = sorted({row["log2_lr"] for row in grid})
    lines = {}
    for row in grid:
        lines.setdefault((row["parametrization"], row[axis]), {})[row["log2_lr"]] = _cell(row)
    cells = [[f"{p}", str(scale)] + [line.get(x, "-") for x in lrs] for (p, scale), line in lines.items()]
    head = ["param", axis] + [f"2^{x:g}" for x in lrs]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
    text = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *cells]]
    return "\n".join(["min training loss / validation loss per LR, mean+-sd over seeds; (k): k seeds diverged, "
                      "x: all did", *text])


def _cell(row: dict) -> str:
    if row["min_train_loss"] is None:
        return "x"
    sd = lambda v: "" if v is None else f"+-{v:.2f}"  # noqa: E731
    diverged = f" ({row['diverged']})" if row["diverged"] else ""
    return (f"{row['min_train_loss']:.2f}{sd(row['min_train_loss_sd'])} / {row['val_loss']:.2f}"
            f"{sd(row['val_loss_sd'])}{diverged}")
