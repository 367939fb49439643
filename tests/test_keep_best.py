"""Shipping the best model, end to end (real DVC, MLflow, torch; a tiny model on a
corpus small enough to overfit): models/model.pt, the logged MLflow model and the
registered version hold the weights of the eval with the lowest val loss;
reports/train.json, the run and the file's header say which step; early stopping
stops and says so; the history has the training health; a SIGKILL mid-countdown
resumes to the uninterrupted run's bytes."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import make_project, run, tiny_text
from test_reproducible import Job, checkpoint_files

PATIENCE, MIN_DELTA, EVERY = 4, 0.01, 25
OVERFIT = {"split": {"train_fraction": 0.4},
           "model": {"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 16},
           "train": {"batch_size": 16, "max_iters": 300, "lr": 3.0e-3, "min_lr": 3.0e-3,
                     "warmup_iters": 0, "eval_interval": EVERY, "eval_batches": 4,
                     "weight_decay": 0.0, "checkpoint_interval": EVERY, "autocast": "off",
                     "early_stop_patience": PATIENCE, "early_stop_min_delta": MIN_DELTA},
           "mlflow": {"log_model": True}}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def overfit(tmp_path_factory) -> tuple[Path, str]:
    project = make_project(tmp_path_factory.mktemp("keepbest") / "a", OVERFIT,
                           corpus=tiny_text(3000))
    result = run(["dvc", "repro", "evaluate"], project, timeout=600)
    return project, result.stdout


def test_the_best_eval_is_shipped_recorded_and_registered(overfit):
    project, stdout = overfit
    summary = json.loads((project / "reports/train.json").read_text())
    stop = summary["early_stop"]
    best = summary["best_val_step"]
    assert summary["keep"] == "best" and summary["kept_step"] == best > 0
    assert stop == {"step": summary["steps"], "patience": PATIENCE, "min_delta": MIN_DELTA,
                    "kept_step": best}
    assert summary["steps"] < 300 and summary["final_val_loss"] > summary["best_val_loss"]
    assert (f"train: early stop at step {stop['step']}: no val improvement ≥ {MIN_DELTA:g} in "
            f"{PATIENCE} evals; keeping step {best}") in stdout

    from gptpipe import checkpoints

    header = checkpoints.load_model_file(project / "models/model.pt")
    assert (header["step"], header["keep"], header["trained_steps"]) == \
        (best, "best", summary["steps"])
    # evaluate's whole-val loss is the best eval's neighbourhood, not the last's
    val = json.loads((project / "reports/metrics.json").read_text())["val"]["loss"]
    print(f"\nbest eval (step {best}) {summary['best_val_loss']:.4f}, last eval (step "
          f"{summary['steps']}) {summary['final_val_loss']:.4f}, shipped: whole-val {val:.4f}")
    assert abs(val - summary["best_val_loss"]) < abs(val - summary["final_val_loss"])

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run_id = json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]
    data = client.get_run(run_id).data
    assert data.tags["gptpipe.kept_step"] == str(best) and data.tags["gptpipe.keep"] == "best"
    assert data.tags["gptpipe.early_stop"].startswith(f"early stop at step {stop['step']}")
    assert data.metrics["best_val_step"] == best
    assert data.metrics["best_val_loss"] == pytest.approx(summary["best_val_loss"], abs=1e-6)
    assert data.metrics["early_stop_step"] == stop["step"]
    norms = client.get_metric_history(run_id, "grad_norm_mean")
    assert sorted(m.step for m in norms) == list(range(EVERY, stop["step"] + 1, EVERY))
    assert all(m.value > 0 for m in norms)
    assert 0 <= data.metrics["clipped_fraction"] <= 1 and data.metrics["gflops_per_s"] > 0
    assert "mfu" not in data.metrics  # no train.peak_gflops: no MFU
    # the registered version is the shipped file (the champion rule scores that file)
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/gptpipe/1",
                                                      dst_path=str(project / "dl")))
    weights = [p for p in folder.rglob("model.pt")]
    assert [sha256(p) for p in weights] == [sha256(project / "models/model.pt")]


def test_the_history_has_the_training_health(overfit):
    project, _ = overfit
    with open(project / "reports/train_history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["step"] == "0" and rows[0]["grad_norm_mean"] == ""
    for row in rows[1:]:
        assert 0 < float(row["grad_norm_mean"]) <= float(row["grad_norm_max"])
        assert 0 <= float(row["clipped_fraction"]) <= 1
        assert float(row["tokens_per_s"]) > 0 and float(row["gflops_per_s"]) > 0
        assert row["mfu"] == ""


def test_a_lone_copy_samples_and_fine_tunes(overfit, tmp_path):
    project, _ = overfit
    lone = tmp_path / "lone" / "model.pt"
    lone.parent.mkdir()
    lone.write_bytes((project / "models/model.pt").read_bytes())
    out = run(["gptpipe", "sample", "--model", str(lone), "--prompt", "ROMEO:",
               "--max-new-tokens", "20"], tmp_path, timeout=120).stdout
    assert out.startswith("ROMEO:")
    ft = make_project(tmp_path / "ft", {
        **OVERFIT, "train": {"init_from": str(lone), "max_iters": 10, "eval_interval": 5,
                             "threads": 1},
        "tokenizer": {"kind": "from_model", "unknown_chars": "replace"},
        "mlflow": {"log_model": False}}, corpus=tiny_text(6000)[3000:])
    run(["dvc", "repro", "train"], ft, timeout=600)
    assert json.loads((ft / "reports/train.json").read_text())["steps"] == 10
    assert (ft / "models/init/tokenizer.json").read_bytes() == \
        (project / "data/tokens/tokenizer.json").read_bytes()


@pytest.mark.slow
def test_sigkill_mid_countdown_resumes_to_the_uninterrupted_bytes(overfit, tmp_path):
    """The existing SIGKILL resume pattern (test_reproducible.py), with keep: best and
    early stopping: killed after the best eval, while counting down."""
    reference, _ = overfit
    b = make_project(tmp_path / "b", OVERFIT, corpus=tiny_text(3000))
    run(["dvc", "repro", "split"], b, timeout=300)
    best = json.loads((reference / "reports/train.json").read_text())["best_val_step"]
    job = Job(["dvc", "repro", "train"], b)
    # a checkpoint after the best eval has landed, and training went on past it
    job.wait_until(lambda: job.last_step() > best + EVERY and bool(checkpoint_files(b)),
                   timeout=300)
    job.kill()
    assert job.proc.returncode == -signal.SIGKILL and not (b / "models/model.pt").exists()
    result = run(["dvc", "repro", "train"], b, timeout=600)
    start = int(re.search(r"train: resuming from step (\d+)", result.stdout).group(1))
    assert start > best, result.stdout
    print(f"\nbest step {best}; killed at step {job.last_step()}, resumed from {start}")
    assert sha256(b / "models/model.pt") == sha256(reference / "models/model.pt")
    for report in ("reports/train.json", "reports/train_losses.csv", "reports/loss_curve.png"):
        assert (b / report).read_bytes() == (reference / report).read_bytes(), report
