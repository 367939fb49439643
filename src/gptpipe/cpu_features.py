"""Is bf16 worth it on this CPU? Its bf16 instructions (AMX, AVX-512 BF16), and a
short bf16-vs-fp32 matmul probe, measured once per machine and cached.

The cache (a JSON file in the user's cache dir, $GPTPIPE_CACHE_DIR or
$XDG_CACHE_HOME/gptpipe or ~/.cache/gptpipe) is keyed by CPU model, its bf16
flags, the instruction sets torch may use (ONEDNN_MAX_CPU_ISA and
ATEN_CPU_CAPABILITY cap them) and the torch version: a new CPU, cap or torch
measures again. Which dtype the
probe chose is recorded by the stages that use it (reports/train.json, MLflow),
so the machine-dependent choice is never hidden.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .errors import UserError
from .files import write_json

# bf16 must beat fp32 matmuls by this much: a training step also runs
# elementwise work that bf16 does not speed up (on AMX, 6x faster matmuls made a
# 1.45x faster step; emulated bf16 on AVX2-only CPUs is slower than fp32).
MIN_MATMUL_SPEEDUP = 1.5
PROBE_SIZE = 1024


@dataclass(frozen=True)
class CpuFeatures:
    """What oneDNN may use here: the CPU's instructions, less any the environment's
    cap (`isa_cap`, e.g. "ONEDNN_MAX_CPU_ISA=AVX2") forbids."""
    model: str
    amx: bool
    avx512_bf16: bool
    avx2: bool
    isa_cap: str = ""

    @property
    def has_bf16_instructions(self) -> bool:
        return self.amx or self.avx512_bf16

    def describe(self) -> str:
        found = [name for name, has in (("AMX", self.amx), ("AVX-512 BF16", self.avx512_bf16),
                                        ("AVX2", self.avx2)) if has]
        text = ", ".join(found) or "none of AMX, AVX-512 BF16, AVX2"
        return f"{text} (capped: {self.isa_cap})" if self.isa_cap else text


def cpu_features() -> CpuFeatures:
    onednn = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
              or "").strip().upper()
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().upper()
    onednn_capped = onednn not in ("", "ALL", "DEFAULT")
    caps = []
    if onednn_capped:
        caps.append(f"ONEDNN_MAX_CPU_ISA={onednn}")
    if aten not in ("", "DEFAULT"):
        caps.append(f"ATEN_CPU_CAPABILITY={aten}")
    # A oneDNN cap below its bf16 ISAs (e.g. AVX2, AVX512_CORE) leaves bf16 matmuls to
    # slow reference code, as on a CPU without the instructions.
    bf16_allowed = not onednn_capped or any(tag in onednn for tag in ("BF16", "AMX", "FP16",
                                                                       "AVX10"))
    amx_allowed = not onednn_capped or "AMX" in onednn
    return CpuFeatures(model=_cpu_model(),
                       amx=amx_allowed and _torch_says("_is_amx_tile_supported"),
                       avx512_bf16=bf16_allowed and _torch_says("_is_avx512_bf16_supported"),
                       avx2=_torch_says("_is_avx2_supported"), isa_cap=", ".join(caps))


def _torch_says(name: str) -> bool:
    try:  # private torch.cpu helpers (what oneDNN will use); absent means no
        return bool(getattr(torch.cpu, name)())
    except Exception:  # noqa: BLE001
        return False


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# -- the decision ----------------------------------------------------------------

def choose_bf16(features: CpuFeatures, speedup: float | None) -> tuple[bool, str]:
    """bf16 or not on this CPU, and why. `speedup` is the probe's bf16/fp32
    matmul throughput (None: not measured, as without bf16 instructions)."""
    if not features.has_bf16_instructions:
        return False, "auto: no bf16 instructions (AMX or AVX-512 BF16) on this CPU: fp32"
    if speedup is None:
        return False, f"auto: {features.describe()}, bf16 not measured: fp32"
    verdict = "bf16" if speedup >= MIN_MATMUL_SPEEDUP else "fp32"
    return speedup >= MIN_MATMUL_SPEEDUP, (
        f"auto: {features.describe()}; bf16 matmuls measured {speedup:.1f}x fp32 "
        f"(bf16 needs >= {MIN_MATMUL_SPEEDUP}x): {verdict}")


# -- the probe and its cache -------------------------------------------------------

def cache_file() -> Path:
    base = os.environ.get("GPTPIPE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "gptpipe")
    return Path(base) / "bf16-probe.json"


def cache_key(features: CpuFeatures) -> str:
    cap = f" | {features.isa_cap}" if features.isa_cap else ""
    return (f"{features.model} | amx={int(features.amx)} avx512_bf16="
            f"{int(features.avx512_bf16)}{cap} | torch {torch.__version__}")


def matmul_speedup(n: int = PROBE_SIZE, reps: int = 5) -> float:
    """bf16 / fp32 throughput of an n x n matmul, interleaved, best of `reps`
    (the best, not the median: other processes' load only ever adds time)."""
    pairs = {dtype: (torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype))
             for dtype in (torch.float32, torch.bfloat16)}
    best = {dtype: float("inf") for dtype in pairs}
    for a, b in pairs.values():  # warm-up: oneDNN picks its kernels
        a @ b
    for _ in range(reps):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def cached_speedup(features: CpuFeatures, probe: Callable[[], float] = matmul_speedup,
                   path: Path | None = None) -> tuple[float, bool]:
    """The probe's result for this machine: from the cache, else measured now and
    cached. Returns (speedup, whether it came from the cache)."""
    path = path or cache_file()
    key = cache_key(features)
    entries: dict = {}
    with contextlib.suppress(OSError, ValueError):
        entries = json.loads(path.read_text(encoding="utf-8"))
    entry = entries.get(key) if isinstance(entries, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("bf16_matmul_speedup"), (int, float)):
        return float(entry["bf16_matmul_speedup"]), True
    speedup = round(float(probe()), 2)
    entries = entries if isinstance(entries, dict) else {}
    entries[key] = {"bf16_matmul_speedup": speedup, "matmul": PROBE_SIZE,
                    "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    # an unwritable cache only costs a probe per run
    with contextlib.suppress(OSError, UserError):
        write_json(path, entries)  # atomic: parallel stages may write it at once
    return speedup, False


@functools.lru_cache(maxsize=1)  # once per process: train asks for it more than once
def cpu_bf16_choice() -> tuple[bool, str]:
    """train.autocast auto on a CPU: bf16 where its instructions exist and the
    (cached) probe finds bf16 matmuls fast; fp32 elsewhere."""
    features = cpu_features()
    speedup = cached_speedup(features)[0] if features.has_bf16_instructions else None
    return choose_bf16(features, speedup)
