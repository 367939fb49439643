"""peak: fp32 and bf16 2048x2048 matmul GFLOP/s, the MFU denominator."""
from __future__ import annotations

import time

from .common import Context, ratio


def matmul_gflops(n: int = 2048, reps: int = 10, dtypes: tuple[str, ...] = ("float32", "bfloat16")
                  ) -> dict[str, float]:
    import torch

    mats = {getattr(torch, name): (torch.randn(n, n).to(getattr(torch, name)),
                                   torch.randn(n, n).to(getattr(torch, name)))
            for name in dtypes}
    times: dict = {dtype: [] for dtype in mats}
    for dtype, (a, b) in mats.items():  # warm-up, which also times a first product
        a @ b
        start = time.perf_counter()
        a @ b
        times[dtype].append(time.perf_counter() - start)
    for _ in range(reps - 1):  # interleaved
        for dtype, (a, b) in mats.items():
            if sum(times[dtype]) > 5.0:  # bf16 without its instructions: ~100x slower
                continue
            start = time.perf_counter()
            a @ b
            times[dtype].append(time.perf_counter() - start)
    # a peak: the best repetition (the median would count the other users' load)
    return {str(dtype).replace("torch.", ""): 2 * n**3 / min(t) / 1e9
            for dtype, t in times.items()}


def bench_peak(ctx: Context) -> None:
    peaks = matmul_gflops(reps=4 if ctx.quick else 12)
    ctx.peak_fp32 = peaks["float32"]
    ctx.add("peak", "fp32 matmul 2048² (torch), best of the repetitions",
            f"{peaks['float32']:.0f} GFLOP/s",
            "the reference machine's ≈ 175 GFLOP/s (another day, not this command)",
            ratio(peaks["float32"], 175.0))
    ctx.add("peak", "bf16 matmul 2048² (torch), best of the repetitions",
            f"{peaks['bfloat16']:.{0 if peaks['bfloat16'] >= 10 else 2}f} GFLOP/s",
            f"fp32 {peaks['float32']:.0f} GFLOP/s", ratio(peaks["bfloat16"], peaks["float32"]))
