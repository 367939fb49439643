"""torchrun / DDP on CPU (gloo): one MLflow run, one history, identical weights."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from conftest import make_project, run, tiny_text
from gptpipe.distributed import micro_batching
from gptpipe.errors import UserError


def test_global_batch_is_the_same_for_any_world_size():
    for batch, accum in ((12, 1), (12, 4), (8, 2)):
        for world in (1, 2, 4):
            micro, steps = micro_batching(batch, accum, world)
            assert micro * steps * world == batch * accum
    with pytest.raises(UserError, match="train.batch_size"):
        micro_batching(3, 1, 2)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    project = make_project(tmp_path / "ddp", corpus=tiny_text(), overrides={
        "train": {"launcher": "torchrun --nproc_per_node=2", "max_iters": 20,
                  "eval_interval": 10, "checkpoint_interval": 10}})
    result = run(["dvc", "repro", "train"], project)
    assert "weights identical on all 2 ranks" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gptpipe")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]
    assert runs[0].info.run_id == run_id
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [0, 10, 20]
    assert sorted(m.step for m in client.get_metric_history(run_id, "batch_loss")) == \
        list(range(1, 21))
    assert (project / "models/model.pt").exists()
