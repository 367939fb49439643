"""loss: wall time to the reference val loss on tinyshakespeare, nanoGPT's
baby-GPT config vs benchmarks/tinyshakespeare.yaml, both run in this command.

Both find their crossing the same way (interpolating the eval loss between the
last eval above the target and the first at or below it) and confirm it with
the loss over the whole val split of the model at that first eval."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

from .common import (BASELINE_PRESET, MIN_EVAL_TOKENS, QUICK_TRAIN, RECIPE_PRESET, REF_SECONDS,
                     TARGET_VAL, Context, median, ratio)
from .measure import load_yaml

GOAL_RATIO = 0.25  # the recipe's time to the loss, as a fraction of the baseline's
FIRST_STEP = re.compile(r"first step done ([\d.]+) s after the process started")


def _history(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def crossing(history: list[dict]) -> tuple[int, float] | None:
    """(the first eval step at or below the target, the training-loop seconds at
    the interpolated crossing), or None if never reached."""
    for prev, row in zip(history, history[1:]):
        if row["val_loss"] <= TARGET_VAL:
            above = prev["val_loss"] - TARGET_VAL
            fraction = above / (prev["val_loss"] - row["val_loss"]) if above > 0 else 0.0
            return int(row["step"]), prev["elapsed_s"] + fraction * (
                row["elapsed_s"] - prev["elapsed_s"])
    return None


def _time_to_loss(history: list[dict], wall: float, output: str) -> dict:
    final = history[-1]
    found = crossing(history)
    first = FIRST_STEP.search(output)
    out = {"final_val": final["val_loss"], "steps": int(final["step"]), "wall": wall,
           "hit": found is not None, "startup": float(first.group(1)) if first else None}
    if found is not None:
        out["step_hit"], out["loop"] = found
        # the stage's wall time up to the crossing: start-up, the step-0 eval and
        # writing the outputs count; training after the crossing does not.
        out["to_loss"] = wall - (final["elapsed_s"] - out["loop"])
    return out


def _describe(rs: list[dict], confirmed: str) -> str:
    """The median over repeated runs (the losses are the same in each: seeded)."""
    r = rs[0]
    rss = max(x["rss"] for x in rs)
    walls = ", ".join(f"{x['wall']:.1f}" for x in rs)
    starts = [x["startup"] for x in rs if x["startup"] is not None]
    startup = f"; start-up to step 1 {median(starts):.1f} s" if starts else ""
    if not all(x["hit"] for x in rs):
        return (f"not reached in {r['steps']} steps: final val {r['final_val']:.4f}; stage "
                f"{median(x['wall'] for x in rs):.1f} s (runs: {walls} s){startup}, "
                f"peak RSS {rss:,.0f} MB")
    runs = ", ".join(f"{x['to_loss']:.1f}" for x in rs)
    return (f"{median(x['to_loss'] for x in rs):.1f} s (runs: {runs} s; train loop "
            f"{median(x['loop'] for x in rs):.1f} s, crossing before the eval at step "
            f"{r['step_hit']}); {confirmed}; final val {r['final_val']:.4f} at step "
            f"{r['steps']}{startup}; peak RSS {rss:,.0f} MB")


def _to_loss(rs: list[dict]) -> float | None:
    return median(x["to_loss"] for x in rs) if all(x["hit"] for x in rs) else None


def whole_val_loss_at(proj, params: dict, step: int, final_model: Path | None) -> float:
    """The loss over the whole val split of the run's model at `step`: the final
    model when `step` is the last, else the same run retrained to `step`
    in-process (TrainRun.build, as the stage does: the same seed, the same weights)."""
    import numpy as np
    import torch

    from gptpipe import params as gp_params
    from gptpipe.arrays import load_tokens
    from gptpipe.distributed import World
    from gptpipe.evaluation import total_nats
    from gptpipe.inference import load_model
    from gptpipe.train_run import TrainRun
    from gptpipe.warm_start import start

    cpu = torch.device("cpu")
    val = load_tokens(proj.path / "data/split/val.npy")
    tokenizer = proj.path / "data/tokens/tokenizer.json"
    if final_model is not None:
        model, _ = load_model(final_model, tokenizer)
    else:
        p = gp_params.from_dict(params)
        threads = torch.get_num_threads()
        run = TrainRun.build(p, cpu, World(), None, start(p, tokenizer),
                             load_tokens(proj.path / "data/split/train.npy"), val, {})
        torch.set_num_threads(threads)
        while run.trainer.step < step:
            run.trainer.train_step()
        model = run.trainer.model
    nats, n = total_nats(model, np.asarray(val), 64, cpu)  # fp32: the strict reading
    return nats / n


def bench_loss(ctx: Context) -> None:
    proj = ctx.shakes
    from gptpipe.cpu_features import cpu_bf16_choice

    source = {"data": {"source": str(ctx.corpus)}}
    runs = [  # time to val <= TARGET_VAL, read from reports/train_history.csv
        ("baseline: nanoGPT baby GPT config, fp32 (benchmarks/nanogpt_baby.yaml)",
         [load_yaml(BASELINE_PRESET)]),
        ("lecture GPT, same config, train.autocast auto (bf16 where measured fast)",
         [load_yaml(BASELINE_PRESET), {"train": {"autocast": "auto"}}]),
        ("recipe: benchmarks/tinyshakespeare.yaml", [load_yaml(RECIPE_PRESET)])]
    todo = []
    for i, (name, presets) in enumerate(runs):
        if proj is None:
            ctx.add("loss", name, "n/a: tinyshakespeare not found (set GPTPIPE_TINYSHAKESPEARE)")
        elif ctx.quick and i < 2:
            ctx.add("loss", name, "skipped in --quick (a full run takes minutes)")
        elif i == 1 and not cpu_bf16_choice()[0]:
            ctx.add("loss", name, "skipped: auto is fp32 on this CPU, as the baseline")
        else:
            todo.append(i)
    results: dict[int, list[dict]] = {i: [] for i in todo}
    settings: dict[int, dict] = {}
    for rep in range(ctx.repeats):  # alternate the order, so drifting load evens out
        for i in todo if rep % 2 == 0 else todo[::-1]:
            name, presets = runs[i]
            params = proj.set_params(*presets, source, QUICK_TRAIN if ctx.quick else {})
            settings[i] = params
            t = params["train"]
            eval_tokens = t["eval_batches"] * t["batch_size"] * params["model"]["block_size"]
            if eval_tokens < MIN_EVAL_TOKENS and not ctx.quick:
                raise ValueError(f"{name}: an eval set of {eval_tokens} tokens, fewer than "
                                 f"{MIN_EVAL_TOKENS}: luck could cross the line")
            (proj.path / "reports" / "train_history.csv").unlink(missing_ok=True)
            if params["model"]["block_size"] != 64:  # the split depends on it
                proj.stage("split", f"run{i}")
            m = proj.stage("train", f"run{i}-{rep}")
            r = _time_to_loss(_history(proj.path / "reports" / "train_history.csv"), m.seconds,
                              m.output)
            r["rss"] = m.rss_mb
            results[i].append(r)
            print(f"    run {rep + 1}/{ctx.repeats}: {name.split(':')[0]}: {m.seconds:.1f} s, "
                  f"val {r['final_val']:.4f}", flush=True)
            model_copy = ctx.tmp / f"model-run{i}.pt"
            shutil.copy2(proj.path / "models" / "model.pt", model_copy)
            if ctx.eval_model is None or i == 0:
                ctx.eval_model = model_copy  # the baseline's, when it ran
    confirmed = {}
    for i in todo:
        r = results[i][0]
        if not r["hit"]:
            confirmed[i] = (None, "")
            continue
        final = ctx.tmp / f"model-run{i}.pt" if r["step_hit"] == r["steps"] else None
        loss = whole_val_loss_at(proj, settings[i], r["step_hit"], final)
        ok = loss <= TARGET_VAL
        confirmed[i] = (ok, f"whole val split at step {r['step_hit']}: {loss:.4f} "
                            f"({'confirmed' if ok else 'NOT confirmed'} <= {TARGET_VAL})")
        print(f"    {runs[i][0].split(':')[0]}: {confirmed[i][1]}", flush=True)
    base = _to_loss(results[0]) if 0 in results else None
    for i in todo:
        name, rs = runs[i][0], results[i]
        mine = _to_loss(rs)
        if i == 0:
            ctx.add("loss", name, _describe(rs, confirmed[i][1]),
                    f"context: nanoGPT's own run {REF_SECONDS:.0f} s (another machine and day)",
                    "1.00x" if mine is not None else "n/a")
            continue
        if base is None and 0 in results:
            base_text = (f"baseline did not reach it: its whole run "
                         f"{median(x['wall'] for x in results[0]):.1f} s")
            base_value = median(x["wall"] for x in results[0])
        else:
            base_text, base_value = ("n/a", None) if base is None else (
                f"baseline {base:.1f} s", base)
        met = None
        if mine is not None and base_value:
            met = mine / base_value <= GOAL_RATIO and bool(confirmed[i][0])
        ctx.add("loss", name, _describe(rs, confirmed[i][1]), base_text,
                ratio(mine, base_value),
                "" if i == 1 else ctx.judge(f"<= {GOAL_RATIO}x of the baseline, confirmed",
                                            met))
