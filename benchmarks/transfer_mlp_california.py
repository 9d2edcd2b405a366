"""MLP on California Housing (the muP reproduction's regression experiment): best Adam LR per width, SP vs muP.

Two hidden layers, base width 16, Adam without weight decay, batch 16, a geometric LR grid. Where
microsoft's ``mup`` package imports, it is a third arm ("mup_pkg": MuReadout, set_base_shapes, MuAdam)
on the same model and data.
    python benchmarks/transfer_mlp_california.py --preset cpu
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common import parse_preset, run_transfer

import ezmup_plus as ezp
from ezmup_plus.data import load_california_housing
from ezmup_plus.diagnostics import geometric_lrs, random_batches, train
from ezmup_plus.models.mlp import MLP

PRESETS = {
    "smoke": dict(widths=[16, 64], lrs=geometric_lrs(2**-10, 2**-4), seeds=[0], steps=100),
    "cpu": dict(widths=[16, 32, 64, 128, 256], lrs=geometric_lrs(2**-13, 2**-3), seeds=[0, 1], steps=2000),
    "full": dict(widths=[16, 32, 64, 128, 256, 512, 1024, 2048], lrs=geometric_lrs(2**-14, 2**-2, 2),
                 seeds=[0, 1, 2, 3, 4], steps=20000),
}


def has_microsoft_mup() -> bool:
    try:
        import mup  # noqa: F401
    except ImportError:
        return False
    return True


def microsoft_mup(width: int, lr: float):
    """The same MLP in microsoft/mup: readout swapped for MuReadout, shapes set against base width 16."""
    from mup import MuAdam, MuReadout, set_base_shapes

    def build(w):
        model = MLP(w, in_features=8, out_features=1)
        model.readout = MuReadout(w, 1)
        return model

    model = build(width)
    with torch.random.fork_rng():
        base, delta = build(16), build(32)
    set_base_shapes(model, base, delta=delta)
    return model, MuAdam(model.parameters(), lr=lr)


def main() -> None:
    preset, cfg, args = parse_preset(__doc__.splitlines()[0], PRESETS)
    torch.set_num_threads(1)  # small models: faster on one thread of a shared 2-core machine
    x, y, xv, yv = load_california_housing()
    factories = {p: ezp.wrap(MLP, base_width=16, parametrization=p, in_features=8, out_features=1)
                 for p in ("sp", "mup")}

    def run(parametrization, width, depth, lr, seed):
        torch.manual_seed(seed)
        if parametrization == "mup_pkg":
            model, opt = microsoft_mup(width, lr)
        else:
            model = factories[parametrization](width=width)
            opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")
        return train(model, opt, random_batches(x, y, 16, seed), F.mse_loss, cfg["steps"], (xv, yv))

    arms = ("sp", "mup", "mup_pkg") if has_microsoft_mup() else ("sp", "mup")
    run_transfer(f"transfer_mlp_california_{preset}", run, parametrizations=arms, widths=cfg["widths"],
                 lrs=cfg["lrs"], seeds=cfg["seeds"], out=args.out, fresh=args.fresh,
                 settings={"preset": preset, "steps": cfg["steps"], "batch": 16, "optimizer": "adam"})


if __name__ == "__main__":
    main()
