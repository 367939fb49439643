"""`gptpipe runs`: a real sqlite MLflow store with three real runs, made by gptpipe's
own tracking code (Tracker, as the stages call it), and a real registry entry."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from helpers import env_for, run

# DVC experiment name -> (train.lr, val.bits_per_char, last val_loss, best val_loss)
RUNS = {"lr-1e-3": ("0.001", 2.9, 2.05, 2.01),
        "lr-3e-3": ("0.003", 2.6, 1.85, 1.85),
        "lr-9e-3": ("0.009", 3.1, 2.30, 2.12)}
BY_BITS = ["lr-3e-3", "lr-1e-3", "lr-9e-3"]  # lowest val.bits_per_char first

# The three runs as train, evaluate and sample log them: the same model.n_layer,
# different train.lr; the second run's sample stage reran with another temperature
# (MLflow keeps the first value; gptpipe records the new one as a current.* tag).
def _make_store(uri: str) -> dict:
    """The three runs as train, evaluate and sample log them: the same model.n_layer,
    different train.lr; the first run's sample stage reran with another temperature
    (MLflow keeps the first value; gptpipe records the new one as a current.* tag)."""
    from mlflow.tracking import MlflowClient

    from gptpipe.tracking.runs import Tracker

    tracker, ids = Tracker(uri), {}
    with pytest.MonkeyPatch.context() as patch:
        for name, (lr, bits, last_val, best_val) in RUNS.items():
            patch.setenv("DVC_EXP_NAME", name)  # as `dvc exp run -n NAME` sets it
            run_id = tracker.create_run("gptpipe", name, {"train.lr": lr, "model.n_layer": 1,
                                                          "sample.temperature": 0.8},
                                        {"git.commit": "unknown"})
            with tracker.stage(run_id):
                tracker.log_metrics(run_id, [
                    ("val_loss", best_val, 10), ("val_loss", last_val, 20),
                    ("batch_loss", 9.0, 20), ("lr", float(lr), 20),
                    ("system/cpu_utilization_percentage", 50.0, 0),
                    ("val.bits_per_char", bits, 0)])
                tracker.log_best_val(run_id, best_val, 10 if best_val != last_val else 20)
            ids[name] = run_id
    with tracker.stage(ids["lr-1e-3"]):
        tracker.log_params_once(ids["lr-1e-3"], {"sample.temperature": 0.5})
    client = MlflowClient(uri)
    client.create_registered_model("gptpipe")
    versions = {name: client.create_model_version("gptpipe", f"runs:/{ids[name]}/model",
                                                  run_id=ids[name]).version
                for name in ("lr-1e-3", "lr-3e-3")}
    client.set_registered_model_alias("gptpipe", "champion", versions["lr-3e-3"])
    tracker.experiment_id("empty")  # an experiment with no run yet
    return {"ids": ids, "versions": versions}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    folder = tmp_path_factory.mktemp("runs-table")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        try:
            yield folder, uri, _make_store(uri)
        finally:
            mlflow.set_tracking_uri(None)  # Tracker set it for this process: unset it


def _runs(store, *args: str, check: bool = True):
    """`gptpipe runs ARGS` in this process (a subprocess costs seconds of imports)."""
    import contextlib

    import mlflow

    from gptpipe.cli import main

    folder, uri, _ = store
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        try:
            main(["runs", *args])
        except SystemExit as exc:
            code = exc.code
        finally:
            mlflow.set_tracking_uri(None)
    result = subprocess.CompletedProcess(["gptpipe", "runs", *args], code, out.getvalue(),
                                         err.getvalue())
    if check:
        assert code == 0, result
    return result


def _csv(store, *args: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(_runs(store, "--csv", *args).stdout),
                       dtype={"run_id": str, "version": "Int64"})


def test_one_row_per_run_with_differing_params_final_metrics_and_champion(store):
    _, _, made = store
    table = _csv(store)
    assert list(table["run"]) == BY_BITS
    assert list(table["dvc_experiment"]) == BY_BITS
    assert list(table["run_id"]) == [made["ids"][name] for name in BY_BITS]
    assert set(table["status"]) == {"FINISHED"}
    # the registry: versions of two runs, the alias on lr-3e-3's
    versions = [None if pd.isna(v) else int(v) for v in table["version"]]
    assert versions == [int(made["versions"]["lr-3e-3"]), int(made["versions"]["lr-1e-3"]), None]
    assert list(table["champion"]) == [True, False, False]
    # params: only those that differ; the rerun's value, not the first one
    assert list(table["train.lr"]) == [0.003, 0.001, 0.009]
    assert list(table["sample.temperature"]) == [0.8, 0.5, 0.8]
    assert "model.n_layer" not in table.columns
    # metrics: each one's last value; not the per-step or system ones
    assert list(table["val.bits_per_char"]) == [2.6, 2.9, 3.1]
    assert list(table["val_loss"]) == [1.85, 2.05, 2.30]
    assert list(table["best_val_loss"]) == [1.85, 2.01, 2.12]
    assert list(table["best_val_step"]) == [20, 10, 10]
    assert not {"batch_loss", "lr", "system/cpu_utilization_percentage"} & set(table.columns)
    columns = list(table.columns)
    assert columns[:6] == ["run_id", "run", "dvc_experiment", "status", "version", "champion"]
    # the sort metric leads the metrics, after the params
    assert columns.index("val.bits_per_char") == columns.index("train.lr") + 1


def test_sorted_by_the_metric_asked_for(store):
    assert list(_csv(store, "--sort", "best_val_loss")["run"]) == BY_BITS
    assert list(_csv(store, "--sort", "val_loss", "--desc")["run"]) == [
        "lr-9e-3", "lr-1e-3", "lr-3e-3"]
    assert list(_csv(store, "--sort", "train.lr")["run"]) == ["lr-1e-3", "lr-3e-3", "lr-9e-3"]


def test_all_params_and_chosen_metrics(store):
    table = _csv(store, "--all-params", "--metrics", "val.*,best_val_loss")
    assert list(table["model.n_layer"]) == [1, 1, 1]
    metrics = [c for c in table.columns if c.startswith(("val", "best", "train_", "tokens"))]
    assert metrics == ["val.bits_per_char", "best_val_loss"]


def test_printed_as_a_table_and_as_markdown(store):
    folder, uri, made = store
    # the installed command, as a user runs it
    text = run(["gptpipe", "runs"], folder, env=env_for(folder, MLFLOW_TRACKING_URI=uri)
               ).stdout.splitlines()
    assert len(text) == 4  # a header, three runs
    header = text[0].split()
    assert header[:6] == ["run_id", "run", "dvc_experiment", "status", "version", "champion"]
    assert [line.split()[1] for line in text[1:]] == BY_BITS
    champion_row = text[1].split()
    assert champion_row[:6] == [made["ids"]["lr-3e-3"], "lr-3e-3", "lr-3e-3", "FINISHED",
                                str(made["versions"]["lr-3e-3"]), "yes"]
    assert "2.6000" in champion_row and "0.003" in champion_row

    markdown = _runs(store, "--markdown").stdout.splitlines()
    assert len(markdown) == 5 and all(line.startswith("| ") for line in markdown)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in markdown]
    assert cells[0][:6] == header[:6]
    column = cells[0].index("val.bits_per_char")
    assert cells[1][column] == "---:"  # numbers right-aligned
    assert [row[1] for row in cells[2:]] == BY_BITS
    assert [row[column] for row in cells[2:]] == ["2.6000", "2.9000", "3.1000"]
    assert [row[5] for row in cells[2:]] == ["yes", "", ""]


def test_no_registered_model_leaves_version_and_champion_empty(store):
    table = _csv(store, "--model", "not-registered")
    assert list(table["run"]) == BY_BITS
    assert table["version"].isna().all() and not table["champion"].any()


@pytest.mark.parametrize("args, message", [
    (["--sort", "val.nope"], "gptpipe: error: --sort val.nope: no such column (metrics: "),
    (["--experiment", "nope"], "gptpipe: error: experiment 'nope' not found in "),
])
def test_bad_input_is_one_line(store, args, message):
    result = _runs(store, *args, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr


def test_no_store_yet_is_one_line(tmp_path):
    result = _runs((tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", None), check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("gptpipe: error: no MLflow store at sqlite:///")
    assert result.stderr.count("\n") == 1 and not Path(tmp_path / "mlflow.db").exists()


def test_an_experiment_without_runs_says_so(store):
    result = _runs(store, "--experiment", "empty")
    assert result.stdout == ""
    assert result.stderr.startswith("gptpipe: no runs in experiment 'empty' at sqlite:///")


def test_group_by_with_a_baseline(store):
    """One run per lr here: each group has n = 1, so sd and p are '-' (with a note),
    and the difference of means is each run's difference to the baseline's."""
    text = _runs(store, "--group-by", "train.lr", "--baseline", "train.lr=1.0e-3").stdout
    lines = text.splitlines()
    assert lines[0].split() == ["group", "n", "baseline", "val.bits_per_char", "mean",
                                "val.bits_per_char", "sd", "val.bits_per_char", "diff",
                                "val.bits_per_char", "p"]
    assert lines[1].split() == ["train.lr=0.003", "1", "2.6000", "-", "-0.3000", "-"]
    assert lines[2].split() == ["train.lr=0.001", "1", "yes", "2.9000", "-"]
    assert lines[3].split() == ["train.lr=0.009", "1", "3.1000", "-", "+0.2000", "-"]
    assert lines[4].startswith("sd and p: - where a group has fewer than 2 runs")
    frame = pd.read_csv(io.StringIO(_runs(store, "--group-by", "--csv",
                                          "--metrics", "val_loss").stdout))
    assert list(frame.columns) == ["group", "n", "val_loss mean", "val_loss sd"]
    # config: sample.temperature differs (0.5 on lr-1e-3) but changes no val metric
    assert frame["group"].tolist() == ["train.lr=0.003", "train.lr=0.001", "train.lr=0.009"]
    assert frame["val_loss mean"].tolist() == [1.85, 2.05, 2.30]


@pytest.mark.parametrize("args, message", [
    (["--baseline", "train.lr=1e-3"], "gptpipe: error: --baseline needs --group-by"),
    (["--group-by", "train.lrr"], "gptpipe: error: --group-by train.lrr: no param train.lrr"),
    (["--group-by", "train.lr", "--baseline", "train.lr=5e-3"],
     "gptpipe: error: --baseline train.lr=5e-3: no group has it (groups: train.lr=0.003; "),
])
def test_bad_grouping_is_one_line(store, args, message):
    result = _runs(store, *args, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
