"""torchrun / DDP on CPU (gloo): one MLflow run, one history, identical weights."""
from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from helpers import make_project, run, tiny_text
from gptpipe.distributed import World, micro_batching
from gptpipe.errors import UserError


def _sequences_per_optimizer_step(batch: int, accum: int, world_size: int):
    """Run one real training step on each rank of a `world_size` world (tiny model, no
    process group: each rank steps alone) and record the windows each rank trained on."""
    import numpy as np
    import torch

    from gptpipe.model import ModelConfig, build
    from gptpipe.params import TrainParams
    from gptpipe.training import Trainer

    torch.set_num_threads(1)
    data = (np.arange(3000) % 50).astype(np.uint8)
    windows = []
    for rank in range(world_size):
        torch.manual_seed(0)
        model = build(ModelConfig(kind="gpt", vocab_size=50, block_size=8, n_layer=1,
                                  n_head=2, n_embd=16))
        trainer = Trainer(model, data[:2500], data[2500:], TrainParams(
            batch_size=batch, grad_accum=accum, max_iters=4, warmup_iters=1, eval_batches=1,
            seed=1337), torch.device("cpu"), world=World(rank=rank, size=world_size))
        drawn = []
        draw = trainer.sampler.next

        def recording_next(device, draw=draw, drawn=drawn):
            x, y = draw(device)
            drawn.extend(tuple(row) for row in x.tolist())  # x: (micro_batch, block)
            return x, y
        trainer.sampler.next = recording_next
        trainer.train_step()
        assert trainer.step == 1
        windows.append(drawn)
    return windows


@pytest.mark.parametrize("batch, accum", [(8, 2), (8, 1), (6, 4)])
def test_global_batch_is_the_same_for_any_world_size(batch, accum):
    """One optimizer step trains on batch_size x grad_accum windows in total, whether
    one process does it or two share it; the two ranks' windows are distinct draws."""
    for world_size in (1, 2):
        per_rank = _sequences_per_optimizer_step(batch, accum, world_size)
        assert sum(len(w) for w in per_rank) == batch * accum, (world_size, per_rank)
        assert len({len(w) for w in per_rank}) == 1  # an even share per rank
        if world_size == 2:
            assert per_rank[0] != per_rank[1], "both ranks trained on the same windows"


def test_micro_batching_refuses_a_batch_it_cannot_share_evenly():
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
