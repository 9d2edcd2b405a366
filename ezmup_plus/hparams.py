"""The muTransferable hyperparameters besides the LR, as one plain value the plan reads: :class:`HParams`.

Each knob is defined at the base width and depth (where the model is the factory's own model times
the knob), and ``make_plan`` carries it to every width and depth with the rest of the
parametrization, so a value tuned on the proxy means the same on the target. Changing them changes
the plan only, never the analysis: a tuning trial does not trace the factory again.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

ROLE_KNOBS = ("input", "hidden", "output", "vector", "finite")


@dataclass(frozen=True)
class HParams:
    """Multipliers relative to the factory at base (all 1, and no weight decay of its own, by default).

    ``init``, ``init_<role>``: on the init std of every randomly drawn tensor (of that role); constant inits
    (LayerNorm's ones, zero biases) are kept. ``output``: on the readout's logits (its weight's product;
    folded into its init and LR, a forward multiplier on a tied readout). ``input``: on the output of the
    input layers (embeddings, the first linear; folded into their weights and biases). ``attention``: on the
    attention logits (through the same route as muP's 1/d_head). ``lr_<role>``: on the LR of that role.
    ``weight_decay``: the weight decay at base (per-step decay lr*wd, kept at every width by the optimizer's
    independent mode); None leaves it to the optimizer's ``weight_decay``.
    """

    init: float = 1.0
    init_input: float = 1.0
    init_hidden: float = 1.0
    init_output: float = 1.0
    init_vector: float = 1.0
    init_finite: float = 1.0
    output: float = 1.0
    input: float = 1.0
    attention: float = 1.0
    lr_input: float = 1.0
    lr_hidden: float = 1.0
    lr_output: float = 1.0
    lr_vector: float = 1.0
    lr_finite: float = 1.0
    weight_decay: float | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "weight_decay" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"hparams.{f.name}={value!r} must be a finite number")
            if value < 0 or (value == 0 and f.name != "weight_decay"):
                raise ValueError(f"hparams.{f.name}={value!r} must be positive" +
                                 (" (or 0)" if f.name == "weight_decay" else ""))

    def init_mult(self, role: str) -> float:
        return self.init * getattr(self, f"init_{role}")

    def lr_mult(self, role: str) -> float:
        return getattr(self, f"lr_{role}")

    def changed(self) -> dict[str, float]:
        """The knobs not at their defaults, in field order (what the plan header prints and YAML stores)."""
        default = HParams()
        return {k: v for k, v in asdict(self).items() if v != getattr(default, k)}

    def describe(self) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in self.changed().items())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "hparams") -> HParams:
        """From a mapping; an unknown key is an error naming it (``where.key``) and the closest knob."""
        data = dict(data or {})
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean '{where}.{close[0]}'?" if close else f"; the knobs are {names}"
                raise ValueError(f"unknown hyperparameter '{where}.{key}'{hint}")
        return cls(**data)


def as_hparams(value: HParams | Mapping[str, Any] | None) -> HParams:
    """``HParams`` from itself, a mapping of knobs, or None (the defaults)."""
    return value if isinstance(value, HParams) else HParams.from_dict(value)
