"""The data sets by name: a copy in EZMUP_PLUS_DATA first, a clear line when there is none, never a download."""

import hashlib

import pytest
import torch

from ezmup_plus import data
from ezmup_plus.data import DATA_DIR_VAR, DATASETS, DataUnavailable, lm_batches, load_california_housing, locate
from ezmup_plus.data import load_shakespeare_chars


def test_california_housing_features(data_copies):
    x, y, xv, yv = load_california_housing()
    assert x.shape[1] == 8 and len(x) + len(xv) == 20640
    assert torch.isfinite(x).all() and torch.isfinite(xv).all()
    assert torch.allclose(x.mean(0), torch.zeros(8), atol=1e-4) and torch.allclose(x.std(0), torch.ones(8), atol=1e-3)
    # the sklearn target is median_house_value / 1e5, capped at 5.00001 in this census extract
    assert 0.14 < float(y.min()) and float(y.max()) == pytest.approx(5.00001, abs=1e-4)


def test_shakespeare_chars_and_batches(data_copies):
    train, val, vocab = load_shakespeare_chars()
    assert vocab == 65 and len(train) + len(val) == 1115394
    x, y = next(lm_batches(train, block_size=16, batch_size=4, seed=0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one


def test_offline_without_a_copy_is_one_line_naming_file_url_and_variable(offline, monkeypatch):
    monkeypatch.delenv(DATA_DIR_VAR, raising=False)
    with pytest.raises(DataUnavailable) as info:
        locate("tinyshakespeare")
    message = str(info.value)
    d = DATASETS["tinyshakespeare"]
    assert "\n" not in message and d.filename in message and d.url in message and DATA_DIR_VAR in message
    assert offline == [d.url]


def test_a_copy_is_taken_first_and_checked(offline, monkeypatch, tmp_path):
    text = b"To be, or not to be\n"
    (tmp_path / "tinyshakespeare.txt").write_bytes(text)
    monkeypatch.setenv(DATA_DIR_VAR, str(tmp_path))
    monkeypatch.setitem(DATASETS, "tinyshakespeare",
                        data.Dataset("tinyshakespeare", "tinyshakespeare.txt", "https://example.org/t.txt",
                                     hashlib.sha256(text).hexdigest()))
    train, val, vocab = load_shakespeare_chars(val_fraction=0.25)
    assert vocab == len(set(text.decode())) and len(train) + len(val) == len(text) and offline == []
    (tmp_path / "tinyshakespeare.txt").write_bytes(text + b"!")  # a damaged copy is refused, not used
    with pytest.raises(DataUnavailable, match=r"SHA-256 is [0-9a-f]{64}, expected .*EZMUP_PLUS_DATA"):
        locate("tinyshakespeare")


def test_an_explicit_path_wins_and_a_missing_one_is_named(offline, tmp_path):
    own = tmp_path / "mine.txt"
    own.write_text("abcabc")
    assert locate("tinyshakespeare", own) == own  # the user's own file: no checksum, no download
    with pytest.raises(DataUnavailable, match=r"data.path='.*nowhere.txt' is not a file; tinyshakespeare is "):
        locate("tinyshakespeare", tmp_path / "nowhere.txt")
    with pytest.raises(DataUnavailable, match="unknown; choose one of"):
        locate("imagenet")
    assert offline == []
