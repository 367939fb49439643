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
