"""Checkpoints that carry their plan, so a model is never resumed under another width, depth or parametrization."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .build import plan_of
from .plan import MupPlan

CHECKED = ("width", "base_width", "depth", "base_depth", "parametrization", "depth_alpha")


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra: Any) -> None:
    """``torch.save`` of the model and optimizer state dicts with the plan beside them (as YAML text)."""
    state = {"model": model.state_dict(), "plan": plan_of(model).to_yaml(), **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, path)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load into a freshly built model (and optimizer) after checking its plan matches the saved one."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, ours = MupPlan.from_yaml(state["plan"]), plan_of(model)
    mismatched = [f"{k}: saved {getattr(saved, k)}, model {getattr(ours, k)}" for k in CHECKED
                  if getattr(saved, k) != getattr(ours, k)]
    if mismatched:
        raise ValueError(f"checkpoint {path} was trained under another muP plan ({'; '.join(mismatched)}); build the "
                         "model with the same width, depth and parametrization before loading")
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state
