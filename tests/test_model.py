"""The models, with real torch: causality, shapes, parameter count, init, KV cache."""
from __future__ import annotations

import math

import pytest
import torch

from gptpipe.model import ModelConfig, build, count_params

torch.set_num_threads(2)

TINY = ModelConfig(kind="gpt", vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY.as_dict(), **overrides})
    return build(cfg).eval()


def expected_params(V: int, T: int, L: int, C: int, bias: bool, tie: bool) -> int:
    """Count by hand from the architecture (lecture / nanoGPT GPT)."""
    b = 1 if bias else 0
    embeddings = V * C + T * C                       # wte + wpe
    layernorm = C + b * C                            # weight (+ bias)
    attn = (C * 3 * C + b * 3 * C) + (C * C + b * C)  # c_attn (q, k, v) + c_proj
    mlp = (C * 4 * C + b * 4 * C) + (4 * C * C + b * C)  # c_fc + c_proj
    block = 2 * layernorm + attn + mlp
    head = 0 if tie else C * V                       # lm_head has no bias
    return embeddings + L * block + layernorm + head


# -- causality and shapes ------------------------------------------------------

def test_changing_a_future_token_never_changes_earlier_logits():
    model = tiny_gpt()
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 17, (2, 16), generator=gen)
    with torch.no_grad():
        base = model(idx)
        for t in (0, 5, 15):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1 + torch.arange(2)) % 17
            out = model(changed)
            # positions before t see exactly the same context: identical logits
            assert torch.equal(out[:, :t], base[:, :t]), f"logits before {t} changed"
            # the changed token itself does change the logits at its position
            assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("kind", ["gpt", "bigram"])
def test_output_shape_is_batch_time_vocab(kind):
    model = tiny_gpt(kind=kind)
    for B, T in ((1, 1), (3, 7), (2, 16)):
        idx = torch.randint(0, 17, (B, T))
        with torch.no_grad():
            assert model(idx).shape == (B, T, 17)


def test_bigram_logits_depend_only_on_the_current_token():
    model = tiny_gpt(kind="bigram")
    idx = torch.tensor([[3, 5, 3, 9, 3]])
    with torch.no_grad():
        out = model(idx)[0]
    assert torch.equal(out[0], out[2]) and torch.equal(out[0], out[4])
    assert torch.equal(out[1], model.table.weight[5])


# -- parameter count -------------------------------------------------------------

def test_parameter_count_of_the_lecture_config_matches_hand_formula():
    cfg = ModelConfig(kind="gpt", vocab_size=65, block_size=64, n_layer=4, n_head=4,
                      n_embd=128, bias=True, tie_weights=False)
    n = count_params(build(cfg))
    assert n == expected_params(65, 64, 4, 128, bias=True, tie=False)
    # spelled out once, so a formula slip cannot hide: 65*128 + 64*128 = 16512;
    # a block: 2*(2*128) + (128*384+384) + (128*128+128) + (128*512+512) + (512*128+128)
    #        = 512 + 49536 + 16512 + 66048 + 65664 = 198272; 4 blocks = 793088;
    # ln_f 256; head 128*65 = 8320 -> 818176
    assert n == 818_176


def test_tied_weights_save_exactly_vocab_times_embd():
    base = dict(kind="gpt", vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    untied = build(ModelConfig(**base, tie_weights=False))
    tied = build(ModelConfig(**base, tie_weights=True))
    assert count_params(untied) - count_params(tied) == 65 * 128
    assert tied.lm_head.weight is tied.wte.weight


def test_parameter_count_without_bias():
    cfg = ModelConfig(kind="gpt", vocab_size=50, block_size=32, n_layer=3, n_head=2,
                      n_embd=48, bias=False)
    assert count_params(build(cfg)) == expected_params(50, 32, 3, 48, bias=False, tie=False)


def test_bigram_parameter_count_is_vocab_squared():
    assert count_params(build(ModelConfig(kind="bigram", vocab_size=65))) == 65 * 65


# -- initialisation ----------------------------------------------------------------

def test_nanogpt_init():
    torch.manual_seed(0)
    n_layer = 4
    model = build(ModelConfig(kind="gpt", vocab_size=65, block_size=64, n_layer=n_layer,
                              n_head=4, n_embd=128))
    proj_std = 0.02 / math.sqrt(2 * n_layer)
    checked = 0
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(proj_std, rel=0.05), name
            checked += 1
        elif name.startswith("ln") or ".ln_" in name:
            want = 1.0 if name.endswith("weight") else 0.0
            assert torch.all(p == want), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:  # embeddings, c_attn, c_fc, lm_head
            assert p.dim() == 2, name
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(p.mean().item()) < 0.002, name
            checked += 1
    # 2 c_proj per block + c_attn + c_fc per block + wte, wpe, lm_head
    assert checked == 4 * n_layer + 3


# -- KV cache --------------------------------------------------------------------------

def test_kv_cache_forward_equals_full_forward():
    model = tiny_gpt(seed=3, block_size=24)
    idx = torch.randint(0, 17, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2)
        pieces = [model(idx[:, :6], cache)]            # prefill
        pieces.append(model(idx[:, 6:10], cache))       # several tokens after a prefix
        for t in range(10, 24):                         # one token at a time
            pieces.append(model(idx[:, t:t + 1], cache))
        assert cache.length == 24
    cached = torch.cat(pieces, dim=1)
    assert cached.shape == full.shape
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_model_refuses_a_context_longer_than_block_size():
    model = tiny_gpt()
    with torch.no_grad():
        model(torch.zeros(1, 16, dtype=torch.long))  # exactly block_size is fine
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(1, 17, dtype=torch.long))
        cache = model.new_cache(1)
        model(torch.zeros(1, 12, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(1, 5, dtype=torch.long), cache)
