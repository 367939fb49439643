"""Device, autocast and determinism choices (docs/params.md, "torchrun and GPUs"), and
gradient clipping, at the library level on a tiny model with real torch:
`train.device: auto` picks cuda, then mps, then cpu; `train.autocast: auto` picks bf16
on CUDA GPUs that support it and on CPUs with bf16 instructions where a matmul probe
finds it fast, fp32 elsewhere (the decision itself: test_autocast_choice.py)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from gptpipe.devices import autocast, autocast_dtype, make_deterministic, pick_device
from gptpipe.errors import UserError
from gptpipe.model import ModelConfig, build
from gptpipe.params import TrainParams
from gptpipe.training import Trainer

torch.set_num_threads(1)
CPU = torch.device("cpu")
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# -- device ------------------------------------------------------------------------------

def test_auto_device_is_cuda_then_mps_then_cpu():
    want = "cuda" if torch.cuda.is_available() else "mps" if HAS_MPS else "cpu"
    assert pick_device("auto").type == want


def test_an_explicit_device_is_used_as_given():
    assert pick_device("cpu") == CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_a_one_line_error_naming_the_param():
    with pytest.raises(UserError, match=r"^train\.device: cuda was asked for but torch sees "
                                        r"no CUDA device$"):
        pick_device("cuda")


@pytest.mark.skipif(HAS_MPS, reason="this machine has MPS")
def test_asking_for_mps_without_it_is_a_one_line_error_naming_the_param():
    with pytest.raises(UserError, match=r"^train\.device: mps was asked for"):
        pick_device("mps")


# -- autocast ----------------------------------------------------------------------------

def test_autocast_off_and_bf16_are_taken_as_given():
    assert autocast_dtype(CPU, "off") is None
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16


def test_autocast_auto_on_cpu_is_fp32_without_bf16_instructions(monkeypatch):
    from gptpipe import cpu_features as features  # a laptop without AMX or AVX-512 BF16

    monkeypatch.setattr(features, "cpu_features", lambda: features.CpuFeatures(
        "laptop", amx=False, avx512_bf16=False, avx2=True))
    features.cpu_bf16_choice.cache_clear()
    try:
        assert autocast_dtype(CPU, "auto") is None
    finally:
        features.cpu_bf16_choice.cache_clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_autocast_auto_on_cuda_is_bf16_where_supported():
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert autocast_dtype(torch.device("cuda"), "auto") is want


def test_the_chosen_autocast_dtype_is_what_matmuls_compute_in():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype is torch.bfloat16
    with autocast(CPU, None):  # fp32: autocast off
        assert (a @ b).dtype is torch.float32


# -- determinism ---------------------------------------------------------------------------

@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_make_deterministic_seeds_every_rng_and_asks_for_deterministic_kernels(
        restore_determinism):
    torch.use_deterministic_algorithms(False)
    make_deterministic(1234)
    first = _draws()
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # deterministic cuBLAS GEMMs
    if torch.cuda.is_available():
        assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False
    make_deterministic(1234)
    assert _draws() == first  # python, numpy and torch all seeded
    make_deterministic(1235)
    assert _draws() != first


DETERMINISM_PROBE = """
import json, os, sys
import torch
from gptpipe.devices import make_deterministic
assert "torch._inductor" not in sys.modules  # as in a train stage: the fast path
make_deterministic(7)
print(json.dumps({"enabled": torch.are_deterministic_algorithms_enabled(),
                  "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                  "draw": float(torch.rand(1))}))
"""


def test_make_deterministic_in_a_fresh_process_as_a_train_stage_calls_it():
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    runs = [subprocess.run([sys.executable, "-c", DETERMINISM_PROBE], env=env, text=True,
                           capture_output=True, timeout=120) for _ in range(2)]
    for result in runs:
        assert result.returncode == 0, result.stderr
    first, second = (json.loads(r.stdout) for r in runs)
    assert first["enabled"] is True and first["cublas"] == ":4096:8"
    assert first["draw"] == second["draw"]  # seeded: the same draw in two processes


# -- gradient clipping ---------------------------------------------------------------------

def _one_step(grad_clip: float) -> tuple[dict, float]:
    """One real training step of a tiny GPT; returns its weights after the step and the
    gradient norm the optimizer stepped with."""
    data = (np.arange(2000) * 7 % 40).astype(np.uint8)
    torch.manual_seed(0)
    model = build(ModelConfig(kind="gpt", vocab_size=40, block_size=16, n_layer=1, n_head=2,
                              n_embd=32))
    # warmup_iters=0: a full learning rate at step 1
    trainer = Trainer(model, data[:1600], data[1600:], TrainParams(
        batch_size=8, max_iters=10, lr=1e-2, warmup_iters=0, eval_batches=1, seed=1,
        grad_clip=grad_clip), CPU)
    norms = []
    step = trainer.optimizer.step

    def step_recording_the_norm(*args, **kwargs):
        grads = [p.grad.detach().flatten() for p in model.parameters() if p.grad is not None]
        norms.append(float(torch.cat(grads).norm()))
        return step(*args, **kwargs)
    trainer.optimizer.step = step_recording_the_norm
    trainer.train_step()
    return {k: v.clone() for k, v in model.state_dict().items()}, norms[0]


def test_gradient_clipping_bounds_the_norm_and_changes_the_step():
    unclipped, raw_norm = _one_step(grad_clip=0.0)
    clip = raw_norm / 4
    assert clip > 0
    clipped, norm = _one_step(grad_clip=clip)
    assert norm <= clip * (1 + 1e-5), (norm, clip)
    assert norm == pytest.approx(clip, rel=1e-3)  # scaled down to the bound, not zeroed
    moved = max(float((unclipped[k] - clipped[k]).abs().max()) for k in unclipped)
    assert moved > 1e-4, "clipping did not change the step"
    # a bound above the norm changes nothing
    loose, loose_norm = _one_step(grad_clip=raw_norm * 10)
    assert loose_norm == pytest.approx(raw_norm, rel=1e-6)
    assert all(torch.equal(unclipped[k], loose[k]) for k in unclipped)
