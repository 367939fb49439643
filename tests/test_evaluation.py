"""The evaluate stage's arithmetic, with a real tiny model: total nats over a
whole split against a hand computation, and the derived metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptpipe.evaluation import split_metrics, total_nats
from gptpipe.model import ModelConfig, build

torch.set_num_threads(1)

CPU = torch.device("cpu")
VOCAB, BLOCK = 11, 8


def tiny(kind: str = "gpt") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(ModelConfig(kind=kind, vocab_size=VOCAB, block_size=BLOCK, n_layer=2,
                              n_head=2, n_embd=16))
    # larger weights than the init, so predictions differ clearly between contexts
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    return model.eval()


def tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).astype(np.uint8)


@torch.no_grad()
def hand_nats(model, data: np.ndarray) -> tuple[float, int]:
    """Each target t (1..len-1) scored with the context the documented scheme
    gives it: consecutive windows of block_size targets starting at 0, then a
    last full window ending at the end of the data for the remainder."""
    n_targets = len(data) - 1
    full = n_targets // BLOCK
    total, count = 0.0, 0
    for t in range(1, len(data)):
        if t <= full * BLOCK:
            start = ((t - 1) // BLOCK) * BLOCK
        else:
            start = n_targets - BLOCK
        context = torch.tensor(data[start:t].astype(np.int64))[None]
        assert 1 <= context.size(1) <= BLOCK
        logp = torch.log_softmax(model(context)[0, -1].double(), dim=-1)
        total -= logp[int(data[t])].item()
        count += 1
    return total, count


@pytest.mark.parametrize("n,batch_size", [(30, 2), (30, 64), (25, 1), (9, 4), (12, 3)])
def test_total_nats_matches_a_hand_computation(n, batch_size):
    # n=30: 29 targets = 3 windows of 8 + a remainder of 5; n=25: no remainder;
    # n=9: one window exactly; n=12: one window + remainder of 3
    model = tiny()
    data = tokens(n)
    nats, count = total_nats(model, data, batch_size, CPU)
    want, want_count = hand_nats(model, data)
    assert count == want_count == n - 1
    assert nats == pytest.approx(want, rel=1e-5)


def test_total_nats_does_not_depend_on_batch_size():
    model = tiny()
    data = tokens(30, seed=4)
    results = {bs: total_nats(model, data, bs, CPU)[0] for bs in (1, 2, 3, 64)}
    assert max(results.values()) - min(results.values()) < 1e-6 * max(results.values())


def test_total_nats_for_the_bigram_is_a_plain_sum():
    model = tiny("bigram")
    data = tokens(30, seed=1)
    nats, count = total_nats(model, data, 4, CPU)
    logp = torch.log_softmax(model.table.weight.double(), dim=-1)
    want = -sum(logp[int(a), int(b)].item() for a, b in zip(data[:-1], data[1:]))
    assert count == 29
    assert nats == pytest.approx(want, rel=1e-6)


def test_uniform_model_scores_log_vocab_per_token():
    model = tiny("bigram")
    with torch.no_grad():
        model.table.weight.zero_()
    data = tokens(30, seed=2)
    nats, count = total_nats(model, data, 8, CPU)
    assert nats == pytest.approx(count * math.log(VOCAB), rel=1e-6)


def test_split_metrics():
    nats, n_targets, n_chars = 1234.5, 1000, 3000  # e.g. 3 characters per token
    m = split_metrics(nats, n_targets, n_chars)
    assert m["loss"] == pytest.approx(nats / n_targets)
    assert m["perplexity"] == pytest.approx(math.exp(nats / n_targets))
    assert m["bits_per_char"] == pytest.approx(nats / n_chars / math.log(2))
    assert m["tokens"] == n_targets and m["characters"] == n_chars
    # with char tokens (one char per target), bits/char is just loss in bits
    c = split_metrics(nats, n_targets, n_targets)
    assert c["bits_per_char"] == pytest.approx(c["loss"] / math.log(2))
    # a uniform model over 65 characters: perplexity 65, log2(65) bits/char
    u = split_metrics(100 * math.log(65), 100, 100)
    assert u["perplexity"] == pytest.approx(65)
    assert u["bits_per_char"] == pytest.approx(math.log2(65))


def test_split_metrics_of_a_diverged_model_does_not_overflow():
    m = split_metrics(1e6, 10, 10)
    assert math.isfinite(m["perplexity"])
    assert m["loss"] == 1e5
