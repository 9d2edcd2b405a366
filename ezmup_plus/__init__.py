"""ezmup_plus: tune hyperparameters on a small model, use them unchanged on a wide and deep one.

Maximal Update Parametrization (muP) in its spectral form, from a model factory you already have.
"""

from .build import MupFactory, plan_of, rescale_init, wrap
from .checkpoint import load_checkpoint, save_checkpoint
from .config import from_config, load_config
from .export import export_standard
from .hparams import HParams
from .diagnostics import check_init, coord_check, lr_sweep
from .optim import get_mup_optimizer, register_optimizer
from .plan import EffectiveNumbers, MupPlan, TensorPlan
from .rules import PARAMETRIZATIONS, ROLES
from .scale_config import scale_config
from .tune import tune

__all__ = [
    "EffectiveNumbers",
    "HParams",
    "MupFactory",
    "MupPlan",
    "PARAMETRIZATIONS",
    "ROLES",
    "TensorPlan",
    "check_init",
    "coord_check",
    "export_standard",
    "from_config",
    "get_mup_optimizer",
    "load_checkpoint",
    "load_config",
    "lr_sweep",
    "plan_of",
    "register_optimizer",
    "rescale_init",
    "save_checkpoint",
    "scale_config",
    "tune",
    "wrap",
]
