"""The factory's own init, which muP's init is relative to: base stds, and the TP5 zero-inits.

Base stds are measured on throwaway CPU builds at the base width and depth, pooled until even a
small tensor's std is about 1% accurate; the caller's RNG is left as it was.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .attention import query_params
from .roles import Role
from .trace import ShapeTable
from .usage import AttentionSite

ZERO_INITS = ("readout", "query")


def init_stds(builds: Iterable[nn.Module]) -> dict[str, float | None]:
    """Each tensor's init std, pooled over independent builds; None for constants (zeros, ones, ...).

    Pooling matters for small base tensors (a readout of 16 weights): their std sets the scale of
    the same tensor at every target width, so it is measured on enough draws to be ~1% accurate.
    """
    variances: dict[str, list[float]] = {}
    constant: dict[str, bool] = {}
    for model in builds:
        for name, p in model.named_parameters():
            x = p.detach().float().flatten()
            constant[name] = constant.get(name, True) and (x.numel() < 2 or bool((x == x[0]).all()))
            variances.setdefault(name, []).append(float(x.var()) if x.numel() > 1 else 0.0)
    return {name: None if constant[name] else math.sqrt(sum(v) / len(v)) for name, v in variances.items()}


def draws_needed(model: nn.Module, names: set[str], samples: int = 1 << 16, most: int = 256) -> int:
    """How many builds give each of ``names`` at least ``samples`` values (at most ``most`` builds)."""
    smallest = min((p.numel() for n, p in model.named_parameters() if n in names), default=samples)
    return max(1, min(most, -(-samples // smallest)))


def base_stds(factory: Callable[..., nn.Module], kwargs: Mapping,
              roles: Mapping[str, Role]) -> tuple[dict[str, float | None], int]:
    """The factory's own init at ``kwargs`` (base width and depth), pooled over seeded throwaway CPU builds;
    also how many builds that took."""
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(0)  # the plan is a function of the factory alone, not of the caller's RNG state
        first = factory(**kwargs)
        draws = draws_needed(first, {n for n, r in roles.items() if r.role in ("hidden", "output")})
        return init_stds(itertools.chain([first], (factory(**kwargs) for _ in range(draws - 1)))), draws


def zero_init_targets(table: ShapeTable, roles: Mapping[str, Role], zero_init: Sequence[str],
                      sites: Mapping[str, AttentionSite] | None) -> frozenset[str]:
    """Parameter templates that ``zero_init`` starts at zero (TP5: the readout, the query projection).

    ``sites`` are the attention computations of the traced forward (None: the forward was not traced).
    """
    names: set[str] = set()
    if "readout" in zero_init:
        readout = {n for n, r in roles.items() if r.role == "output" and len(table.params[n].dims) >= 2}
        if not readout:
            raise ValueError("zero_init=['readout']: no untied readout matrix found (a readout tied to the input "
                             "embedding cannot start at zero)")
        names |= readout
    if "query" in zero_init:
        if sites is None:
            raise ValueError("zero_init=['query'] needs a forward pass on meta: pass example_inputs=... to wrap")
        names |= query_params(table, sites)
    return frozenset(table.template(n) for n in names)
