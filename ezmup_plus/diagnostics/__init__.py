"""Evidence that muP works on a model: LR sweeps and transfer tables, coordinate checks, plots."""

from .coord import CoordCheck, CoordRow, ReadoutTerms, coord_check
from .init_check import InitCheck, InitRow, check_init
from .spectral import SpectralCheck, spectral_check
from .sweep import Optimum, Run, Transfer, analyse, geometric_lrs, lr_sweep, plot_sweep, read_runs, transfer_table
from .train import RunResult, random_batches, train

__all__ = [
    "CoordCheck",
    "CoordRow",
    "Optimum",
    "ReadoutTerms",
    "coord_check",
    "check_init",
    "InitCheck",
    "InitRow",
    "Run",
    "RunResult",
    "SpectralCheck",
    "Transfer",
    "analyse",
    "geometric_lrs",
    "lr_sweep",
    "plot_sweep",
    "random_batches",
    "read_runs",
    "spectral_check",
    "train",
    "transfer_table",
]
