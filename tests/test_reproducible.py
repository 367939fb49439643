"""Reproducibility under real DVC, MLflow and torch: the same params and corpus
give the same bytes in two projects; a training run killed with SIGKILL resumes
bit-exactly into the same MLflow run; a checkpoint of other params is never used.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import env_for, make_project, run, run_id_of, tiny_text
from projects import write_params

# Long enough to kill mid-run, still a few seconds of CPU. An eval line every step
# tells the test exactly how far training got before the kill.
RESUME_PARAMS = {"train": {"max_iters": 200, "checkpoint_interval": 20, "eval_interval": 1}}
MAX_ITERS, CKPT_EVERY = 200, 20
STAGES = {"init", "download", "clean", "tokenize", "split", "train", "evaluate", "sample"}
# Wall-clock figures and the MLflow run id: different in every run by nature.
NOT_REPRODUCIBLE = {"reports/train_history.csv", "reports/mlflow_run.json"}
STEP_LINE = re.compile(r"\bstep\s+(\d+): train ")
RESUMING = re.compile(r"train: resuming from step (\d+)")


class Job:
    """A process in its own session; its output (stdout + stderr) read as it comes."""

    def __init__(self, cmd: list[str], cwd: Path):
        self.cmd, self.cwd = cmd, cwd
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env_for(cwd, PYTHONUNBUFFERED="1"),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def last_step(self) -> int:
        steps = [int(m.group(1)) for m in STEP_LINE.finditer(self.output)]
        return max(steps, default=-1)

    def wait_until(self, condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.cmd} ended ({self.proc.returncode}) before the "
                                     f"test could kill it:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.cmd}: timed out:\n{self.output[-3000:]}")
            time.sleep(0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=10)

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.cmd}: timed out:\n{self.output[-3000:]}") from None
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, f"{self.cmd} failed:\n{self.output[-3000:]}"
        return self.output


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def out_hashes(project: Path) -> dict[str, str]:
    """Every output DVC recorded: path -> md5, checking all eight stages are there."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == STAGES
    return {out["path"]: out["md5"] for stage in lock["stages"].values()
            for out in stage["outs"]}


def checkpoint_files(project: Path) -> list[Path]:
    return sorted((project / ".gptpipe" / "checkpoints").glob("*/checkpoint.pt"))


def client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def all_runs(project: Path) -> list:
    if not (project / "mlflow.db").exists():
        return []
    c = client(project)
    return c.search_runs([e.experiment_id for e in c.search_experiments()])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Project A: the whole pipeline, uninterrupted. It runs in the background while
    the first test that needs it builds its own project; call it to wait for A."""
    a = make_project(tmp_path_factory.mktemp("reference") / "a", RESUME_PARAMS,
                     corpus=tiny_text())
    job = Job(["dvc", "repro"], a)
    done = []

    def wait() -> Path:
        if not done:
            job.finish(timeout=300)
            done.append(a)
        return a

    yield wait
    job.kill()


@pytest.fixture(scope="module")
def trained_to_split(tmp_path_factory) -> Path:
    """Project B: the same params and corpus as A, the data stages done."""
    b = make_project(tmp_path_factory.mktemp("resume") / "b", RESUME_PARAMS,
                     corpus=tiny_text())
    run(["dvc", "repro", "split"], b, timeout=120)
    return b


@pytest.mark.slow
def test_same_bytes_twice(reference, tmp_path):
    b = make_project(tmp_path / "b", RESUME_PARAMS, corpus=tiny_text())
    run(["dvc", "repro"], b, timeout=300)
    a = reference()
    outs_a, outs_b = out_hashes(a), out_hashes(b)
    assert set(outs_a) == set(outs_b)
    differ = sorted(path for path in outs_a if outs_a[path] != outs_b[path])
    same = len(outs_a) - len(differ)
    print(f"\nsame bytes twice: {same} of {len(outs_a)} outputs identical "
          f"(differ: {', '.join(differ)})")
    assert set(differ) <= NOT_REPRODUCIBLE, f"not byte-identical: {differ}"
    for path in set(outs_a) - NOT_REPRODUCIBLE:  # the md5 DVC recorded is the file's
        if (a / path).is_file():
            assert (a / path).read_bytes() == (b / path).read_bytes(), path


@pytest.mark.slow
def test_resume_after_sigkill_is_exact_and_continues_the_same_mlflow_run(
        reference, trained_to_split):
    b = trained_to_split
    runs_before = {r.info.run_id for r in all_runs(b)}

    # Kill 1: the instant a checkpoint lands, mostly before its metrics reach MLflow
    # (they were lost there before the checkpoint carried them).
    job = Job(["dvc", "repro", "train"], b)
    job.wait_until(lambda: bool(checkpoint_files(b)) and job.last_step() >= 25, timeout=180)
    inode = checkpoint_files(b)[0].stat().st_ino
    job.wait_until(lambda: checkpoint_files(b)[0].stat().st_ino != inode, timeout=60)
    job.kill()
    assert job.proc.returncode == -signal.SIGKILL
    assert checkpoint_files(b) and not (b / "models/model.pt").exists()

    # Kill 2: while resuming, a random number of steps past the resume point.
    job = Job(["dvc", "repro", "train"], b)
    job.wait_until(lambda: RESUMING.search(job.output) is not None, timeout=180)
    first = int(RESUMING.search(job.output).group(1))
    assert first > 0 and first % CKPT_EVERY == 0
    target = first + random.randint(5, 60)
    job.wait_until(lambda: job.last_step() >= target, timeout=120)
    time.sleep(random.uniform(0, 0.02))
    job.kill()
    killed_at = job.last_step()  # the last step completed (and printed) before the kill
    assert job.proc.returncode == -signal.SIGKILL

    result = run(["dvc", "repro", "train"], b, timeout=240)
    resumed = RESUMING.search(result.stdout)
    assert resumed, result.stdout
    start = int(resumed.group(1))
    assert first <= start <= killed_at and start % CKPT_EVERY == 0
    lost = killed_at - start
    print(f"\nkilled right after the checkpoint of step {first}; then killed after step "
          f"{killed_at}, resumed from step {start}: {lost} steps lost "
          f"(checkpoint_interval {CKPT_EVERY})")
    assert lost <= CKPT_EVERY
    assert not checkpoint_files(b)  # removed once the run finished

    a = reference()
    assert sha256(b / "models/model.pt") == sha256(a / "models/model.pt")
    for report in ("reports/train.json", "reports/train_losses.csv"):
        assert (b / report).read_bytes() == (a / report).read_bytes(), report

    new = [r for r in all_runs(b) if r.info.run_id not in runs_before]
    assert [r.info.run_id for r in new] == [run_id_of(b)]  # one run, continued
    assert new[0].info.status == "FINISHED"
    c, run_id = client(b), run_id_of(b)
    val = [m.step for m in c.get_metric_history(run_id, "val_loss")]
    assert sorted(val) == list(range(0, MAX_ITERS + 1))  # every eval, each once
    for key in ("batch_loss", "lr"):
        steps = [m.step for m in c.get_metric_history(run_id, key)]
        assert len(steps) == MAX_ITERS and sorted(steps) == list(range(1, MAX_ITERS + 1)), key
    # the same numbers as the uninterrupted run, step for step
    ref_id = run_id_of(a)
    for key in ("batch_loss", "val_loss"):
        got = sorted((m.step, m.value) for m in c.get_metric_history(run_id, key))
        want = sorted((m.step, m.value) for m in client(a).get_metric_history(ref_id, key))
        assert got == want, key


@pytest.mark.slow
def test_a_checkpoint_of_other_params_is_never_resumed(trained_to_split):
    b = trained_to_split
    job = Job(["python", "stages/train.py"], b)
    job.wait_until(lambda: bool(checkpoint_files(b)), timeout=180)
    job.kill()
    [foreign] = checkpoint_files(b)

    write_params(b, {"train": {"lr": 2.0e-3}})
    result = run(["dvc", "repro", "train"], b, timeout=240)
    assert "resuming" not in result.stdout and "Running stage 'train'" in result.stdout
    assert re.search(r"\bstep\s+0: train ", result.stdout), "did not train from step 0"
    assert foreign.exists()  # another run's checkpoint is left alone, not deleted
    run_id = run_id_of(b)
    key = client(b).get_run(run_id).data.tags["gptpipe.params_key"]
    assert key != foreign.parent.name

    # A checkpoint copied under this run's identity key: refused by what it records.
    planted = b / ".gptpipe" / "checkpoints" / key / "checkpoint.pt"
    planted.parent.mkdir(parents=True)
    shutil.copy2(foreign, planted)
    refused = run(["python", "stages/train.py"], b, check=False, timeout=120)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("train: error:"), refused.stderr
    assert "train.lr" in errors[0] and "refused" in errors[0]
    assert "Traceback" not in refused.stderr + refused.stdout
    assert "resuming" not in refused.stdout


def _plant_under(project: Path, foreign: Path, **changed) -> Path:
    """A copy of checkpoint `foreign` where a run whose identity differs from the one
    `foreign` records by `changed` looks for its checkpoint (its identity key)."""
    from gptpipe import checkpoints

    identity = {**checkpoints.load(foreign)["identity"], **changed}
    planted = project / ".gptpipe" / "checkpoints" / checkpoints.identity_key(identity)
    planted.mkdir(parents=True, exist_ok=True)
    shutil.copy2(foreign, planted / "checkpoint.pt")
    return planted / "checkpoint.pt"


@pytest.mark.slow
def test_a_checkpoint_from_other_data_or_another_world_size_is_refused(tmp_path):
    import numpy as np

    project = make_project(tmp_path / "proj", RESUME_PARAMS, corpus=tiny_text())
    run(["dvc", "repro", "split"], project, timeout=120)
    job = Job(["python", "stages/train.py"], project)
    job.wait_until(lambda: bool(checkpoint_files(project)), timeout=180)
    job.kill()
    [foreign] = checkpoint_files(project)

    # Other data: the same tokens in another order in val.npy, a checkpoint planted
    # where this data's run looks for its own.
    val = project / "data/split/val.npy"
    original_val = val.read_bytes()
    np.save(val, np.load(val)[::-1].copy())
    planted = _plant_under(project, foreign, **{"sha256.val.npy": sha256(val)})
    refused = run(["python", "stages/train.py"], project, check=False, timeout=180)
    errors = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode != 0 and len(errors) == 1, refused.stderr
    assert errors[0].startswith(f"train: error: {planted}: checkpoint is from another run, "
                                "refused: sha256.val.npy ("), errors[0]
    assert "resuming" not in refused.stdout and not STEP_LINE.search(refused.stdout)

    # Another world size (the same data again): the world-1 checkpoint where a
    # 2-process run looks.
    val.write_bytes(original_val)
    planted = _plant_under(project, foreign, world_size=2)
    refused = run(["python", "-m", "torch.distributed.run", "--nproc_per_node=2",
                   "stages/train.py"], project, check=False, timeout=300)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert (f"train: error: {planted}: checkpoint is from another run, refused: "
            "world_size (1 != 2)") in refused.stderr, output
    assert "resuming" not in refused.stdout and not STEP_LINE.search(refused.stdout)
