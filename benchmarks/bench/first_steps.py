"""firststeps: does the train stage run at full speed from its first step, and
at the benchmark's speed once steady?

The train stage opens MLflow while it trains (imports, the store, the run, its
datasets, the system metrics monitor). Two ratios, from the recipe's stage on
tinyshakespeare (its reports/train_history.csv: tokens/s of each eval interval,
evals excluded, checkpoints included):

- first 100 steps / steady: the tokens/s of steps 1-100 over the median of the
  later intervals' (goal >= 0.90);
- stage steady / benchmark step: that median over the same config's
  Trainer.train_step timed in this process on the same data, right before and
  right after each stage run (goal >= 0.95). Both sides are means over runs of
  consecutive steps (tokens over the wall time of the run), as the stage's
  intervals are: a median of single steps would drop the slow steps on one side
  only.

Each is measured --repeats times (a stage run each); the median and the spread
(min-max) are shown."""
from __future__ import annotations

import csv
import os
import subprocess
import time

from .common import RECIPE_PRESET, Context, median
from .measure import load_yaml

FIRST = 100            # the steps whose speed is compared with the steady one
GOAL_FIRST = 0.90      # steps 1-100 within 10% of the steady tokens/s
GOAL_STEADY = 0.95     # the stage's steady step within 5% of the benchmark's
BENCH_STEPS = 100      # Trainer steps timed before and after each stage run: an interval


def _rates(path) -> dict[int, float]:
    with open(path, newline="") as fh:
        return {int(float(r["step"])): float(r["tokens_per_s"]) for r in csv.DictReader(fh)
                if int(float(r["step"])) > 0}


def _bench_step(params: dict, proj, steps: int) -> float:
    """tokens/s of the stage's own Trainer step, same params and data, in this
    process: `steps` consecutive steps timed as one run, after 3 unmeasured."""
    import torch

    from gptpipe import params as gp_params
    from gptpipe.arrays import load_tokens
    from gptpipe.distributed import World
    from gptpipe.train_run import TrainRun
    from gptpipe.warm_start import start

    p = gp_params.from_dict(params)
    threads = torch.get_num_threads()
    run = TrainRun.build(p, torch.device("cpu"), World(), None,
                         start(p, proj.path / "data/tokens/tokenizer.json"),
                         load_tokens(proj.path / "data/split/train.npy"),
                         load_tokens(proj.path / "data/split/val.npy"), {})
    for _ in range(3):
        run.trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        run.trainer.train_step()
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(threads)
    tokens = p.train.batch_size * p.train.grad_accum * p.model.block_size
    return tokens * steps / elapsed


def _spread(values: list[float]) -> str:
    return (f"{median(values):.2f} (min-max {min(values):.2f}-{max(values):.2f}, "
            f"runs: {', '.join(f'{v:.2f}' for v in values)})")


def bench_first_steps(ctx: Context) -> None:
    proj = ctx.shakes
    name_first = "train stage (recipe, tinyshakespeare): steps 1-100 tokens/s / steady tokens/s"
    name_steady = "train stage (recipe, tinyshakespeare): steady step / the benchmark's step"
    if proj is None:
        for name in (name_first, name_steady):
            ctx.add("firststeps", name, "n/a: tinyshakespeare not found "
                    "(set GPTPIPE_TINYSHAKESPEARE)")
        return
    quick = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
             "train": {"max_iters": 40, "eval_interval": 10, "checkpoint_interval": 20,
                       "eval_batches": 2}}
    first = 10 if ctx.quick else FIRST
    params = proj.set_params(load_yaml(RECIPE_PRESET), {"data": {"source": str(ctx.corpus)}},
                             {"mlflow": {"log_model": False}},
                             quick if ctx.quick else {"train": {"eval_interval": FIRST}})
    db = proj.env.get("MLFLOW_TRACKING_URI", "")
    if db.startswith("sqlite:///") and not os.path.exists(db[len("sqlite:///"):]):
        # the store's tables, once: every run after the first would not pay for them
        subprocess.run([ctx.python, "-c", "from mlflow.tracking import MlflowClient as C; "
                        f"C({db!r}).search_experiments()"], env=proj.env, check=True,
                       capture_output=True)
    proj.stage("split", "firststeps")  # the recipe's block size (64, as the baseline's)
    firsts, steadies, benches, ratios = [], [], [], []
    steps = 5 if ctx.quick else BENCH_STEPS
    for rep in range(ctx.repeats):
        before = _bench_step(params, proj, steps)
        (proj.path / "reports" / "train_history.csv").unlink(missing_ok=True)
        m = proj.stage("train", f"firststeps-{rep}")
        after = _bench_step(params, proj, steps)
        rates = _rates(proj.path / "reports" / "train_history.csv")
        later = [r for s, r in rates.items() if s > first]
        steady = median(later)
        bench = (before + after) / 2
        firsts.append(rates[first] / steady)
        steadies.append(steady)
        benches.append(bench)
        ratios.append(steady / bench)
        print(f"    run {rep + 1}/{ctx.repeats}: stage {m.seconds:.1f} s; steps 1-{first} "
              f"{rates[first]:,.0f} tok/s, steady {steady:,.0f} tok/s (intervals "
              f"{', '.join(f'{r:,.0f}' for r in later)}); benchmark step {before:,.0f} before, "
              f"{after:,.0f} after; load {os.getloadavg()[0]:.1f}", flush=True)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    ctx.add("firststeps", name_first,
            f"{_spread(firsts)}; steady {median(steadies):,.0f} tok/s (median of the intervals "
            f"after step {first}); {ctx.repeats} stage runs; load at end {load}",
            "the same run's steady tokens/s", f"{median(firsts):.2f}x",
            ctx.judge(f">= {GOAL_FIRST}x (the median)", median(firsts) >= GOAL_FIRST))
    ctx.add("firststeps", name_steady,
            f"{_spread(ratios)}; stage steady {median(steadies):,.0f} tok/s",
            f"Trainer.train_step in this process, same params and data, before and after "
            f"each stage run: {median(benches):,.0f} tok/s", f"{median(ratios):.2f}x",
            ctx.judge(f">= {GOAL_STEADY}x (the median)", median(ratios) >= GOAL_STEADY))
