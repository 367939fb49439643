"""Training and evaluation windows drawn from a memory-mapped token array.

Training windows come from a numpy PCG64 generator seeded by train.seed; its
state is saved in checkpoints, so a resumed run draws the same windows as an
uninterrupted one. Evaluation windows are fixed: drawn once from a generator
seeded by (seed, split), the same set at every eval and in every run.
"""
from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

EVAL_STREAM = {"train": 1, "val": 2}


def windows(data: np.ndarray, block_size: int) -> np.ndarray:
    """A zero-copy (N, block_size + 1) view of every window of the array."""
    return sliding_window_view(data, block_size + 1)


def gather(data: np.ndarray, starts: np.ndarray, block_size: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.from_numpy(windows(data, block_size)[starts].astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]
    if device.type != "cpu":
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


class WindowSampler:
    """Random training windows; the generator state is part of a checkpoint."""

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int, seed: int,
                 stream: int = 0):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        # A separate stream per DDP rank: ranks draw different windows.
        self.rng = np.random.Generator(np.random.PCG64([seed, stream]))
        self.n_starts = len(data) - block_size

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self.rng.integers(0, self.n_starts, size=self.batch_size)
        return gather(self.data, starts, self.block_size, device)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def fixed_batches(data: np.ndarray, block_size: int, batch_size: int, n_batches: int,
                  seed: int, split: str) -> list[np.ndarray]:
    rng = np.random.Generator(np.random.PCG64([seed, 1000 + EVAL_STREAM[split]]))
    n_starts = len(data) - block_size
    return [rng.integers(0, n_starts, size=batch_size) for _ in range(n_batches)]
