"""Shared by the CIFAR-10 transfer benchmarks (VGG11, ViT): the data, one training run, the presets' command line."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from common import parse_preset, run_transfer

import ezmup_plus as ezp
from ezmup_plus.data import Cifar10, load_cifar10
from ezmup_plus.diagnostics import train


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
    return run_transfer(full_name, run, parametrizations=("sp", "mup"), widths=cfg["widths"], lrs=cfg["lrs"],
                        seeds=cfg["seeds"], out=out, fresh=fresh, settings=settings)


def main(doc: str, presets: dict[str, dict], name: str, factory: Callable, base_width: int,
         width_multiple: int = 1) -> dict:
    """A benchmark's command line: ``--preset``, ``--out``, ``--fresh``, ``--seeds`` (see ``common.parse_preset``)."""
    preset, cfg, args = parse_preset(doc, presets)
    torch.set_num_threads(1)  # small models: faster on one thread of a shared 2-core machine
    data = load_cifar10()
    print(data.described)
    return sweep(name, preset, cfg, wrapped(factory, base_width, width_multiple), data, args.out, args.fresh)
