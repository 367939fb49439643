"""stages: seconds and peak RSS of each stage, on the embedded corpus and on
tinyshakespeare (whose project the loss and dvc sections go on with)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .common import (BASELINE_PRESET, DATA_STAGES, RECIPE_PRESET, SHARED_CORPUS, STAGE_SCRIPTS,
                     TINY, Context, ratio)
from .measure import Measured, Project, git_dvc_init, load_yaml, run_measured


def use_shared_corpus() -> None:
    """Point GPTPIPE_TINYSHAKESPEARE at ../shared's copy when there is one; say which."""
    name = "GPTPIPE_TINYSHAKESPEARE"
    if os.environ.get(name):
        print(f"tinyshakespeare: {name}={os.environ[name]}", flush=True)
    elif SHARED_CORPUS.is_file():
        os.environ[name] = str(SHARED_CORPUS.resolve())
        print(f"tinyshakespeare: ../shared/data/tinyshakespeare.txt is present: "
              f"setting {name} to it", flush=True)
    else:
        print(f"tinyshakespeare: {name} is unset and ../shared/data/tinyshakespeare.txt "
              f"is absent: downloading the presets' data.source", flush=True)


def find_corpus(dest: Path) -> Path | None:
    """The file GPTPIPE_TINYSHAKESPEARE names, else the presets' data.source (the
    tinyshakespeare URL) fetched into `dest` and checked against their sha256."""
    if os.environ.get("GPTPIPE_TINYSHAKESPEARE"):
        local = Path(os.environ["GPTPIPE_TINYSHAKESPEARE"])
        if not local.is_file():
            print(f"  tinyshakespeare: GPTPIPE_TINYSHAKESPEARE={local}: no such file", flush=True)
            return None
        return local.resolve()
    if not dest.is_dir():
        from gptpipe.errors import UserError
        from gptpipe.sources import fetch

        data = load_yaml(RECIPE_PRESET)["data"]
        fetched = dest.with_name(dest.name + ".part")
        fetched.mkdir(parents=True, exist_ok=True)
        try:
            fetch(data["source"], fetched, sha256=data["sha256"], max_bytes=10_000_000,
                  timeout_s=30.0, retries=2)
        except UserError as exc:
            print(f"  tinyshakespeare: {exc}", flush=True)
            return None
        fetched.rename(dest)
    return next(dest.iterdir())


def _stage_row(ctx: Context, corpus: str, name: str, m: Measured, note: str = "") -> None:
    """Data stages against a bare interpreter; torch stages against importing
    torch and mlflow, the floor of their start-up."""
    torch_stage = name in ("train", "evaluate", "sample")
    base = ctx.imports if torch_stage else ctx.bare
    what = "`python -c 'import torch, mlflow'`" if torch_stage else "bare `python -c pass`"
    ctx.add("stages", f"stage {name} ({corpus}{note})",
            f"{m.seconds:.2f} s, peak RSS {m.rss_mb:,.0f} MB",
            f"{what} {base.seconds:.2f} s, {base.rss_mb:,.0f} MB",
            ratio(m.seconds, base.seconds, 1))


def _startup_row(ctx: Context, m: Measured) -> None:
    """How long the train stage takes to its first optimizer step (it prints it)."""
    from .time_to_loss import FIRST_STEP

    found = FIRST_STEP.search(m.output)
    name = "train stage start-up: process start to first step done (embedded corpus)"
    if found is None:
        raise RuntimeError(f"{name}: the train stage did not print its first step's time")
    seconds = float(found.group(1))
    ctx.add("stages", name, f"{seconds:.2f} s (MLflow opens meanwhile, in a process of its own)",
            f"`python -c 'import torch, mlflow'` {ctx.imports.seconds:.2f} s",
            ratio(seconds, ctx.imports.seconds, 2))


def bench_stages(ctx: Context) -> None:
    """Every stage on the embedded corpus (--quick: the data stages), and the data
    stages on tinyshakespeare, whose project the loss and dvc sections go on with."""
    ctx.bare = run_measured([ctx.python, "-c", "pass"], ctx.tmp, dict(os.environ),
                            ctx.tmp / "logs" / "bare.log")
    ctx.imports = run_measured([ctx.python, "-c", "import torch, mlflow"], ctx.tmp,
                               dict(os.environ), ctx.tmp / "logs" / "imports.log")
    ctx.corpus = find_corpus(ctx.tmp / "tinyshakespeare-download")
    emb = Project(ctx.tmp / "embedded", ctx.python, ctx.tmp / "mlflow-embedded.db")
    # the default pipeline as `make run` runs it (--quick: tiny)
    emb.set_params({"data": {"source": "shakespeare"}}, TINY if ctx.quick else {})
    git_dvc_init(emb)
    all_stages = not (ctx.quick or ctx.data_stages_only) or ctx.corpus is None
    notes = {"train": ", 20 steps of a tiny model" if ctx.quick else ", default params",
             "evaluate": ", whole val split, evaluate.train_windows of train",
             "sample": ""}
    took = {}
    for name in STAGE_SCRIPTS if all_stages else DATA_STAGES:
        m = took[name] = emb.stage(name)
        _stage_row(ctx, "embedded corpus", name, m, notes.get(name, ""))
        if name == "train":
            _startup_row(ctx, m)
    if "evaluate" in took:
        share = took["evaluate"].seconds / took["train"].seconds
        ctx.add("stages", "evaluate stage / train stage (embedded corpus, default params)",
                f"evaluate {took['evaluate'].seconds:.1f} s (whole val split, "
                f"evaluate.train_windows of train)", f"train {took['train'].seconds:.1f} s",
                f"{share:.2f}x", ctx.judge("<= 0.20x", share <= 0.20))
    if not all_stages:
        ctx.add("stages", "stages train, evaluate, sample (embedded corpus)",
                "skipped in --quick and in --only without stages (see tinyshakespeare)")
    split = json.loads((emb.path / "reports" / "split.json").read_text())
    print(f"  (embedded corpus: {split['train_tokens']:,} train / {split['val_tokens']:,} "
          "val tokens)", flush=True)
    ctx.dvc_project = emb
    if ctx.corpus is None:
        for name in DATA_STAGES:
            ctx.add("stages", f"stage {name} (tinyshakespeare)",
                    "n/a: tinyshakespeare not found (set GPTPIPE_TINYSHAKESPEARE)")
        return
    shakes = Project(ctx.tmp / "tinyshakespeare", ctx.python, ctx.tmp / "mlflow-tiny.db")
    shakes.set_params(load_yaml(BASELINE_PRESET), {"data": {"source": str(ctx.corpus)}})
    git_dvc_init(shakes)
    for name in DATA_STAGES:
        _stage_row(ctx, "tinyshakespeare", name, shakes.stage(name))
    ctx.shakes = shakes
