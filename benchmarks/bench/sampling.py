"""sampling: new tokens/s with the KV cache vs recomputation, greedy tokens compared."""
from __future__ import annotations

import time

from .common import Context, ratio


def bench_sampling(ctx: Context) -> None:
    import torch

    from gptpipe.model import ModelConfig, build, count_params
    from gptpipe.sampling import generate, stream

    new_tokens = 60 if ctx.quick else 1000
    torch.manual_seed(1337)
    cfg = ModelConfig(kind="gpt", vocab_size=65, block_size=256, n_layer=6, n_head=6,
                      n_embd=384, dropout=0.0)
    model = build(cfg).eval()
    # Random weights give near-uniform logits, where float rounding could flip a
    # greedy choice; a sharper head keeps the choices well apart (speed is unchanged).
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    prompt = [0]
    generate(model, prompt, 8, temperature=0.0)  # warm-up
    # Both generators advance in lockstep, one token each in turn, so a burst of
    # load on the shared machine slows both alike.
    gens = {use_cache: stream(model, prompt, new_tokens, temperature=0.0, use_cache=use_cache)
            for use_cache in (True, False)}
    tokens = {True: [], False: []}
    seconds = {True: 0.0, False: 0.0}
    for _ in range(new_tokens):
        for use_cache, gen in gens.items():
            start = time.perf_counter()
            tokens[use_cache].append(next(gen))
            seconds[use_cache] += time.perf_counter() - start
    same = tokens[True] == tokens[False]
    n_same = sum(a == b for a, b in zip(tokens[True], tokens[False]))
    print(f"  greedy tokens identical with and without the KV cache: "
          f"{'yes' if same else 'NO'} ({n_same}/{new_tokens})", flush=True)
    cached, uncached = new_tokens / seconds[True], new_tokens / seconds[False]
    ctx.add("sampling", f"sample {new_tokens} new tokens, {cfg.n_layer}x{cfg.n_head}x"
            f"{cfg.n_embd} ({count_params(model) / 1e6:.1f}M params, random weights), "
            f"context {cfg.block_size}, greedy: KV cache",
            f"{cached:,.1f} tok/s; greedy tokens identical to recomputation: "
            f"{'yes' if same else 'NO'} ({n_same}/{new_tokens})",
            f"no cache (sampling.stream use_cache=False) {uncached:,.1f} tok/s",
            ratio(cached, uncached), ctx.judge(">= 5x", cached / uncached >= 5))
    if not same:
        raise AssertionError("greedy sampling differs with and without the KV cache")
