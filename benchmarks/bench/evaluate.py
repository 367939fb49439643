"""evaluate: the evaluate stage's inference, fp32 (the stage before train.autocast
reached it, batch 64) vs the stage now (train.autocast auto, the default
evaluate.batch_size), and bf16/fp32 at batch 64 and 256."""
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
    from gptpipe.devices import choose_autocast
    from gptpipe.params import EvaluateParams

    cpu = torch.device("cpu")
    auto = choose_autocast(cpu, "auto")
    batch = EvaluateParams().batch_size  # the stage's default evaluate.batch_size
    stage_label = f"the evaluate stage now: train.autocast auto ({auto.name}), batch {batch}"
    variants = {"fp32, batch 64 (the evaluate stage before)": (None, 64),
                stage_label: (auto.dtype, batch),
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
        goal = ""
        if label == stage_label and auto.dtype is None:  # fp32 here: nothing to gain
            goal = ">= 2x: n/a (auto keeps fp32 on this CPU)"
        elif label == stage_label:  # faster, and the metric within 1e-3 nats of fp32
            goal = ctx.judge(">= 2x, |diff| <= 1e-3", tok_s / base >= 2 and delta <= 1e-3)
        ctx.add("evaluate", f"evaluate inference ({what}): {label}",
                f"{tok_s:,.0f} tok/s, loss {nats[label] / targets:.5f} "
                f"(|diff| {delta:.1e} nats/token)", f"{base:,.0f} tok/s",
                ratio(tok_s, base), goal)
