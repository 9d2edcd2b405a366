"""What one forward pass tells about the model: how each parameter is used, how attention is computed,
and which module outputs are added to the residual stream.

The pass runs on meta tensors (no memory, no values); where the forward cannot run there (a value is
read, data-dependent routing with ``nonzero``, a kernel whose meta function refuses), a real forward on
CPU at the same sentinel width, which keeps the model small (:func:`trace_anywhere`). Three watchers
run during the same pass:

* parameters, at the ATen level where every layer is a handful of ops: each parameter is followed
  through views, transposes and permutes into the op that uses it. The dims an ``mm``/``bmm``/
  ``_grouped_mm``/``convolution`` contracts are its fan-in (a batched matmul's leading dim, or rows
  gathered by index and then contracted, pick one expert: a batch dim); an ``embedding`` or index
  lookup makes it a table; elementwise use (a position table added, a gain multiplied) is neither.
  Any other op is unknown.
* attention, at the Python level: every ``F.scaled_dot_product_attention`` call, every ``softmax``
  of a ``q @ k^T`` product and every ``nn.MultiheadAttention``, with the query's head dim, the scale
  it was computed with, and the set of module output rows the query came from (so that its logits can
  be rescaled on those rows).
* residual adds, at the Python level: module outputs (also times a scalar or a gain) added to a tensor
  that does not derive from them.

Plain data out: :class:`ForwardTrace`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import time
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map


SCALE_ATTR = "scaling"  # the attribute Hugging Face attention modules (and ours) pass to the kernel


@dataclass(frozen=True)
class Use:
    """One op that used a parameter."""

    kind: str  # "contract" (mm, bmm, conv), "lookup" (embedding, indexing), "gather" (rows picked, then
    # contracted: expert weights indexed per token), "elementwise" or "unknown"
    dims: tuple[int, ...]  # the parameter's own dims that were contracted or looked up
    module: str  # the innermost module running the op
    op: str  # the ATen op, for messages
    returned_by: str | None = None  # the innermost module returning the op's result unchanged (a readout)
    batch: tuple[int, ...] = ()  # dims that pick one matrix of a stack (experts): neither fan-in nor fan-out


@dataclass(frozen=True)
class RowBlocks:
    """Rows ``start:stop`` of a last dim, repeated ``blocks`` times every ``every`` rows: one block for a
    contiguous range (the first third of a fused QKV), one per head for Bloom's per-head interleaved QKV."""

    start: int
    stop: int
    every: int = 0
    blocks: int = 1

    def index(self) -> list[int]:
        return [k * self.every + r for k in range(self.blocks) for r in range(self.start, self.stop)]


@dataclass(frozen=True)
class AttentionSite:
    """One attention computation and where its queries came from."""

    head_dim: int
    scaled_by_attribute: bool  # the logits were scaled by the module's own float ``scaling`` attribute
    query_source: str | None  # the module whose output rows (of its last dim) are the queries
    query_rows: RowBlocks | None  # (None where they are not: a query that is no linear function of one output)
    in_weight: bool = False  # the rows are of the source's own in_proj_weight, used inside its kernel


@dataclass(frozen=True)
class Number:
    """A number that multiplies or divides a tensor in the forward, and where the product went: what a
    compensating multiplier can sit on, if the number changes with the width."""

    module: str  # the innermost module running the op
    value: float | None  # None: a 0-dim tensor without a value (a buffer on meta)
    divides: bool
    returned_by: str | None = None  # the innermost module returning the product unchanged
    consumed_by: str | None = None  # the first module called with the product
    of_output: str | None = None  # the module whose whole output was multiplied, if nothing else used that output


@dataclass(frozen=True)
class ForwardTrace:
    uses: dict[str, tuple[Use, ...]]  # parameter name -> its uses, for parameters of two dims or more
    attention: dict[str, AttentionSite]  # innermost module running the attention -> what it saw
    numbers: tuple[Number, ...]  # every tensor multiplied or divided by a number, in call order
    float_attributes: dict[str, float]  # "module.attr" -> value, for every float attribute of a module
    adds: tuple[str, ...] = ()  # modules whose output (times a scalar or a gain) is added to an older tensor
    device: str = "meta"  # where the forward ran: "meta", or "cpu" where it cannot run on meta
    seconds: float = 0.0  # building and running a CPU forward (0 on meta)
    peak_bytes: int = 0  # on CPU: parameters, buffers and every tensor the forward made (all kept alive)
    reason: str = ""  # on CPU: why the meta forward could not be used


@dataclass(frozen=True)
class TraceRun:
    """Where the traced forwards ran and what they cost, for the plan's header."""

    device: str  # "meta", "cpu" (the meta forward failed: a real one at the sentinel widths) or "none"
    forwards: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0
    reason: str = ""  # why the meta forward could not be used

    def __str__(self) -> str:
        if self.device != "cpu":
            return {"meta": "traced on meta", "none": "not traced"}[self.device]
        return f"traced on cpu ({self.forwards} forwards, {self.seconds:.2g} s, peak {in_bytes(self.peak_bytes)})"


CPU_TRACE_BUDGET = 2 * 2**30  # bytes of parameters and buffers at a sentinel width, above which the CPU
# fallback refuses to build the model (about 500M fp32 parameters: seconds and a few GiB of memory)


def trace_forward(model: nn.Module, example_inputs: Any = None, follow_params: bool = True) -> ForwardTrace:
    """Run ``model`` once where its tensors live (meta: no memory, no values) and record attention, residual
    adds and (with ``follow_params``) parameter uses."""
    device = next(iter(model.parameters())).device
    inputs = example_batch(model, example_inputs, device)
    stack: list[str] = []
    followed = {id(p): (n, p.dim()) for n, p in model.named_parameters() if p.dim() >= 2 and follow_params}
    params = ParamWatcher(followed, stack)
    owners = {n for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None}
    attributes = {n: m.__dict__[SCALE_ATTR] for n, m in model.named_modules()
                  if isinstance(m.__dict__.get(SCALE_ATTR), float)}
    attention = AttentionWatcher(stack, owners, attributes)
    adds = AddWatcher()

    def enter(name):
        def hook(module, args):
            stack.append(name)
            attention.entered(args, name)  # returns None: the input is untouched
        return hook

    def leave(name):
        def hook(module, args, output):
            stack.pop()
            while isinstance(output, (tuple, list)) and output:
                output = output[0]
            if isinstance(output, torch.Tensor):
                params.returned(output, name)
                attention.returned(output, name)
                adds.returned(output, name)
        return hook

    handles = []
    for name, module in model.named_modules():
        handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave(name))]
    try:
        model.eval()
        with adds, attention, params, torch.no_grad():
            model(*inputs)
    except Exception as exc:
        raise RuntimeError(
            f"the model's forward failed on {device.type} tensors ({exc}). ezmup_plus runs it once to learn how each "
            "tensor is used: pass example_inputs=... to ezmup_plus.wrap (a tuple of tensors, or a callable "
            "returning one), or trace=False to fall back to layer types (attention then keeps 1/sqrt(d))") from exc
    finally:
        for h in handles:
            h.remove()
    floats = {f"{n}.{k}" if n else k: v for n, m in model.named_modules() for k, v in vars(m).items()
              if isinstance(v, float) and k != SCALE_ATTR}
    peak = 0 if device.type == "meta" else model_bytes(model) + params.allocated
    return ForwardTrace(params.result(), dict(attention.found), attention.result_numbers(), floats,
                        tuple(dict.fromkeys(adds.added)), device.type, peak_bytes=peak)


def trace_anywhere(meta_model: nn.Module, build_on_cpu: Callable[[], nn.Module] | None, example_inputs: Any = None,
                   follow_params: bool = True, on_meta: bool = True) -> ForwardTrace:
    """The meta forward first (free); where it fails (``on_meta=False``: it already did at another width), a real
    forward of ``build_on_cpu()`` (the same model at the same width), which the sentinel widths keep small.

    Refused, before anything is built, above :data:`CPU_TRACE_BUDGET`.
    """
    reason = "the meta forward failed at another sentinel width"
    if on_meta:
        try:
            trace = trace_forward(meta_model, example_inputs, follow_params)
        except RuntimeError as exc:
            if build_on_cpu is None:
                raise
            reason = str(exc.__cause__ or exc)
        else:
            if build_on_cpu is None or all(n.value is not None for n in trace.numbers):
                return trace
            reason = "a 0-dim buffer multiplies a tensor, and a meta tensor has no value"
    size = model_bytes(meta_model)
    if size > CPU_TRACE_BUDGET:
        raise RuntimeError(
            f"the model's forward cannot run on meta tensors ({reason}), and a real forward on CPU at the sentinel "
            f"width would build {in_bytes(size)} of parameters and buffers, above the {in_bytes(CPU_TRACE_BUDGET)} "
            "budget. Pass example_inputs=... to ezmup_plus.wrap (if the guessed "
            "inputs were the problem), a smaller width_multiple, or trace=False to fall back to layer types")
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the values only steer data-dependent routing; keep the caller's RNG as it was
        trace = trace_forward(build_on_cpu(), example_inputs, follow_params)
    return replace(trace, seconds=time.perf_counter() - started, reason=reason)


def trace_run(traces: Sequence[ForwardTrace]) -> TraceRun:
    """One report for the forwards of an analysis: where they ran, how long and how much memory on CPU."""
    if not traces:
        return TraceRun("none")
    if all(t.device == "meta" for t in traces):
        return TraceRun("meta", len(traces))
    return TraceRun("cpu", len(traces), sum(t.seconds for t in traces), max(t.peak_bytes for t in traces),
                    traces[0].reason)


def in_bytes(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def model_bytes(model: nn.Module) -> int:
    """Parameters and buffers, each tensor once (on meta: what they would take)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.nbytes for t in tensors.values())


def example_batch(model: nn.Module, example_inputs: Any = None, device: Any = "meta") -> tuple[Any, ...]:
    """The user's example inputs (a tuple, or a callable returning one) on ``device``; else a small guess."""
    inputs = example_inputs() if callable(example_inputs) else example_inputs
    if inputs is None:
        return default_example_inputs(model, device)
    return tuple(tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, tuple(inputs)))


def default_example_inputs(model: nn.Module, device: Any = "meta") -> tuple[torch.Tensor, ...]:
    """A batch the first input layer accepts: token ids for an embedding, features for a linear layer, images
    for a convolution (modules carrying their own parameters, like ViT's class token, are passed over)."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear, nn.Conv2d))), None)
    g = torch.Generator().manual_seed(0)
    if isinstance(first, nn.Embedding):
        return (torch.randint(0, first.num_embeddings, (2, 8), generator=g).to(device),)
    if isinstance(first, nn.Linear):
        return (torch.randn(2, first.in_features, generator=g).to(device),)
    if isinstance(first, nn.Conv2d):
        return (torch.randn(2, first.in_channels, 16, 16, generator=g).to(device),)
    raise ValueError(
        f"cannot guess an input for a {type(model).__name__}: it has no Embedding, Linear or Conv2d layer. Pass "
        "example_inputs=(tensor, ...) or a callable returning them to ezmup_plus.wrap (or trace=False)"
    )


# --- residual adds, at the Python level ---------------------------------------------------------

ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
        torch.Tensor.__iadd__}


class AddWatcher(TorchFunctionMode):
    """Notes every module output added to a tensor that does not itself derive from that module.

    The second condition tells a residual add (``x + attn(x)``: ``x`` is older than ``attn``) from
    an add inside a branch (GELU's ``x + 0.044715 * x**3``: both sides come from ``c_fc``). A module
    output times a number or a gain (``c * f(x)``, ``f(x) / c``, layer scale ``gamma * f(x)``) still is
    that module's output for this purpose.
    """

    def __init__(self):
        super().__init__()
        self.producer: dict[int, str] = {}  # a module output -> the innermost module returning it
        self.scaled: dict[int, str] = {}  # a module output times a scalar or a gain -> that module
        self.origins: dict[int, frozenset[str]] = {}  # tensor id -> modules it was computed from
        self.added: list[str] = []
        self.keep: list[torch.Tensor] = []  # tensors stay alive so their ids are not reused

    def returned(self, output: torch.Tensor, module: str) -> None:
        self.producer.setdefault(id(output), module)
        self.keep.append(output)

    def origin(self, t: torch.Tensor) -> frozenset[str]:
        own = self.producer.get(id(t))
        return self.origins.get(id(t), frozenset()) | ({own} if own else frozenset())

    def branch(self, t: Any) -> str | None:
        return self.producer.get(id(t), self.scaled.get(id(t))) if isinstance(t, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func in ADDS and len(args) >= 2:
            for x, y in ((args[0], args[1]), (args[1], args[0])):
                module = self.branch(x)
                if module is not None and isinstance(y, torch.Tensor) and module not in self.origin(y):
                    self.added.append(module)
        out = func(*args, **kwargs)
        origin = frozenset().union(*(self.origin(t) for t in tensors)) if tensors else frozenset()
        scaled = self._scaled_branch(func, args)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.origins[id(t)] = origin
                if scaled is not None:
                    self.scaled[id(t)] = scaled
                self.keep.append(t)
        return out

    def _scaled_branch(self, func, args) -> str | None:
        """The module whose output ``func`` multiplies by a scalar or a gain (divides: the numerator's)."""
        if func not in PRODUCTS or len(args) != 2:
            return None
        pairs = ((args[0], args[1]),) if func in DIVISIONS else ((args[0], args[1]), (args[1], args[0]))
        for x, c in pairs:
            module = self.branch(x)
            if module is not None and _scalar_or_gain(c, x, self):
                return module
        return None


def _scalar_or_gain(c: Any, x: torch.Tensor, adds: AddWatcher) -> bool:
    """A number, a one-element tensor, or a gain over the last dim (layer scale) computed from no module output."""
    if isinstance(c, (int, float)):
        return True
    if not isinstance(c, torch.Tensor) or adds.origin(c):
        return False
    return c.numel() == 1 or (c.dim() >= 1 and c.shape[-1] == x.shape[-1] and c.numel() == c.shape[-1])


# --- parameters, at the ATen level --------------------------------------------------------------

aten = torch.ops.aten
IDENTITY = {aten.alias, aten.detach, aten.clone, aten._to_copy, aten.lift_fresh, aten.contiguous}
RESHAPES = {aten.view, aten._unsafe_view, aten.reshape}
ELEMENTWISE = {aten.cat, aten.stack, aten.copy_, aten.fill_, aten.where, aten.masked_fill}


@dataclass(frozen=True)
class Derived:
    """A tensor derived from a parameter through views: which parameter dims each of its dims came from."""

    name: str
    dims: tuple[frozenset[int], ...]
    batch: frozenset[int] = frozenset()  # parameter dims picked away (``w[e]``) or gathered (``w[ids]``)
    gathered: int | None = None  # the index of the lookup use that gathered it, if it is then contracted


class ParamWatcher(TorchDispatchMode):
    """Follows every parameter (two dims or more) through views into the ops that use it.

    ``origin`` maps a tensor to the :class:`Derived` it is; a view carries it on, a use ends it. Rows
    gathered by an index (``experts[ids]``) are a lookup, unless the gathered tensor is then contracted:
    then the indexed dim is a batch dim (one matrix per expert) and the contraction tells the fan-in.
    """

    def __init__(self, params: dict[int, tuple[str, int]], stack: list[str]):
        super().__init__()
        self.stack = stack
        self.origin: dict[int, Derived] = {
            pid: Derived(name, tuple(frozenset([d]) for d in range(ndim))) for pid, (name, ndim) in params.items()}
        self.uses: dict[str, list[Use]] = {name: [] for name, _ in params.values()}
        self.products: dict[int, tuple[str, int]] = {}  # a contraction's result (through views) -> its use
        self.allocated = 0  # bytes of every tensor the forward made (the watchers keep them all alive)
        self.keep: list[torch.Tensor] = []  # tensors stay alive so their ids are not reused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view:
            self.allocated += sum(t.nbytes for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        packet = func.overloadpacket
        product = next((self.products[id(a)] for a in args if isinstance(a, torch.Tensor) and id(a) in self.products),
                       None)
        if product is not None and (func.is_view or packet in IDENTITY | RESHAPES):
            self._track_product(out, product)
        derived = [(i, a) for i, arg in enumerate(args) for a in tree_leaves(arg)  # cat and stack take lists
                   if isinstance(a, torch.Tensor) and id(a) in self.origin]
        for i, a in derived:
            self._follow(func, args, i, a, self.origin[id(a)], out)
        return out

    def _follow(self, func, args, i, tensor, d: Derived, out) -> None:
        packet = func.overloadpacket
        try:
            carried = carry_dims(func, args, tensor, d.dims, out)
            gathered = None if carried is not None else gather_dims(func, args, tensor, d.dims, out)
        except (IndexError, TypeError, ValueError):
            carried = gathered = None
        if gathered is not None:
            looked_up = sorted(set().union(*(d.dims[k] for k in gathered[1])))
            self._use("lookup", d.name, looked_up, func)
            carried = [(out, gathered[0])]
            d = replace(d, batch=d.batch | set(looked_up), gathered=len(self.uses[d.name]) - 1)
        if carried is not None:
            for t, t_dims in carried:
                left = set().union(*t_dims)
                self.origin[id(t)] = replace(d, dims=t_dims, batch=d.batch | (set().union(*d.dims) - left))
                self.keep.append(t)
            return
        contracted = contracted_dims(func, args, i)
        if contracted is not None:
            kind, position, batch = contracted
            if d.gathered is not None:  # the rows it gathered are matrices, not embeddings
                self.uses[d.name][d.gathered] = replace(self.uses[d.name][d.gathered], kind="gather")
            dims = sorted(set().union(*(d.dims[k] for k in position)))
            batch_dims = sorted((d.batch | set().union(*(d.dims[k] for k in batch))) - set(dims))
            self._use(kind, d.name, dims, func, out, batch_dims)
        elif torch.Tag.pointwise in func.tags or packet in ELEMENTWISE:
            self._use("elementwise", d.name, (), func)
        else:
            self._use("unknown", d.name, (), func)

    def _use(self, kind: str, name: str, dims, func, out=None, batch=()) -> None:
        self.uses[name].append(Use(kind, tuple(dims), self.stack[-1] if self.stack else "", str(func),
                                   batch=tuple(batch)))
        if kind == "contract" and isinstance(out, torch.Tensor):
            self._track_product(out, (name, len(self.uses[name]) - 1))

    def _track_product(self, out, product) -> None:
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.products[id(t)] = product
                self.keep.append(t)

    def returned(self, output: torch.Tensor, module: str) -> None:
        """A module returned a contraction's result: the innermost such module produces those logits."""
        if id(output) in self.products:
            name, index = self.products.pop(id(output))
            use = self.uses[name][index]
            if use.returned_by is None:
                self.uses[name][index] = replace(use, returned_by=module)

    def result(self) -> dict[str, tuple[Use, ...]]:
        return {name: tuple(uses) for name, uses in self.uses.items()}


def carry_dims(func, args, tensor, dims, out):
    """For a view-like op: [(output tensor, its dims as sets of parameter dims)]; None for any other op."""
    packet = func.overloadpacket
    ndim = tensor.dim()
    if packet in IDENTITY or (torch.Tag.pointwise in func.tags and _same_shape_scalars(args, tensor, out)):
        return [(out, dims)]  # a cast, a copy, a scaling by a number: still the same parameter
    if packet is aten.t:
        return [(out, dims[::-1])]
    if packet is aten.transpose:
        a, b = (d % ndim for d in args[1:3])
        moved = list(dims)
        moved[a], moved[b] = moved[b], moved[a]
        return [(out, tuple(moved))]
    if packet is aten.permute:
        return [(out, tuple(dims[d % ndim] for d in args[1]))]
    if packet is aten.unsqueeze:
        at = args[1] % (ndim + 1)
        return [(out, dims[:at] + (frozenset(),) + dims[at:])]
    if packet is aten.expand:
        return [(out, (frozenset(),) * (out.dim() - ndim) + dims)]
    if packet in (aten.slice, aten.narrow, aten.split, aten.split_with_sizes, aten.chunk):
        return [(t, dims) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if packet in (aten.select, aten.unbind):
        at = args[1] % ndim if len(args) > 1 else 0
        return [(t, dims[:at] + dims[at + 1:]) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if packet is aten.squeeze:
        which = args[1] if len(args) > 1 else range(ndim)
        which = {d % ndim for d in (which if isinstance(which, (list, tuple, range)) else [which])}
        return [(out, tuple(d for i, d in enumerate(dims) if i not in which or tensor.shape[i] != 1))]
    if packet in RESHAPES:
        return [(out, regroup(tuple(tensor.shape), tuple(out.shape), dims))]
    return None


def _same_shape_scalars(args, tensor, out) -> bool:
    """``weight * 0.5`` or ``weight.float()``: same shape out, every other operand a number."""
    others = [a for a in args if a is not tensor]
    return (isinstance(out, torch.Tensor) and out.shape == tensor.shape
            and all(not isinstance(a, torch.Tensor) or a.dim() == 0 for a in others))


def regroup(before: tuple[int, ...], after: tuple[int, ...], dims: tuple[frozenset[int], ...]):
    """Dims of a reshape's output as sets of parameter dims: merged or split dims share their sources."""
    result: list[frozenset[int]] = []
    i = j = 0
    while j < len(after):
        if after[j] == 1:
            result.append(frozenset())
            j += 1
            if i < len(before) and before[i] == 1:
                i += 1
            continue
        while i < len(before) and before[i] == 1:
            i += 1
        group, size_before, size_after, first = set(), 1, 1, j
        while True:
            if size_before <= size_after or j >= len(after):
                size_before *= before[i]
                group |= dims[i]
                i += 1
            else:
                size_after *= after[j]
                j += 1
            if size_before == size_after and j > first:
                break
        result += [frozenset(group)] * (j - first)
    return tuple(result)


def gather_dims(func, args, tensor, dims, out):
    """For ``w[ids]`` and ``index_select``: (the output's dims, which input dims were indexed); None otherwise."""
    packet = func.overloadpacket
    if packet is aten.index_select:
        return dims, (args[1] % tensor.dim(),)
    if packet is aten.index:
        indexed = [k for k, index in enumerate(args[1]) if index is not None]
        if len(indexed) == 1 and len(args[1]) <= tensor.dim():
            k, index = indexed[0], args[1][indexed[0]]
            return dims[:k] + (dims[k],) * index.dim() + dims[k + 1:], (k,)
    return None


GROUPED_MMS = {getattr(aten, name) for name in ("_grouped_mm", "grouped_mm") if hasattr(aten, name)}


def contracted_dims(func, args, i: int) -> tuple[str, tuple[int, ...], tuple[int, ...]] | None:
    """(kind, which dims of argument ``i``, which of its dims are batch dims) for ops that contract or look up;
    None for any other op. A batched or grouped matmul's leading dim picks one matrix per batch (an expert)."""
    packet = func.overloadpacket
    if packet in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm) or packet in GROUPED_MMS:
        first = 1 if packet in (aten.addmm, aten.baddbmm) else 0
        batch = (0,) if args[i].dim() == 3 else ()
        if i == first:
            return "contract", (args[i].dim() - 1,), batch
        if i == first + 1:
            return "contract", (args[i].dim() - 2,), batch
        return None
    if packet in (aten.convolution, aten._convolution) and i == 1:
        transposed = args[6]
        return "contract", ((0,) if transposed else (1,)) + tuple(range(2, args[1].dim())), ()
    if packet in (aten.embedding, aten._embedding_bag, aten.embedding_bag) and i == 0:
        return "lookup", (0,), ()
    if packet is aten.index and i == 0:
        return "lookup", tuple(d for d, index in enumerate(args[1]) if index is not None), ()
    return None


# --- attention, at the Python level -------------------------------------------------------------

VIEWS = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.transpose, torch.transpose,
         torch.Tensor.permute, torch.permute, torch.Tensor.contiguous, torch.Tensor.flatten, torch.flatten,
         torch.Tensor.unflatten, torch.Tensor.unsqueeze, torch.unsqueeze, torch.Tensor.squeeze, torch.squeeze,
         torch.Tensor.expand, torch.Tensor.expand_as, torch.Tensor.to, torch.Tensor.float, torch.Tensor.half,
         torch.Tensor.bfloat16, torch.Tensor.type_as, torch.Tensor.clone, torch.Tensor.movedim, torch.movedim,
         torch.Tensor.repeat, torch.Tensor.repeat_interleave, torch.repeat_interleave, torch.Tensor.neg, torch.neg,
         torch.Tensor.__neg__, torch.broadcast_to, torch.Tensor.flatten}
SLICES = {torch.Tensor.__getitem__, torch.Tensor.split, torch.split, torch.Tensor.chunk, torch.chunk,
          torch.Tensor.narrow, torch.narrow}
DIVISIONS = {torch.Tensor.div, torch.div, torch.Tensor.__truediv__}
PRODUCTS = {torch.Tensor.mul, torch.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__} | DIVISIONS
SUMS = {torch.Tensor.add, torch.add, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.sub, torch.sub,
        torch.Tensor.__sub__, torch.cat, torch.stack}
MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm}
BADDBMMS = {torch.baddbmm, torch.Tensor.baddbmm}
SOFTMAXES = {F.softmax, torch.softmax, torch.Tensor.softmax}


@dataclass(frozen=True)
class Rows:
    """A tensor as a linear function of some rows of one module output's last dim.

    ``index`` has the tensor's number of dims and broadcasts to its shape: at each position, the output row
    it comes from, so that a view or a slice applies to it as to the tensor itself (the rows of a per-head
    fused QKV, or of Falcon's heads + 2 layout, are then followed exactly). Where two arrangements of the
    rows are summed (as rotary embeddings do) positions are lost: ``index`` is then the 1-d set of rows.
    """

    index: torch.Tensor
    positions: bool = True

    def rows(self) -> torch.Tensor:
        return self.index.unique()


Lineage = dict[str, Rows]  # module -> the rows of its output a tensor is a linear function of (views,
# slices, products with other things as rotary embeddings do); a nonlinear op ends a lineage

CASTS = {torch.Tensor.to, torch.Tensor.float, torch.Tensor.half, torch.Tensor.bfloat16, torch.Tensor.type_as,
         torch.Tensor.contiguous, torch.Tensor.clone, torch.Tensor.neg, torch.neg, torch.Tensor.__neg__}


@dataclass(frozen=True)
class Scores:
    """``q @ k^T`` on its way to a softmax."""

    query: Lineage
    key: Lineage
    query_shape: tuple[int, ...]
    multipliers: tuple[int, ...] = ()  # ids of the numbers it was multiplied by (to recognise an attribute)


class AttentionWatcher(TorchFunctionMode):
    """Tracks which module-output rows every tensor is a linear function of, and reports attention."""

    def __init__(self, stack: list[str], owners: set[str], attributes: dict[str, float]):
        super().__init__()
        self.stack = stack
        self.owners = owners  # modules that own parameters: the query's projection is preferred to a wrapper
        self.attributes = attributes  # module -> its ``scaling`` float, recognised by identity when it is used
        self.numbers: list[Number] = []
        self.products: dict[int, int] = {}  # a product by a number -> its index in ``numbers``
        self.factors: dict[int, int] = {}  # that number's index -> the id of the tensor it multiplied
        self.used: dict[int, int] = {}  # module output id -> how many ops took it
        self.found: dict[str, AttentionSite] = {}
        self.lineage: dict[int, Lineage] = {}
        self.scores: dict[int, Scores] = {}
        self.keep: list[torch.Tensor] = []  # tensors stay alive so their ids are not reused
        self.aranges: dict[tuple[int, int], torch.Tensor] = {}  # shared starting indices

    def returned(self, output: torch.Tensor, module: str) -> None:
        """A module output starts a lineage, unless it already is an inner module's whole output."""
        i = self.products.get(id(output))
        if i is not None and self.numbers[i].returned_by is None:
            self.numbers[i] = replace(self.numbers[i], returned_by=module)
        if not output.dim():
            return
        self.used.setdefault(id(output), 0)
        lineage = self.lineage.setdefault(id(output), {})
        start = self._arange(output)
        if not any(r.positions and r.index.shape == start.shape and torch.equal(r.index, start)
                   for r in lineage.values()):
            lineage[module] = Rows(start)
            self.keep.append(output)

    def _arange(self, t: torch.Tensor) -> torch.Tensor:
        key = (t.dim(), int(t.shape[-1]))
        if key not in self.aranges:
            self.aranges[key] = torch.arange(key[1]).view(*(1,) * (key[0] - 1), key[1])
        return self.aranges[key]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            q = args[0] if args else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            scale = kwargs.get("scale", args[6] if len(args) > 6 else None)
            self._site(self._of(q), self._of(k), tuple(q.shape), () if scale is None else (id(scale),))
            return out
        if func is F.multi_head_attention_forward:  # nn.MultiheadAttention: its query projection is internal
            self._multi_head_site(args, kwargs)
            return out
        if func in SOFTMAXES and id(args[0]) in self.scores:
            s = self.scores[id(args[0])]
            self._site(s.query, s.key, s.query_shape, s.multipliers)
        elif func in MATMULS and len(args) == 2 and all(id(a) in self.lineage for a in args):
            self._mark(out, Scores(self._of(args[0]), self._of(args[1]), tuple(args[0].shape)))
        elif func in BADDBMMS:  # alibi.baddbmm(q, k^T, alpha=scale), as Bloom computes its scores
            q = args[1] if len(args) > 1 else kwargs["batch1"]
            k = args[2] if len(args) > 2 else kwargs["batch2"]
            alpha = kwargs.get("alpha")
            self._mark(out, Scores(self._of(q), self._of(k), tuple(q.shape), () if alpha is None else (id(alpha),)))
        elif args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.scores:
            self._carry_scores(func, args, out)
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if any(isinstance(t, torch.Tensor) for t in tree_leaves(out)):  # not .dim(), .shape and the like
            for t in tensors:
                if id(t) in self.used:
                    self.used[id(t)] += 1
        if func in PRODUCTS and len(args) == 2 and _is_number(args[1]) and isinstance(args[0], torch.Tensor):
            if all(args[1] is not a for a in self.attributes.values()):  # attention scales are accounted for
                self._number(func, args, out)
        if any(id(t) in self.lineage for t in tensors):
            self._carry_lineage(func, args, kwargs, tensors, out)
        return out

    def _of(self, t: torch.Tensor) -> Lineage:
        return self.lineage.get(id(t), {})

    def _number(self, func, args, out) -> None:
        x, c = args
        value = None if isinstance(c, torch.Tensor) and c.is_meta else float(c)
        whole = next((m for m, r in self._of(x).items() if r.positions and r.index.shape == self._arange(x).shape
                      and torch.equal(r.index, self._arange(x))), None)
        self.numbers.append(Number(self.stack[-1] if self.stack else "", value, func in DIVISIONS, of_output=whole))
        self.products[id(out)] = len(self.numbers) - 1
        self.factors[len(self.numbers) - 1] = id(x)
        self.keep += [x, out]

    def entered(self, args, module: str) -> None:
        """A module is called: it consumes the products by numbers among its arguments."""
        for t in tree_leaves(args):
            i = self.products.get(id(t)) if isinstance(t, torch.Tensor) else None
            if i is not None and self.numbers[i].consumed_by is None:
                self.numbers[i] = replace(self.numbers[i], consumed_by=module)

    def result_numbers(self) -> tuple[Number, ...]:
        """The numbers, with ``of_output`` kept only where that output went into this product alone."""
        return tuple(n if self.used.get(self.factors[i], 0) == 1 else replace(n, of_output=None)
                     for i, n in enumerate(self.numbers))

    def _site(self, query: Lineage, key: Lineage, query_shape: tuple[int, ...], multipliers: tuple[int, ...]) -> None:
        """The rows the queries are a linear function of are kept where none of them is a key's, in equal blocks
        at equal steps (one block, or one per head)."""
        source = next((m for m in query if m in self.owners), next(iter(query), None))
        rows = None if source is None else query[source].rows()
        if rows is not None and source in key and bool(torch.isin(rows, key[source].rows()).any()):
            rows = None
        module = self.stack[-1] if self.stack else ""
        by_attribute = module in self.attributes and id(self.attributes[module]) in multipliers
        blocks = None if rows is None else row_blocks(rows.tolist())
        self.found[module] = AttentionSite(query_shape[-1], by_attribute, None if blocks is None else source, blocks)

    def _multi_head_site(self, args, kwargs) -> None:
        """nn.MultiheadAttention: the queries are the first embed_dim rows of its own in_proj_weight."""
        embed_dim, heads = int(args[3]), int(args[4])
        packed = args[5] is not None and not kwargs.get("use_separate_proj_weight", False)
        module = self.stack[-1] if self.stack else ""
        self.found[module] = AttentionSite(embed_dim // heads, False, module if packed else None,
                                           RowBlocks(0, embed_dim) if packed else None, in_weight=packed)

    def _mark(self, out, scores: Scores) -> None:
        if isinstance(out, torch.Tensor):
            self.scores[id(out)] = scores
            self.keep.append(out)

    def _carry_scores(self, func, args, out) -> None:
        """Through masks, casts, products with numbers and soft-capping (``tanh(s / c) * c``)."""
        s = self.scores[id(args[0])]
        number = args[1] if len(args) > 1 and isinstance(args[1], float) else None
        if func in PRODUCTS and number is not None:
            self._mark(out, replace(s, multipliers=s.multipliers + (id(number),)))
        elif func in VIEWS or func not in MATMULS and isinstance(out, torch.Tensor) and out.shape == args[0].shape:
            self._mark(out, s)

    def _carry_lineage(self, func, args, kwargs, tensors, out) -> None:
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if func in (torch.cat, torch.stack):
            carried = [_joined(func, [self._of(t) for t in args[0]], args[0], kwargs.get(
                "dim", args[1] if len(args) > 1 else 0), outputs[0])]
        elif func in VIEWS | SLICES:
            carried = [{m: _viewed(r, func, args, kwargs, i) for m, r in self._of(args[0]).items()}
                       for i in range(len(outputs))]
        elif func in PRODUCTS | SUMS:
            lineages = [self._of(t) for t in tensors]
            if func in DIVISIONS:  # linear in the numerator only
                lineages = [self._of(args[0])] + [{} for _ in lineages[1:]]
            carried = [_combined(lineages, func in PRODUCTS, outputs[0])]
        else:
            return
        for t, lineage in zip(outputs, carried):
            own = self.lineage.setdefault(id(t), {})
            own.update({m: r for m, r in lineage.items() if r is not None and m not in own})
            self.keep.append(t)


def _is_number(c) -> bool:
    return isinstance(c, float) or isinstance(c, torch.Tensor) and c.dim() == 0 and c.is_floating_point()


def row_blocks(rows: list[int]) -> RowBlocks | None:
    """Sorted rows as equal blocks at equal steps (None: not so regular)."""
    starts = [r for i, r in enumerate(rows) if i == 0 or rows[i - 1] != r - 1]
    ends = [r + 1 for i, r in enumerate(rows) if i == len(rows) - 1 or rows[i + 1] != r + 1]
    lengths, steps = {e - s for s, e in zip(starts, ends)}, {b - a for a, b in zip(starts, starts[1:])}
    if len(lengths) != 1 or len(steps) > 1:
        return None
    return RowBlocks(starts[0], ends[0], steps.pop() if steps else 0, len(starts))


def _compressed(index: torch.Tensor) -> torch.Tensor:
    """Dims along which the index does not change are kept at size 1 (a broadcast), so it stays small."""
    for d in range(index.dim()):
        if index.shape[d] > 1 and bool((index == index.narrow(d, 0, 1)).all()):
            index = index.narrow(d, 0, 1)
    return index


def _viewed(rows: Rows, func, args, kwargs, piece: int) -> Rows | None:
    """Rows after a view or a slice: the same op applied to the index (None: it does not apply)."""
    if func in CASTS:
        return rows
    if not rows.positions:  # a view of a sum of arrangements: the same rows, if the last dim stays whole
        return rows if func in VIEWS else None
    try:
        moved = func(rows.index.expand(args[0].shape), *args[1:], **kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None
    pieces = [t for t in tree_leaves(moved) if isinstance(t, torch.Tensor)]
    return Rows(_compressed(pieces[piece])) if piece < len(pieces) else None


def _joined(func, lineages: list[Lineage], tensors, dim: int, out: torch.Tensor) -> Lineage:
    """``cat``/``stack`` of tensors that all derive from a module: the indices joined the same way."""
    result: Lineage = {}
    for m in dict.fromkeys(m for lin in lineages for m in lin):
        having = [lin.get(m) for lin in lineages]
        if any(r is None or not r.positions for r in having):
            continue
        result[m] = Rows(_compressed(func([r.index.expand(t.shape) for r, t in zip(having, tensors)], dim)))
    return result


def _combined(lineages: list[Lineage], product: bool, out: torch.Tensor) -> Lineage:
    """A product is linear in a source that only one factor derives from; a sum, in one that every term does
    (at the same positions, or positions are lost)."""
    result: Lineage = {}
    for m in dict.fromkeys(m for lin in lineages for m in lin):
        having = [lin[m] for lin in lineages if m in lin]
        if len(having) != (1 if product else len(lineages)):
            continue
        first = having[0]
        same = all(r.positions and r.index.shape == first.index.shape and torch.equal(r.index, first.index)
                   for r in having)
        result[m] = first if same else Rows(torch.cat([r.rows() for r in having]).unique(), positions=False)
    return result
