"""The parametrizations as data: per role, how init, LR, WD, eps and forward multiplier scale.

Pure functions of plain numbers, no torch. ``m_in``/``m_out`` are a tensor's fan-in/fan-out at the
target divided by those at the base width (both are m_w = width/base_width for a plain hidden
matrix); ``m_depth`` is depth/base_depth for tensors inside the repeated block stack.
References: Tensor Programs V Tables 3 and 8 (width), the spectral condition (Yang, Simon,
Bernstein 2023), depth-muP (TP VI, alpha=1/2) and CompleteP (alpha=1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

ROLES = ("input", "hidden", "output", "vector", "finite")
PARAMETRIZATIONS = ("sp", "mup", "spectral", "depth_mup", "completep")
DEPTH_ALPHA = {"depth_mup": 0.5, "completep": 1.0}
FAMILIES = ("adam", "sgd")


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


def check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization={parametrization!r} is unknown; choose one of {PARAMETRIZATIONS}")


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"optimizer family {family!r} is unknown; choose one of {FAMILIES}")


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


def width_scaling(family: str, t: TensorScale) -> Scaling:
    """muP in width (TP5 Table 3 / 8), folded form: no forward multipliers needed."""
    init = {"input": 1.0, "hidden": t.m_in**-0.5, "output": 1.0 / t.m_in}.get(t.role, 1.0)
    if family == "adam":
        lr = {"hidden": 1.0 / t.m_in, "output": 1.0 / t.m_in}.get(t.role, 1.0)
        eps = 1.0 / t.m_in if t.role == "hidden" else 1.0
        return Scaling(init=init, lr=lr, eps=eps)
    if family == "sgd":
        # spectral form: an update of spectral norm sqrt(fan_out/fan_in) needs LR ~ fan_out/fan_in
        lr = {"input": t.m_out, "hidden": t.m_out / t.m_in, "output": 1.0 / t.m_in, "vector": t.m_out}.get(t.role, 1.0)
        return Scaling(init=init, lr=lr)
    raise ValueError(f"optimizer family {family!r} is unknown; choose one of {FAMILIES}")


def depth_scaling(family: str, t: TensorScale, alpha: float) -> Scaling:
    """Extra factors for tensors inside the depth-repeated stack (branch multiplier m_L^-alpha)."""
    if not t.in_block or t.role == "finite":
        return Scaling()
    m = t.m_depth
    if family == "adam":
        return Scaling(lr=m ** (alpha - 1.0), eps=m**-alpha)
    if family == "sgd":
        return Scaling(lr=m ** (2.0 * alpha - 1.0))
    raise ValueError(f"optimizer family {family!r} is unknown; choose one of {FAMILIES}")


def scaling(parametrization: str, family: str, t: TensorScale, alpha: float | None = None) -> Scaling:
    """All factors for one tensor; SP leaves everything at 1."""
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
    return s


def spectral_std(fan_in: int, fan_out: int) -> float:
    """sigma = 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)): spectral norm ~ sqrt(fan_out/fan_in)."""
    return 1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in))


def fold(family: str, s: Scaling, multiplier: float) -> Scaling:
    """Move a forward multiplier A into the tensor: same function and same training trajectory.

    Adam: W' = A W, so init x A, LR x A, eps / A.  SGD: init x A, LR x A^2.
    """
    if family == "adam":
        return replace(s, init=s.init * multiplier, lr=s.lr * multiplier, eps=s.eps / multiplier,
                       init_std=None if s.init_std is None else s.init_std * multiplier)
    if family == "sgd":
        return replace(s, init=s.init * multiplier, lr=s.lr * multiplier**2,
                       init_std=None if s.init_std is None else s.init_std * multiplier)
    raise ValueError(f"optimizer family {family!r} is unknown; choose one of {FAMILIES}")

