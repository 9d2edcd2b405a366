"""The public data sets the muP reproduction uses, by name: a local copy first, else a checked download.

A data set is found in this order: an explicit path (``data.path`` in a config), a copy in the
directory named by the ``EZMUP_PLUS_DATA`` environment variable, the user cache, and last a
download with pooch from its public source, checked against its pinned SHA-256. Nothing here
needs the network when a copy is given.
"""

from __future__ import annotations

import csv
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

DATA_DIR_VAR = "EZMUP_PLUS_DATA"
"""Environment variable naming a directory that holds copies of the data files (checked like downloads)."""


class DataUnavailable(RuntimeError):
    """A data set that is neither on disk nor downloadable; the message says where to put a copy."""


@dataclass(frozen=True)
class Dataset:
    """One public file: its name in a directory of copies, where it comes from, and its checksum."""

    name: str
    filename: str
    url: str
    sha256: str


DATASETS = {d.name: d for d in (
    Dataset("california_housing", "california_housing.csv",
            "https://raw.githubusercontent.com/ageron/data/main/housing/housing.csv",
            "2364609dc48bec7df3ba9dbb7041478e704ecddcee70ef1827ec3fc49d22c0cc"),
    Dataset("tinyshakespeare", "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
)}


def locate(name: str, path: str | Path | None = None) -> Path:
    """The file of data set ``name``: ``path`` if given, else a copy in ``$EZMUP_PLUS_DATA``, else the cache or
    a download (once, with a progress bar)."""
    if name not in DATASETS:
        raise DataUnavailable(f"data set {name!r} is unknown; choose one of {sorted(DATASETS)}")
    d = DATASETS[name]
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataUnavailable(f"data.path={str(path)!r} is not a file; {d.name} is {d.filename} from {d.url}")
        return path
    copies = os.environ.get(DATA_DIR_VAR)
    if copies and (Path(copies).expanduser() / d.filename).is_file():
        return _checked(Path(copies).expanduser() / d.filename, d)
    return _download(d, copies)


def _checked(path: Path, d: Dataset) -> Path:
    import pooch

    found = pooch.file_hash(str(path), alg="sha256")
    if found != d.sha256:
        raise DataUnavailable(f"{path} is not the {d.name} file of {d.url}: its SHA-256 is {found}, expected "
                              f"{d.sha256}. Replace it with that file or unset {DATA_DIR_VAR}")
    return path


def _download(d: Dataset, copies: str | None) -> Path:
    import pooch

    try:
        return Path(pooch.retrieve(d.url, known_hash=f"sha256:{d.sha256}", fname=d.filename,
                                   path=pooch.os_cache("ezmup_plus"), progressbar=True))
    except Exception as exc:  # offline, refused, or a checksum mismatch: all say the same two ways out
        where = f"{DATA_DIR_VAR}={copies} holds no {d.filename}" if copies else f"{DATA_DIR_VAR} is not set"
        raise DataUnavailable(f"{d.filename} ({d.name}) could not be fetched from {d.url} ({type(exc).__name__}: "
                              f"{exc}); {where}. Put a copy of that file in a directory named by {DATA_DIR_VAR}, "
                              "or give its path as data.path") from None


CALIFORNIA_FEATURES = ("MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude", "Longitude")


def load_california_housing(path: str | Path | None = None, val_fraction: float = 0.2,
                            seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The 8 standard features (scikit-learn's derivation) from the raw census CSV, standardised on the
    training split; target = median house value / 100,000. Returns (x_train, y_train, x_val, y_val)."""
    with open(locate("california_housing", path), newline="") as fh:
        rows = list(csv.DictReader(fh))
    bedrooms = [float(r["total_bedrooms"]) for r in rows if r["total_bedrooms"]]
    fill = statistics.median(bedrooms)
    features, target = [], []
    for r in rows:
        households, population = float(r["households"]), float(r["population"])
        features.append([
            float(r["median_income"]),
            float(r["housing_median_age"]),
            float(r["total_rooms"]) / households,
            (float(r["total_bedrooms"]) if r["total_bedrooms"] else fill) / households,
            population,
            population / households,
            float(r["latitude"]),
            float(r["longitude"]),
        ])
        target.append(float(r["median_house_value"]) / 1e5)
    x, y = torch.tensor(features), torch.tensor(target).unsqueeze(1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(len(x) * (1 - val_fraction))
    mean, std = x[:cut].mean(0), x[:cut].std(0)
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


def load_shakespeare_chars(path: str | Path | None = None,
                           val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Character-level token ids of Tiny Shakespeare (or any text file): (train_ids, val_ids, vocab_size)."""
    text = locate("tinyshakespeare", path).read_text()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:], len(vocab)


def lm_batches(ids: torch.Tensor, block_size: int, batch_size: int, seed: int):
    """Endless random (input, next-token target) windows of a token stream."""
    g = torch.Generator().manual_seed(seed)
    while True:
        start = torch.randint(0, len(ids) - block_size - 1, (batch_size,), generator=g)
        window = torch.stack([ids[s : s + block_size + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]


def lm_loss(logits, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of (batch, tokens, vocab) logits, or of a Hugging Face output carrying them."""
    logits = getattr(logits, "logits", logits)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
