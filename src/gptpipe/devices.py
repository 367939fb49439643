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


# -- CPU threads: one policy for every torch stage (train, evaluate, sample) -------------

WORKERS_ENV = "GPTPIPE_WORKERS"  # how many torch stages share this machine's cores
MAX_SLOTS = 256


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def slots_dir() -> "os.PathLike":
    """Where the torch stages of one project count each other: the project root's
    .gptpipe/slots. DVC sets DVC_ROOT to the project root for every stage, also for
    queued experiments, which run in temp copies under .dvc/tmp/exps."""
    from pathlib import Path

    return Path(os.environ.get("DVC_ROOT") or ".") / ".gptpipe" / "slots"


class ThreadPolicy:
    """`train.threads` for this process. N > 0: N threads. 0 (auto): the cores
    divided by the torch stages running at once: $GPTPIPE_WORKERS when set, else
    counted: each stage holds a lock on one file of .gptpipe/slots/ while it runs
    (released by the OS when it exits, also when killed), and the stages count the
    held locks. `refresh()` counts again, so a stage that started alone gives up
    threads when another starts, and takes them back when it ends."""

    def __init__(self, requested: int):
        self.requested = requested
        self.threads = 0
        self.reason = ""
        self.workers = 1
        self._slot = None
        if requested == 0 and not os.environ.get(WORKERS_ENV):
            self._slot = _take_slot()

    def count_workers(self) -> tuple[int, str]:
        if env := os.environ.get(WORKERS_ENV):
            try:
                workers = int(env)
            except ValueError:
                raise UserError(f"{WORKERS_ENV}: expected a whole number of workers, "
                                f"got {env!r}") from None
            if workers < 1:
                raise UserError(f"{WORKERS_ENV}: must be >= 1, got {env!r}")
            return workers, f"{WORKERS_ENV}={workers}"
        if self._slot is None:
            return 1, "no slot"
        held = _slots_held()
        return held, f"{held} gptpipe torch stage{'s' if held != 1 else ''} running"

    def resolve(self) -> int:
        """The thread count now."""
        if self.requested:
            self.reason = f"train.threads {self.requested}"
            return self.requested
        cores = cpu_cores()
        self.workers, why = self.count_workers()
        self.reason = f"auto: {cores} cores / {why}"
        return max(1, cores // self.workers)

    def apply(self) -> int:
        """Set torch's thread count to the policy's; returns it."""
        threads = self.resolve()
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads
        return threads

    def describe(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} ({self.reason})"


def use_threads(requested: int) -> ThreadPolicy:
    """Apply train.threads (0 = auto) to this process; keep the policy alive while
    the stage runs (it holds the slot)."""
    policy = ThreadPolicy(requested)
    policy.apply()
    return policy


def _take_slot():
    """An open file whose exclusive lock this process holds, the lowest free one;
    None when locks are not available (then auto counts this stage alone)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    folder = slots_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    for index in range(MAX_SLOTS):
        try:
            handle = open(folder / f"slot-{index}", "a+b")
        except OSError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError:
            handle.close()
    return None


def _slots_held() -> int:
    """How many of the slot files are locked, this process's own included (a lock on
    another open of the same file conflicts, also within one process)."""
    import fcntl

    held = 0
    folder = slots_dir()
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.startswith("slot-")]
    except OSError:
        return 1
    for name in names:
        try:
            with open(folder / name, "rb") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                except OSError:
                    held += 1
        except OSError:
            continue
    return max(1, held)
