"""A model written the microsoft/mup way, converted back to a plain model plus ``ezmup_plus.wrap``.

Before: ``MuReadout``, ``set_base_shapes`` with base and delta models, ``MuAdamW``. After: an ``nn.Linear``
readout and two ezmup_plus lines. With ``conventions="microsoft_mup"`` both train identically from the same
weights (drop the option for ezmup_plus's own conventions). Needs ``pip install --no-deps mup``.
    python examples/migrate_from_mup.py
"""

from __future__ import annotations

import mup
import torch
import torch.nn.functional as F
from torch import nn

import ezmup_plus as ezp

BASE_WIDTH, WIDTH, LR, WEIGHT_DECAY, STEPS = 32, 256, 3e-3, 0.1, 10


class MuNet(nn.Module):
    """Before: the readout is a MuReadout, its output_mult a tuned hyperparameter."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, width), nn.Linear(width, width)
        self.out = mup.MuReadout(width, 10, output_mult=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def microsoft_mup_model(width: int) -> MuNet:
    model = MuNet(width)
    return mup.set_base_shapes(model, MuNet(BASE_WIDTH), delta=MuNet(2 * BASE_WIDTH))


class Net(nn.Module):
    """After: plain PyTorch. output_mult stays in the model; MuReadout's 1/width_mult is ezmup_plus's job."""

    def __init__(self, width: int, output_mult: float = 2.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, width), nn.Linear(width, width)
        self.out = nn.Linear(width, 10)
        self.output_mult = output_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.output_mult * torch.relu(self.fc2(torch.relu(self.fc1(x)))))


factory = ezp.wrap(Net, base_width=BASE_WIDTH, conventions="microsoft_mup")


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = STEPS) -> list[float]:
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 10, (32,), generator=g)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(width: int = WIDTH) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    before = microsoft_mup_model(width)
    after = factory(width=width)
    after.load_state_dict(before.state_dict())  # the same starting weights, to show the same run
    losses_before = train(before, mup.MuAdamW(before.parameters(), lr=LR, weight_decay=WEIGHT_DECAY))
    losses_after = train(after, ezp.get_mup_optimizer(after, lr=LR, optimizer="adamw", weight_decay=WEIGHT_DECAY))
    for step, (a, b) in enumerate(zip(losses_before, losses_after)):
        print(f"step {step}: microsoft/mup {a:.6f}  ezmup_plus {b:.6f}")
    return losses_before, losses_after


if __name__ == "__main__":
    main()
