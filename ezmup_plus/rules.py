"""The parametrizations as data: per role, how init, LR, WD, eps and forward multiplier scale.

Pure functions of plain numbers, no torch. ``m_in``/``m_out`` are a tensor's fan-in/fan-out at the
target divided by those at the base width (both are m_w = width/base_width for a plain hidden
matrix); ``m_depth`` is depth/base_depth for tensors inside the repeated block stack.
References: Tensor Programs V Tables 3 and 8 (width), the spectral condition (Yang, Simon,
Bernstein 2023), depth-muP (TP VI, alpha=1/2) and CompleteP (alpha=1). Where implementations that
agree on muP differ in bookkeeping (eps, the readout's form, a tied init), :data:`CONVENTIONS` names the choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

ROLES = ("input", "hidden", "output", "vector", "finite")
PARAMETRIZATIONS = ("sp", "mup", "spectral", "depth_mup", "completep")
DEPTH_ALPHA = {"depth_mup": 0.5, "completep": 1.0}
Exponents = tuple[float, float]  # a factor m_in**a * m_out**b


@dataclass(frozen=True)
class Family:
    """How one optimizer family's step scales, as exponents; roles not listed get x1.

    ``lr``/``eps``/``wd``: per role, width exponents (a, b) of m_in**a * m_out**b.
    ``depth_lr``/``depth_eps``: (c0, c1) of m_L**(c0 + c1*alpha) inside the repeated blocks.
    ``fold_lr``: how LR follows a forward multiplier A folded into the weights (A**fold_lr).
    """

    lr: dict[str, Exponents]
    eps: dict[str, Exponents] = field(default_factory=dict)
    wd: dict[str, Exponents] = field(default_factory=dict)
    depth_lr: tuple[float, float] = (-1.0, 1.0)
    depth_eps: tuple[float, float] = (0.0, 0.0)
    fold_lr: float = 1.0


_ADAM_LR = {"hidden": (-1.0, 0.0), "output": (-1.0, 0.0)}
FAMILIES: dict[str, Family] = {
    # normalised updates (entries Theta(1)): LR ~ 1/fan_in; eps follows the gradient's size
    "adam": Family(lr=_ADAM_LR, eps={"hidden": (-1.0, 0.0)}, depth_eps=(0.0, -1.0)),
    # sign updates (Lion, SignSGD): Adam's scaling, no eps
    "sign": Family(lr=_ADAM_LR),
    # plain gradient steps: LR ~ fan_out/fan_in (TP5 Table 3, spectral form)
    "sgd": Family(lr={"input": (0.0, 1.0), "hidden": (-1.0, 1.0), "output": (-1.0, 0.0), "vector": (0.0, 1.0)},
                  depth_lr=(-1.0, 2.0), fold_lr=2.0),
    # torch.optim.Adafactor: relative step, the update is scaled by RMS(W), which muP init already shrinks
    "adafactor": Family(lr={"hidden": (-0.5, 0.0)}, fold_lr=0.0),
    # Muon, torch's default adjustment: orthogonal update, spectral norm kept at sqrt(fan_out/fan_in)
    "orthogonal": Family(lr={"hidden": (-0.5, 0.5)}),
    # Muon with Moonlight's RMS matching 0.2*sqrt(max(A, B)): undo its sqrt(width) growth
    "orthogonal_rms": Family(lr={"hidden": (-0.5, 0.0)}, wd={"hidden": (0.5, 0.0)}),
}


@dataclass(frozen=True)
class Conventions:
    """Choices on which muP implementations that agree on the theory differ (README, "Conventions").

    ``eps``: "scaled" (Adam's eps follows the gradient's size) or "fixed" (the optimizer's eps on every tensor as
    the model computes it; a multiplier ezmup_plus folds still moves eps with it, so the fold stays exact).
    ``readout``: "folded" (the readout's 1/m_w is in its init and LR) or "input" (a forward multiplier on the
    readout's input, as ``MuReadout`` computes ``output_mult * x / width_mult``).
    ``tied_init``: a tied embedding's init x m_w**tied_init (``set_base_shapes`` rescales a ``MuSharedReadout``'s
    weight by sqrt(width_mult) like any ``MuReadout``).
    ``attention``: what ``attn_scale="auto"`` means: "1/d" (sqrt(d_base/d) on the model's logits) or "model" (the
    model's own scale: with microsoft/mup the user writes 1/d in the model).
    """

    eps: str = "scaled"
    readout: str = "folded"
    tied_init: float = 0.0
    attention: str = "1/d"


DEFAULT_CONVENTIONS = "ezmup_plus"
CONVENTIONS: dict[str, Conventions] = {
    DEFAULT_CONVENTIONS: Conventions(),
    # microsoft/mup 1.0: MuReadout, MuSharedReadout, set_base_shapes(rescale_params=True), MuAdam/MuAdamW/MuSGD
    "microsoft_mup": Conventions(eps="fixed", readout="input", tied_init=0.5, attention="model"),
}


def conventions(name: str) -> Conventions:
    """The conventions called ``name``; an unknown name is an error listing the choices."""
    if name not in CONVENTIONS:
        raise ValueError(f"conventions={name!r} is unknown; choose one of {tuple(CONVENTIONS)}")
    return CONVENTIONS[name]


@dataclass(frozen=True)
class TensorScale:
    """What the rules need to know about one tensor at one target (width, depth)."""

    role: str
    m_in: float = 1.0
    m_out: float = 1.0
    m_depth: float = 1.0
    in_block: bool = False
    fan_in: int = 1  # absolute sizes at the target, for the spectral init
    fan_out: int = 1


@dataclass(frozen=True)
class Scaling:
    """Factors relative to the base model (all 1 at base width and depth).

    ``init_std`` is absolute and overrides ``init`` when set (spectral init).
    """

    init: float = 1.0
    lr: float = 1.0
    wd: float = 1.0
    eps: float = 1.0
    init_std: float | None = None


WD_MODES = ("independent", "coupled")
EPS_MODES = ("scaled", "fixed")


def check_modes(wd_mode: str, eps_mode: str) -> None:
    """The optimizer's weight-decay and eps modes (``get_mup_optimizer``)."""
    if wd_mode not in WD_MODES:
        raise ValueError(f"wd_mode={wd_mode!r} is unknown; choose one of {WD_MODES}")
    if eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode={eps_mode!r} is unknown; choose 'scaled' or 'fixed'")


def check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization={parametrization!r} is unknown; choose one of {PARAMETRIZATIONS}")


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"optimizer family {family!r} is unknown; choose one of {sorted(FAMILIES)}")


def depth_alpha(parametrization: str, alpha: float | None = None) -> float | None:
    """The residual-branch exponent for a model probed in depth.

    CompleteP's alpha=1 unless told otherwise (depth_mup: 1/2); SP scales nothing.
    """
    check_parametrization(parametrization)
    if parametrization == "sp":
        return None
    if alpha is None:
        return DEPTH_ALPHA.get(parametrization, 1.0)
    if not 0.5 <= alpha <= 1.0:
        raise ValueError(f"depth_alpha={alpha}: choose a value from 0.5 (depth-muP) to 1.0 (CompleteP)")
    return alpha


def _factor(exponents: dict[str, Exponents], t: TensorScale) -> float:
    a, b = exponents.get(t.role, (0.0, 0.0))
    return t.m_in**a * t.m_out**b


def width_scaling(family: str, t: TensorScale) -> Scaling:
    """muP in width (TP5 Table 3 / 8), folded form: no forward multipliers needed."""
    check_family(family)
    f = FAMILIES[family]
    init = {"input": 1.0, "hidden": t.m_in**-0.5, "output": 1.0 / t.m_in}.get(t.role, 1.0)
    return Scaling(init=init, lr=_factor(f.lr, t), eps=_factor(f.eps, t), wd=_factor(f.wd, t))


def depth_scaling(family: str, t: TensorScale, alpha: float) -> Scaling:
    """Extra factors for tensors inside the depth-repeated stack (branch multiplier m_L^-alpha)."""
    check_family(family)
    if not t.in_block or t.role == "finite":
        return Scaling()
    f = FAMILIES[family]
    return Scaling(lr=t.m_depth ** (f.depth_lr[0] + f.depth_lr[1] * alpha),
                   eps=t.m_depth ** (f.depth_eps[0] + f.depth_eps[1] * alpha))


def scaling(parametrization: str, family: str, t: TensorScale, alpha: float | None = None,
            conv: Conventions = CONVENTIONS[DEFAULT_CONVENTIONS]) -> Scaling:
    """All factors for one tensor, in the form ``conv`` computes it (see :func:`readout_multiplier`); SP leaves
    everything at 1."""
    if t.role not in ROLES:
        raise ValueError(f"role {t.role!r} is unknown; choose one of {ROLES}")
    check_parametrization(parametrization)
    check_family(family)
    if parametrization == "sp":
        return Scaling()
    s = width_scaling(family, t)
    a = depth_alpha(parametrization, alpha)
    if a is not None:
        d = depth_scaling(family, t, a)
        s = replace(s, lr=s.lr * d.lr, eps=s.eps * d.eps)
    if parametrization == "spectral" and t.role in ("input", "hidden", "output"):
        s = replace(s, init_std=spectral_std(t.fan_in, t.fan_out))
    if conv.eps == "fixed":
        s = replace(s, eps=1.0)
    multiplier = readout_multiplier(parametrization, t, conv)
    if multiplier != 1.0:  # the 1/m_w moved out of init and LR into the forward; eps stays the optimizer's
        s = replace(fold(family, s, 1.0 / multiplier), eps=s.eps)
    return s


def readout_multiplier(parametrization: str, t: TensorScale, conv: Conventions) -> float:
    """The forward multiplier on a readout's input under ``conv`` (MuReadout's 1/width_mult); 1 where folded."""
    if parametrization == "sp" or conv.readout == "folded" or t.role != "output":
        return 1.0
    return 1.0 / t.m_in


def spectral_std(fan_in: int, fan_out: int) -> float:
    """sigma = 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)): spectral norm ~ sqrt(fan_out/fan_in)."""
    return 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))


def fold(family: str, s: Scaling, multiplier: float) -> Scaling:
    """Move a forward multiplier A into the tensor: same function and same training trajectory.

    W' = A W, so init x A; LR x A**fold_lr (Adam-like A, SGD A^2, relative-step Adafactor 1); eps / A.
    """
    check_family(family)
    return replace(s, init=s.init * multiplier, lr=s.lr * multiplier ** FAMILIES[family].fold_lr,
                   eps=s.eps / multiplier, init_std=None if s.init_std is None else s.init_std * multiplier)
