"""The evaluate stage: loss over a whole split, or over a fixed, evenly spread
subset of its windows.

The split is read in consecutive, non-overlapping windows of block_size
targets; a last, shorter remainder is scored from a full window ending at the
end of the split, counting only the targets not scored yet. Bits per character
divide the total nats by the characters those targets decode to, so char, BPE
and pretrained tokenizers compare fairly.

A subset (`evaluate.train_windows`) takes `windows` of those full windows, one
from the middle of each of `windows` equal stretches of the split: the same
windows on every run, a pure function of the split's length, block_size and
`windows`. Its loss carries a standard error (`subset_nats`).
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
    # one autocast region for every batch: the weights' bf16 copies are cast once
    with autocast(device, amp):
        for i in range(0, len(starts), batch_size):
            x, y = gather(data, starts[i:i + batch_size], block, device)
            nats += loss_fn(model(x), y, reduction="sum").double().item()
        remainder = n_targets - full * block
        if remainder:
            start = np.array([n_targets - block], dtype=np.int64)
            x, y = gather(data, start, block, device)
            per_token = loss_fn(model(x), y, reduction="none")
            nats += per_token[-remainder:].double().sum().item()
    return nats, n_targets


def split_metrics(nats: float, n_targets: int, n_chars: int) -> dict:
    mean = nats / n_targets
    return {"loss": mean, "perplexity": math.exp(min(mean, 700.0)),
            "bits_per_char": nats / n_chars / math.log(2), "tokens": n_targets,
            "characters": n_chars}


def windows_total(n_targets: int, block: int) -> int:
    """How many windows score the whole split: the full ones, and the remainder's."""
    full = n_targets // block
    return full + (1 if n_targets > full * block else 0)


def spread_starts(n_targets: int, block: int, windows: int) -> np.ndarray:
    """The starts of `windows` full windows, evenly spread: the split's full windows
    cut into `windows` equal stretches, the middle window of each. Deterministic."""
    full = n_targets // block
    if not 1 <= windows <= full:
        raise ValueError(f"windows must be between 1 and {full}, got {windows}")
    picked = (np.arange(windows, dtype=np.int64) * 2 + 1) * full // (2 * windows)
    return picked * block


@torch.inference_mode()
def window_nats(model: nn.Module, data: np.ndarray, starts: np.ndarray, batch_size: int,
                device: torch.device, amp=None) -> np.ndarray:
    """-log p(target) summed over each window's block_size targets, one float64 per
    window of `starts`."""
    from .devices import autocast

    model.eval()
    block = model.cfg.block_size
    out = np.empty(len(starts), dtype=np.float64)
    with autocast(device, amp):
        for i in range(0, len(starts), batch_size):
            x, y = gather(data, starts[i:i + batch_size], block, device)
            per_token = loss_fn(model(x), y, reduction="none").double().view(len(x), block)
            out[i:i + len(x)] = per_token.sum(dim=1).cpu().numpy()
    return out


def subset_nats(model: nn.Module, data: np.ndarray, windows: int, batch_size: int,
                device: torch.device, amp=None) -> tuple[float, int, np.ndarray, float]:
    """Total nats and targets over `windows` evenly spread windows, their starts, and
    the standard error of the mean loss per target (between windows, with the
    finite-population correction: 0 when every full window is scored)."""
    block = model.cfg.block_size
    full = (len(data) - 1) // block
    starts = spread_starts(len(data) - 1, block, windows)
    nats = window_nats(model, data, starts, batch_size, device, amp)
    stderr = 0.0
    if windows > 1:
        stderr = float((nats / block).std(ddof=1) / math.sqrt(windows)
                       * math.sqrt(1 - windows / full))
    return float(nats.sum()), windows * block, starts, stderr
