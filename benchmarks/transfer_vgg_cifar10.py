"""VGG11 on CIFAR-10 (the muP reproduction's CNN experiment): best Adam LR per width multiplier, SP vs muP.

Base VGG11(4): stages of 4, 8, 16 and 32 channels, a head of 20 with dropout 0.5; Adam, batch 32, no
augmentation; minimum training loss and final validation loss per (width, LR) over seeds.
    python benchmarks/transfer_vgg_cifar10.py --preset cpu
"""

from __future__ import annotations

from vision import main

from ezmup_plus.diagnostics import geometric_lrs
from ezmup_plus.models import VGG11

PRESETS = {
    "smoke": dict(widths=[4, 8], lrs=geometric_lrs(2**-11, 2**-10), seeds=[0], steps=3, batch=8, val=64),
    "cpu": dict(widths=[4, 8, 16], lrs=geometric_lrs(2**-12, 2**-7), seeds=[0, 1], steps=200, batch=32, val=512),
    "full": dict(widths=[4 * m for m in (1, 2, 4, 8, 16, 32, 64, 128)], lrs=geometric_lrs(2**-16, 2**-6, 2),
                 seeds=[0, 1, 2], steps=50000, batch=32, val=10000, device="cuda", needs_full_set=True),
}

if __name__ == "__main__":
    main(__doc__.splitlines()[0], PRESETS, "transfer_vgg_cifar10", VGG11, base_width=4)
