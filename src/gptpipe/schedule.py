"""The learning-rate schedule, as a multiplier of each param group's peak lr
(its `initial_lr`): linear warmup, then cosine decay to min_lr / lr."""
from __future__ import annotations

import math


def lr_multiplier(step: int, lr: float, min_lr: float, warmup_iters: int,
                  max_iters: int) -> float:
    """The fraction of the peak lr that step `step` (0-based) takes: rises
    linearly to 1 over warmup_iters, then falls along a cosine to min_lr / lr
    at max_iters and stays there."""
    if step < warmup_iters:
        return (step + 1) / (warmup_iters + 1)
    floor = min_lr / lr
    if step >= max_iters:
        return floor
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)
