"""gptpipe.allocator: the torch stages keep freed memory for the next step instead of
faulting thousands of pages in again every step (glibc's default thresholds)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from gptpipe import allocator
from helpers import env_for, make_project, run, tiny_text
from projects import write_params

# A training loop of 1 MB activations, 16 MB of them kept for the backward: the
# recipe's sizes, in a step that holds many times its largest tensor.
LOOP = """
import json, resource, sys
if sys.argv[1] == "keep":
    from gptpipe.allocator import keep_freed_memory
    assert keep_freed_memory()

import torch
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU())
                              for _ in range(8)])
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.randn(1024, 256)

def step():
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

for _ in range(20):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps((after - before) / 50))
"""


def faults_per_step(mode: str) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in allocator.USER_SETTINGS and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux")
def test_a_training_loop_stops_faulting_pages_in_every_step():
    default, kept = faults_per_step("default"), faults_per_step("keep")
    print(f"\nminor page faults a step: {default:.0f} with glibc's defaults, {kept:.0f} kept")
    assert default >= 200  # what the stages paid every step (1,000-3,100 in the recipe)
    assert kept * 20 <= default  # a few stray ones at most


def test_thresholds_the_user_set_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert allocator.keep_freed_memory() is False


# The recipe's width and batch (its tensors are 0.25-2 MB), one thread, no evals
# between the first and the last step: what a step faults in shows in the difference
# between a short and a long run of the same stage.
STAGE_PARAMS = {"model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64},
                "train": {"batch_size": 16, "threads": 1, "warmup_iters": 5}}
SHORT, LONG = 20, 120
# A glibc.malloc tunable of the user's makes the stage leave malloc alone: this one
# changes nothing (no perturbation is glibc's default), so the thresholds stay glibc's
# own, rising as it sees large blocks freed.
GLIBC_DEFAULTS = {"GLIBC_TUNABLES": "glibc.malloc.perturb=0"}


def _stage_faults(project, steps: int, **env: str) -> int:
    """Minor page faults of `python stages/train.py`, its tracking process included
    (both reaped within the call)."""
    write_params(project, {"train": {"max_iters": steps, "eval_interval": steps,
                                     "checkpoint_interval": steps}})
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    run([sys.executable, "stages/train.py"], project, env=env_for(project, **env), timeout=300)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux")
def test_the_train_stage_does_not_fault_its_memory_in_again_every_step(tmp_path):
    """stages/train.py sets the thresholds itself: its steps fault in a small fraction
    of the pages they fault in with glibc's defaults."""
    project = make_project(tmp_path / "proj", STAGE_PARAMS, corpus=tiny_text())
    run(["dvc", "repro", "split"], project, timeout=180)

    def per_step(**env: str) -> float:
        short = _stage_faults(project, SHORT, **env)
        return (_stage_faults(project, LONG, **env) - short) / (LONG - SHORT)

    kept, default = per_step(), per_step(**GLIBC_DEFAULTS)
    print(f"\ntrain stage, minor page faults a step: {kept:.0f} as it runs, "
          f"{default:.0f} with glibc's defaults")
    assert default >= 200
    assert kept * 5 <= default
