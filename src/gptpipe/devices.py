"""Where and how tensors compute: the device, bf16 autocast, and determinism
(every RNG seeded, deterministic kernels)."""
from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but torch sees no CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise UserError("train.device: mps was asked for but is not available")
    return torch.device(name)


@dataclass(frozen=True)
class AutocastChoice:
    dtype: torch.dtype | None  # None: fp32
    reason: str

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"


def choose_autocast(device: torch.device, mode: str) -> AutocastChoice:
    """train.autocast on this device: off, bf16, or auto, which measures (cached
    per machine, gptpipe/cpu_features.py) rather than trusting a CPU brand."""
    if mode == "off":
        return AutocastChoice(None, "train.autocast off: fp32")
    if mode == "bf16":
        return AutocastChoice(torch.bfloat16, "train.autocast bf16")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return AutocastChoice(torch.bfloat16, "auto: CUDA device with bf16: bf16")
        return AutocastChoice(None, "auto: CUDA device without bf16: fp32")
    if device.type == "cpu":
        from .cpu_features import cpu_bf16_choice

        bf16, reason = cpu_bf16_choice()
        return AutocastChoice(torch.bfloat16 if bf16 else None, reason)
    return AutocastChoice(None, f"auto: {device.type}: fp32")


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    return choose_autocast(device, mode).dtype


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_deterministic(seed: int) -> None:
    """Seed every RNG and ask torch for deterministic kernels.

    On CUDA that also means: no cuDNN autotuning, no TF32, and the cuBLAS
    workspace setting deterministic GEMMs need (set before CUDA starts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if hasattr(torch._C, "_set_deterministic_algorithms") and "torch._inductor" not in sys.modules:
        # What use_deterministic_algorithms does, minus importing torch._inductor to
        # set its flag: ~3 s of start-up per train stage, for a compiler never used here.
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
