"""Best-LR drift SP vs muP for a small mixture of experts: an MLP whose hidden layer is 4 experts of (w, 4w)
and (4w, w) behind a softmax router, on sklearn's digits (no download), Adam, widths 32 up.

    python benchmarks/transfer_moe.py --preset cpu
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common import parse_preset, run_transfer

import ezmup_plus as ezp
from ezmup_plus.data import digits
from ezmup_plus.diagnostics import geometric_lrs, random_batches, train

PRESETS = {
    "smoke": dict(widths=[32, 64], steps=20, seeds=[0]),
    "cpu": dict(widths=[32, 64, 128, 256], steps=150, seeds=[0, 1, 2]),
}


class MoEMLP(nn.Module):
    """Features, then a residual mixture of experts (every example through every expert, weighted by the router)."""

    def __init__(self, width: int, experts: int = 4):
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.router = nn.Linear(width, experts, bias=False)
        self.w_up = nn.Parameter(torch.randn(experts, width, 4 * width) / width**0.5)
        self.w_down = nn.Parameter(torch.randn(experts, 4 * width, width) / (4 * width) ** 0.5)
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        gates = self.router(h).softmax(-1)
        up = torch.relu(torch.einsum("bw,ewf->bef", h, self.w_up))
        return self.out(h + torch.einsum("bef,efw,be->bw", up, self.w_down, gates))


def main() -> None:
    preset, cfg, args = parse_preset(__doc__.splitlines()[0], PRESETS)
    torch.set_num_threads(1)
    x, y, xv, yv = digits()
    factories = {p: ezp.wrap(MoEMLP, base_width=cfg["widths"][0], parametrization=p) for p in ("sp", "mup")}

    def run(parametrization, width, depth, lr, seed):
        torch.manual_seed(seed)
        model = factories[parametrization](width=width)
        opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")
        return train(model, opt, random_batches(x, y, 64, seed), F.cross_entropy, cfg["steps"], (xv, yv))

    run_transfer(f"transfer_moe_{preset}", run, parametrizations=("sp", "mup"), widths=cfg["widths"],
                 lrs=geometric_lrs(2**-13, 2**-3), seeds=cfg["seeds"], out=args.out, fresh=args.fresh,
                 settings={"preset": preset, "steps": cfg["steps"], "experts": 4})


if __name__ == "__main__":
    main()
