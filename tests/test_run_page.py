"""What fills MLflow's run page: the experiment kind that opens MLflow 3's
model-training view, the standard source tags, the dataset inputs, the system
metrics. gptpipe's own tracking code on a real temp sqlite store; the browser
check of the page itself is in tests/test_browser.py."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from gptpipe.files import sha256_file
from gptpipe.tracking.datasets import log_data_inputs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for this file's tests (creating one costs a second or two)."""
    import mlflow

    from gptpipe.tracking.runs import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('run-page') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        try:
            yield Tracker(uri)
        finally:
            mlflow.set_tracking_uri(None)  # Tracker set it for this process: unset it


@pytest.fixture
def tracker(store, monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return store


def _new_run(tracker, **tags) -> str:
    return tracker.create_run("gptpipe", "a-run", {"train.lr": 0.001}, tags)


def test_experiment_opens_in_the_model_training_view(tracker):
    # the value MLflow 3.17.2's UI writes for "Machine learning" (not GenAI) experiments
    new = tracker.client.get_experiment(tracker.experiment_id("gptpipe"))
    assert new.tags["mlflow.experimentKind"] == "custom_model_development"
    # an experiment from an older gptpipe gets the tag when a run is next created in it
    old_id = tracker.client.create_experiment("older")
    assert "mlflow.experimentKind" not in tracker.client.get_experiment(old_id).tags
    assert tracker.experiment_id("older") == old_id
    assert tracker.client.get_experiment(old_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    # a kind the user chose in the UI stays
    tracker.client.set_experiment_tag(old_id, "mlflow.experimentKind", "finetuning")
    tracker.experiment_id("older")
    assert tracker.client.get_experiment(old_id).tags["mlflow.experimentKind"] == "finetuning"


def test_run_carries_the_standard_source_tags(tracker, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    tags = tracker.client.get_run(_new_run(tracker, **{"git.commit": commit})).data.tags
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["mlflow.source.type"] == "LOCAL"
    # the script that created the run, relative to the project, never an absolute path
    assert tags["mlflow.source.name"] and not tags["mlflow.source.name"].startswith("/")
    assert tags["mlflow.user"]
    assert tags["gptpipe.dvc_experiment"] == "lr-sweep-1"
    # outside git: no commit tag rather than a wrong one
    monkeypatch.delenv("DVC_EXP_NAME")
    tags = tracker.client.get_run(_new_run(tracker, **{"git.commit": "unknown"})).data.tags
    assert "mlflow.source.git.commit" not in tags and "gptpipe.dvc_experiment" not in tags


def _write_inputs(folder, source: str, kind: str, corpus_sha256: str):
    arrays = {}
    for name, n in (("train", 900), ("val", 100)):
        path = folder / f"{name}.npy"
        np.save(path, np.arange(n, dtype=np.uint16) % 65)
        arrays[name] = (path, sha256_file(path))
    report = folder / "download.json"
    report.write_text(json.dumps({"source": source, "kind": kind, "bytes": 1000,
                                  "files": [{"path": "input.txt"}], "sha256": corpus_sha256}))
    return arrays, report


def test_train_val_and_corpus_are_the_run_datasets(tracker, tmp_path):
    arrays, report = _write_inputs(tmp_path, "https://***@example.org/input.txt", "url",
                                   "ab" * 32)
    run_id = _new_run(tracker)
    log_data_inputs(tracker, run_id, arrays, report)
    log_data_inputs(tracker, run_id, arrays, report)  # a resumed train: nothing twice
    inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    assert len(inputs) == 3 and set(by_name) == {"train", "val", "corpus"}
    for name, (path, sha256) in arrays.items():
        dataset = by_name[name].dataset
        # MLflow keeps 36 characters of a digest: the sha256's first 12, the whole in the profile
        assert dataset.digest == sha256[:12]
        assert dataset.source_type == "local"
        assert json.loads(dataset.source) == {"uri": path.as_posix()}
        profile = json.loads(dataset.profile)
        assert profile["sha256"] == sha256
        assert profile["features_shape"] == [900 if name == "train" else 100]
        assert "uint16" in dataset.schema
    contexts = {name: {t.key: t.value for t in i.tags}["mlflow.data.context"]
                for name, i in by_name.items()}
    assert contexts == {"train": "training", "val": "validation", "corpus": "source"}
    corpus = by_name["corpus"].dataset
    assert corpus.source_type == "http" and corpus.digest == ("ab" * 32)[:12]
    assert json.loads(corpus.source) == {"url": "https://***@example.org/input.txt"}
    assert json.loads(corpus.profile)["sha256"] == "ab" * 32


def test_embedded_corpus_points_at_the_files_dvc_tracks(tracker, tmp_path):
    arrays, report = _write_inputs(tmp_path, "shakespeare", "shakespeare", "cd" * 32)
    run_id = _new_run(tracker)
    log_data_inputs(tracker, run_id, arrays, report)
    corpus = next(i.dataset for i in tracker.client.get_run(run_id).inputs.dataset_inputs
                  if i.dataset.name == "corpus")
    assert corpus.source_type == "local" and json.loads(corpus.source) == {"uri": "data/raw"}
    assert json.loads(corpus.profile)["data.source"] == "shakespeare"


def test_system_metrics_while_training_stop_with_it(tracker):
    run_id = _new_run(tracker)
    with tracker.stage(run_id), tracker.system_metrics(run_id):
        pass  # shorter than one 10 s sampling interval: still one point
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    metrics = tracker.client.get_run(run_id).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    # a resumed train continues the same series
    with tracker.stage(run_id), tracker.system_metrics(run_id):
        pass
    history = tracker.client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in history] == [0, 1]


def test_best_val_loss_and_its_step_beside_the_last(tracker):
    run_id = _new_run(tracker)
    tracker.log_metrics(run_id, [("val_loss", 2.0, 10), ("val_loss", 2.2, 20)])
    tracker.log_best_val(run_id, 2.0, 10)
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics["val_loss"] == 2.2  # the last
    assert metrics["best_val_loss"] == 2.0 and metrics["best_val_step"] == 10
    assert [m.step for m in tracker.client.get_metric_history(run_id, "best_val_loss")] == [10]
    tracker.log_best_val(run_id, 2.0, 10)  # a train resumed after its last checkpoint
    for key in ("best_val_loss", "best_val_step"):
        assert len(tracker.client.get_metric_history(run_id, key)) == 1, key


def test_a_run_dvc_does_not_name_is_named_by_its_changed_params():
    from gptpipe.params import Params, from_dict
    from gptpipe.tracking.notes import run_name

    assert run_name(Params()) == "baseline"
    p = from_dict({"train": {"lr": 3.0e-3, "seed": 2, "threads": 4}})
    assert run_name(p) == "lr=3e-3 seed=2"  # threads: float rounding, not a config: not named
    many = from_dict({"train": {"lr": 3.0e-3, "seed": 2, "max_iters": 10},
                      "model": {"n_layer": 2, "n_head": 2}})
    assert run_name(many) == "max_iters=10 lr=3e-3 seed=2 n_layer=2 +1"


def test_description_is_rebuilt_whole_by_each_stage(tracker):
    from gptpipe.tracking import notes

    run_id = tracker.create_run("gptpipe", "a-run", {"model.kind": "gpt", "model.n_layer": 4,
                                                     "model.n_head": 4, "model.n_embd": 128,
                                                     "model.block_size": 64}, {})
    tracker.log_best_val(run_id, 1.9, 1750)
    notes.describe(tracker, run_id, {notes.PARAMETERS_TAG: 816896, notes.KEPT_STEP_TAG: 2000,
                                     notes.SOURCE_TAG: "shakespeare",
                                     notes.TOKENS_TAG: "900 train + 100 val"})
    tracker.log_metrics(run_id, [("val.bits_per_char", 2.659, 0), ("val.loss", 1.843, 0)])
    for _ in range(2):  # evaluate, then sample, each run twice: no line twice
        notes.describe(tracker, run_id)
        note = notes.describe(tracker, run_id, {notes.SAMPLE_TAG: notes.first_line("\n\nROMEO:\nx")})
    assert note == ("**Model**: gpt, 4 layers × 4 heads × 128 wide, 0.82M params, context 64  \n"
                    "**Data**: shakespeare, 900 train + 100 val tokens  \n"
                    "**Weights**: step 2000 (best val_loss 1.9000 at step 1750)  \n"
                    "**val bits/char**: 2.6590 (val loss 1.8430)  \n"
                    "**Sample**: `ROMEO:`")
    assert tracker.client.get_run(run_id).data.tags["mlflow.note.content"] == note
