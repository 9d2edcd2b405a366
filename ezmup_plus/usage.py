"""What a forward pass on meta tensors tells about attention: which module computes it, with which head
dim, and which module produced its queries.

muP scales attention logits by 1/d_head instead of 1/sqrt(d_head) when the head dim grows with
the width. The tracer records, for every ``F.scaled_dot_product_attention`` call, the innermost
module running it, the query's head dim and the nearest module whose output the query came from
(through views, transposes and rotary embeddings). Plain data out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .branches import default_example_inputs

SCALE_ATTR = "scaling"  # the attribute Hugging Face attention modules (and ours) pass to the kernel


@dataclass(frozen=True)
class AttentionSite:
    head_dim: int
    query_width: int  # heads x head dim of the query
    query_source: str | None  # the module whose output the query was computed from


def attention_sites(model: nn.Module, example_inputs: Any = None) -> dict[str, AttentionSite]:
    """Attention module name -> what its attention looks like (meta forward, no memory)."""
    inputs = example_inputs() if callable(example_inputs) else example_inputs
    inputs = default_example_inputs(model) if inputs is None else tuple(inputs)
    stack: list[str] = []

    def enter(name):
        return lambda module, args: stack.append(name)  # append returns None: the input is untouched

    def leave(name):
        def hook(module, args, output):
            stack.pop()
            while isinstance(output, (tuple, list)) and output:
                output = output[0]
            if isinstance(output, torch.Tensor) and id(output) not in watcher.module_outputs:
                watcher.module_outputs.add(id(output))  # the innermost module that returns it wins
                watcher.nearest[id(output)] = name
                watcher.keep.append(output)
        return hook

    found: dict[str, AttentionSite] = {}
    watcher = _AttentionWatcher(stack, found)
    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave(name))]
    try:
        model.eval()
        with watcher, torch.no_grad():
            model(*inputs)
    except Exception as exc:
        raise RuntimeError(f"the model's forward failed on meta tensors ({exc}); pass example_inputs=... to "
                           "ezmup_plus.wrap (a tuple of tensors, or a callable returning one)") from exc
    finally:
        for h in handles:
            h.remove()
    return found


class _AttentionWatcher(TorchFunctionMode):
    def __init__(self, stack: list[str], found: dict[str, AttentionSite]):
        super().__init__()
        self.stack = stack
        self.found = found
        self.nearest: dict[int, str] = {}  # tensor id -> nearest module output it derives from
        self.module_outputs: set[int] = set()
        self.keep: list[torch.Tensor] = []  # tensors stay alive so their ids are not reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]
            self.found[self.stack[-1] if self.stack else ""] = AttentionSite(
                int(query.shape[-1]), int(query.shape[-1] * query.shape[-3]) if query.dim() >= 3 else int(query.shape[-1]),
                self.nearest.get(id(query)))
        out = func(*args, **kwargs)
        source = next((self.nearest[id(a)] for a in args if isinstance(a, torch.Tensor) and id(a) in self.nearest), None)
        if source is not None:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.nearest.setdefault(id(t), source)
                    self.keep.append(t)
        return out
