"""The main job: a small but real muTransfer demonstration on data that needs no download.

An MLP on scikit-learn's bundled 8x8 digits, trained with Adam over a geometric LR grid at several
widths, once in standard parametrization (SP) and once in muP. Under muP the best learning rate
stays put as the width grows; under SP it moves. Prints the table, writes the plot.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ezmup_plus as ezp
from ezmup_plus.data import digits
from ezmup_plus.diagnostics import analyse, geometric_lrs, lr_sweep, plot_sweep, random_batches, train, transfer_table
from ezmup_plus.models.mlp import MLP


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="ezmup-plus demo", description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--lr-range", type=float, nargs=2, default=[2**-13, 2**-3], metavar=("LOW", "HIGH"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # tiny models: one thread is faster than two on a 2-core machine
    x_train, y_train, x_val, y_val = digits()
    base = args.widths[0]
    factories = {p: ezp.wrap(MLP, base_width=base, parametrization=p, in_features=64, out_features=10)
                 for p in ("sp", "mup")}

    def run(parametrization: str, width: int, depth: int | None, lr: float, seed: int):
        torch.manual_seed(seed)
        model = factories[parametrization](width=width)
        opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")
        return train(model, opt, random_batches(x_train, y_train, 64, seed), F.cross_entropy, args.steps,
                     (x_val, y_val))

    start = time.perf_counter()
    print(ezp.wrap(MLP, base_width=base, in_features=64, out_features=10).plan(width=args.widths[-1]))
    runs = lr_sweep(run, widths=args.widths, lrs=geometric_lrs(*args.lr_range), seeds=args.seeds)
    transfers = [analyse(runs, p) for p in ("sp", "mup")]
    print(f"\nbest Adam learning rate per width (base width {base}, validation loss on held-out digits):")
    print(transfer_table(transfers))
    plot = plot_sweep(runs, args.out / "demo_lr_sweep.png", title="MLP on digits, Adam", transfers=transfers)
    print(f"\nplot: {plot}   ({time.perf_counter() - start:.0f} s)")
    return {t.parametrization: t for t in transfers}


if __name__ == "__main__":
    main()
