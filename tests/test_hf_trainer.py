"""The Hugging Face Trainer example runs with a muP optimizer and keeps its per-tensor LR ratios."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def test_trainer_runs_with_the_mup_optimizer(tmp_path):
    from hf_trainer import main

    losses = main(["--width", "64", "--steps", "12", "--out", str(tmp_path)])
    assert len(losses) == 12 and losses[-1] < losses[0]
