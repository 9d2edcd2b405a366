"""Loaders for the two public sets the muP reproduction uses. The package never needs them: pass a path."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import torch

CALIFORNIA_FEATURES = ("MedInc", "HouseAge", "AveRooms", "AveBedrms", "Population", "AveOccup", "Latitude", "Longitude")


def load_california_housing(path: str | Path, val_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The 8 standard features (scikit-learn's derivation) from the raw census CSV, standardised on the
    training split; target = median house value / 100,000. Returns (x_train, y_train, x_val, y_val)."""
    with open(path, newline="") as fh:
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


def load_shakespeare_chars(path: str | Path, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Character-level token ids of a text file: (train_ids, val_ids, vocab_size)."""
    text = Path(path).read_text()
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


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
