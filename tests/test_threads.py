"""train.threads: one policy for every torch stage (devices.ThreadPolicy). N > 0 is
N threads; 0 (auto) divides the cores by the torch stages running at once, counted by
the slot locks they hold in <DVC_ROOT>/.gptpipe/slots, or given by GPTPIPE_WORKERS.
Real processes, real locks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from projects import ROOT
from gptpipe import devices
from gptpipe.errors import UserError

HOLD = """
import sys, time
from gptpipe.devices import use_threads
policy = use_threads(0)
print(policy.threads, policy.workers, flush=True)
sys.stdin.readline()  # hold the slot until told
"""


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv(devices.WORKERS_ENV, raising=False)
    return tmp_path


def holder(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "DVC_ROOT": str(root)})
    proc.first_line = proc.stdout.readline().split()  # the slot is taken
    return proc


def test_a_number_is_that_many_threads(root):
    policy = devices.use_threads(3)
    assert policy.threads == 3 and "train.threads 3" in policy.describe()
    assert not (root / ".gptpipe" / "slots").exists()  # takes no slot


def test_auto_alone_takes_every_core(root):
    policy = devices.use_threads(0)
    assert policy.workers == 1
    assert policy.threads == devices.cpu_cores()


def test_auto_divides_the_cores_by_the_stages_running_and_follows_them(root, monkeypatch):
    monkeypatch.setattr(devices, "cpu_cores", lambda: 8)
    policy = devices.use_threads(0)
    assert (policy.workers, policy.threads) == (1, 8)
    others = [holder(root), holder(root)]
    try:
        # each of the others counted itself and the stages before it
        assert [p.first_line[1] for p in others] == ["2", "3"]
        assert policy.apply() == 8 // 3 and policy.workers == 3  # counts again
        others[0].stdin.close()
        others[0].wait(timeout=30)
        assert policy.apply() == 8 // 2  # a stage ended: its lock is gone
    finally:
        for proc in others:
            proc.kill()
            proc.wait()
    assert policy.apply() == 8
    assert "auto: 8 cores / 1 gptpipe torch stage running" in policy.describe()


def test_a_killed_stage_frees_its_slot(root, monkeypatch):
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    policy = devices.use_threads(0)
    proc = holder(root)
    assert policy.apply() == 1
    proc.kill()
    proc.wait()
    assert policy.apply() == 2


def test_gptpipe_workers_sets_the_count(root, monkeypatch):
    monkeypatch.setattr(devices, "cpu_cores", lambda: 8)
    monkeypatch.setenv(devices.WORKERS_ENV, "3")
    policy = devices.use_threads(0)
    assert (policy.workers, policy.threads) == (3, 2)
    assert "GPTPIPE_WORKERS=3" in policy.describe()
    monkeypatch.setenv(devices.WORKERS_ENV, "16")
    assert policy.apply() == 1  # never below one thread
    for bad in ("0", "two"):
        monkeypatch.setenv(devices.WORKERS_ENV, bad)
        with pytest.raises(UserError, match="GPTPIPE_WORKERS"):
            policy.apply()


def test_every_torch_stage_follows_the_policy_and_declares_its_param():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("evaluate", "sample"):
        assert "train.threads" in stages[name]["params"], name
        assert "use_threads(p.train.threads)" in (ROOT / f"stages/{name}.py").read_text()
    assert "train" in stages["train"]["params"]
    assert "use_threads(p.train.threads)" in (ROOT / "src/gptpipe/train_run.py").read_text()
