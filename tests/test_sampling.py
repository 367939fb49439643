"""Sampling with real torch: seeds, greedy decoding, the KV cache across a
sliding window, top-k / top-p, and prompt encoding errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gptpipe.errors import UserError
from gptpipe.inference import encode_prompt
from gptpipe.model import ModelConfig, build
from gptpipe.params import TrainParams
from gptpipe.sampling import filter_logits, generate, pick
from gptpipe.tokenizers import CharTokenizer
from gptpipe.training import Trainer

torch.set_num_threads(1)

TEXT = "the quick brown fox jumps over the lazy dog.\n" * 40
TOK = CharTokenizer.train(TEXT)
DATA = TOK.encode(TEXT).astype(np.uint8)
BLOCK = 16


def new_model(kind: str = "gpt", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(ModelConfig(kind=kind, vocab_size=TOK.vocab_size, block_size=BLOCK,
                             n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """~100 steps on the corpus, so greedy choices are not near-ties."""
    model = new_model()
    tp = TrainParams(batch_size=16, max_iters=100, lr=1e-2, min_lr=1e-3, warmup_iters=5,
                     eval_batches=1)
    trainer = Trainer(model, DATA, DATA, tp, torch.device("cpu"))
    while trainer.step < tp.max_iters:
        trainer.train_step()
    assert trainer.estimate_loss()["val"] < 1.0
    return model.eval()


def prompt_ids(text: str = "the quick") -> list[int]:
    return encode_prompt(TOK, text, "test prompt")


@torch.no_grad()
def manual_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding with the model's full forward, sliding as documented:
    at most block_size tokens of context; when over, keep the newest half."""
    ctx, out = list(prompt[-BLOCK:]), []
    for _ in range(n):
        logits = model(torch.tensor([ctx]))[0, -1]
        token = int(torch.argmax(logits))
        out.append(token)
        ctx.append(token)
        if len(ctx) > BLOCK:
            ctx = ctx[-(BLOCK // 2):]
    return out


# -- seeds -------------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False])
def test_same_seed_same_tokens_different_seed_different_tokens(use_cache):
    model = new_model()  # untrained: close to uniform, so samples vary a lot
    opts = dict(temperature=1.0, use_cache=use_cache)
    a = generate(model, prompt_ids(), 40, seed=1, **opts)
    b = generate(model, prompt_ids(), 40, seed=1, **opts)
    c = generate(model, prompt_ids(), 40, seed=2, **opts)
    assert len(a) == 40 and all(0 <= t < TOK.vocab_size for t in a)
    assert a == b
    assert a != c


def test_seeded_sampling_does_not_depend_on_the_global_rng():
    model = new_model()
    torch.manual_seed(1)
    a = generate(model, prompt_ids(), 30, temperature=1.0, seed=5)
    torch.manual_seed(2)
    b = generate(model, prompt_ids(), 30, temperature=1.0, seed=5)
    assert a == b


# -- greedy ------------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [False, True])
def test_temperature_zero_is_argmax_at_every_step(trained, use_cache):
    prompt = prompt_ids("the q")
    n = BLOCK - len(prompt) + 1  # the last forward sees exactly block_size tokens
    got = generate(trained, prompt, n, temperature=0.0, use_cache=use_cache, seed=3)
    assert got == manual_greedy(trained, prompt, n)
    # a trained model continues the corpus
    assert TOK.decode(got).startswith("uick brown")


def test_kv_cache_and_no_cache_give_identical_greedy_tokens_past_block_size(trained):
    prompt = prompt_ids("the quick")
    n = 5 * BLOCK  # the window slides several times
    cached = generate(trained, prompt, n, temperature=0.0, use_cache=True)
    uncached = generate(trained, prompt, n, temperature=0.0, use_cache=False)
    assert len(cached) == n
    assert cached == uncached
    assert cached == manual_greedy(trained, prompt, n)


def test_prompt_longer_than_block_size_keeps_its_newest_tokens(trained):
    long_prompt = prompt_ids("over the lazy dog.\nthe quick brown fox jumps")
    assert len(long_prompt) > BLOCK
    for use_cache in (True, False):
        a = generate(trained, long_prompt, 20, temperature=0.0, use_cache=use_cache)
        b = generate(trained, long_prompt[-BLOCK:], 20, temperature=0.0, use_cache=use_cache)
        assert a == b


def test_top_k_one_equals_greedy(trained):
    prompt = prompt_ids("the lazy")
    greedy = generate(trained, prompt, 40, temperature=0.0)
    for seed in (0, 1, 2):
        assert generate(trained, prompt, 40, temperature=1.3, top_k=1, seed=seed) == greedy


def test_greedy_bigram_past_block_size():
    model = new_model("bigram")
    got = generate(model, prompt_ids("t"), 3 * BLOCK, temperature=0.0)
    want, token = [], prompt_ids("t")[0]
    for _ in range(3 * BLOCK):
        token = int(torch.argmax(model.table.weight[token]))
        want.append(token)
    assert got == want


# -- top-k / top-p -------------------------------------------------------------------

def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.9, -0.2])
    kept = torch.isfinite(filter_logits(logits, top_k=3, top_p=1.0))
    assert kept.tolist() == [False, True, False, True, True, False]
    assert torch.equal(filter_logits(logits, top_k=None, top_p=1.0), logits)
    assert torch.equal(filter_logits(logits, top_k=10, top_p=1.0), logits)


def test_top_p_keeps_the_smallest_set_reaching_top_p():
    # probabilities 0.5, 0.3, 0.15, 0.05, placed out of order
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()
    cases = {0.45: {1}, 0.75: {1, 3}, 0.9: {1, 3, 0}, 0.99: {0, 1, 2, 3}}
    for top_p, want in cases.items():
        out = filter_logits(logits, top_k=None, top_p=top_p)
        kept = {i for i in range(4) if torch.isfinite(out[i])}
        assert kept == want, top_p
        # kept tokens keep their logits (renormalised by the softmax later)
        for i in kept:
            assert out[i] == logits[i]


def test_top_p_matches_an_independent_computation_on_random_logits():
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        logits = torch.randn(30, generator=gen) * 2
        top_p = float(torch.rand(1, generator=gen)) * 0.98 + 0.01
        p = F.softmax(logits.double(), dim=-1).numpy()
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        n_keep = int(np.searchsorted(cum, top_p) + 1)  # first prefix with sum >= top_p
        edges = cum[max(n_keep - 2, 0):n_keep]
        if np.any(np.abs(edges - top_p) < 1e-6):
            continue  # too close to the boundary for float32
        want = set(order[:n_keep].tolist())
        kept = set(torch.nonzero(torch.isfinite(
            filter_logits(logits, top_k=None, top_p=top_p))).flatten().tolist())
        assert kept == want, (trial, top_p)


def test_tiny_top_p_samples_only_the_likeliest_token():
    logits = torch.tensor([0.1, 0.4, 0.35, 0.15]).log()
    gen = torch.Generator().manual_seed(0)
    picks = {pick(logits, 1.0, None, 0.01, gen) for _ in range(50)}
    assert picks == {1}
    picks = {pick(logits, 1.0, None, 1.0, gen) for _ in range(200)}
    assert picks == {0, 1, 2, 3}


# -- prompts -----------------------------------------------------------------------

def test_prompt_outside_the_vocabulary_names_the_characters():
    with pytest.raises(UserError) as info:
        encode_prompt(TOK, "the Quick fox!", "sample.prompts[0]")
    msg = str(info.value)
    assert "sample.prompts[0]" in msg
    assert "'Q'" in msg and "'!'" in msg
    assert "'f'" not in msg


def test_empty_prompt_is_refused():
    with pytest.raises(UserError, match="empty"):
        encode_prompt(TOK, "", "sample.prompts[1]")


def test_prompt_round_trips():
    ids = encode_prompt(TOK, "lazy dog.\n", "p")
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert TOK.decode(ids) == "lazy dog.\n"
