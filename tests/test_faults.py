"""Bad input and faults: a one-line error, a non-zero exit, and nothing lost.

Every case runs a real stage (or real DVC) in a temp project and checks:
  * a non-zero exit and exactly one line on stderr, `<stage>: error: ...`, naming the
    file, URL or param and what is wrong (tqdm progress and MLflow INFO log lines
    aside), and no traceback unless GPTPIPE_DEBUG=1;
  * no partial output: the stage's outputs are absent or unchanged, no *.tmp left
    (a SIGKILL mid-write may leave that write's temp file in .gptpipe/tmp/, nothing more);
  * earlier good data, model, checkpoints and MLflow runs intact.

The cases of params.yaml, download, clean and tokenize input errors live in
test_params.py, test_download.py, test_clean.py and test_tokenize.py; SIGKILL
during train in test_reproducible.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from helpers import dvc_status, env_for, make_project, run, run_id_of, tiny_text, tmpfs
from projects import write_params

SCRIPTS = {"init": "init_model.py", "download": "download.py", "clean": "clean.py",
           "tokenize": "tokenize_text.py", "split": "split.py", "train": "train.py",
           "evaluate": "evaluate.py", "sample": "sample.py"}
STAGES = list(SCRIPTS)
# tqdm's bar ("train:  50%|#####  | 5/10 ...") and MLflow/alembic INFO logging
# may share stderr with the error line; nothing else may.
PROGRESS = re.compile(r"^\s*\w+:\s+\d+%\|")
LOG_INFO = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?INFO\b")
STEP_LINE = re.compile(r"\bstep\s+(\d+): train ")
# Wall-clock figures and the MLflow run id differ between runs by nature.
NOT_REPRODUCIBLE = {"reports/train_history.csv", "reports/mlflow_run.json"}


# -- helpers ---------------------------------------------------------------------------

def stage(project: Path, name: str, env: dict | None = None, argv: list | None = None,
          **kwargs) -> subprocess.CompletedProcess:
    """Run one stage's script directly (as DVC would), never raising."""
    return subprocess.run(argv or ["python", f"stages/{SCRIPTS[name]}"], cwd=project,
                          env=env or env_for(project), text=True, capture_output=True,
                          timeout=300, **kwargs)


def error_line(result: subprocess.CompletedProcess, name: str) -> str:
    """The one line a failed stage printed; fails unless it is the only one."""
    assert result.returncode != 0, f"{name} succeeded:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in re.split(r"[\r\n]+", result.stderr) if line.strip()]
    assert lines, f"{name} failed ({result.returncode}) with nothing on stderr"
    last = lines[-1]
    assert last.startswith(f"{name}: error: "), result.stderr
    extra = [line for line in lines[:-1]
             if not PROGRESS.match(line) and not LOG_INFO.match(line)]
    assert not extra, f"more than one line on stderr: {extra}"
    return last


def clone(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(project: Path) -> dict[str, str]:
    """sha256 of every data, model, report and checkpoint file."""
    out = {}
    for folder in ("data", "models", "reports", ".gptpipe"):
        for path in sorted((project / folder).rglob("*")):
            if path.is_file():
                out[path.relative_to(project).as_posix()] = digest(path)
    return out


def leftovers(project: Path) -> list[str]:
    """Temp files of an interrupted atomic write, anywhere outside .git and .dvc."""
    return sorted(p.relative_to(project).as_posix() for p in project.rglob("*")
                  if ".tmp" in p.name and not {".git", ".dvc"} & set(
                      p.relative_to(project).parts))


def client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def statuses(project: Path) -> dict[str, str]:
    """run id -> status of every run in the project's sqlite store."""
    if not (project / "mlflow.db").exists():
        return {}
    c = client(project)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    return {r.info.run_id: r.info.status for r in runs}


def checkpoint_files(project: Path) -> list[Path]:
    return sorted((project / ".gptpipe" / "checkpoints").glob("*/checkpoint.pt"))


def checkpoint_step(path: Path) -> int:
    from gptpipe import checkpoints

    return int(checkpoints.load(path)["trainer"]["step"])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def lock_md5s(project: Path) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES), lock["stages"].keys()
    return {out["path"]: out["md5"] for entry in lock["stages"].values()
            for out in entry["outs"]}


# -- shared projects -------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_project(tmp_path_factory) -> Path:
    """The data stages done (download .. split), no model, no MLflow run yet; the
    MLflow store exists (creating its tables costs seconds every clone would pay)."""
    project = make_project(tmp_path_factory.mktemp("faults") / "data", corpus=tiny_text())
    store = subprocess.Popen(
        ["python", "-c", "from mlflow.tracking import MlflowClient as C; "
                         "C().search_experiments()"],
        cwd=project, env=env_for(project), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    run(["dvc", "repro", "split"], project, timeout=180)
    assert store.wait(timeout=180) == 0
    return project


@pytest.fixture(scope="module")
def trained(data_project, tmp_path_factory) -> Path:
    """data_project plus a trained model and its FINISHED MLflow run."""
    project = clone(data_project, tmp_path_factory.mktemp("faults") / "trained")
    run(["dvc", "repro", "train"], project, timeout=240)
    assert statuses(project) == {run_id_of(project): "FINISHED"}
    return project


def _with_file_size_limit(limit: int):
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


@dataclass
class Case:
    """One stage run in its own project, and the project's state just before it."""

    project: Path
    stage: str
    env: dict | None = None
    preexec_fn: object = None
    argv: list | None = None
    before: dict = field(default_factory=dict)
    runs_before: dict = field(default_factory=dict)
    result: subprocess.CompletedProcess | None = None

    def run(self) -> "Case":
        self.before, self.runs_before = snapshot(self.project), statuses(self.project)
        self.result = stage(self.project, self.stage, env=self.env, argv=self.argv,
                            preexec_fn=self.preexec_fn)
        return self


# A learning rate that warms up into divergence: finite losses for a few steps,
# then NaN, so a checkpoint (every 3 steps) exists before the bad step. params.py
# refuses such an lr (train.lr is in params.LR_RANGE, at most MAX_LR), so the NaN
# guard behind it is reached by running the real train stage with that one bound lifted.
DIVERGE = {"train": {"lr": 1000.0, "min_lr": 0.0, "warmup_iters": 20, "grad_clip": 0.0,
                     "checkpoint_interval": 3}}
TRAIN_WITHOUT_LR_BOUND = ["python", "-c", "import runpy, gptpipe.params as p; p.LR_RANGE.hi = 1e6; "
                          "runpy.run_path('stages/train.py', run_name='__main__')"]
# A model whose checkpoint (~5 MB: weights and two Adam moments) does not fit on the
# 1 MB filesystem mounted on .gptpipe/ (mlflow.db and models/ stay on the real disk).
BIG = {"model": {"n_layer": 2, "n_embd": 128}, "train": {"max_iters": 6,
                                                        "checkpoint_interval": 3}}
CHECKPOINT_FS = "1m"
BAD_PROMPTS = {"sample": {"prompts": ["ROMEO:", "€uro ✓"]}}


@pytest.fixture(scope="module")
def faulted(data_project, tmp_path_factory, request) -> dict[str, Case]:
    """The cases that pay for importing torch and MLflow (seconds each), run at once,
    each in its own clone: name -> Case. Those that need no model start first and
    run while `trained` trains."""
    with contextlib.ExitStack() as mounts:
        yield _faulted(data_project, tmp_path_factory, request, mounts)


def _faulted(data_project, tmp_path_factory, request, mounts) -> dict[str, Case]:
    base = tmp_path_factory.mktemp("faulted")

    def project(name: str, src: Path, overrides: dict | None = None) -> Path:
        dest = clone(src, base / name)
        if overrides:
            write_params(dest, overrides)
        return dest

    port = closed_port()
    cases = {
        "nonfinite": Case(project("nonfinite", data_project, DIVERGE), "train",
                          argv=TRAIN_WITHOUT_LR_BOUND),
        "unreachable": Case(project("unreachable", data_project), "train", env=env_for(
            base / "unreachable",
            MLFLOW_TRACKING_URI=f"http://user:secret@127.0.0.1:{port}")),
    }

    def diverge_then_corrupt() -> None:
        # the checkpoint the divergence left, 4 kB of its tensor data zeroed
        cases["nonfinite"].run()
        corrupted = Case(project("corrupted", cases["nonfinite"].project), "train",
                         argv=TRAIN_WITHOUT_LR_BOUND)  # the same params: lr 1000
        (ckpt,) = checkpoint_files(corrupted.project)
        data = ckpt.read_bytes()
        middle = len(data) // 2
        ckpt.write_bytes(data[:middle] + bytes(4096) + data[middle + 4096:])
        cases["corrupted"] = corrupted.run()

    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(diverge_then_corrupt), pool.submit(cases["unreachable"].run)]
        trained = request.getfixturevalue("trained")
        cases["disk_full"] = Case(project("disk_full", trained, BIG), "train")
        mounts.enter_context(tmpfs(cases["disk_full"].project / ".gptpipe", CHECKPOINT_FS))
        cases["bad_prompt"] = Case(project("bad_prompt", trained, BAD_PROMPTS), "sample")
        jobs += [pool.submit(cases[name].run) for name in ("disk_full", "bad_prompt")]
        for job in jobs:
            job.result()
    return cases


# -- train -----------------------------------------------------------------------------

def test_nonfinite_loss_names_the_step_keeps_the_last_checkpoint_and_fails_the_run(
        faulted):
    case = faulted["nonfinite"]
    line = error_line(case.result, "train")
    match = re.fullmatch(r"train: error: loss is (nan|inf|-inf) at step (\d+); stopped "
                         r"\(the last good checkpoint is kept\); lower train\.lr or raise "
                         r"train\.grad_clip", line)
    assert match, line
    bad_step = int(match.group(2))
    kept = (bad_step - 1) // 3 * 3  # the last checkpoint_interval before the bad step
    assert kept >= 3, f"diverged before the first checkpoint: {line}"
    # no model, no reports; the data untouched; the one new file is the checkpoint
    after = snapshot(case.project)
    assert {k: after.get(k) for k in case.before} == case.before
    (new,) = set(after) - set(case.before)
    assert new.endswith("/checkpoint.pt") and not leftovers(case.project)
    assert checkpoint_step(case.project / new) == kept
    assert not (case.project / "models/model.pt").exists()  # (models/init/: the init stage's)
    assert not (case.project / "reports/mlflow_run.json").exists()
    # the run FAILED, holding the metrics up to the checkpoint, no further
    ((run_id, status),) = statuses(case.project).items()
    assert status == "FAILED"
    losses = client(case.project).get_metric_history(run_id, "batch_loss")
    assert max(m.step for m in losses) == kept


def test_a_corrupted_checkpoint_is_refused_naming_its_path(faulted):
    case = faulted["corrupted"]
    (ckpt,) = checkpoint_files(case.project)
    line = error_line(case.result, "train")
    assert re.fullmatch(rf"train: error: {re.escape(str(ckpt.resolve()))}: corrupted or "
                        r"truncated checkpoint, refused \(CRC mismatch in \S+\)", line), line
    assert snapshot(case.project) == case.before  # kept as found: nothing loaded or written
    assert statuses(case.project) == case.runs_before  # no run created or reopened
    assert not leftovers(case.project)


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "flipped"])
def test_damaged_checkpoints_are_never_half_loaded(faulted, tmp_path, damage):
    from gptpipe import checkpoints
    from gptpipe.errors import UserError

    (ckpt,) = checkpoint_files(faulted["nonfinite"].project)
    data = bytearray(ckpt.read_bytes())
    if damage == "truncated":
        data = data[: len(data) * 3 // 4]
    elif damage == "zeroed":
        data[len(data) // 3: len(data) // 3 + 64] = bytes(64)
    else:
        data[len(data) // 2] ^= 0x01  # one bit
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"^{re.escape(str(bad))}: corrupted or truncated "
                                        r"checkpoint, refused \("):
        checkpoints.load(bad)


def test_disk_full_enospc_while_writing_a_checkpoint_leaves_no_partial_file(faulted, trained):
    case = faulted["disk_full"]
    assert case.before["models/model.pt"]  # an earlier model, to be kept
    line = error_line(case.result, "train")
    match = re.fullmatch(
        r"train: error: (\S+/checkpoint\.pt): cannot write: No space left on device", line)
    assert match, line
    ckpt = Path(match.group(1))
    assert ckpt.parent.parent == (case.project / ".gptpipe" / "checkpoints").resolve()
    assert not ckpt.exists() and not leftovers(case.project)
    assert snapshot(case.project) == case.before  # the old model and reports kept
    runs = statuses(case.project)
    assert runs.pop(run_id_of(trained)) == "FINISHED" and list(runs.values()) == ["FAILED"]


def test_disk_full_enospc_while_writing_tokens_keeps_the_old_array(data_project, tmp_path):
    project = clone(data_project, tmp_path / "proj")
    before = snapshot(project)
    tokens_dir = project / "data" / "tokens"
    old = {f.name: f.read_bytes() for f in tokens_dir.iterdir()}
    used = sum(len(data) for data in old.values())
    assert len(old["tokens.npy"]) > 30_000
    # the old outputs on a filesystem with room for them and less than one more array
    with tmpfs(tokens_dir, f"{used // 4096 * 4096 + 16384}"):
        for name, data in old.items():
            (tokens_dir / name).write_bytes(data)
        result = stage(project, "tokenize")
        line = error_line(result, "tokenize")
        assert re.fullmatch(r"tokenize: error: data/tokens/tokens\.npy: cannot write: "
                            r"(No space left on device|\d+ requested and \d+ written "
                            r"\(is the disk full\?\))", line), line
        assert snapshot(project) == before and not leftovers(project)
        assert {f.name: f.read_bytes() for f in tokens_dir.iterdir()} == old


def test_file_size_limit_efbig_while_writing_tokens_keeps_the_old_array(data_project,
                                                                         tmp_path):
    project = clone(data_project, tmp_path / "proj")
    before = snapshot(project)
    size = (project / "data/tokens/tokens.npy").stat().st_size
    assert size > 30_000

    result = stage(project, "tokenize", preexec_fn=_with_file_size_limit(20_000))
    assert error_line(result, "tokenize") == (
        f"tokenize: error: data/tokens/tokens.npy: cannot write: {size - 128} requested "
        "and 19872 written (is the disk full?)")
    assert snapshot(project) == before and not leftovers(project)


class Job:
    """A stage script running in the background; its stdout read as it comes."""

    def __init__(self, project: Path, name: str):
        self.err = (project / f".{name}.stderr").open("w+")
        self.proc = subprocess.Popen(
            ["python", f"stages/{SCRIPTS[name]}"], cwd=project, text=True,
            env=env_for(project, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
            stderr=self.err)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                         daemon=True).start()

    def steps(self) -> list[int]:
        return [int(m.group(1)) for m in STEP_LINE.finditer("".join(self.lines))]

    def signal_after_step(self, step: int, signum: int) -> subprocess.CompletedProcess:
        deadline = time.monotonic() + 120
        while max(self.steps(), default=-1) < step:
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.01)
        self.proc.send_signal(signum)
        self.proc.wait(timeout=120)
        self.err.seek(0)
        stderr = self.err.read()
        self.err.close()
        Path(self.err.name).unlink()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                           "".join(self.lines), stderr)


@pytest.mark.slow
def test_sigterm_and_ctrl_c_stop_cleanly_then_dvc_repro_resumes(trained, tmp_path):
    project = clone(trained, tmp_path / "proj")
    write_params(project, {"train": {"max_iters": 200, "eval_interval": 10,
                                     "checkpoint_interval": 100}})
    model = digest(project / "models/model.pt")
    stopped = re.compile(r"train: error: stopped by a signal at step (\d+); the checkpoint "
                         r"is kept: rerun `dvc repro` to resume")

    # SIGTERM: a checkpoint at the step it stopped at, the run KILLED
    first = Job(project, "train").signal_after_step(10, signal.SIGTERM)
    match = stopped.fullmatch(error_line(first, "train"))
    assert match, first.stderr
    step = int(match.group(1))
    (ckpt,) = checkpoint_files(project)
    assert 10 <= step < 200 and checkpoint_step(ckpt) == step
    runs = statuses(project)
    assert runs.pop(run_id_of(project)) == "FINISHED"  # the earlier model's run
    ((run_id, status),) = runs.items()
    assert status == "KILLED"
    assert digest(project / "models/model.pt") == model and not leftovers(project)

    # Ctrl-C (SIGINT) after resuming: the same, further on, in the same run
    second = Job(project, "train").signal_after_step(step + 10, signal.SIGINT)
    assert f"train: resuming from step {step} " in second.stdout
    match = stopped.fullmatch(error_line(second, "train"))
    assert match, second.stderr
    assert int(match.group(1)) > step
    step = int(match.group(1))
    assert checkpoint_step(ckpt) == step
    assert statuses(project)[run_id] == "KILLED" and len(statuses(project)) == 2

    # dvc repro picks it up and finishes the same run
    result = run(["dvc", "repro", "train"], project, timeout=240)
    assert f"train: resuming from step {step} " in result.stdout
    assert run_id_of(project) == run_id
    assert statuses(project)[run_id] == "FINISHED" and len(statuses(project)) == 2
    assert json.loads((project / "reports/train.json").read_text())["steps"] == 200
    assert not checkpoint_files(project) and not leftovers(project)


# -- MLflow ----------------------------------------------------------------------------

def test_unreachable_tracking_server_fails_before_a_checkpoint_without_the_password(faulted):
    case = faulted["unreachable"]
    port = re.search(r":(\d+)$", case.env["MLFLOW_TRACKING_URI"]).group(1)
    assert error_line(case.result, "train") == (
        f"train: error: MLflow tracking server http://***@127.0.0.1:{port} is unreachable "
        "(ConnectionError); start it or unset MLFLOW_TRACKING_URI")
    assert "secret" not in case.result.stdout + case.result.stderr
    # the server is checked before training starts (MLflow itself opens in the
    # background after the first step): no step, no checkpoint, no output written
    assert "first step done" not in case.result.stdout + case.result.stderr
    assert snapshot(case.project) == case.before
    assert not (case.project / ".gptpipe" / "checkpoints").exists()


# -- sample ----------------------------------------------------------------------------

def test_prompt_outside_the_vocabulary_is_named_and_the_run_stays_finished(faulted):
    case = faulted["bad_prompt"]
    assert error_line(case.result, "sample") == (
        "sample: error: sample.prompts[1]: characters not in the tokenizer's vocabulary: "
        "'€' x1, '✓' x1")
    assert snapshot(case.project) == case.before
    assert not (case.project / "reports/samples.md").exists()
    assert statuses(case.project) == case.runs_before == {run_id_of(case.project): "FINISHED"}


@pytest.mark.parametrize("value", [0, -5])
def test_max_new_tokens_must_be_positive(data_project, tmp_path, value):
    project = clone(data_project, tmp_path / "proj")
    write_params(project, {"sample": {"max_new_tokens": value}})
    before = snapshot(project)
    assert error_line(stage(project, "sample"), "sample") == (
        f"sample: error: params: sample.max_new_tokens: must be >= 1, got {value}")
    assert snapshot(project) == before


@pytest.mark.parametrize("name", ["sample", "evaluate"])
def test_no_trained_model_yet_says_to_run_train(data_project, tmp_path, name):
    project = clone(data_project, tmp_path / "proj")
    before = snapshot(project)
    assert error_line(stage(project, name), name) == (
        f"{name}: error: reports/mlflow_run.json: not found: no trained model yet; "
        "run the train stage first (`dvc repro train`)")
    assert snapshot(project) == before and statuses(project) == {}


def test_gptpipe_debug_adds_the_traceback(data_project):
    result = stage(data_project, "sample",
                   env=env_for(data_project, GPTPIPE_DEBUG="1"))
    assert result.returncode == 2
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip("\n").splitlines()[-1] == (
        "sample: error: reports/mlflow_run.json: not found: no trained model yet; "
        "run the train stage first (`dvc repro train`)")


def test_gptpipe_debug_flag_adds_the_traceback_to_the_cli(data_project):
    # no trained model in data_project: the same error with and without --debug
    plain = run(["gptpipe", "sample", "--prompt", "A"], data_project, check=False)
    debug = run(["gptpipe", "--debug", "sample", "--prompt", "A"], data_project, check=False)
    assert plain.returncode == debug.returncode != 0
    assert "Traceback" not in plain.stderr and plain.stderr.count("\n") == 1, plain.stderr
    assert plain.stderr.startswith("gptpipe: error: models/model.pt: ")
    assert debug.stderr.startswith("Traceback (most recent call last):"), debug.stderr
    assert debug.stderr.rstrip("\n").splitlines()[-1] == plain.stderr.rstrip("\n")


# -- evaluate and sample mark their run FAILED -------------------------------------------

@pytest.mark.slow
def test_evaluate_failing_mid_stage_marks_the_run_failed(trained, tmp_path):
    project = clone(trained, tmp_path / "proj")
    # a val split of floats: refused by evaluate after it reopened the run
    import numpy as np
    np.save(project / "data/split/val.npy", np.zeros(100, dtype=np.float32))
    before = snapshot(project)
    line = error_line(stage(project, "evaluate"), "evaluate")
    assert line.startswith("evaluate: error: data/split/val.npy: expected a flat unsigned "
                           "array"), line
    assert statuses(project) == {run_id_of(project): "FAILED"}
    assert snapshot(project) == before  # no metrics.json written


@pytest.mark.slow
def test_sample_failing_mid_stage_marks_the_run_failed(trained, tmp_path):
    project = clone(trained, tmp_path / "proj")
    # reports/samples.json cannot be written: a folder with a file in it is in its way
    (project / "reports/samples.json").unlink(missing_ok=True)
    (project / "reports/samples.json").mkdir()
    (project / "reports/samples.json/keep").write_text("x")
    line = error_line(stage(project, "sample"), "sample")
    assert line.startswith("sample: error: reports/samples.json: cannot write: "), line
    assert statuses(project) == {run_id_of(project): "FAILED"}
    assert not leftovers(project)


@pytest.mark.slow
def test_several_prompts_times_num_samples(trained, tmp_path):
    project = clone(trained, tmp_path / "proj")
    prompts = ["ROMEO:", "JULIET:", "\n"]
    write_params(project, {"sample": {"prompts": prompts, "num_samples": 2,
                                      "max_new_tokens": 24, "temperature": 1.0, "seed": 5}})
    result = stage(project, "sample")
    assert result.returncode == 0, result.stderr
    rows = json.loads((project / "reports/samples.json").read_text())["samples"]
    assert [(r["prompt"], r["seed"]) for r in rows] == [
        (prompt, seed) for prompt in prompts for seed in (5, 6)]
    assert all(len(r["text"]) > 0 for r in rows)
    for prompt in prompts:  # two samples of one prompt: two seeds, two texts
        first, second = (r["text"] for r in rows if r["prompt"] == prompt)
        assert first != second, prompt
    markdown = (project / "reports/samples.md").read_text()
    assert markdown.count("## Sample ") == 6
    for i, row in enumerate(rows, 1):
        assert f"## Sample {i}: prompt {row['prompt']!r}" in markdown
        assert f"{row['prompt']}{row['text']}" in markdown
    # the MLflow run holds the same six rows in its table
    c, run_id = client(project), run_id_of(project)
    table_file = Path(c.download_artifacts(run_id, "samples/table.json", str(tmp_path)))
    table = json.loads(table_file.read_text())
    assert len(table["data"]) == 6
    column = table["columns"].index("text")
    assert [r[column] for r in table["data"]] == [r["text"] for r in rows]
    assert statuses(project) == {run_id: "FINISHED"}


# -- parallel experiments on the sqlite store ------------------------------------------

@pytest.mark.slow
def test_two_queued_experiments_in_parallel_lose_no_run(trained, tmp_path):
    project = clone(trained, tmp_path / "proj")
    # No store yet: the two jobs also race to create mlflow.db and the experiment.
    shutil.rmtree(project / "mlartifacts", ignore_errors=True)
    (project / "mlflow.db").unlink()
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    env = env_for(project)
    env.pop("MLFLOW_TRACKING_URI")  # the default: sqlite at the project root (DVC_ROOT)
    for lr in ("2.0e-3", "3.0e-3"):
        run(["dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}"], project, env=env)
    result = run(["dvc", "exp", "run", "--run-all", "-j", "2"], project, env=env,
                 timeout=400)
    output = result.stdout + result.stderr
    assert "database is locked" not in output and "Traceback" not in output
    # `--run-all` exits 0 even when an experiment failed: ask the queue
    queue = run(["dvc", "queue", "status"], project, env=env).stdout
    assert queue.count("Success") == 2 and "Failed" not in queue, queue

    c = client(project)
    new = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert len(new) == 2, [(r.info.run_name, r.info.status) for r in new]
    assert [r.info.status for r in new] == ["FINISHED", "FINISHED"]
    assert sorted(r.data.params["train.lr"] for r in new) == ["0.002", "0.003"]
    for r in new:  # trained, evaluated and sampled: all three stages reached the store
        assert "val.loss" in r.data.metrics and r.data.tags.get("mlflow.runName")
        assert {a.path for a in c.list_artifacts(r.info.run_id, "samples")} >= {
            "samples/samples.md"}
    names = {r.info.run_name for r in new}
    exps = run(["dvc", "exp", "show", "--json"], project).stdout
    assert all(name in exps for name in names), (names, exps[:2000])
    # the artifacts too are at the project root, not in the executors' temp copies
    assert len(list((project / "mlartifacts").rglob("samples.md"))) == 2


LOCKED_STORE = """
import sqlite3, sys, threading, time
from gptpipe.tracking.runs import Tracker

db = sys.argv[1]
tracker = Tracker("sqlite:///" + db)
run_id = tracker.create_run("locked", None, {"a": 1}, {})
holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
holder.execute("BEGIN EXCLUSIVE")  # another writer holds the store for 7 s
threading.Timer(7.0, holder.execute, ["COMMIT"]).start()
start = time.monotonic()
tracker.set_tags(run_id, {"after": "the lock"})
print(round(time.monotonic() - start, 1), tracker.client.get_run(run_id).data.tags["after"])
"""


@pytest.mark.slow
def test_a_store_locked_past_sqlites_busy_timeout_is_waited_for(data_project, tmp_path):
    db = tmp_path / "mlflow.db"
    shutil.copy(data_project / "mlflow.db", db)
    result = run(["python", "-c", LOCKED_STORE, str(db)], tmp_path, timeout=120)
    waited, tag = result.stdout.split(maxsplit=1)
    # sqlite itself waits 5 s, then says "database is locked"; store.retry_locked retried
    assert float(waited) >= 6.5 and tag.strip() == "the lock", result.stdout


# -- SIGKILL in every stage but train --------------------------------------------------

def session_processes(session: int, script: str) -> list[int]:
    """Pids of the processes in `session` (started by this test) running `script`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == session and f"stages/{script}" in cmdline:
            pids.append(int(entry.name))
    return pids


def _lock_stamp(project: Path) -> int | None:
    try:
        return (project / "dvc.lock").stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _kill_stage_once(project: Path, name: str, delay: float,
                     force: bool) -> tuple[str | None, str]:
    """Run `dvc repro` up to stage `name`, SIGKILL that stage's process `delay` s after
    it appears. Returns (how the kill landed, or None when it did not, DVC's output)."""
    cmd = ["dvc", "repro", "--no-run-cache", name]
    if force:  # it ran to the end last time: run it (alone) again
        cmd[2:2] = ["--force", "--single-item"]
    proc = subprocess.Popen(cmd, cwd=project, env=env_for(project, PYTHONUNBUFFERED="1"),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    seen, sent = [], 0
    for line in proc.stdout:
        seen.append(line)
        if not line.startswith(f"Running stage '{name}'"):
            continue
        # DVC writes dvc.lock when the stage ends: a forced rerun's stage is in the
        # lock already, so "over" is the lock written again, not the stage in it
        written = _lock_stamp(project)
        deadline = time.monotonic() + 60
        while not (pids := session_processes(proc.pid, SCRIPTS[name])):
            if proc.poll() is not None or _lock_stamp(project) != written:
                break  # over before it was seen (a busy box): nothing to kill
            assert time.monotonic() < deadline, "".join(seen)
            time.sleep(0.002)
        time.sleep(delay)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                sent += 1
    proc.wait(timeout=60)
    output = "".join(seen)
    assert "Traceback" not in output, output
    if sent and proc.returncode != 0:
        # the kill landed: DVC says that stage failed (killed: -9), and stops
        assert re.search(rf"failed to reproduce '{name}'", output), output
        assert re.search(r"exited with -9\b", output), output  # by our SIGKILL
        return f"killed {delay:.3f} s after its process started", output
    assert proc.returncode == 0, output  # no kill landed: the stage ran to the end
    return None, output


@pytest.mark.slow
def test_sigkill_in_each_stage_then_dvc_repro_gives_the_uninterrupted_outputs(tmp_path):
    project = make_project(tmp_path / "proj", corpus=tiny_text())
    run(["dvc", "repro"], project, timeout=300)
    baseline = lock_md5s(project)
    # start over, from nothing; --no-run-cache so every stage really runs again
    for name in ("data", "models", "reports", "dvc.lock"):
        shutil.rmtree(project / name, ignore_errors=True)
        (project / name).unlink(missing_ok=True)

    # Kill each stage's process (as the OOM killer would; DVC itself is left alive:
    # a SIGKILLed DVC can leave a corrupt .dvc/tmp/rwlock, treeverse/dvc#7615) while it
    # runs: once its process exists, after a seeded random delay. A kill counts only
    # when it reached a live process and `dvc repro` then failed on that stage; a stage
    # that finished first is forced to run again with a shorter delay, until one lands.
    seed = int(os.environ.get("GPTPIPE_KILL_SEED", random.randrange(2**32)))
    print(f"\nSIGKILL seed: {seed} (rerun with GPTPIPE_KILL_SEED={seed})")
    rng = random.Random(seed)
    killed = []
    for name in ["download", "clean", "tokenize", "split", "evaluate", "sample"]:
        max_delay = 4.0 if name in ("evaluate", "sample") else 0.6
        for attempt in range(1, 21):
            landed, output = _kill_stage_once(project, name, rng.uniform(0, max_delay),
                                              force=attempt > 1)
            if landed:
                killed.append(f"{name} (attempt {attempt}, {landed})")
                break
            max_delay /= 2  # it finished first: kill sooner next time
        else:
            pytest.fail(f"{name}: no SIGKILL landed mid-run in 20 attempts:\n{output}")
    print(f"SIGKILL landed in: {'; '.join(killed)}")

    run(["dvc", "repro", "--no-run-cache"], project, timeout=300)
    after = lock_md5s(project)
    assert set(after) == set(baseline)
    differ = sorted(p for p in baseline if baseline[p] != after[p])
    assert set(differ) <= NOT_REPRODUCIBLE, differ
    # A kill in the middle of a write can leave that write's temp file in .gptpipe/tmp/
    # (ignored by git and DVC; swept by the next write), never one beside an output.
    litter = leftovers(project)
    assert all(p.startswith(".gptpipe/tmp/") for p in litter), litter
    if litter:
        print(f"temp files left by the kills: {litter}")
    assert dvc_status(project) == {}
    assert statuses(project)[run_id_of(project)] == "FINISHED"
