"""evaluate: the evaluate stage's inference, fp32 vs bf16, batch 64 vs 256."""
from __future__ import annotations

import time

import numpy as np

from .common import Context, ratio


def bench_evaluate(ctx: Context) -> None:
    import torch

    from gptpipe.arrays import load_tokens
    from gptpipe.evaluation import total_nats
    from gptpipe.inference import load_model
    from gptpipe.model import ModelConfig, build

    if ctx.eval_model is not None and ctx.shakes is not None:
        model, _ = load_model(ctx.eval_model, ctx.shakes.path / "data/tokens/tokenizer.json")
        data = load_tokens(ctx.shakes.path / "data/split/train.npy")
        what = ("the baseline's trained model" if "run0" in ctx.eval_model.name else
                "a trained model") + ", tinyshakespeare train split"
    else:
        torch.manual_seed(0)
        model = build(ModelConfig(kind="gpt", vocab_size=65)).eval()
        data = np.random.default_rng(0).integers(0, 65, size=400_000).astype(np.uint8)
        what = "an untrained model, random tokens"
    n = 40_000 if ctx.quick else 400_000
    chunks = [data[i:i + n // 8 + 1] for i in range(0, n, n // 8)]
    cpu = torch.device("cpu")
    variants = {"fp32, batch 64 (the evaluate stage)": (None, 64),
                "bf16 autocast, batch 64": (torch.bfloat16, 64),
                "fp32, batch 256": (None, 256),
                "bf16 autocast, batch 256": (torch.bfloat16, 256)}
    seconds = {k: 0.0 for k in variants}
    nats = {k: 0.0 for k in variants}
    targets = 0
    total_nats(model, chunks[0][:5000], 64, cpu, torch.bfloat16)  # warm-up
    for chunk in chunks:  # interleaved chunk by chunk
        for label, (amp, batch) in variants.items():
            start = time.perf_counter()
            value, count = total_nats(model, chunk, batch, cpu, amp)
            seconds[label] += time.perf_counter() - start
            nats[label] += value
        targets += count
    base_label = next(iter(variants))
    base = targets / seconds[base_label]
    for label in variants:
        tok_s = targets / seconds[label]
        delta = abs(nats[label] - nats[base_label]) / targets
        ctx.add("evaluate", f"evaluate inference ({what}): {label}",
                f"{tok_s:,.0f} tok/s, loss {nats[label] / targets:.5f} "
                f"(|diff| {delta:.1e} nats/token)", f"{base:,.0f} tok/s",
                ratio(tok_s, base))
