"""Token arrays on disk: one flat .npy per array, memory-mapped when read.

.npy is a flat binary array behind a small header that names its dtype and
length, so readers need no side file, and `np.load(mmap_mode="r")` plus
`torch.from_numpy` gives a tensor view of the file without copying it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserError
from .files import atomic_path
from .tokenizers import smallest_dtype


def save_tokens(path: str | Path, ids: np.ndarray, vocab_size: int) -> None:
    dtype = smallest_dtype(vocab_size)
    if ids.size and int(ids.max()) >= vocab_size:
        raise AssertionError(f"token id {int(ids.max())} >= vocab size {vocab_size}")
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(ids, dtype=dtype), allow_pickle=False)


def load_tokens(path: str | Path) -> np.ndarray:
    """A read-only memory map of a token array."""
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run `dvc repro` to build it)") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a token array ({exc})") from None
    if array.ndim != 1 or array.dtype.kind != "u":
        raise UserError(f"{path}: expected a flat unsigned array, got {array.dtype} "
                        f"{array.shape}")
    return array


def split_point(n_tokens: int, train_fraction: float) -> int:
    return int(n_tokens * train_fraction)
