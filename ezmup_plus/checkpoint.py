"""Checkpoints that carry their plan, so a model is never resumed under another width, depth, parametrization or
conventions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write
from .build import plan_of
from .plan import MupPlan

CHECKED = ("width", "base_width", "depth", "base_depth", "parametrization", "depth_alpha", "conventions")


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra: Any) -> None:
    """``torch.save`` of the model and optimizer state dicts with the plan beside them (as YAML text).

    Written to a temporary file and renamed into place: a crash mid-save keeps the previous checkpoint.
    """
    state = {"model": model.state_dict(), "plan": plan_of(model).to_yaml(), **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Load into a freshly built model (and optimizer) after checking its plan matches the saved one.

    A missing file raises its own ``OSError``; a file that is not a checkpoint of this model is a
    ``ValueError`` that names it and says why.
    """
    state = _read(Path(path))
    saved, ours = MupPlan.from_yaml(state["plan"]), plan_of(model)
    mismatched = [f"{k}: saved {getattr(saved, k)}, model {getattr(ours, k)}" for k in CHECKED
                  if getattr(saved, k) != getattr(ours, k)]
    if mismatched:
        raise ValueError(f"checkpoint {path} was trained under another muP plan ({'; '.join(mismatched)}); build the "
                         "model with the same width, depth, parametrization and conventions before loading")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # same plan numbers, other tensors: another model's checkpoint
        raise ValueError(f"checkpoint {path} does not fit this model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


def _read(path: Path) -> dict:
    """``torch.load(weights_only=True)``, with a truncated or foreign file turned into a message naming it."""
    with open(path, "rb") as fh:  # opened first: a missing or unreadable file keeps the OSError naming it
        try:
            state = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as exc:  # on bytes it cannot read torch.load raises OSError, EOFError, KeyError, ...
            gist = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n|$)", str(exc))  # a page-long message
            raise ValueError(f"{path} cannot be loaded as a checkpoint: it is truncated, not a torch file, or holds "
                             f"objects that weights_only=True does not load ({gist.group(1) if gist else repr(exc)}); "
                             "use a checkpoint.pt written by save_checkpoint ('ezmup-plus train')") from exc
    if not isinstance(state, dict) or "plan" not in state:
        raise ValueError(f"{path} is a torch file without a muP plan, not a checkpoint written by save_checkpoint "
                         "(a plain state dict from 'export' loads with torch.load into the plain factory)")
    return state
