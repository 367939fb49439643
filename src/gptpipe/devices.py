"""Where and how tensors compute: the device, bf16 autocast, and determinism
(every RNG seeded, deterministic kernels)."""
from __future__ import annotations

import contextlib
import os
import random
import sys

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


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # On CPUs with AMX (bf16 matrix tiles), bf16 matmuls run ~6x faster than fp32
    # and training the lecture's model ~1.5x faster, to the same loss (benchmarks/;
    # attention stays fp32, see model._attention). Elsewhere `auto` keeps fp32.
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def cpu_has_amx() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - a private torch API; absent means no
        return False


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
