"""The loaders on the shared data files (tests read ../shared/data; the package never needs them)."""

from pathlib import Path

import pytest
import torch

from ezmup_plus.data import lm_batches, load_california_housing, load_shakespeare_chars

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared data not at {DATA}")


@needs_data
def test_california_housing_features():
    x, y, xv, yv = load_california_housing(DATA / "california_housing.csv")
    assert x.shape[1] == 8 and len(x) + len(xv) == 20640
    assert torch.isfinite(x).all() and torch.isfinite(xv).all()
    assert torch.allclose(x.mean(0), torch.zeros(8), atol=1e-4) and torch.allclose(x.std(0), torch.ones(8), atol=1e-3)
    # the sklearn target is median_house_value / 1e5, capped at 5.00001 in this census extract
    assert 0.14 < float(y.min()) and float(y.max()) == pytest.approx(5.00001, abs=1e-4)


@needs_data
def test_shakespeare_chars_and_batches():
    train, val, vocab = load_shakespeare_chars(DATA / "tinyshakespeare.txt")
    assert vocab == 65 and len(train) + len(val) == 1115394
    x, y = next(lm_batches(train, block_size=16, batch_size=4, seed=0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
