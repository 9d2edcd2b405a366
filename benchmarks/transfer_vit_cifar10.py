"""ViT on CIFAR-10 (the muP reproduction's vision-transformer experiment): best Adam LR per width, SP vs muP.

Base ViT(32): patch size 4, six pre-LN blocks, eight heads (the head size grows with the width, so muP
scales the attention logits by 1/d_head), MLP expansion 1, dropout 0.1, sinusoidal positions, a class
token; Adam, batch 32, no augmentation; minimum training loss and final validation loss per (width, LR).
    python benchmarks/transfer_vit_cifar10.py --preset cpu
"""

from __future__ import annotations

from vision import main

from ezmup_plus.diagnostics import geometric_lrs
from ezmup_plus.models import ViT

PRESETS = {
    "smoke": dict(widths=[32, 64], lrs=geometric_lrs(2**-11, 2**-10), seeds=[0], steps=2, batch=8, val=32),
    "cpu": dict(widths=[32, 64, 128], lrs=geometric_lrs(2**-12, 2**-7), seeds=[0, 1], steps=60, batch=32, val=256),
    "full": dict(widths=[32 * m for m in (1, 2, 4, 8, 16, 32, 64, 128)], lrs=geometric_lrs(2**-16, 2**-6, 2),
                 seeds=[0, 1, 2], steps=50000, batch=32, val=10000, device="cuda", needs_full_set=True),
}

if __name__ == "__main__":
    main(__doc__.splitlines()[0], PRESETS, "transfer_vit_cifar10", ViT, base_width=32, width_multiple=8)
