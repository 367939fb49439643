"""loss: wall time to the reference val loss on tinyshakespeare, nanoGPT's
baby-GPT config vs benchmarks/tinyshakespeare.yaml."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

from .common import (BASELINE_PRESET, MIN_EVAL_TOKENS, QUICK_TRAIN, RECIPE_PRESET, REF_SECONDS,
                     TARGET_VAL, Context, median, ratio)
from .measure import load_yaml


def _history(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _time_to_loss(history: list[dict], wall: float) -> dict:
    final = history[-1]
    hit = next((r for r in history if r["step"] > 0 and r["val_loss"] <= TARGET_VAL), None)
    out = {"final_val": final["val_loss"], "steps": int(final["step"]), "wall": wall,
           "loop_final": final["elapsed_s"], "hit": hit is not None}
    if hit is not None:
        out["step_hit"] = int(hit["step"])
        out["loop"] = hit["elapsed_s"]
        # the stage's wall time up to the crossing: start-up, the step-0 eval and
        # writing the outputs count; training after the crossing does not.
        out["to_loss"] = wall - (final["elapsed_s"] - hit["elapsed_s"])
    return out


def _describe(rs: list[dict]) -> str:
    """The median over repeated runs (the losses are the same in each: seeded)."""
    r = rs[0]
    rss = max(x["rss"] for x in rs)
    walls = ", ".join(f"{x['wall']:.1f}" for x in rs)
    if not all(x["hit"] for x in rs):
        return (f"not reached in {r['steps']} steps: final val {r['final_val']:.4f}; stage "
                f"{median(x['wall'] for x in rs):.1f} s (runs: {walls} s), "
                f"peak RSS {rss:,.0f} MB")
    runs = ", ".join(f"{x['to_loss']:.1f}" for x in rs)
    return (f"{median(x['to_loss'] for x in rs):.1f} s (runs: {runs} s; train loop "
            f"{median(x['loop'] for x in rs):.1f} s to step {r['step_hit']}); final val "
            f"{r['final_val']:.4f} at step {r['steps']}; peak RSS {rss:,.0f} MB")


def _to_loss(rs: list[dict]) -> float | None:
    return median(x["to_loss"] for x in rs) if all(x["hit"] for x in rs) else None


def bench_loss(ctx: Context) -> None:
    proj = ctx.shakes
    from gptpipe.devices import cpu_has_amx

    source = {"data": {"source": str(ctx.corpus)}}
    runs = [  # time to val <= TARGET_VAL, read from reports/train_history.csv
("baseline: nanoGPT baby GPT config, fp32 (benchmarks/nanogpt_baby.yaml)",
             [load_yaml(BASELINE_PRESET)]),
            ("lecture GPT, same config, train.autocast auto (bf16 on AMX CPUs)",
             [load_yaml(BASELINE_PRESET), {"train": {"autocast": "auto"}}]),
            ("recipe: benchmarks/tinyshakespeare.yaml", [load_yaml(RECIPE_PRESET)])]
    todo = []
    for i, (name, presets) in enumerate(runs):
        if proj is None:
            ctx.add("loss", name, "n/a: tinyshakespeare not found (set GPTPIPE_TINYSHAKESPEARE)")
        elif ctx.quick and i < 2:
            ctx.add("loss", name, "skipped in --quick (a full run takes minutes)")
        elif i == 1 and not cpu_has_amx():
            ctx.add("loss", name, "skipped: auto is fp32 on this CPU, as the baseline")
        else:
            todo.append(i)
    results: dict[int, list[dict]] = {i: [] for i in todo}
    for rep in range(ctx.repeats):  # alternate the order, so drifting load evens out
        for i in todo if rep % 2 == 0 else todo[::-1]:
            name, presets = runs[i]
            params = proj.set_params(*presets, source, QUICK_TRAIN if ctx.quick else {})
            t = params["train"]
            eval_tokens = t["eval_batches"] * t["batch_size"] * params["model"]["block_size"]
            if eval_tokens < MIN_EVAL_TOKENS and not ctx.quick:
                raise ValueError(f"{name}: an eval set of {eval_tokens} tokens, fewer than "
                                 f"{MIN_EVAL_TOKENS}: luck could cross the line")
            (proj.path / "reports" / "train_history.csv").unlink(missing_ok=True)
            if params["model"]["block_size"] != 64:  # the split depends on it
                proj.stage("split", f"run{i}")
            m = proj.stage("train", f"run{i}-{rep}")
            r = _time_to_loss(_history(proj.path / "reports" / "train_history.csv"), m.seconds)
            r["rss"] = m.rss_mb
            results[i].append(r)
            print(f"    run {rep + 1}/{ctx.repeats}: {name.split(':')[0]}: {m.seconds:.1f} s, "
                  f"val {r['final_val']:.4f}", flush=True)
            if ctx.eval_model is None or (i == 0 and "run0" not in ctx.eval_model.name):
                ctx.eval_model = ctx.tmp / f"model-run{i}.pt"
                shutil.copy2(proj.path / "models" / "model.pt", ctx.eval_model)
    base = _to_loss(results[0]) if 0 in results else None
    for i in todo:
        name, rs = runs[i][0], results[i]
        mine = _to_loss(rs)
        if i == 0:
            ctx.add("loss", name, _describe(rs), f"reference {REF_SECONDS:.0f} s (nanoGPT)",
                    ratio(mine, REF_SECONDS))
            continue
        if base is None and 0 in results:
            base_text = (f"baseline did not reach it: its whole run "
                         f"{median(x['wall'] for x in results[0]):.1f} s")
            base_value = median(x["wall"] for x in results[0])
        else:
            base_text, base_value = ("n/a", None) if base is None else (
                f"baseline {base:.1f} s", base)
        of_ref = None if mine is None else mine / REF_SECONDS
        ctx.add("loss", name, _describe(rs) + (
                "" if of_ref is None else f"; {of_ref:.2f}x of the reference {REF_SECONDS:.0f} s"),
                base_text, ratio(mine, base_value),
                "" if i == 1 else ctx.judge(f"<= 0.5x of {REF_SECONDS:.0f} s, better 0.33x",
                                            None if of_ref is None else of_ref <= 0.5))
