"""Train a Hugging Face GPT-2 (small config, no download) with transformers.Trainer and a muP optimizer.

The only muP lines are the factory wrap and get_mup_optimizer; Trainer gets the optimizer and a
scheduler through ``optimizers=(opt, scheduler)`` and keeps the per-tensor learning rates.
    python examples/hf_trainer.py --width 128 --steps 20
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import Trainer, TrainingArguments

import ezmup_plus as ezp
from ezmup_plus.models.hf import gpt2


class CountingTokens(torch.utils.data.Dataset):
    """Sequences that count up from a random start (mod the vocabulary): learnable in a few steps, no download."""

    def __init__(self, n: int = 256, length: int = 32, vocab: int = 65):
        start = torch.randint(0, vocab, (n, 1), generator=torch.Generator().manual_seed(0))
        self.ids = (start + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    model = ezp.wrap(gpt2, base_width=32, width_multiple=4)(width=args.width)
    opt = ezp.get_mup_optimizer(model, lr=args.lr, optimizer="adamw", weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 5))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(output_dir=args.out or tmp, max_steps=args.steps, per_device_train_batch_size=8,
                                   logging_steps=1, report_to=[], save_strategy="no", use_cpu=True),
            train_dataset=CountingTokens(),
            optimizers=(opt, scheduler),
        )
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps")
    return losses


if __name__ == "__main__":
    main()
