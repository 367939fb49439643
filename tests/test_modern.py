"""model.kind modern and train.optimizer muon, with real torch on tiny models:
causality, the KV cache, params, learning, exact resume, and fp32 attention under
bf16 autocast."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import fox_data
from gptpipe import checkpoints, params
from gptpipe.errors import UserError
from gptpipe.model import ModelConfig, build
from gptpipe.params import TrainParams
from gptpipe.sampling import generate
from gptpipe.optim import Muon, OptimizerChain
from gptpipe.training import Trainer

torch.set_num_threads(1)

CPU = torch.device("cpu")
TOK, TRAIN, VAL = fox_data()


def modern(seed: int = 0, randomize: bool = False, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = dict(kind="modern", vocab_size=TOK.vocab_size, block_size=16, n_layer=2, n_head=2,
               n_embd=32, bias=False)
    cfg.update(overrides)
    model = build(ModelConfig(**cfg))
    if randomize:  # the zero-initialised projections and head make an untrained model constant
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("value_embeds", [False, True])
def test_modern_is_causal_and_shaped_batch_time_vocab(value_embeds):
    model = modern(randomize=True, value_embeds=value_embeds)
    idx = torch.randint(0, TOK.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(idx)
        assert base.shape == (2, 16, TOK.vocab_size)
        for t in (0, 7, 15):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % TOK.vocab_size
            out = model(changed)
            assert torch.equal(out[:, :t], base[:, :t])
            assert not torch.allclose(out[:, t], base[:, t])


def test_modern_starts_as_a_uniform_predictor_and_saves_no_rope_tables():
    model = modern()
    with torch.no_grad():
        logits = model(torch.zeros(1, 4, dtype=torch.long))
    assert torch.count_nonzero(logits) == 0  # zero head: log(vocab) loss at step 0
    assert not any("rope" in key for key in model.state_dict())


@pytest.mark.parametrize("value_embeds", [False, True])
def test_modern_greedy_sampling_is_the_same_with_and_without_the_kv_cache(value_embeds):
    model = modern(randomize=True, value_embeds=value_embeds)
    prompt = TOK.encode("the quick").tolist()
    # 40 new tokens > block_size 16: the context slides and the cache is refilled
    cached = generate(model, prompt, 40, temperature=0.0, use_cache=True)
    plain = generate(model, prompt, 40, temperature=0.0, use_cache=False)
    assert cached == plain


def test_params_accept_modern_and_muon_and_name_bad_values():
    p = params.from_dict({"model": {"kind": "modern"}, "train": {"optimizer": "muon",
                                                                 "muon_lr": 0.03}})
    assert (p.model.kind, p.train.optimizer, p.train.muon_lr) == ("modern", "muon", 0.03)
    with pytest.raises(UserError, match="train.optimizer"):
        params.from_dict({"train": {"optimizer": "sgd"}})
    with pytest.raises(UserError, match="train.muon_lr"):
        params.from_dict({"train": {"muon_lr": 0.0}})
    with pytest.raises(UserError, match="train.muon_momentum"):
        params.from_dict({"train": {"muon_momentum": 1.0}})  # no decay of old gradients
    with pytest.raises(UserError, match="model.n_embd.*even"):
        params.from_dict({"model": {"kind": "modern", "n_embd": 6, "n_head": 2}})


def make_trainer(model, **tp) -> Trainer:
    defaults = dict(batch_size=8, max_iters=100, lr=6e-3, min_lr=6e-4, warmup_iters=5,
                    eval_batches=4, seed=1337, optimizer="muon", muon_lr=0.02)
    defaults.update(tp)
    return Trainer(model.train(), TRAIN, VAL, TrainParams(**defaults), CPU)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = modern()
    trainer = make_trainer(model)
    assert isinstance(trainer.optimizer, OptimizerChain)
    adamw, muon = trainer.optimizer.optimizers
    assert isinstance(muon, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters()
                       if p.dim() == 2 and n.startswith("blocks.")}
    assert in_adamw == set(names.values()) - in_muon
    assert "wte.weight" in in_adamw and "lm_head.weight" in in_adamw
    # each group's peak lr is its own; the schedule scales them all by one multiplier
    assert [g["initial_lr"] for g in adamw.param_groups] == [6e-3, 6e-3]
    assert [g["initial_lr"] for g in muon.param_groups] == [0.02]
    for _ in range(3):
        trainer.train_step()
        lrm = adamw.param_groups[0]["lr"] / 6e-3
        assert lrm < 1  # in warmup
        assert all(g["lr"] == pytest.approx(g["initial_lr"] * lrm, rel=1e-12)
                   for g in trainer.optimizer.param_groups)
    # Muon's weights shrink by train.lr * weight_decay a step, as AdamW's do
    assert muon.param_groups[0]["lr"] * muon.param_groups[0]["weight_decay"] == \
        pytest.approx(adamw.param_groups[0]["lr"] * 0.1, rel=1e-12)


def test_value_embeds_are_a_table_per_layer_trained_by_adamw_and_change_the_output():
    plain, with_ve = modern(), modern(value_embeds=True)
    tables = [n for n, _ in with_ve.named_parameters() if n.startswith("value_embeds.")]
    assert len(tables) == 2  # n_layer
    extra = sum(p.numel() for p in with_ve.parameters()) - sum(
        p.numel() for p in plain.parameters())
    assert extra == 2 * TOK.vocab_size * 32  # n_layer x vocab x n_embd
    # the weights they share start the same: the tables are drawn last
    shared = with_ve.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in plain.state_dict().items())
    trainer = make_trainer(with_ve)
    adamw, muon = trainer.optimizer.optimizers
    names = {id(p): n for n, p in with_ve.named_parameters()}
    assert set(tables) <= {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    before = with_ve.value_embeds[0].weight.detach().clone()
    trainer.train_step()
    trainer.train_step()  # the zero-initialised projections let gradients reach v
    assert not torch.equal(before, with_ve.value_embeds[0].weight)
    idx = torch.randint(0, TOK.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    randomized = modern(randomize=True, value_embeds=True)
    with torch.no_grad():
        out = randomized(idx)
        for table in randomized.value_embeds:
            table.weight.zero_()
        assert not torch.allclose(out, randomized(idx))


def test_value_embeds_need_the_modern_kind():
    assert params.from_dict({"model": {"kind": "modern", "value_embeds": True}}).model.value_embeds
    with pytest.raises(UserError, match="model.value_embeds"):
        params.from_dict({"model": {"kind": "gpt", "value_embeds": True}})


def test_muon_momentum_is_the_one_train_muon_momentum_sets():
    weights = {}
    for momentum in (0.95, 0.85):
        torch.manual_seed(0)
        trainer = make_trainer(modern(), muon_momentum=momentum)
        muon = trainer.optimizer.optimizers[1]
        assert [g["momentum"] for g in muon.param_groups] == [momentum]
        for _ in range(3):
            trainer.train_step()
        weights[momentum] = trainer.model.blocks[0].mlp.c_fc.weight.detach().clone()
    assert not torch.equal(weights[0.95], weights[0.85])


@pytest.mark.parametrize("kind", ["modern", "gpt"])
def test_muon_lowers_the_loss_clearly(kind):
    model = modern() if kind == "modern" else build(ModelConfig(
        kind="gpt", vocab_size=TOK.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    trainer = make_trainer(model)
    before = trainer.estimate_loss()
    trainer.run()
    after = trainer.estimate_loss()
    assert after["val"] < 0.4 * before["val"], (before, after)


def test_resume_with_muon_is_bit_exact(tmp_path: Path):
    N, k = 24, 10
    straight = make_trainer(modern(seed=0), max_iters=N)
    while straight.step < N:
        straight.train_step()
    first = make_trainer(modern(seed=0), max_iters=N)
    while first.step < k:
        first.train_step()
    path = tmp_path / "checkpoint.pt"
    checkpoints.save(path, {"format": checkpoints.CHECKPOINT_FORMAT, "identity": {},
                            "trainer": first.state_dict()})
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    resumed = make_trainer(modern(seed=5), max_iters=N)
    resumed.load_state_dict(checkpoints.load(path)["trainer"])  # weights_only
    while resumed.step < N:
        resumed.train_step()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("kind", ["gpt", "modern"])
def test_attention_runs_in_fp32_under_cpu_bf16_autocast(kind, monkeypatch):
    model = modern(randomize=True) if kind == "modern" else build(ModelConfig(
        kind="gpt", vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    idx = torch.randint(0, TOK.vocab_size, (2, 16))
    with torch.no_grad():
        full = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(idx)
    assert seen and all(dtype == torch.float32 and not on for dtype, on in seen)
    assert (low.float() - full).abs().max() < 0.1 * full.abs().max() + 0.05


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("kind", ["quintic", "polar_express"])
def test_newton_schulz_on_a_stack_orthogonalises_each_matrix_as_alone(kind, bf16):
    from gptpipe.optim import _newton_schulz

    torch.manual_seed(0)
    stack = torch.randn(3, 16, 48)  # three same-shape matrices: one bmm chain
    together = _newton_schulz(stack, kind, 5, bf16).float()
    alone = torch.cat([_newton_schulz(m[None], kind, 5, bf16).float() for m in stack])
    assert torch.allclose(together, alone, atol=1e-2 if bf16 else 1e-5)
    # near-orthogonal rows: singular values in Muon's band around 1, not the input's
    singular = torch.linalg.svdvals(together)
    assert singular.min() > 0.5 and singular.max() < 1.3, singular
    assert torch.linalg.svdvals(stack).max() > 5


def test_polar_express_in_5_iterations_orthogonalises_more_closely_than_the_quintic():
    from gptpipe.optim import _newton_schulz

    torch.manual_seed(0)
    # (3, 64, 128) updates with singular values spread over two decades
    u = torch.linalg.qr(torch.randn(3, 64, 64)).Q
    v = torch.linalg.qr(torch.randn(3, 128, 64)).Q
    grads = u @ torch.diag_embed(torch.logspace(0, -2, 64).expand(3, 64)) @ v.mT
    runs = [("quintic", 5), ("polar_express", 4), ("polar_express", 5), ("polar_express", 6)]
    singular = {(kind, steps): torch.linalg.svdvals(_newton_schulz(grads, kind, steps, False))
                for kind, steps in runs}
    band = {key: (round(s.min().item(), 2), round(s.max().item(), 2))
            for key, s in singular.items()}
    lo, hi = band["polar_express", 5]
    assert 0.8 < lo and hi < 1.2, band
    assert band["quintic", 5][0] < 0.7, band  # the quintic's 5 leave the small ones lower
    # 4 iterations: every direction's step within a factor of 1.6 of the others'
    lo, hi = band["polar_express", 4]
    assert 0.4 < lo and hi < 1.6, band
    lo, hi = band["polar_express", 6]  # past its five, the last polynomial narrows it further
    assert 0.9 < lo and hi < 1.15, band


def test_newton_schulz_refuses_coefficients_it_does_not_know():
    from gptpipe.optim import _newton_schulz

    with pytest.raises(ValueError, match="'cubic'"):  # not Muon's quintic in disguise
        _newton_schulz(torch.randn(1, 4, 8), "cubic", 5, False)


def test_train_muon_ns_steps_and_coefficients_are_the_ones_muon_uses():
    weights = {}
    for steps, kind in ((5, "quintic"), (4, "quintic"), (4, "polar_express")):
        torch.manual_seed(0)
        trainer = make_trainer(modern(), muon_ns_steps=steps, muon_ns_coefficients=kind)
        muon = trainer.optimizer.optimizers[1]
        assert [(g["ns_steps"], g["ns_coefficients"]) for g in muon.param_groups] == \
            [(steps, kind)]
        for _ in range(3):
            trainer.train_step()
        weights[steps, kind] = trainer.model.blocks[0].mlp.c_fc.weight.detach().clone()
    assert not torch.equal(weights[5, "quintic"], weights[4, "quintic"])
    assert not torch.equal(weights[4, "quintic"], weights[4, "polar_express"])


def test_muon_in_bf16_takes_the_same_steps_as_in_fp32_to_bf16_precision():
    torch.manual_seed(0)
    weights = [torch.randn(32, 32), torch.randn(96, 32), torch.randn(32, 128)]
    grads = [torch.randn_like(w) for w in weights]
    moved = {}
    for bf16 in (False, True):
        ps = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = Muon(ps, lr=0.01, weight_decay=0.1, ns_bf16=bf16)
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()
        assert all(p.dtype == torch.float32 for p in ps)  # the weights stay fp32
        moved[bf16] = [(p.detach() - w) for p, w in zip(ps, weights)]
    for a, b in zip(moved[False], moved[True]):
        assert a.abs().max() > 1e-3  # it did step
        assert torch.allclose(a, b, atol=0.1 * a.abs().max().item())
