"""Best Adam LR across depths at fixed width: SP vs depth-muP (alpha 1/2) vs CompleteP (alpha 1).

Char-level GPT on Tiny Shakespeare, width 64 (head dim 8), base depth 2.
    python benchmarks/transfer_depth.py --preset cpu
"""

from __future__ import annotations

import torch

from common import parse_preset, run_transfer

import ezmup_plus as ezp
from ezmup_plus.data import lm_batches, lm_loss, load_shakespeare_chars
from ezmup_plus.diagnostics import geometric_lrs, train
from ezmup_plus.models.gpt import GPT

PRESETS = {
    "smoke": dict(depths=[2, 4], lrs=geometric_lrs(2**-9, 2**-5), steps=20, block=32, batch=8, seeds=[0]),
    "cpu": dict(depths=[2, 4, 8, 16], lrs=geometric_lrs(2**-11, 2**-4), steps=200, block=32, batch=16,
                seeds=[0]),
    "full": dict(depths=[2, 4, 8, 16, 32, 64], lrs=geometric_lrs(2**-14, 2**-4, 2), steps=5000, block=256,
                 batch=64, seeds=[0]),
}
PARAMETRIZATIONS = ("sp", "depth_mup", "completep")


def gpt(width: int, depth: int, vocab_size: int, block_size: int) -> GPT:
    return GPT(width, depth=depth, vocab_size=vocab_size, block_size=block_size, n_head=width // 8)


def main() -> None:
    preset, cfg, args = parse_preset(__doc__.splitlines()[0], PRESETS)
    torch.set_num_threads(1)
    train_ids, val_ids, vocab = load_shakespeare_chars()
    val = next(lm_batches(val_ids, cfg["block"], 64, seed=1234))
    factories = {p: ezp.wrap(gpt, base_width=64, base_depth=2, width_multiple=8, parametrization=p,
                             vocab_size=vocab, block_size=cfg["block"]) for p in PARAMETRIZATIONS}

    def run(parametrization, width, depth, lr, seed):
        torch.manual_seed(seed)
        model = factories[parametrization](width=width, depth=depth)
        opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")
        return train(model, opt, lm_batches(train_ids, cfg["block"], cfg["batch"], seed), lm_loss, cfg["steps"], val)

    run_transfer(f"transfer_depth_{preset}", run, parametrizations=PARAMETRIZATIONS, widths=[64],
                 depths=cfg["depths"], lrs=cfg["lrs"], seeds=cfg["seeds"], axis="depth", out=args.out,
                 fresh=args.fresh,
                 settings={"preset": preset, **{k: v for k, v in cfg.items() if k != "lrs"}})


if __name__ == "__main__":
    main()
