"""Shared by the CIFAR-10 transfer benchmarks (VGG11, ViT): data, one training run, and the per-(width, LR)
table of minimum training and validation loss over seeds that the muP reproduction reports."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from common import parse_preset, run_transfer

import ezmup_plus as ezp
from ezmup_plus.data import Cifar10, load_cifar10
from ezmup_plus.diagnostics import Run, analyse, read_runs, train, transfer_table


def to(batches, device):
    """The batches on ``device`` (the full preset's GPU)."""
    for x, y in batches:
        yield x.to(device), y.to(device)


def wrapped(factory: Callable, base_width: int, width_multiple: int = 1) -> dict:
    """The SP and muP factories of one model: the same analysis, two parametrizations."""
    return {p: ezp.wrap(factory, base_width=base_width, width_multiple=width_multiple, parametrization=p)
            for p in ("sp", "mup")}


def sweep(name: str, preset: str, cfg: dict, factories: dict, data: Cifar10, out: Path, fresh: bool = False) -> dict:
    """The sweep of one preset (SP and muP, Adam, no augmentation), then the tables; returns the JSON written."""
    device = "cuda" if cfg.get("device") == "cuda" and torch.cuda.is_available() else "cpu"
    if cfg.get("needs_full_set") and len(data.x_train) < 50000:
        print(f"note: preset {preset} is the seed's protocol on the full 50,000 training images; this copy has "
              f"{len(data.x_train):,}")
    val = tuple(t[: cfg["val"]].to(device) for t in (data.x_test, data.y_test))

    def run(parametrization, width, depth, lr, seed):
        torch.manual_seed(seed)
        model = factories[parametrization](width=width, device=device)
        opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")
        return train(model, opt, to(data.batches(cfg["batch"], seed), device), F.cross_entropy, cfg["steps"], val)

    full_name = f"{name}_{preset}"
    settings = {"preset": preset, "data": data.described, "optimizer": "adam", "augment": False,
                **{k: v for k, v in cfg.items() if k != "lrs"}}
    summary = run_transfer(full_name, run, parametrizations=("sp", "mup"), widths=cfg["widths"], lrs=cfg["lrs"],
                           seeds=cfg["seeds"], out=out, fresh=fresh, settings=settings)
    grid = {(p, w, lr, s) for p in ("sp", "mup") for w in cfg["widths"] for lr in cfg["lrs"] for s in cfg["seeds"]}
    runs = [r for r in read_runs(out / f"{full_name}.jsonl") if (r.parametrization, r.width, r.lr, r.seed) in grid]
    return add_grid(out / f"{full_name}.json", runs, summary)


def main(doc: str, presets: dict[str, dict], name: str, factory: Callable, base_width: int,
         width_multiple: int = 1) -> dict:
    """A benchmark's command line: ``--preset``, ``--out``, ``--fresh``, ``--seeds`` (see ``common.parse_preset``)."""
    preset, cfg, args = parse_preset(doc, presets)
    torch.set_num_threads(1)  # small models: faster on one thread of a shared 2-core machine
    data = load_cifar10()
    print(data.described)
    return sweep(name, preset, cfg, wrapped(factory, base_width, width_multiple), data, args.out, args.fresh)


def add_grid(path: Path, runs: list[Run], summary: dict) -> dict:
    """Add to the benchmark's JSON (and print) the per-(width, LR) losses and the best LR judged by the minimum
    training loss instead of the validation loss."""
    grid = loss_grid(runs)
    by_train = [analyse([dataclasses.replace(r, val_loss=r.min_train_loss) for r in runs], p) for p in ("sp", "mup")]
    print(format_grid(grid))
    print("best LR by minimum training loss:")
    print(transfer_table(by_train))
    summary = {**summary, "runs": len(runs), "grid": grid,
               "results_by_min_train_loss": {t.parametrization: t.to_dict() for t in by_train},
               "table_by_min_train_loss": transfer_table(by_train)}
    path.write_text(json.dumps(summary, indent=2))
    return summary


def loss_grid(runs: list[Run]) -> list[dict]:
    """Per (parametrization, width, LR): mean and standard deviation over seeds of the minimum training loss
    and of the final validation loss, over the runs that did not diverge, and how many diverged."""
    cells: dict[tuple, list[Run]] = {}
    for r in runs:
        cells.setdefault((r.parametrization, r.width, r.lr), []).append(r)
    rows = []
    for (p, width, lr), group in sorted(cells.items()):
        ok = [r for r in group if not r.diverged]
        row = {"parametrization": p, "width": width, "lr": lr, "log2_lr": math.log2(lr), "seeds": len(group),
               "diverged": len(group) - len(ok)}
        for field in ("min_train_loss", "val_loss"):
            values = [getattr(r, field) for r in ok]
            row[field] = statistics.fmean(values) if values else None
            row[f"{field}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


def format_grid(grid: list[dict]) -> str:
    """One line per (parametrization, width): 'min train / val' mean +- sd over seeds at each LR, x = diverged."""
    lrs = sorted({row["log2_lr"] for row in grid})
    lines = ["min training loss / validation loss, mean +- sd over seeds (x: every seed diverged, "
             "(k): k seeds diverged)", "param  width  " + "  ".join(f"{'log2 LR ' + format(x, '.1f'):>23}"
                                                                   for x in lrs)]
    lines_by = {}
    for row in grid:
        lines_by.setdefault((row["parametrization"] != "sp", row["parametrization"], row["width"]), {})[
            row["log2_lr"]] = row
    for (_, p, width), cells in sorted(lines_by.items()):
        text = []
        for x in lrs:
            row = cells.get(x)
            text.append(f"{_cell(row):>23}")
        lines.append(f"{p:<5}  {width:>5}  " + "  ".join(text))
    return "\n".join(lines)


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["min_train_loss"] is None:
        return "x"
    sd = lambda v: f"+-{v:.2f}" if v is not None else ""  # noqa: E731
    div = f"({row['diverged']})" if row["diverged"] else ""
    return f"{row['min_train_loss']:.2f}{sd(row['min_train_loss_sd'])}/{row['val_loss']:.2f}{sd(row['val_loss_sd'])}{div}"
