"""The split stage: the first part of the tokens trains, the rest validates.

By position, as in the lecture: validation text is text the model never saw,
not a random sample of windows that overlap the training text.
"""
from __future__ import annotations

import numpy as np

from .arrays import split_point
from .errors import UserError


def split_tokens(ids: np.ndarray, train_fraction: float,
                 block_size: int) -> tuple[np.ndarray, np.ndarray]:
    cut = split_point(len(ids), train_fraction)
    train, val = ids[:cut], ids[cut:]
    need = block_size + 1
    if len(val) < need:
        raise UserError(f"model.block_size: {block_size} needs a val split of at least "
                        f"{need} tokens, but split.train_fraction={train_fraction} leaves "
                        f"{len(val)} of {len(ids)}; use more text, a smaller block_size "
                        "or a smaller train_fraction")
    if len(train) < need:
        raise UserError(f"model.block_size: {block_size} needs a train split of at least "
                        f"{need} tokens, got {len(train)}")
    return train, val


# A val chunk this long found verbatim in train is text the model may have memorised.
OVERLAP_CHUNK = 32
_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64 (uint64 arithmetic wraps)
_HASH_BASE_INV = pow(_HASH_BASE, -1, 2**64)


def _powers(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2**64: (n,) uint64."""
    steps = np.full(n, base, dtype=np.uint64)
    steps[0] = 1
    return np.cumprod(steps, dtype=np.uint64)


def _window_hashes(ids: np.ndarray, length: int) -> np.ndarray:
    """A polynomial hash of every window of `length` ids: (len(ids) - length + 1,) uint64.

    With prefix sums P[i] = sum(v[j] * B**j, j < i), a window's sum P[i+L] - P[i] is
    B**i times its hash; multiplying by B**-i makes equal windows hash equal anywhere."""
    n = len(ids) - length + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    values = np.asarray(ids, dtype=np.uint64) + np.uint64(1)
    prefix = np.zeros(len(ids) + 1, dtype=np.uint64)
    np.cumsum(values * _powers(_HASH_BASE, len(ids)), dtype=np.uint64, out=prefix[1:])
    return (prefix[length:] - prefix[:n]) * _powers(_HASH_BASE_INV, n)


def val_in_train(train: np.ndarray, val: np.ndarray, chunk: int = OVERLAP_CHUNK) -> dict:
    """How much of val also occurs in train: val cut into consecutive `chunk`-token
    pieces, the share of them found verbatim anywhere in train. Near 0 for distinct
    texts; a file present twice (one copy per split) shows up as its share of val."""
    if len(val) < chunk or len(train) < chunk:
        return {"chunk_tokens": chunk, "val_chunks": 0, "found_in_train": 0, "share": 0.0}
    in_train = np.sort(_window_hashes(train, chunk))
    pieces = _window_hashes(val, chunk)[::chunk]  # (len(val) // chunk,)
    where = np.minimum(np.searchsorted(in_train, pieces), len(in_train) - 1)
    found = int((in_train[where] == pieces).sum())
    return {"chunk_tokens": chunk, "val_chunks": int(len(pieces)), "found_in_train": found,
            "share": round(found / len(pieces), 6)}
