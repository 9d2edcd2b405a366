"""Shared test settings."""

import os
from pathlib import Path

import pytest
import torch

from ezmup_plus.data import DATA_DIR_VAR


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many times slower with two threads on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_copies() -> Path:
    """The directory of data copies that EZMUP_PLUS_DATA names: tests never download.

    Without it the test is skipped, visibly; under CI (``CI`` set, as ``.ci/run`` does) it fails.
    """
    root = os.environ.get(DATA_DIR_VAR)
    if root and Path(root).is_dir():
        return Path(root)
    message = f"set {DATA_DIR_VAR} to a directory holding the data copies (tests never download)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def no_analysis_cache(monkeypatch):
    """Every test analyses its factories afresh (tests of the cache give it a directory of their own)."""
    monkeypatch.setenv("EZMUP_PLUS_CACHE", "off")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache and a download that fails as it does without network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls = []

    def refuse(url, **kwargs):
        calls.append(url)
        raise ConnectionError("Could not resolve host")

    monkeypatch.setattr("pooch.retrieve", refuse)
    return calls
