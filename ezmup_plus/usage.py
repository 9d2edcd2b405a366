"""What a forward pass on meta tensors tells about attention: which module computes it, with which head dim.

muP scales attention logits by 1/d_head instead of 1/sqrt(d_head) when the head dim grows with
the width. The tracer records, for every ``F.scaled_dot_product_attention`` call, the innermost
module running it and the query's head dim. Plain data out: module name -> head dim.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .branches import default_example_inputs

SCALE_ATTR = "scaling"  # the attribute Hugging Face attention modules (and ours) pass to the kernel


def attention_head_dims(model: nn.Module, example_inputs: Any = None) -> dict[str, int]:
    """Module name -> head dim of the attention it computes (meta forward, no memory)."""
    inputs = example_inputs() if callable(example_inputs) else example_inputs
    inputs = default_example_inputs(model) if inputs is None else tuple(inputs)
    stack: list[str] = []

    def enter(name):
        return lambda module, args: stack.append(name)  # append returns None: the input is untouched

    def leave(module, args, output):
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    found: dict[str, int] = {}
    try:
        model.eval()
        with _AttentionWatcher(stack, found), torch.no_grad():
            model(*inputs)
    except Exception as exc:
        raise RuntimeError(f"the model's forward failed on meta tensors ({exc}); pass example_inputs=... to "
                           "ezmup_plus.wrap (a tuple of tensors, or a callable returning one)") from exc
    finally:
        for h in handles:
            h.remove()
    return found


class _AttentionWatcher(TorchFunctionMode):
    def __init__(self, stack: list[str], found: dict[str, int]):
        super().__init__()
        self.stack = stack
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]
            self.found[self.stack[-1] if self.stack else ""] = int(query.shape[-1])
        return func(*args, **kwargs)
