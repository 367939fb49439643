"""The evaluate stage's arithmetic, with a real tiny model: total nats over a
whole split against a hand computation, and the derived metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptpipe.evaluation import (spread_starts, split_metrics, subset_nats, total_nats,
                                window_nats, windows_total)
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


# --- the train split's subset (evaluate.train_windows) ----------------------------------


@pytest.mark.parametrize("n_targets,windows", [(64_000, 100), (8 * 1000 + 5, 7),
                                               (8 * 1000, 1000), (8 * 10, 1)])
def test_the_subset_is_evenly_spread_full_windows_the_same_every_time(n_targets, windows):
    starts = spread_starts(n_targets, BLOCK, windows)
    assert np.array_equal(starts, spread_starts(n_targets, BLOCK, windows))  # deterministic
    full = n_targets // BLOCK
    assert len(starts) == windows and len(set(starts.tolist())) == windows
    assert (starts % BLOCK == 0).all() and starts[0] >= 0
    assert starts[-1] + BLOCK <= n_targets  # full windows only
    # one window in each of `windows` equal stretches of the split
    stretch = full / windows
    index = starts // BLOCK
    assert (np.floor(index / stretch) == np.arange(windows)).all()
    gaps = np.diff(index)
    assert gaps.size == 0 or gaps.max() - gaps.min() <= 1
    if windows == full:
        assert np.array_equal(index, np.arange(full))


def test_spread_starts_refuses_more_windows_than_the_split_has():
    with pytest.raises(ValueError):
        spread_starts(8 * 10, BLOCK, 11)


def test_windows_total_counts_the_remainders_window():
    assert windows_total(8 * 10, BLOCK) == 10
    assert windows_total(8 * 10 + 3, BLOCK) == 11


def test_every_full_window_scores_what_the_exact_path_scores():
    model = tiny()
    data = tokens(8 * 40 + 1, seed=5)  # 320 targets: 40 windows, no remainder
    exact, count = total_nats(model, data, 7, CPU)
    nats, n_targets, starts, stderr = subset_nats(model, data, 40, 7, CPU)
    assert n_targets == count == 320 and len(starts) == 40
    assert nats == pytest.approx(exact, rel=1e-6)  # fp32 sums, in another order
    assert stderr == 0.0  # the whole population: no sampling error


def test_a_subset_scores_its_windows_and_estimates_its_error():
    model = tiny()
    data = tokens(8 * 400 + 1, seed=6)
    nats, n_targets, starts, stderr = subset_nats(model, data, 40, 16, CPU)
    per_window = window_nats(model, data, starts, 3, CPU)
    assert n_targets == 40 * BLOCK
    assert nats == pytest.approx(per_window.sum(), rel=1e-9)
    for start, value in zip(starts[:3], per_window[:3]):  # each window: its own targets
        window = data[start:start + BLOCK + 1]
        want, _ = total_nats(model, window, 1, CPU)
        assert value == pytest.approx(want, rel=1e-5)
    exact, count = total_nats(model, data, 16, CPU)
    assert 0 < stderr < 0.5
    assert abs(nats / n_targets - exact / count) < 4 * stderr
