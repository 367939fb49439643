"""The evaluate stage under DVC: val scored whole, the train split on
evaluate.train_windows evenly spread windows, named in reports/metrics.json and
MLflow; 0 scores the whole train split, as the exact path does."""
from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import run
from projects import write_params
from gptpipe import tokenizers
from gptpipe.arrays import load_tokens
from gptpipe.evaluation import split_metrics, total_nats, windows_total
from gptpipe.inference import load_model


def metrics(project) -> dict:
    return json.loads((project / "reports/metrics.json").read_text())


def exact(project, split: str) -> dict:
    """The split scored whole, in this process, as the stage's exact path does."""
    model, _ = load_model(project / "models/model.pt",
                          tokenizer_path=project / "data/tokens/tokenizer.json")
    tokenizer = tokenizers.load(project / "data/tokens/tokenizer.json")
    data = load_tokens(project / f"data/split/{split}.npy")
    nats, n = total_nats(model, data, 64, torch.device("cpu"))
    return split_metrics(nats, n, len(tokenizer.decode(data[1:].tolist())))


@pytest.mark.slow
def test_the_train_subset_is_in_the_metrics_and_0_scores_it_whole(project):
    write_params(project, {"evaluate": {"train_windows": 100},
                           "train": {"autocast": "off"}})  # fp32: this process's numbers
    run(["dvc", "repro", "evaluate"], project)
    subset = metrics(project)
    block = 32
    train_targets = len(load_tokens(project / "data/split/train.npy")) - 1
    total = windows_total(train_targets, block)
    assert total > 100
    assert subset["train"]["windows_scored"] == 100
    assert subset["train"]["windows_total"] == total
    assert subset["train"]["tokens"] == 100 * block
    assert 0 < subset["train"]["loss_stderr"] < 0.2
    assert set(subset["val"]) == {"loss", "perplexity", "bits_per_char", "tokens",
                                  "characters"}
    want_val = exact(project, "val")
    assert subset["val"]["loss"] == pytest.approx(want_val["loss"], abs=2e-6)
    run_id = json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]
    mlrun = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").get_run(run_id)
    assert mlrun.data.metrics["train.windows_scored"] == 100
    assert mlrun.data.metrics["train.windows_total"] == total
    assert mlrun.data.params["evaluate.train_windows"] == "100"

    # (not `dvc exp run -S`: DVC writes train.autocast's `off` unquoted, PyYAML reads false)
    write_params(project, {"evaluate": {"train_windows": 0}})
    out = run(["dvc", "repro", "evaluate"], project).stdout
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    whole = metrics(project)
    assert whole["val"] == subset["val"]  # val: the same bytes
    assert whole["train"]["windows_scored"] == whole["train"]["windows_total"] == total
    assert whole["train"]["tokens"] == train_targets
    assert whole["train"]["loss_stderr"] == 0
    want = exact(project, "train")
    assert whole["train"]["loss"] == pytest.approx(want["loss"], abs=2e-6)
    assert whole["train"]["bits_per_char"] == pytest.approx(want["bits_per_char"], abs=2e-6)
    assert abs(subset["train"]["loss"] - want["loss"]) < 5 * subset["train"]["loss_stderr"]
