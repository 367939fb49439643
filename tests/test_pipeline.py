"""End to end: the seven stages under real DVC, the run in a real sqlite MLflow store."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from helpers import env_for, run, run_id_of, stages_run


def _client(project):
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


@pytest.mark.slow
def test_seven_stages_then_sample_only_rerun_into_the_same_run(project):
    result = run(["dvc", "repro"], project)
    assert stages_run(result.stdout) == ["init", "download", "clean", "tokenize", "split", "train",
                                   "evaluate", "sample"]
    for out in ("models/model.pt", "reports/metrics.json", "reports/samples.md",
                "reports/samples.json", "reports/train_losses.csv",
                "reports/train_history.csv", "reports/loss_curve.png"):
        assert (project / out).stat().st_size > 0, out

    client = _client(project)
    run_id = run_id_of(project)
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED"
    p = mlrun.data.params
    assert p["model.n_layer"] == "1" and p["train.max_iters"] == "30"
    assert p["evaluate.batch_size"] == "64" and p["sample.num_samples"] == "1"
    # 30 steps, evals every 10 from step 0: 4 points; a batch loss every step
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [0, 10, 20, 30]
    assert len(client.get_metric_history(run_id, "batch_loss")) == 30
    assert len(client.get_metric_history(run_id, "lr")) == 30
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert mlrun.data.metrics["val.loss"] == pytest.approx(metrics["val"]["loss"])
    assert mlrun.data.metrics["val.bits_per_char"] > 0
    tags = mlrun.data.tags
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert len(tags["data.sha256.train.npy"]) == 64
    # train.autocast auto depends on the machine: what it chose is in the report and the run
    train_report = json.loads((project / "reports/train.json").read_text())
    assert train_report["autocast"] in ("bf16", "fp32")
    assert tags["gptpipe.autocast"] == train_report["autocast"]
    assert tags["gptpipe.autocast_reason"].startswith("auto: ")
    assert tags["gptpipe.evaluate_autocast"] == train_report["autocast"]
    artifacts = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert {"samples/samples.md", "samples/samples.json", "samples/table.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "plots")} == {"plots/loss_curve.png"}

    # no change: nothing runs
    assert stages_run(run(["dvc", "repro"], project).stdout) == []

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "trained"], project)
    result = run(["dvc", "exp", "run", "-S", "sample.temperature=0.5"], project)
    assert stages_run(result.stdout) == ["sample"]
    assert run_id_of(project) == run_id
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["sample.temperature"] == "0.8"  # logged once, never again
    assert mlrun.data.tags["current.sample.temperature"] == "0.5"
    samples = json.loads((project / "reports/samples.json").read_text())
    assert samples["settings"]["sample.temperature"] == 0.5
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1


def _read_as_it_comes(cmd: list[str], cwd) -> tuple[list[tuple[bytes, bool]], int]:
    """The process's stdout as the pipe delivers it: (chunk, was the process still
    running when the chunk arrived) for each read."""
    env = env_for(cwd)
    env.pop("PYTHONUNBUFFERED", None)  # a pipe, buffered as a user's would be
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    chunks = []
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            chunks.append((chunk, proc.poll() is None))
        return chunks, proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.stdout.close()


def test_sample_command_streams_from_the_trained_model(project):
    run(["dvc", "repro", "train"], project)
    cmd = ["gptpipe", "sample", "--prompt", "ROMEO:", "--max-new-tokens", "400", "--seed", "7"]
    chunks, code = _read_as_it_comes(cmd, project)
    assert code == 0
    streamed = b"".join(chunk for chunk, _ in chunks).decode()
    # Streaming: text arrives in pieces while the model is still generating, not all
    # at once when the process ends (a buffered print would arrive in one read).
    generated = [alive for chunk, alive in chunks if chunk.strip()]
    assert len(generated) >= 2, chunks
    assert generated[0], "the first text arrived only once the process had ended"
    assert streamed.startswith("ROMEO:") and len(streamed) > len("ROMEO:") + 100
    # the same text as a run that is read only at the end (same seed)
    again = run(cmd, project)
    assert again.stdout == streamed
    bad = run(["gptpipe", "sample", "--prompt", "€uro"], project, check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "'€'" in bad.stderr
