"""Best-LR drift per optimizer family, SP vs muP: MLP on sklearn's digits (no download), widths 32-512.

    python benchmarks/transfer_families.py --preset cpu
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common import parse_preset, run_transfer

import ezmup_plus as ezp
from ezmup_plus.data import digits
from ezmup_plus.diagnostics import geometric_lrs, random_batches, train
from ezmup_plus.models.mlp import MLP

GRIDS = {"adam": (2**-13, 2**-3), "sgd": (2**-8, 2**2), "adafactor": (2**-10, 2**0), "muon": (2**-10, 2**0)}
PRESETS = {
    "smoke": dict(widths=[32, 64], steps=20, seeds=[0]),
    "cpu": dict(widths=[32, 64, 128, 256, 512], steps=150, seeds=[0]),
    "full": dict(widths=[32, 64, 128, 256, 512, 1024, 2048], steps=1000, seeds=[0, 1, 2]),
}


def main() -> None:
    preset, cfg, args = parse_preset(__doc__.splitlines()[0], PRESETS)
    torch.set_num_threads(1)
    x, y, xv, yv = digits()
    factories = {p: ezp.wrap(MLP, base_width=cfg["widths"][0], parametrization=p, in_features=64, out_features=10)
                 for p in ("sp", "mup")}
    for family, (low, high) in GRIDS.items():
        def run(parametrization, width, depth, lr, seed, family=family):
            torch.manual_seed(seed)
            model = factories[parametrization](width=width)
            opt = ezp.get_mup_optimizer(model, lr=lr, optimizer=family)
            return train(model, opt, random_batches(x, y, 64, seed), F.cross_entropy, cfg["steps"], (xv, yv))

        print(f"--- {family}")
        run_transfer(f"transfer_family_{family}_{preset}", run, parametrizations=("sp", "mup"), widths=cfg["widths"],
                     lrs=geometric_lrs(low, high), seeds=cfg["seeds"], out=args.out, fresh=args.fresh,
                     settings={"preset": preset, "family": family, "steps": cfg["steps"]})


if __name__ == "__main__":
    main()
