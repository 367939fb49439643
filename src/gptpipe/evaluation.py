"""The evaluate stage: loss over a whole split, not a random sample of it.

The split is read in consecutive, non-overlapping windows of block_size
targets; a last, shorter remainder is scored from a full window ending at the
end of the split, counting only the targets not scored yet. Bits per character
divide the total nats by the characters those targets decode to, so char, BPE
and pretrained tokenizers compare fairly.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from .batches import gather
from .model import loss_fn


@torch.inference_mode()
def total_nats(model: nn.Module, data: np.ndarray, batch_size: int,
               device: torch.device, amp=None) -> tuple[float, int]:
    """Sum of -log p(target) over every target of `data`, and how many targets."""
    from .devices import autocast

    model.eval()
    block = model.cfg.block_size
    n_targets = len(data) - 1
    full = n_targets // block
    starts = np.arange(full, dtype=np.int64) * block
    nats = 0.0
    for i in range(0, len(starts), batch_size):
        x, y = gather(data, starts[i:i + batch_size], block, device)
        with autocast(device, amp):
            nats += loss_fn(model(x), y, reduction="sum").double().item()
    remainder = n_targets - full * block
    if remainder:
        start = np.array([n_targets - block], dtype=np.int64)
        x, y = gather(data, start, block, device)
        with autocast(device, amp):
            per_token = loss_fn(model(x), y, reduction="none")
        nats += per_token[-remainder:].double().sum().item()
    return nats, n_targets


def split_metrics(nats: float, n_targets: int, n_chars: int) -> dict:
    mean = nats / n_targets
    return {"loss": mean, "perplexity": math.exp(min(mean, 700.0)),
            "bits_per_char": nats / n_chars / math.log(2), "tokens": n_targets,
            "characters": n_chars}
