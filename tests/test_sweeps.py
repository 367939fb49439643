"""docs/sweeps.md's recipe for real: a 2x2 grid queued with `dvc exp run --queue`,
run by `dvc queue start -j 2` (two celery workers, two experiments at once), real
MLflow in sqlite, a failed experiment among them. The torch stages share the cores
(devices.ThreadPolicy, train.threads 0)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from helpers import env_for, make_project, run, tiny_text

GRID = {("0.001", "1"), ("0.001", "2"), ("0.003", "1"), ("0.003", "2")}


def queue_status(project) -> dict[str, str]:
    """`dvc queue status`: experiment name -> Queued | Running | Success | Failed."""
    rows = {}
    for line in run(["dvc", "queue", "status"], project).stdout.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[-1] in ("Queued", "Running", "Success", "Failed"):
            rows[cells[1]] = cells[-1]
    return rows


@pytest.mark.slow
def test_a_grid_on_two_workers_and_a_failed_experiment(tmp_path):
    project = make_project(tmp_path / "proj", {"train": {"threads": 0, "max_iters": 20},
                                               "mlflow": {"log_model": True}},
                           corpus=tiny_text())
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=1.0e-3,3.0e-3",
         "-S", "train.seed=1,2"], project)
    run(["dvc", "exp", "run", "--queue", "-n", "bad-lr", "-S", "train.lr=5.0"], project)
    assert set(queue_status(project).values()) == {"Queued"}
    # the workers it starts keep its stdout: not captured, or the call never returns
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=env_for(project),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                   timeout=120)
    try:
        deadline = time.monotonic() + 1500
        while (status := queue_status(project)) and \
                {"Queued", "Running"} & set(status.values()):
            assert time.monotonic() < deadline, status
            time.sleep(3)
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)

    # the bad value fails its experiment, named in the status and its log; not the others
    assert status.pop("bad-lr") == "Failed"
    assert list(status.values()) == ["Success"] * 4, status
    log = run(["dvc", "queue", "logs", "bad-lr"], project, check=False)
    assert "train.lr: must be in (0, 1], got 5.0" in log.stdout + log.stderr
    # every stage of every run took its threads from the one policy
    logs = {name: run(["dvc", "queue", "logs", name], project).stdout for name in status}
    for name, text in logs.items():
        for stage in ("train: ", "evaluate: ", "sample: "):
            assert any(line.startswith(stage) and "(auto: " in line and "cores / " in line
                       for line in text.splitlines()), (name, stage)

    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    grid = set()
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for revision in exp.get("revs", []):
                if revision.get("name") == "bad-lr":  # shown too, with its params
                    continue
                train = revision["data"]["params"]["params.yaml"]["data"]["train"]
                grid.add((repr(train["lr"]), str(train["seed"])))
    assert grid == GRID

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gptpipe")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert {(r.data.params["train.lr"], r.data.params["train.seed"]) for r in runs} == GRID
    versions = client.search_model_versions("name = 'gptpipe'")
    assert len(versions) == 4
    assert {v.run_id for v in versions} == {r.info.run_id for r in runs}
    best = min(runs, key=lambda r: r.data.metrics["val.bits_per_char"])
    champion = client.get_model_version_by_alias("gptpipe", "champion")
    assert champion.run_id == best.info.run_id
