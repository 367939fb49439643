"""Sampling: temperature, top-k and top-p, seeded, with a KV cache.

Context policy (both with and without the cache): the context holds at most
block_size tokens; when it is full, the oldest half is dropped and the cache is
refilled from the kept half. The uncached path recomputes the same context
every step, so greedy decoding gives the same tokens either way.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.nn import functional as F


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def pick(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float,
         generator: torch.Generator | None) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def stream(model: nn.Module, prompt: list[int], max_new_tokens: int, *,
           temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
           seed: int | None = None, use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time."""
    model.eval()
    device = next(model.parameters()).device
    block = model.cfg.block_size
    generator = None
    if seed is not None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
    context = list(prompt[-block:])
    cache = model.new_cache(1) if use_cache else None
    pending = context  # tokens the cache has not seen yet
    for _ in range(max_new_tokens):
        if cache is not None:
            logits = model(torch.tensor([pending], device=device), cache)[0, -1]
        else:
            logits = model(torch.tensor([context], device=device))[0, -1]
        token = pick(logits.cpu(), temperature, top_k, top_p, generator)
        yield token
        context.append(token)
        pending = [token]
        if len(context) > block:
            context = context[-(block // 2):]  # slide: keep the newest half
            if cache is not None:
                cache = model.new_cache(1)
                pending = context


def generate(model: nn.Module, prompt: list[int], max_new_tokens: int,
             on_token: Callable[[int], None] | None = None, **options) -> list[int]:
    out = []
    for token in stream(model, prompt, max_new_tokens, **options):
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out
