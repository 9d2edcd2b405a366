"""Muon for the hidden matrices, AdamW for everything else, as one ``torch.optim.Optimizer``.

The two inner optimizers own their param groups; this object exposes them all in
``param_groups`` (the same dicts), so LR schedulers, ``zero_grad`` and gradient clipping see every
tensor, and a change to a group's LR reaches the optimizer that steps it.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import torch


class MuonHybrid(torch.optim.Optimizer):
    """``torch.optim.Muon`` on ``muon_groups`` and ``torch.optim.AdamW`` on ``adamw_groups``."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, lr: float,
                 muon_kwargs: dict[str, Any] | None = None, adamw_kwargs: dict[str, Any] | None = None):
        self.muon = torch.optim.Muon(muon_groups, lr=lr, **(muon_kwargs or {})) if muon_groups else None
        if any(p.device.type == "cpu" for g in muon_groups for p in g["params"]) and not native_bf16():
            warn_emulated_bf16()
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, **(adamw_kwargs or {})) if adamw_groups else None
        inner = [o for o in (self.muon, self.adamw) if o is not None]
        super().__init__([p for o in inner for g in o.param_groups for p in g["params"]], {"lr": lr})
        self.param_groups = [g for o in inner for g in o.param_groups]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon and self.muon.state_dict(), "adamw": self.adamw and self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, o in (("muon", self.muon), ("adamw", self.adamw)):
            if o is not None:
                o.load_state_dict(state_dict[key])


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX) rather than emulating them."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@functools.cache
def warn_emulated_bf16() -> None:
    """Once per process: torch's Muon orthogonalises in bf16, which this CPU emulates at ~100x the fp32 cost."""
    warnings.warn("torch.optim.Muon runs its Newton-Schulz iteration in bfloat16, and this CPU has no native bf16 "
                  "(no AVX512-BF16 or AMX), so each step's bf16 matmuls run about 100x slower than fp32 ones; expect "
                  "slow steps on large hidden matrices here (a GPU or a CPU with native bf16 does not have this)",
                  stacklevel=4)
