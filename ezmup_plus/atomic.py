"""Writes that cannot lose work: a crash or Ctrl-C mid-write leaves the previous file whole."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` and, once the block has finished, rename it onto ``path``.

    The rename is atomic on one file system, so ``path`` is always either the old file or the complete
    new one. A block that raises removes its temporary file; a killed process leaves one behind, a hidden
    ``.<name>.<random>.tmp`` that nothing reads.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fh = open(tmp, mode.replace("w", "x"), **open_kwargs)  # "x": never another writer's file
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
