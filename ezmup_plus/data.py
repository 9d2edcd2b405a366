"""The public data sets the muP reproduction uses, by name: a local copy first, else a checked download.

A data set is found in this order: an explicit path (``data.path`` in a config), a copy in the
directory named by the ``EZMUP_PLUS_DATA`` environment variable, the user cache, and last a
download with pooch from its public source, checked against its pinned checksum. Nothing here
needs the network when a copy is given.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import statistics
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

DATA_DIR_VAR = "EZMUP_PLUS_DATA"
"""Environment variable naming a directory that holds copies of the data files (checked like downloads)."""


class DataUnavailable(RuntimeError):
    """A data set that is neither on disk nor downloadable; the message says where to put a copy."""


@dataclass(frozen=True)
class Dataset:
    """One public file: its name in a directory of copies, where it comes from, and its checksum; ``folder``
    names the extracted archive, which is taken in place of the file (as given: it has no one checksum)."""

    name: str
    filename: str
    url: str
    digest: str
    alg: str = "sha256"
    folder: str | None = None


DATASETS = {d.name: d for d in (
    Dataset("california_housing", "california_housing.csv",
            "https://raw.githubusercontent.com/ageron/data/main/housing/housing.csv",
            "2364609dc48bec7df3ba9dbb7041478e704ecddcee70ef1827ec3fc49d22c0cc"),
    Dataset("tinyshakespeare", "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    Dataset("cifar10", "cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a", alg="md5", folder="cifar-10-batches-py"),  # 170,498,071 bytes
)}


def locate(name: str, path: str | Path | None = None) -> Path:
    """The file of data set ``name``: ``path`` if given, else a copy in ``$EZMUP_PLUS_DATA``, else the cache or
    a download (once, with a progress bar)."""
    if name not in DATASETS:
        raise DataUnavailable(f"data set {name!r} is unknown; choose one of {sorted(DATASETS)}")
    d = DATASETS[name]
    if path is not None:
        path = Path(path).expanduser()
        if not (path.is_file() or (d.folder and path.is_dir())):
            also = f" or a {d.folder}/ folder" if d.folder else ""
            raise DataUnavailable(f"data.path={str(path)!r} is not a file{also}; {d.name} is {d.filename} from "
                                  f"{d.url}")
        return path
    copies = os.environ.get(DATA_DIR_VAR)
    if copies and (Path(copies).expanduser() / d.filename).is_file():
        return _checked(Path(copies).expanduser() / d.filename, d)
    if copies and d.folder and (Path(copies).expanduser() / d.folder).is_dir():
        return Path(copies).expanduser() / d.folder
    return _download(d, copies)


ALGORITHMS = {"sha256": "SHA-256", "md5": "MD5"}


def _checked(path: Path, d: Dataset) -> Path:
    import pooch

    found = pooch.file_hash(str(path), alg=d.alg)
    if found != d.digest:
        raise DataUnavailable(f"{path} is not the {d.name} file of {d.url}: its {ALGORITHMS[d.alg]} is {found}, "
                              f"expected {d.digest}. Replace it with that file or unset {DATA_DIR_VAR}")
    return path


def _download(d: Dataset, copies: str | None) -> Path:
    import pooch

    try:
        return Path(pooch.retrieve(d.url, known_hash=f"{d.alg}:{d.digest}", fname=d.filename,
                                   path=pooch.os_cache("ezmup_plus"), progressbar=True))
    except Exception as exc:  # offline, refused, or a checksum mismatch: all say the same two ways out
        held = f"{d.filename} (or {d.folder}/)" if d.folder else d.filename
        where = f"{DATA_DIR_VAR}={copies} holds no {held}" if copies else f"{DATA_DIR_VAR} is not set"
        raise DataUnavailable(f"{d.filename} ({d.name}) could not be fetched from {d.url} ({type(exc).__name__}: "
                              f"{exc}); {where}. Put a copy of that file in a directory named by {DATA_DIR_VAR}, "
                              "or give its path as data.path") from None


def digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """sklearn's bundled digits (1,797 images, no download: the demo's data), standardised, 80/20 split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


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


# --- CIFAR-10 ------------------------------------------------------------------------------------

CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
class _Array:
    """Stands in for ``numpy.ndarray`` while unpickling a batch: keeps the shape, the dtype and the raw bytes
    (numpy itself is neither needed nor run)."""

    def __setstate__(self, state):
        _, self.shape, self.dtype, self.fortran, self.raw = state


class _DType:
    """Stands in for ``numpy.dtype``: its name ('u1' for the images)."""

    def __init__(self, name, *_):
        self.name = name

    def __setstate__(self, state):
        pass


def _reconstruct(cls, shape, typecode):
    return cls()


def _encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2 (latin-1 only)."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}")
    return text.encode("latin1")


CIFAR_GLOBALS = {("numpy", "ndarray"): _Array, ("numpy", "dtype"): _DType,
                 ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                 ("numpy._core.multiarray", "_reconstruct"): _reconstruct, ("_codecs", "encode"): _encode}
"""Every global a CIFAR batch file names (a pickled dict of bytes, lists and one numpy array), each mapped to a
stand-in here: no other code can run while unpickling."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"a CIFAR batch names no {module}.{name}")
        return CIFAR_GLOBALS[module, name]


def _read_batch(fh, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, 32, 32), int64 labels) of one canonical batch file (``where`` names it in errors).

    The canonical format is pickle. It is read only from the tarball that passed its pinned checksum
    (or was downloaded by pooch against it), or from a file or folder the user pointed to (``data.path``,
    ``$EZMUP_PLUS_DATA``); even then the unpickler builds only builtins and the stand-ins above.
    """
    try:
        batch = _BatchUnpickler(fh, encoding="bytes").load()
        array, labels = batch[b"data"], torch.tensor(batch[b"labels"], dtype=torch.long)
        if not isinstance(array, _Array) or array.dtype.name != "u1" or array.fortran or len(array.shape) != 2:
            raise TypeError("its data is not a C-ordered uint8 array (N, 3072)")
        images = torch.frombuffer(bytearray(array.raw), dtype=torch.uint8).view(-1, 3, 32, 32)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, RuntimeError, EOFError, AttributeError) as exc:
        raise DataUnavailable(f"{where} is not a CIFAR-10 batch in the canonical python format ({exc})") from None
    if len(images) != len(labels) or tuple(array.shape) != (len(images), 3072):
        raise DataUnavailable(f"{where}: {tuple(array.shape)} image array but {len(labels)} labels")
    return images, labels


def _read_cifar(source: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every batch file of an extracted ``cifar-10-batches-py/`` folder or of the tarball."""
    names = (*CIFAR_TRAIN, CIFAR_TEST)
    if source.is_dir():
        missing = [n for n in names if not (source / n).is_file()]
        if missing:
            raise DataUnavailable(f"{source} holds no {', '.join(missing)}: a cifar-10-batches-py/ folder has "
                                  f"{', '.join(names)}")
        out = {}
        for n in names:
            with open(source / n, "rb") as fh:
                out[n] = _read_batch(fh, str(source / n))
        return out
    try:
        with tarfile.open(source, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise DataUnavailable(f"{source} holds no {', '.join(missing)}: not the cifar-10-python.tar.gz "
                                      f"archive of {DATASETS['cifar10'].url}")
            return {n: _read_batch(io.BytesIO(tar.extractfile(members[n]).read()), f"{source}:{members[n].name}")
                    for n in names}
    except (tarfile.TarError, OSError) as exc:
        raise DataUnavailable(f"{source} is not a readable cifar-10-python.tar.gz ({exc})") from None


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 as normalised float tensors (N, 3, 32, 32), with the copy it came from.

    ``mean`` and ``std`` are per channel, of the training split's pixels in [0, 1]; both splits are
    normalised with them.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: Path
    source_bytes: int

    @property
    def described(self) -> str:
        """Which copy was used and its size, on one line."""
        kind = "folder" if self.source.is_dir() else "archive"
        return (f"cifar10: {len(self.x_train):,} training and {len(self.x_test):,} test images from {self.source} "
                f"({kind}, {self.source_bytes:,} bytes)")

    def batches(self, batch_size: int, seed: int, augment: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """Endless shuffled training minibatches from ``seed``; ``augment`` adds a random crop of the image
        padded by 4 (black padding, as torchvision pads before normalising) and a horizontal flip."""
        from .diagnostics.train import random_batches

        g = torch.Generator().manual_seed(seed)
        black = -torch.tensor(self.mean) / torch.tensor(self.std)
        for x, y in random_batches(self.x_train, self.y_train, batch_size, seed):
            yield (augment_images(x, black, g) if augment else x), y


def augment_images(x: torch.Tensor, fill: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Each image cropped back to its size at a random offset from a ``pad``-wide border of ``fill`` (per
    channel), then flipped left-right with probability 1/2."""
    n, c, h, w = x.shape
    padded = fill.view(1, c, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad : pad + h, pad : pad + w] = x
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    cropped = cropped.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), cropped.flip(3), cropped)


def load_cifar10(path: str | Path | None = None) -> Cifar10:
    """CIFAR-10 from ``path`` (the tarball or an extracted ``cifar-10-batches-py/`` folder), else a copy in
    ``$EZMUP_PLUS_DATA`` (the checked tarball or that folder), else the cache or a checked download.
    ``.described`` says which copy was used; ``.batches(...)`` draws (optionally augmented) minibatches."""
    source = locate("cifar10", path)
    parts = _read_cifar(source)
    x_train = torch.cat([parts[n][0] for n in CIFAR_TRAIN]).float().div_(255)
    y_train = torch.cat([parts[n][1] for n in CIFAR_TRAIN])
    x_test, y_test = parts[CIFAR_TEST][0].float().div_(255), parts[CIFAR_TEST][1]
    mean, std = x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3))
    scale = lambda x: x.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))  # noqa: E731
    size = sum(f.stat().st_size for f in source.iterdir() if f.is_file()) if source.is_dir() else source.stat().st_size
    return Cifar10(scale(x_train), y_train, scale(x_test), y_test, tuple(mean.tolist()), tuple(std.tolist()),
                   source, size)
