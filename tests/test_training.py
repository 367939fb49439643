"""The training loop with real torch on tiny models: learning, fixed evals,
bit-exact resume through a checkpoint file, schedule, weight decay, NaN guard,
and refusing corrupted checkpoints."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import fox_data
from gptpipe import checkpoints
from gptpipe.errors import UserError
from gptpipe.model import ModelConfig, build
from gptpipe.params import TrainParams
from gptpipe.schedule import lr_multiplier
from gptpipe.tokenizers import CharTokenizer
from gptpipe.training import NonFiniteLoss, Trainer

torch.set_num_threads(1)

CPU = torch.device("cpu")
TOK, TRAIN, VAL = fox_data()


def make_model(kind: str = "gpt", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = dict(kind=kind, vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2,
               n_embd=32)
    cfg.update(overrides)
    return build(ModelConfig(**cfg))


def make_trainer(model, **tp) -> Trainer:
    defaults = dict(batch_size=8, max_iters=200, lr=3e-3, min_lr=1e-4, warmup_iters=10,
                    eval_batches=4, seed=1337)
    defaults.update(tp)
    return Trainer(model, TRAIN, VAL, TrainParams(**defaults), CPU)


def train_to(trainer: Trainer, step: int) -> None:
    while trainer.step < step:
        trainer.train_step()


# -- it learns ---------------------------------------------------------------------

@pytest.mark.parametrize("kind,lr,steps,factor", [("bigram", 0.1, 200, 0.6),
                                                  ("gpt", 1e-2, 200, 0.4)])
def test_a_few_hundred_steps_lower_the_loss_clearly(kind, lr, steps, factor):
    trainer = make_trainer(make_model(kind), lr=lr, max_iters=steps)
    before = trainer.estimate_loss()
    # an untrained model is near uniform over the vocabulary
    assert before["val"] == pytest.approx(np.log(TOK.vocab_size), abs=0.2)
    trainer.run()
    after = trainer.estimate_loss()
    assert trainer.step == steps
    assert after["train"] < factor * before["train"], (before, after)
    assert after["val"] < factor * before["val"], (before, after)
    # run() records an eval at step 0 and at the end
    assert trainer.history[0].step == 0 and trainer.history[-1].step == steps
    assert trainer.history[-1].val_loss == pytest.approx(after["val"])


# -- fixed evaluation batches --------------------------------------------------------

def test_fixed_eval_batches_are_the_same_every_call_and_across_trainers():
    model = make_model(dropout=0.2)  # eval must switch dropout off
    a = make_trainer(model)
    b = make_trainer(model)
    for split in ("train", "val"):
        assert len(a.eval_sets[split]) == 4
        for xa, xb in zip(a.eval_sets[split], b.eval_sets[split]):
            assert np.array_equal(xa, xb)
    # the train and val sets are different draws
    assert not np.array_equal(a.eval_sets["train"][0], a.eval_sets["val"][0])

    first = a.estimate_loss()
    torch.manual_seed(12345)  # move every RNG a loss estimate could depend on
    np.random.seed(6789)
    b.sampler.next(CPU)
    assert a.estimate_loss() == first
    assert b.estimate_loss() == first
    assert model.training  # estimate_loss puts the model back in train mode

    # training moves the sampler but not the eval windows
    sets_before = [s.copy() for s in a.eval_sets["val"]]
    train_to(a, 3)
    assert all(np.array_equal(x, y) for x, y in zip(sets_before, a.eval_sets["val"]))


# -- exact resume ---------------------------------------------------------------------

def test_resume_from_a_checkpoint_file_is_bit_exact(tmp_path: Path):
    N, k = 30, 12
    tp = dict(max_iters=N, warmup_iters=5)

    straight = make_trainer(make_model(dropout=0.1, seed=0), **tp)
    train_to(straight, N)

    first = make_trainer(make_model(dropout=0.1, seed=0), **tp)
    train_to(first, k)
    path = tmp_path / "ckpt" / "checkpoint.pt"
    checkpoints.save(path, {"format": checkpoints.CHECKPOINT_FORMAT,
                            "identity": {"x": 1}, "trainer": first.state_dict()})
    del first

    # A new process would start from other RNG states and fresh weights.
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    payload = checkpoints.load(path)  # weights_only
    resumed = make_trainer(make_model(dropout=0.1, seed=7), **tp)
    resumed.load_state_dict(payload["trainer"])
    assert resumed.step == k
    train_to(resumed, N)

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    # and the optimizer moments too
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][key], sb[i][key])
    # the same losses, and the same lr at each step (read from the optimizer)
    assert straight.batch_losses[k:] == resumed.batch_losses


def test_a_checkpoint_of_an_older_format_is_refused_naming_its_folder(tmp_path: Path):
    from gptpipe.train_run import TrainRun

    trainer = make_trainer(make_model(), max_iters=4)
    path = tmp_path / "ckpt" / "checkpoint.pt"
    checkpoints.save(path, {"format": "gptpipe.checkpoint/1", "identity": {},
                            "trainer": trainer.state_dict()})
    run = TrainRun(trainer, trainer.model.cfg, {}, path, autocast=None)
    with pytest.raises(UserError, match=r"older gptpipe \(gptpipe.checkpoint/1\), refused: "
                                        r"delete .*ckpt to train from step 0"):
        run.resume()
    assert trainer.step == 0


def test_the_last_steps_hook_runs_once_before_the_checkpoint_waits_for_mlflow(
        tmp_path: Path, monkeypatch):
    """The train stage writes its files (on_trained_main) while the tracking process,
    which training's threads starve, still opens the run: before the last checkpoint
    asks for the run id, not after."""
    from gptpipe.tracking.background import BackgroundRun, RunSpec
    from gptpipe.train_run import TrainRun

    monkeypatch.chdir(tmp_path)
    trainer = make_trainer(make_model(), max_iters=6, eval_interval=3, checkpoint_interval=6)
    background = BackgroundRun(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = TrainRun(trainer, trainer.model.cfg, {}, tmp_path / "ckpt" / "checkpoint.pt",
                   autocast=None, background_run=background)
    seen = []
    run.on_trained_main = lambda: seen.append((trainer.step, run.run_id,
                                               run.checkpoint.exists()))
    background.open(RunSpec("exp"))
    with background.stage():
        run.train(lambda: False)
    assert seen == [(6, None, False)]  # at the last step, before the run id and checkpoint
    assert run.run_id is not None and run.checkpoint.exists()


# -- learning-rate schedule ------------------------------------------------------------

def test_warmup_rises_linearly_then_cosine_reaches_min_lr():
    lr, min_lr, warmup, max_iters = 1e-3, 1e-4, 10, 110

    def lr_at(step):
        return lr * lr_multiplier(step, lr, min_lr, warmup, max_iters)

    warm = [lr_at(s) for s in range(warmup + 1)]
    steps = np.diff(warm)
    assert np.all(steps > 0)
    assert np.allclose(steps, steps[0])            # linear
    assert warm[0] > 0                              # the first step does learn
    assert warm[warmup] == pytest.approx(lr)        # peak right after warmup
    decay = [lr_at(s) for s in range(warmup, max_iters + 1)]
    assert np.all(np.diff(decay) <= 0)              # never rises after warmup
    assert lr_at(warmup + (max_iters - warmup) // 2) == \
        pytest.approx((lr + min_lr) / 2)            # cosine: halfway at mid-decay
    assert lr_at(max_iters) == pytest.approx(min_lr)
    assert lr_at(max_iters + 50) == pytest.approx(min_lr)
    assert lr_multiplier(max_iters + 50, lr, min_lr, warmup, max_iters) == min_lr / lr


def test_trainer_applies_the_schedule_to_the_optimizer():
    trainer = make_trainer(make_model("bigram"), lr=1e-2, min_lr=1e-3, warmup_iters=3,
                           max_iters=12, eval_interval=4)
    assert all(g["initial_lr"] == 1e-2 for g in trainer.optimizer.param_groups)
    seen = []
    trainer.run(on_eval=lambda row: seen.append(("eval", row.step, row.lr)),
                progress=lambda step, loss, rate: seen.append(
                    ("step", step, trainer.optimizer.param_groups[0]["lr"])))
    want = [1e-2 * lr_multiplier(s, 1e-2, 1e-3, 3, 12) for s in range(12)]
    assert [lr for kind, _, lr in seen if kind == "step"] == want
    assert [lr for _, lr, _ in trainer.batch_losses] == want
    # each eval row reports the lr of the step just taken (step 0's before any)
    assert [(step, lr) for kind, step, lr in seen if kind == "eval"] == \
        [(0, want[0]), (4, want[3]), (8, want[7]), (12, want[11])]
    assert all(g["initial_lr"] == 1e-2 for g in trainer.optimizer.param_groups)


# -- weight decay --------------------------------------------------------------------

@pytest.mark.parametrize("tie", [False, True])
def test_weight_decay_only_on_2d_params(tie):
    model = make_model(n_layer=2, tie_weights=tie)
    trainer = make_trainer(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = set(), set()
    for group in trainer.optimizer.param_groups:
        target = decayed if group["weight_decay"] > 0 else plain
        if group["weight_decay"] > 0:
            assert group["weight_decay"] == 0.1
        for p in group["params"]:
            target.add(names[id(p)])
    assert decayed and plain and not decayed & plain
    assert decayed | plain == set(names.values())  # every parameter, once
    for name, p in model.named_parameters():
        assert (name in decayed) == (p.dim() == 2), name
    assert "wte.weight" in decayed and "blocks.0.attn.c_attn.weight" in decayed
    assert "blocks.0.ln_1.weight" in plain and "blocks.0.mlp.c_fc.bias" in plain


# -- non-finite loss -----------------------------------------------------------------

def test_nan_weight_raises_nonfinite_loss_with_the_step():
    trainer = make_trainer(make_model())
    train_to(trainer, 3)
    with torch.no_grad():
        trainer.model.ln_f.weight[0] = float("inf")
    with pytest.raises(NonFiniteLoss, match=r"at step 4\b"):
        trainer.train_step()
    assert trainer.step == 3  # the bad step is not counted


def test_absurd_learning_rate_raises_nonfinite_loss_and_keeps_good_weights():
    trainer = make_trainer(make_model(), lr=1e6, min_lr=0.0, warmup_iters=0, grad_clip=0.0)
    with pytest.raises(NonFiniteLoss) as info:
        for _ in range(50):
            trainer.train_step()
    assert isinstance(info.value, UserError)
    assert f"at step {trainer.step + 1}" in str(info.value)
    assert "train.lr" in str(info.value)
    # the failing step was not applied: the weights are what the last good step left
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# -- corrupted checkpoints -------------------------------------------------------------

class Opaque:
    """Any class: unpickling it could run code, so weights_only must refuse it."""


@pytest.fixture
def good_checkpoint(tmp_path: Path) -> Path:
    trainer = make_trainer(make_model("bigram"))
    train_to(trainer, 2)
    path = tmp_path / "checkpoint.pt"
    checkpoints.save(path, {"format": checkpoints.CHECKPOINT_FORMAT, "identity": {},
                            "trainer": trainer.state_dict()})
    assert checkpoints.load(path)["trainer"]["step"] == 2
    return path


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_checkpoint_is_refused_naming_the_path(good_checkpoint: Path, keep):
    data = good_checkpoint.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = good_checkpoint.with_name("truncated.pt")
    bad.write_bytes(data[:n])
    with pytest.raises(UserError, match="truncated.pt"):
        checkpoints.load(bad)


def test_random_bytes_are_refused_naming_the_path(tmp_path: Path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match=str(bad)):
        checkpoints.load(bad)


def test_non_gptpipe_or_unsafe_files_are_refused(tmp_path: Path):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)  # valid torch file, no format
    with pytest.raises(UserError, match="plain.pt"):
        checkpoints.load(plain)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "obj": Opaque()},
               unsafe)  # an arbitrary class: weights_only refuses to unpickle it
    with pytest.raises(UserError, match="unsafe.pt"):
        checkpoints.load(unsafe)
    with pytest.raises(UserError, match="missing.pt"):
        checkpoints.load(tmp_path / "missing.pt")


def test_check_identity_names_the_differing_keys(tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    stored = {"train.lr": 0.001, "model.n_layer": 4, "sha256.train.npy": "aa"}
    checkpoints.check_identity(path, stored, dict(stored))  # same run: accepted
    expected = {**stored, "train.lr": 0.002, "model.dropout": 0.1}
    with pytest.raises(UserError) as info:
        checkpoints.check_identity(path, stored, expected)
    msg = str(info.value)
    assert str(path) in msg
    assert "train.lr" in msg and "model.dropout" in msg
    assert "model.n_layer" not in msg and "sha256.train.npy" not in msg


# -- keep the best, early stopping, training health -----------------------------------

def overfit_setup(**tp):
    """A corpus small enough to overfit: 1,200 training characters, whole-val loss
    lowest near step 100 of 300, then rising by about a nat."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import tiny_text

    text = tiny_text(3000)
    tok = CharTokenizer.train(text)
    data = tok.encode(text).astype(np.uint8)
    n = int(len(data) * 0.4)
    torch.manual_seed(0)
    model = build(ModelConfig(kind="gpt", vocab_size=tok.vocab_size, block_size=16,
                              n_layer=1, n_head=2, n_embd=64))
    params = dict(batch_size=16, max_iters=300, lr=3e-3, min_lr=3e-3, warmup_iters=0,
                  eval_interval=25, eval_batches=4, weight_decay=0.0,
                  checkpoint_interval=25)
    params.update(tp)
    return Trainer(model, data[:n], data[n:], TrainParams(**params), CPU)


def whole_val_loss(trainer: Trainer, state: dict | None = None) -> float:
    """gptpipe.evaluation's loss over the whole val split (evaluate's), of `state`'s
    weights (default: the trainer's current ones)."""
    from gptpipe.evaluation import total_nats

    model = trainer.model
    if state is not None:
        model = build(model.cfg)
        model.load_state_dict(state)
    nats, n = total_nats(model, trainer.val_data, 64, CPU)
    trainer.model.train()
    return nats / n


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_ships_the_best_evals_weights_or_the_last(keep):
    trainer = overfit_setup(keep=keep)
    whole = {}
    trainer.run(on_eval=lambda row: whole.__setitem__(row.step, whole_val_loss(trainer)))
    best = min(trainer.history, key=lambda row: (row.val_loss, row.step)).step
    assert trainer.best_step == best and 0 < best < 300
    assert whole[300] > whole[best] + 0.3, whole  # it did overfit
    shipped = whole_val_loss(trainer, trainer.kept_state_dict())
    print(f"\nkeep={keep}: best eval step {best}, whole-val {whole[best]:.4f}; "
          f"last {whole[300]:.4f}; shipped (step {trainer.kept_step}) {shipped:.4f}")
    if keep == "best":
        assert trainer.kept_step == best
        assert shipped == pytest.approx(whole[best], abs=1e-6)
    else:
        assert trainer.kept_step == 300 and trainer.best_state is None
        assert shipped == pytest.approx(whole[300], abs=1e-6)


def test_early_stop_stops_after_patience_evals_without_improvement():
    seen = []
    trainer = overfit_setup(early_stop_patience=3, early_stop_min_delta=0.01)
    trainer.run(on_checkpoint=lambda t: seen.append(t.step))
    stop = trainer.early_stop
    assert stop is not None and stop.step == trainer.step < 300
    rows = {row.step: row.val_loss for row in trainer.history}
    # the last improvement by >= min_delta was 3 evals before the stop
    ref_step = stop.step - 3 * 25
    assert all(rows[ref_step] - rows[s] < 0.01 for s in rows if ref_step < s <= stop.step)
    assert stop.kept_step == trainer.best_step == trainer.kept_step
    assert seen[-1] == stop.step  # a checkpoint where it stopped (the metrics get logged)
    assert stop.message() == (f"early stop at step {stop.step}: no val improvement ≥ 0.01 "
                              f"in 3 evals; keeping step {stop.kept_step}")
    assert overfit_setup(max_iters=300).early_stop is None  # off by default


def test_resume_mid_countdown_keeps_the_best_weights_and_the_countdown(tmp_path: Path):
    tp = dict(early_stop_patience=4)
    straight = overfit_setup(**tp)
    straight.run()
    assert straight.early_stop is not None

    saved = {}
    first = overfit_setup(**tp)
    path = tmp_path / "checkpoint.pt"

    def checkpoint(trainer):  # the checkpoint one eval after the best: mid-countdown
        if trainer.best_step is not None and trainer.step == trainer.best_step + 25:
            checkpoints.save(path, {"format": checkpoints.CHECKPOINT_FORMAT,
                                    "trainer": trainer.state_dict()})
            saved["step"] = trainer.step
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.run(on_checkpoint=checkpoint)
    resumed = overfit_setup(**tp, seed=1337)
    torch.manual_seed(5)
    resumed.load_state_dict(checkpoints.load(path)["trainer"])
    assert resumed.stale_evals == 1 and resumed.step == saved["step"]
    resumed.run()
    assert resumed.early_stop == straight.early_stop
    a, b = straight.kept_state_dict(), resumed.kept_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in straight.history]


def test_each_eval_row_carries_the_intervals_gradient_norm_clipping_and_throughput():
    from gptpipe.reporting import history_csv

    for clip in (1.0, 0.0):
        trainer = overfit_setup(max_iters=50, grad_clip=clip, peak_gflops=100.0)
        trainer.run()
        first, *rows = trainer.history
        assert first.grad_norm_mean is None  # step 0: no step yet
        for row in rows:
            assert 0 < row.grad_norm_mean <= row.grad_norm_max
            assert 0 <= row.clipped_fraction <= 1 and row.tokens_per_s > 0
            assert row.gflops_per_s > 0 and row.mfu == pytest.approx(row.gflops_per_s / 100)
        clipped = [row.clipped_fraction for row in rows]
        assert (max(clipped) > 0) if clip else (clipped == [0.0, 0.0])
    header, *lines = history_csv(trainer.history).splitlines()
    assert header.split(",")[-5:] == ["grad_norm_mean", "grad_norm_max", "clipped_fraction",
                                      "gflops_per_s", "mfu"]
    assert lines[0].endswith(",,,,,") and not lines[-1].endswith(",")
