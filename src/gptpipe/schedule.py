"""The learning-rate schedule: linear warmup, then cosine decay to min_lr."""
from __future__ import annotations

import math


def lr_at(step: int, lr: float, min_lr: float, warmup_iters: int, max_iters: int) -> float:
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
