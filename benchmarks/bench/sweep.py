"""sweep: docs/sweeps.md's grid for real, run by one `dvc queue` worker and by two.

The same 2x2 grid (train.lr x train.seed) of a 2-layer, 64-wide model for 200
steps on the embedded corpus is queued in two identical projects; one runs it
with `dvc queue start -j 1`, the other with `-j 2`. The wall time is from the
start of the workers to the last experiment's end; the data stages ran and were
committed first, so each experiment runs train, evaluate and sample. With
train.threads 0 (auto) one worker's stages take both cores, two workers' one each
(devices.ThreadPolicy). Thread counts move float results by rounding, so "the
same results" means: the same four MLflow runs and registered versions, the same
champion config, and each config's val loss within a small tolerance."""
from __future__ import annotations

import os
import subprocess
import time

from .common import Context, ratio
from .measure import Project, dvc_bin, git_dvc_init

LRS, SEEDS = ("1.0e-3", "3.0e-3"), ("1", "2")
MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64}
TRAIN = {"max_iters": 200, "eval_interval": 50, "checkpoint_interval": 100, "threads": 0}
QUICK = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
         "train": {"max_iters": 20, "eval_interval": 10, "checkpoint_interval": 10,
                   "eval_batches": 2, "threads": 0},
         "evaluate": {"batch_size": 1024, "train_windows": 256},
         "sample": {"max_new_tokens": 40}}
TOLERANCE = 0.01  # val bits/char: what 1 thread against 2 moves by rounding, with room
TIMEOUT_S = 1800


def _queue_status(proj: Project, dvc: str) -> dict[str, str]:
    """`dvc queue status`: experiment name -> Queued | Running | Success | Failed."""
    rows = {}
    for line in proj.run([dvc, "queue", "status"]).stdout.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[-1] in ("Queued", "Running", "Success", "Failed"):
            rows[cells[1]] = cells[-1]
    return rows


def _run_grid(proj: Project, dvc: str, jobs: int, seeds: tuple[str, ...]) -> float:
    proj.run([dvc, "exp", "run", "--queue", "-S", f"train.lr={','.join(LRS)}",
              "-S", f"train.seed={','.join(seeds)}"])
    start = time.perf_counter()
    # the workers keep the stdout of the command that starts them: not captured
    subprocess.run([dvc, "queue", "start", "-j", str(jobs)], cwd=proj.path, env=proj.env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    try:
        while {"Queued", "Running"} & set((status := _queue_status(proj, dvc)).values()):
            if time.perf_counter() - start > TIMEOUT_S:
                raise RuntimeError(f"-j {jobs}: not done in {TIMEOUT_S} s: {status}")
            time.sleep(1)
    finally:
        proj.run([dvc, "queue", "stop", "--kill"], check=False)
        seconds = time.perf_counter() - start
        _wait_for_workers(proj)
    failed = [name for name, state in status.items() if state != "Success"]
    if failed:
        log = proj.run([dvc, "queue", "logs", failed[0]], check=False).stdout
        raise RuntimeError(f"-j {jobs}: {failed} failed; the first's log ends:\n{log[-1500:]}")
    return seconds


def _wait_for_workers(proj: Project, timeout_s: float = 60.0) -> None:
    """Until no process works in the project (`dvc queue stop` does not wait for its
    workers, which still write there while they shut down): the next section, or
    the temp dir's removal, must not race them."""
    import psutil

    root = str(proj.path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        working = []
        for process in psutil.process_iter(["cwd"]):
            cwd = process.info.get("cwd") or ""
            if cwd == root or cwd.startswith(root + os.sep):
                working.append(process.pid)
        if not working:
            return
        time.sleep(0.5)
    raise RuntimeError(f"dvc queue workers still running in {root} {timeout_s:.0f} s after "
                       f"`dvc queue stop --kill`: pids {working}")


def _results(proj: Project) -> dict[tuple[str, str], float]:
    """(train.lr, train.seed) -> val bits/char of each MLflow run; checks that each run
    has its registered version and that the champion is the best run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=proj.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("gptpipe")
    runs = client.search_runs([experiment.experiment_id])
    versions = client.search_model_versions("name = 'gptpipe'")
    if {v.run_id for v in versions} != {r.info.run_id for r in runs}:
        raise RuntimeError(f"{proj.path}: {len(runs)} runs but {len(versions)} versions")
    best = min(runs, key=lambda r: r.data.metrics["val.bits_per_char"])
    if client.get_model_version_by_alias("gptpipe", "champion").run_id != best.info.run_id:
        raise RuntimeError(f"{proj.path}: the champion is not the best run")
    return {(float(r.data.params["train.lr"]), r.data.params["train.seed"]):
            r.data.metrics["val.bits_per_char"] for r in runs}


def bench_sweep(ctx: Context) -> None:
    dvc = dvc_bin(ctx.python)
    seeds = SEEDS[:1] if ctx.quick else SEEDS
    settings = QUICK if ctx.quick else {"model": MODEL, "train": TRAIN}
    times, results = {}, {}
    for jobs in (1, 2):
        proj = Project(ctx.tmp / f"sweep-j{jobs}", ctx.python, ctx.tmp / f"mlflow-sweep-j{jobs}.db")
        proj.env.pop("DVC_ROOT")  # as a user runs it: DVC sets it for each experiment
        proj.set_params({"data": {"source": "shakespeare"}, "mlflow": {"log_model": True}},
                        settings)
        git_dvc_init(proj)
        proj.run([dvc, "repro", "split"])  # the data once; the experiments share it
        proj.run(["git", "add", "-A"])
        proj.run(["git", "commit", "-q", "-m", "data"])
        times[jobs] = _run_grid(proj, dvc, jobs, seeds)
        results[jobs] = _results(proj)
        print(f"    -j {jobs}: {times[jobs]:.1f} s for {len(results[jobs])} experiments",
              flush=True)
    if set(results[1]) != set(results[2]) or len(results[1]) != len(LRS) * len(seeds):
        raise RuntimeError(f"the grids differ: {sorted(results[1])} vs {sorted(results[2])}")
    diff = max(abs(results[1][k] - results[2][k]) for k in results[1])
    champion = {jobs: min(r, key=r.get) for jobs, r in results.items()}
    same = champion[1] == champion[2] and diff <= TOLERANCE
    grid = f"{len(LRS)}x{len(seeds)} grid (train.lr x train.seed)"
    model = "1 layer, 32 wide, 20 steps" if ctx.quick else "2 layers, 64 wide, 200 steps"
    ctx.add("sweep", f"{grid}, {model}, embedded corpus: `dvc queue start -j 2`",
            f"{times[2]:.1f} s wall, {len(results[2])} runs, versions and the champion "
            f"(lr {champion[2][0]:g}, seed {champion[2][1]}); val bits/char within "
            f"{diff:.4f} of -j 1's, champion {'the same' if champion[1] == champion[2] else 'DIFFERENT'}",
            f"-j 1: {times[1]:.1f} s", ratio(times[2], times[1]),
            ctx.judge(f"< 1x, the same results (within {TOLERANCE} bits/char)",
                      times[2] < times[1] and same))
