"""Char-level GPT on Tiny Shakespeare (the muP reproduction's Transformer experiment): best Adam LR per width.

Base width 32, two pre-LN blocks, head dim 8 (heads grow with width), SP vs muP.
    python benchmarks/transfer_gpt_shakespeare.py --preset cpu
"""

from __future__ import annotations

import torch

from common import parse_preset, run_transfer

import ezmup_plus as ezp
from ezmup_plus.data import lm_batches, lm_loss, load_shakespeare_chars
from ezmup_plus.diagnostics import geometric_lrs, train
from ezmup_plus.models.gpt import GPT

PRESETS = {
    "smoke": dict(widths=[32, 64], lrs=geometric_lrs(2**-10, 2**-5), seeds=[0], steps=30, block=32, batch=8),
    "cpu": dict(widths=[32, 64, 128, 256], lrs=geometric_lrs(2**-11, 2**-4), seeds=[0], steps=200, block=32,
                batch=16),
    "full": dict(widths=[32, 64, 128, 256, 512, 1024], lrs=geometric_lrs(2**-14, 2**-4, 2), seeds=[0, 1, 2],
                 steps=5000, block=256, batch=64),
}


def gpt(width: int, vocab_size: int, block_size: int) -> GPT:
    return GPT(width, depth=2, vocab_size=vocab_size, block_size=block_size, n_head=width // 8)


def main() -> None:
    preset, cfg, args = parse_preset(__doc__.splitlines()[0], PRESETS)
    torch.set_num_threads(1)
    train_ids, val_ids, vocab = load_shakespeare_chars()
    val = next(lm_batches(val_ids, cfg["block"], 64, seed=1234))
    factories = {p: ezp.wrap(gpt, base_width=32, width_multiple=8, parametrization=p, vocab_size=vocab,
                             block_size=cfg["block"]) for p in ("sp", "mup")}

    def run(parametrization, width, depth, lr, seed):
        torch.manual_seed(seed)
        model = factories[parametrization](width=width)
        opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")
        return train(model, opt, lm_batches(train_ids, cfg["block"], cfg["batch"], seed), lm_loss, cfg["steps"], val)

    run_transfer(f"transfer_gpt_shakespeare_{preset}", run, parametrizations=("sp", "mup"), widths=cfg["widths"],
                 lrs=cfg["lrs"], seeds=cfg["seeds"], out=args.out, fresh=args.fresh,
                 settings={"preset": preset, **{k: v for k, v in cfg.items() if k != "lrs"}})


if __name__ == "__main__":
    main()
