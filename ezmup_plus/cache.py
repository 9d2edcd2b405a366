"""A disk cache of factory analyses, so a second process (of a torchrun launch, of a tuning study, of a
notebook restart) builds its first muP model without probing and tracing again.

The key is everything the analysis depends on: the factory's qualified name and the source of the file
that defines it, its closure and defaults, its fixed arguments, the wrap options, the shapes of the
example inputs, ezmup_plus's own source, and the versions of torch and transformers. A factory whose description
holds a memory address (an object without a stable repr) or whose source cannot be read is not cached.
On by default in the user cache directory; ``EZMUP_PLUS_CACHE=off`` (or ``wrap(..., cache=False)``)
turns it off, ``EZMUP_PLUS_CACHE=/some/dir`` moves it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_leaves

from .analysis import Analysis
from .atomic import atomic_write

CACHE_VAR = "EZMUP_PLUS_CACHE"
SCHEMA = 1  # bump when the Analysis value changes shape
OFF = ("0", "off", "false", "no")


def cache_dir(setting: bool | str | os.PathLike | None) -> Path | None:
    """Where analyses are kept: ``setting`` (a path, or False for none), else ``$EZMUP_PLUS_CACHE``, else the user
    cache directory."""
    if setting is False:
        return None
    if setting not in (None, True):
        return Path(setting)
    env = os.environ.get(CACHE_VAR, "")
    if env.lower() in OFF:
        return None
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("ezmup_plus")) / "analyses"


def analysis_key(factory: Callable, options_json: str, example_inputs: Any) -> str | None:
    """A digest of everything the analysis of ``factory`` depends on; None where it cannot be told."""
    described = _describe(factory)
    if described is None:
        return None
    versions = {"ezmup_plus": _library_digest(), "schema": SCHEMA, "torch": torch.__version__,
                "transformers": getattr(sys.modules.get("transformers"), "__version__", None)}
    text = json.dumps([described, options_json, _shapes(example_inputs), versions], default=repr)
    return None if " at 0x" in text else hashlib.sha256(text.encode()).hexdigest()


def load(directory: Path, key: str) -> Analysis | None:
    """The cached analysis, or None (absent, or unreadable: it is then written anew)."""
    try:
        return Analysis.from_json((directory / f"{key}.json").read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def store(directory: Path, key: str, analysis: Analysis) -> None:
    """Write atomically; a cache that cannot be written (read-only home) is skipped, never an error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / f"{key}.json", "w") as fh:
            fh.write(analysis.to_json())
    except OSError:
        pass


@functools.cache
def _library_digest() -> str:
    """ezmup_plus's own source: an analysis made by other code is not reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _describe(factory: Callable) -> list | None:
    if isinstance(factory, functools.partial):
        inner = _describe(factory.func)
        return None if inner is None else [inner, repr(factory.args), repr(sorted(factory.keywords.items()))]
    target = factory if inspect.isfunction(factory) or inspect.isclass(factory) else type(factory)
    try:
        source = Path(inspect.getsourcefile(target)).read_bytes()
    except (TypeError, OSError):  # a notebook cell, a builtin: no file to tell a change by
        return None
    code = getattr(factory, "__code__", None)
    cells = [repr(c.cell_contents) for c in getattr(factory, "__closure__", None) or ()]
    return [target.__module__, target.__qualname__, getattr(code, "co_firstlineno", None),
            hashlib.sha256(source).hexdigest(), cells, repr(getattr(factory, "__defaults__", None))]


def _shapes(example_inputs: Any) -> Any:
    """What the meta trace sees of example inputs: shapes and dtypes, not values."""
    inputs = example_inputs() if callable(example_inputs) else example_inputs
    return [[list(x.shape), str(x.dtype)] if isinstance(x, torch.Tensor) else repr(x) for x in tree_leaves(inputs)]
