"""The train stage's MLflow process (gptpipe.tracking.process): the run it opens, the
calls it runs for the stage, its errors raised in the stage, its exit at the end."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gptpipe.errors import UserError
from gptpipe.tracking import notes, process, wire
from gptpipe.tracking.background import BackgroundRun, RunSpec
from gptpipe.tracking.registry import LoggedModel
from gptpipe.tracking.wire import TrackingProcessError


def fails(tracker, message: str) -> None:
    raise UserError(message)


def test_run_opened_there_logged_to_and_ended(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    background = BackgroundRun(uri)
    background.open(RunSpec("exp", params={"train.lr": 0.01}, tags={"t": "x"},
                            metrics=(("m", 1.5, 0),), system_metrics=True))
    with background.stage():
        deadline = time.time() + 120
        while not background._process._replies and time.time() < deadline:
            background.step_done()  # may take the open's reply: get() must still have it
            time.sleep(0.05)
        tracker, run_id = background.get()
        assert background.get()[1] == run_id
        tracker.log_metrics(run_id, [("val_loss", 2.0, 10)])  # not waited for
        # a function of the process's table, run there with this call's arguments
        note = tracker.call(notes.describe, run_id, {notes.PARAMETERS_TAG: 123})
        with pytest.raises(UserError, match="MLflow run no-such-run not found"):
            tracker.reopen("no-such-run")  # its error raised here, as itself
        with pytest.raises(TrackingProcessError, match="fails is not callable in the tracking"):
            tracker.call(fails, "x")  # not in the process's table: that call fails
        assert tracker.call(process.stop_monitor) is None  # and the process goes on
    background._process._proc.wait(timeout=30)  # it exits once the stage is done

    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.01"} and run.data.tags["t"] == "x"
    assert run.data.tags[notes.PARAMETERS_TAG] == "123"
    assert run.data.tags[notes.NOTE_TAG] == note
    # the Source is this process's script (the stage's, in a stage), not the child's -c
    assert run.data.tags["mlflow.source.name"] == Path(sys.argv[0]).name
    assert run.data.metrics["m"] == 1.5 and run.data.metrics["val_loss"] == 2.0
    assert any(k.startswith("system/") for k in run.data.metrics)


def test_a_failed_metric_write_is_raised_by_the_next_step(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    background = BackgroundRun(f"sqlite:///{tmp_path / 'mlflow.db'}")
    background.open(RunSpec("exp"))
    with pytest.raises((UserError, TrackingProcessError)):
        with background.stage():
            tracker, run_id = background.get()
            tracker.log_metrics("no-such-run", [("x", 1.0, 1)])
            deadline = time.time() + 60
            while time.time() < deadline:
                background.step_done()
                time.sleep(0.05)


def test_what_the_stage_sends_comes_back_the_same_through_json():
    spec = RunSpec("exp", run_name="lr=3e-3", params={"train.lr": 0.003}, tags={"t": "x"},
                   metrics=(("data.val_in_train", 0.01, 0),),
                   datasets={"train": (Path("data/split/train.npy"), "ab" * 32)},
                   download_report=Path("reports/download.json"), system_metrics=True)
    message = {"args": (spec, [(0, 4.0, 4.1)], {1: "one"}), "value": LoggedModel("m-1", "2")}
    types = {"RunSpec": RunSpec, "LoggedModel": LoggedModel}
    data = wire.dumps(types, message)
    assert b"pickle" not in data and data.startswith(b"{")
    assert wire.loads(types, data) == message
    with pytest.raises(TypeError, match="cannot send a object"):
        wire.dumps(types, {"x": object()})


def test_retry_on_retries_only_the_named_errors():
    """log_data_inputs's lost insert race (writers of the same data at once) is retried;
    any other error is raised at once."""
    from gptpipe.tracking.store import retry_locked

    calls = []

    def insert_once_lost():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("(psycopg2.errors.UniqueViolation) duplicate key dataset_pk")
        return "linked"

    assert retry_locked(insert_once_lost, retry_on=("UniqueViolation",)) == "linked"
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(RuntimeError, match="UniqueViolation"):
        retry_locked(insert_once_lost)  # not named: not retried
    assert len(calls) == 1
