"""Plain checkpoints out: fold a muP model's forward multipliers into its weights.

A muP model computes the plain factory's function with a few extra multipliers: output hooks
(residual branches without a weight of their own, a tied readout's 1/m_w), input hooks (a readout
in MuReadout's form) and the attention logit factor (through a ``scaling`` attribute or the query
rows). Each is linear in the weight (and bias) of the module it multiplies, so it folds into them
exactly; the result loads into the plain factory at the same width and depth, for inference or for
fine-tuning in standard parametrization.
"""

from __future__ import annotations

import torch
from torch import nn

from .build import plan_of, planned_module, row_scale
from .trace import parameter_layout
from .usage import RowBlocks

# where a module's output features live in its weight and bias (the dim that the output's last dim indexes)
OUTPUT_DIM = {"Linear": 0, "Conv1D": 1, "Embedding": 1, "LayerNorm": 0, "RMSNorm": 0, "LlamaRMSNorm": 0,
              "MultiheadAttention": 0}  # its in_proj_weight and bias: the attention factor's query rows
CHANNEL_FIRST = {"Conv1d": 0, "Conv2d": 0, "Conv3d": 0}  # output channels: foldable only as a whole


def export_standard(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for the plain factory at the model's width and depth, computing the same function.

    The model is left as it is. Where a multiplier cannot be folded exactly (a tied readout, whose
    weight is also the input embedding; a hook on a module with no weight of its own), a ValueError
    names every such tensor or module and says why.
    """
    plan = plan_of(model)
    module = planned_module(model)
    modules = dict(module.named_modules())
    state = {name: t.detach().clone() for name, t in module.state_dict().items()}
    shared = _shared_names(module)
    problems = [f"the queries of {name} come from no module found in the trace: its logit factor "
                f"{a.factor:.4g} has no weight to go into" for name, a in plan.attention.items() if a.query is None]
    folds = [(name, scale, None) for name, scale in plan.multipliers.items()]
    folds += [(a.query, a.factor, a.rows) for a in plan.attention.values()
              if a.query is not None and a.via != "fold"]  # a folded factor is in the weights already
    for name, scale, rows in folds:
        problem = _fold(state, name, modules.get(name), scale, rows, shared)
        if problem:
            problems.append(problem)
    for name, scale in plan.input_multipliers.items():  # a multiplier on the input goes into the weight alone
        problem = _fold_input(state, name, scale, shared)
        if problem:
            problems.append(problem)
    if problems:
        raise ValueError("export_standard cannot fold every muP multiplier exactly:\n  " + "\n  ".join(problems))
    return state


def _fold(state: dict[str, torch.Tensor], name: str, module: nn.Module | None, scale: float,
          rows: RowBlocks | None, shared: dict[str, list[str]]) -> str | None:
    """Multiply the output features ``rows`` of ``module`` by ``scale`` in ``state``; a reason if it cannot."""
    kind = type(module).__name__
    prefix = f"{name}." if name else ""
    owned = [prefix + p for p, _ in module.named_parameters(recurse=False)] if module is not None else []
    if module is None or not owned:
        return (f"{name or 'the root module'} multiplies its output by {scale:.4g} but owns no weight to fold it "
                "into; give the plain model that multiplier itself")
    for p in owned:
        if shared.get(p):
            return (f"{p} is the same tensor as {', '.join(shared[p])} (tied): folding the {scale:.4g} output "
                    f"multiplier of {name} into it would change that use too. Untie them in the plain model, or "
                    "keep the multiplier on its logits")
    if kind in CHANNEL_FIRST and rows is None:
        dim = CHANNEL_FIRST[kind]
    elif kind in OUTPUT_DIM:
        dim = OUTPUT_DIM[kind]
    else:
        return (f"{name} is a {kind}: ezmup_plus does not know which dim of its weight makes its output's last dim, "
                f"so its {scale:.4g} multiplier is not folded")
    for p in owned:
        tensor = state[p]
        d = dim if tensor.dim() > 1 else 0
        if rows is None:
            tensor.mul_(scale)
        else:
            tensor.mul_(row_scale(scale, rows, tensor, dim=d))
    return None


def _fold_input(state: dict[str, torch.Tensor], name: str, scale: float, shared: dict[str, list[str]]) -> str | None:
    """Multiply ``name.weight`` by ``scale`` in ``state`` (its bias is added after the input multiplier)."""
    weight = f"{name}.weight" if name else "weight"
    if shared.get(weight):
        return (f"{weight} is the same tensor as {', '.join(shared[weight])} (tied): folding the {scale:.4g} input "
                f"multiplier of {name} into it would change that use too")
    state[weight].mul_(scale)
    return None


def _shared_names(module: nn.Module) -> dict[str, list[str]]:
    """Parameter name -> the other names of the same tensor (its aliases, as the tracer lists them)."""
    groups = [(name, *aliases) for name, (*_, aliases) in parameter_layout(module).items()]
    return {n: [other for other in group if other != n] for group in groups for n in group}
