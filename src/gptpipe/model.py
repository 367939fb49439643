"""The models: the seed notebooks' bigram table and the lecture's GPT.

GPT follows the lecture and nanoGPT: token + learned position embeddings,
pre-LayerNorm blocks of causal multi-head self-attention and a 4x MLP with
residuals, a final LayerNorm and a linear head. Attention keeps an optional
KV cache so sampling does not recompute the whole context for every token.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from .params import ModelParams


@dataclass(frozen=True)
class ModelConfig(ModelParams):
    """The model params (their fields and defaults) and the tokenizer's vocab size:
    what a model file records to rebuild the model."""
    vocab_size: int = 65

    def as_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        # the key order model files have always had
        return {key: fields.pop(key) for key in ("kind", "vocab_size", "block_size")} | fields


class KVCache:
    """Keys and values of the tokens seen so far, one preallocated buffer per layer."""

    def __init__(self, cfg: ModelConfig, batch: int, device, dtype):
        shape = (batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0  # tokens held; the next token's position

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


def _attention(q, k, v, mask, causal: bool, dropout_p: float) -> torch.Tensor:
    """scaled_dot_product_attention; always fp32 on CPU, also under bf16 autocast:
    torch's bf16 attention backward on CPU is ~6x slower than fp32 at these sizes,
    while the bf16 matmuls around it are the fast part (benchmarks/)."""
    if q.device.type == "cpu":
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                               is_causal=causal, dropout_p=dropout_p)
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.dropout = layer, cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               cache: KVCache | None) -> torch.Tensor:
        """Attention of the T new queries (B, nh, T, hs) over the cached prefix and
        themselves; the new keys and values join the cache."""
        T, past = q.size(2), 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(self.layer, k, v)
        if past == 0:
            mask, causal = None, True
        elif T == 1:
            mask, causal = None, False  # one new token may look at everything before it
        else:  # several new tokens after a cached prefix
            mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(past)
            causal = False
        return _attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = self.attend(q, k, v, cache)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class CachedLM(nn.Module):
    """What GPT and Modern share: a KV cache sized by block_size, and the check
    that new tokens after the cached ones still fit in it."""

    cfg: ModelConfig

    def new_cache(self, batch: int) -> KVCache:
        return KVCache(self.cfg, batch, self.wte.weight.device, self.wte.weight.dtype)

    def _window(self, idx: torch.Tensor, cache: KVCache | None) -> tuple[int, int, int]:
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"context of {start + T} tokens exceeds block_size "
                             f"{self.cfg.block_size}")
        return B, T, start


class GPT(CachedLM):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale residual projections so the residual stream's variance
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, start = self._window(idx, cache)
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.ln_f(x))


class Bigram(nn.Module):
    """The seed notebooks' first model: each token looks up its successor's logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.normal_(self.table.weight, mean=0.0, std=0.02)

    def new_cache(self, batch: int) -> None:
        return None

    def forward(self, idx: torch.Tensor, cache: None = None) -> torch.Tensor:
        return self.table(idx)


# -- model.kind: modern ---------------------------------------------------------
# The same blocks with the choices of today's small GPTs (modded-nanogpt): rotary
# position embeddings instead of a learned table, parameter-free RMSNorm, QK-norm,
# a ReLU² MLP, zero-initialised output projections and an untied head. With
# train.optimizer: muon it reaches the lecture model's loss in a fraction of the
# steps (benchmarks/). The KV cache holds rotated keys; positions come from
# cache.length, so cached and uncached sampling see the same positions.

def _rotary_tables(block_size: int, head_dim: int, base: float = 10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (B, T, heads, head_dim), rotating the two halves of each head."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


class ModernAttention(CausalSelfAttention):
    """The same layers and cache; QK-norm and rotary positions on q and k."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).unbind(2)
        if ve is not None:  # the token's value embedding (B, T, C), split into heads as v
            v = v + ve.view(B, T, self.n_head, C // self.n_head)
        q, k = _rotate(_rms(q), cos, sin), _rotate(_rms(k), cos, sin)  # QK-norm, then RoPE
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        y = self.attend(q, k, v, cache)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


class ModernMLP(MLP):
    """The same layers, with relu² in place of GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.relu(self.c_fc(x)).square()))


class ModernBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn = ModernAttention(cfg, layer)
        self.mlp = ModernMLP(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None = None,
                ve: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(_rms(x), cos, sin, cache, ve)
        return x + self.mlp(_rms(x))


class Modern(CachedLM):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if (cfg.n_embd // cfg.n_head) % 2:
            raise ValueError("model.kind modern needs an even head size "
                             "(model.n_embd / model.n_head) for rotary embeddings")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ModernBlock(cfg, i) for i in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        cos, sin = _rotary_tables(cfg.block_size, cfg.n_embd // cfg.n_head)
        self.register_buffer("rope_cos", cos, persistent=False)  # rebuilt, never saved
        self.register_buffer("rope_sin", sin, persistent=False)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.zeros_(p)  # each block starts as the identity
            elif p.dim() == 2 and name.startswith("blocks."):
                nn.init.normal_(p, mean=0.0, std=0.02)
        if cfg.tie_weights:
            nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
            self.lm_head.weight = self.wte.weight
        else:
            nn.init.normal_(self.wte.weight, mean=0.0, std=1.0)
            nn.init.zeros_(self.lm_head.weight)
        # Value embeddings (modded-nanogpt): a table per layer whose row for each token
        # is added to that token's attention values; a char model's vocab makes them
        # cheap, and they reach the benchmark's loss in ~7% fewer steps (benchmarks/).
        # Made last, so a model without them draws the same initial weights as before.
        self.value_embeds = None
        if cfg.value_embeds:
            self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.n_embd)
                                              for _ in range(cfg.n_layer))
            for table in self.value_embeds:
                nn.init.normal_(table.weight, mean=0.0, std=0.1)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, start = self._window(idx, cache)
        cos = self.rope_cos[start:start + T].view(1, T, 1, -1)  # (B, T, heads, head_dim)
        sin = self.rope_sin[start:start + T].view(1, T, 1, -1)
        x = self.drop(_rms(self.wte(idx)))
        for i, block in enumerate(self.blocks):
            ve = self.value_embeds[i](idx) if self.value_embeds is not None else None
            x = block(x, cos, sin, cache, ve)
        if cache is not None:
            cache.length += T
        return self.lm_head(_rms(x))


def build(cfg: ModelConfig) -> nn.Module:
    return {"gpt": GPT, "bigram": Bigram, "modern": Modern}[cfg.kind](cfg)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           reduction=reduction)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_flops_per_token(model: nn.Module) -> float:
    """nanoGPT's estimate of one training token's FLOPs (forward and backward):
    6 x matmul params + 12 x layers x width x context (attention's scores and
    weighted sum; none in the bigram model)."""
    cfg = model.cfg
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    attention = 0 if cfg.kind == "bigram" else 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return float(6 * matmul + attention)
