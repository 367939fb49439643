"""gptpipe's AdamW against torch.optim.AdamW: the same weights step for step, the
same checkpoint layout both ways; and a train step that never imports
torch._dynamo (a second of every train stage's start-up)."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from gptpipe.optim import AdamW


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    a = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    b = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    b.load_state_dict(a.state_dict())
    return a, b


def _groups(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]


def _through_a_file(state: dict) -> dict:
    """As a checkpoint carries it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _steps(model, opt, n: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(4, 16, generator=gen)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_torch_step_for_step(fused: bool):
    a, b = _pair()
    ours = AdamW(_groups(a), lr=1e-2, betas=(0.9, 0.99), fused=fused)
    theirs = torch.optim.AdamW(_groups(b), lr=1e-2, betas=(0.9, 0.99), fused=fused)
    _steps(a, ours, 6)
    _steps(b, theirs, 6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    mine, torchs = ours.state_dict(), theirs.state_dict()
    assert mine["state"].keys() == torchs["state"].keys()
    for i, s in torchs["state"].items():
        assert mine["state"][i].keys() == s.keys()
        for key, value in s.items():
            assert torch.equal(mine["state"][i][key], value), (i, key)
    assert [g["params"] for g in mine["param_groups"]] == \
        [g["params"] for g in torchs["param_groups"]]


def test_a_torch_adamw_checkpoint_resumes_bit_exact_and_back():
    """A checkpoint written with torch.optim.AdamW's state resumes here exactly, and
    ours loads into torch's: checkpoints from either are the same."""
    a, b = _pair()
    theirs = torch.optim.AdamW(_groups(a), lr=1e-2, betas=(0.9, 0.99), fused=True)
    _steps(a, theirs, 3)
    b.load_state_dict(a.state_dict())
    ours = AdamW(_groups(b), lr=1e-2, betas=(0.9, 0.99), fused=True)
    ours.load_state_dict(_through_a_file(theirs.state_dict()))
    _steps(a, theirs, 3, seed=2)
    _steps(b, ours, 3, seed=2)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    back = torch.optim.AdamW(_groups(b), lr=1e-2, betas=(0.9, 0.99), fused=True)
    back.load_state_dict(_through_a_file(ours.state_dict()))
    assert torch.equal(back.state_dict()["state"][0]["exp_avg"],
                       ours.state_dict()["state"][0]["exp_avg"])


def test_a_state_dict_of_other_groups_is_refused():
    a, _ = _pair()
    ours = AdamW(_groups(a), lr=1e-2, betas=(0.9, 0.99))
    one_group = AdamW(list(a.parameters()), lr=1e-2, betas=(0.9, 0.99))
    with pytest.raises(ValueError, match="parameter groups"):
        ours.load_state_dict(one_group.state_dict())


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_steps_do_not_import_torch_dynamo(optimizer: str):
    code = f"""
import sys
import numpy as np, torch
from gptpipe.model import ModelConfig, build
from gptpipe.params import TrainParams
from gptpipe.training import Trainer
model = build(ModelConfig(kind="modern", vocab_size=20, block_size=8, n_layer=1, n_head=2,
                          n_embd=16))
data = np.arange(400, dtype=np.int64) % 20
trainer = Trainer(model, data, data, TrainParams(batch_size=4, max_iters=4, eval_interval=2,
                  eval_batches=1, optimizer="{optimizer}"), torch.device("cpu"))
trainer.run()
state = trainer.state_dict()
trainer.load_state_dict(state)
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
