#!/usr/bin/env python
"""Pretrain, then fine-tune: does starting from the pretrained model pay off?

    python benchmarks/finetune.py [--pretrain-steps N] [--steps M] [--out BENCHMARKS.md]

1. pretrain: the default pipeline's data (the embedded plays) for N steps;
2. fine-tune: train.init_from that model, tokenizer.kind from_model, M steps on
   a text that is not in the plays: the King James Bible's four gospels (public
   domain; Debian's bible-kjv package prints it offline, `apt-get install bible-kjv`);
3. scratch (the baseline, same command): the same M steps on the same text,
   from a fresh model.

Both second runs see the same characters: the gospels are first mapped to the
plays' vocabulary (as tokenizer.unknown_chars: replace would), so bits/char
compare like for like. Prints and writes (between markers, into BENCHMARKS.md)
val bits/char after the same number of steps and the same training wall time,
and the steps each run needs to reach the scratch run's final val loss. The
stages run as DVC runs them, in temp projects, with a temp MLflow store.
The workload is small on purpose (2 shared CPU cores): a tiny model, short runs.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOKS = "Mt1:1-Joh21:25"  # the four gospels
STAGES = ("init", "download", "clean", "tokenize", "split", "train")
SCRIPTS = {"init": "init_model.py", "tokenize": "tokenize_text.py"}
MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0}


def train_params(steps: int, eval_interval: int) -> dict:
    return {"max_iters": steps, "eval_interval": eval_interval, "eval_batches": 10,
            "checkpoint_interval": steps, "warmup_iters": min(50, steps // 10),
            "threads": 1, "autocast": "off", "lr": 1.0e-3, "min_lr": 1.0e-4}


from bench.measure import projects  # noqa: E402 (tests/projects.py, as the benchmarks load it)
from bench.report import FINETUNE_BEGIN as BEGIN, FINETUNE_END as END  # noqa: E402

merge = projects.merge


class Project:
    def __init__(self, path: Path, store: Path, params: dict):
        projects.copy_pipeline(path)
        projects.write_params(path, params, base=ROOT / "params.yaml")
        self.path = path
        self.env = {**projects.project_env(Path(sys.executable).parent, store),
                    "DVC_ROOT": str(path), "PYTHONPATH": str(path / "src"),
                    "OMP_NUM_THREADS": "1"}

    def pipeline(self, label: str) -> float:
        start = time.perf_counter()
        for name in STAGES:
            script = SCRIPTS.get(name, f"{name}.py")
            out = subprocess.run([sys.executable, f"stages/{script}"], cwd=self.path,
                                 env=self.env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"finetune benchmark: {label}: stage {name} failed:\n"
                                 f"{out.stderr.strip()[-2000:]}")
        print(f"  {label}: {time.perf_counter() - start:.0f} s", flush=True)
        return time.perf_counter() - start

    def history(self) -> list[dict]:
        with open(self.path / "reports/train_history.csv", newline="") as fh:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def gospels() -> str:
    if shutil.which("bible") is None:
        raise SystemExit("finetune benchmark: the `bible` command is missing: "
                         "apt-get install bible-kjv (Debian's King James Bible)")
    out = subprocess.run(["bible", "-f", BOOKS], capture_output=True, text=True, check=True)
    # "Mt1:1 The book of ..." -> the verse alone, one per line
    return "".join(line.split(" ", 1)[1] + "\n" for line in out.stdout.splitlines()
                   if " " in line)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bits(loss: float) -> float:
    return loss / math.log(2)  # char tokenizer: one token per character


def at_time(history: list[dict], seconds: float) -> dict:
    """The last eval at or before `seconds` of training (elapsed_s)."""
    done = [row for row in history if row["elapsed_s"] <= seconds + 1e-9]
    return done[-1] if done else history[0]


def first_step_at_or_below(history: list[dict], loss: float) -> int | None:
    return next((int(row["step"]) for row in history if row["val_loss"] <= loss), None)


def overlap(pretrain: str, finetune: str, width: int = 40) -> tuple[int, int]:
    """How many of the fine-tune text's lines (of `width`+ characters) occur verbatim
    in the pretraining text."""
    lines = [line.strip() for line in finetune.splitlines() if len(line.strip()) >= width]
    return sum(line in pretrain for line in lines), len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=300, help="fine-tune and scratch steps")
    parser.add_argument("--eval-interval", type=int, default=25)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    text = gospels()
    load = os.getloadavg()
    print(f"finetune benchmark: pretrain {args.pretrain_steps} steps, then {args.steps} "
          f"steps fine-tune vs scratch; load {load[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gptpipe-finetune-") as tmp:
        tmp = Path(tmp)
        store = tmp / "mlflow.db"
        pre = Project(tmp / "pretrain", store, {
            "model": MODEL, "train": train_params(args.pretrain_steps, 250)})
        pre_s = pre.pipeline("pretrain (embedded plays)")
        plays = (pre.path / "data/clean/corpus.txt").read_text(encoding="utf-8")
        from gptpipe.tokenizers import load as load_tokenizer

        vocab = load_tokenizer(pre.path / "data/tokens/tokenizer.json")
        mapped, unknown = vocab.map_unknown(text, "replace")
        shared, total = overlap(plays, mapped)
        corpus = tmp / "gospels.txt"
        corpus.write_text(mapped, encoding="utf-8")
        common = {"data": {"source": str(corpus)}, "model": MODEL,
                  "train": train_params(args.steps, args.eval_interval)}
        ft = Project(tmp / "finetune", store, merge(common, {
            "train": {"init_from": str(pre.path / "models/model.pt")},
            "tokenizer": {"kind": "from_model"}}))
        ft_s = ft.pipeline("fine-tune (gospels, from the pretrained model)")
        scratch = Project(tmp / "scratch", store, common)
        scratch_s = scratch.pipeline("scratch (gospels)")
        hf, hs = ft.history(), scratch.history()
        split = json.loads((ft.path / "reports/split.json").read_text())
    target = hs[-1]["val_loss"]
    same_time = at_time(hf, hs[-1]["elapsed_s"])
    ft_steps = first_step_at_or_below(hf, target)
    scratch_steps = first_step_at_or_below(hs, target)
    scratch_to_ft = first_step_at_or_below(hs, hf[-1]["val_loss"])
    rows = [
        ("val bits/char at step 0 (before any fine-tuning step)",
         f"{bits(hf[0]['val_loss']):.3f}", f"{bits(hs[0]['val_loss']):.3f}"),
        (f"val bits/char after {args.steps} steps", f"{bits(hf[-1]['val_loss']):.3f}",
         f"{bits(hs[-1]['val_loss']):.3f}"),
        (f"val bits/char after the same training time ({hs[-1]['elapsed_s']:.0f} s, "
         "the scratch run's)",
         f"{bits(same_time['val_loss']):.3f} (step {int(same_time['step'])})",
         f"{bits(hs[-1]['val_loss']):.3f}"),
        (f"steps to reach the scratch run's final val loss ({target:.4f})",
         f"{ft_steps} (its step-0 eval)" if ft_steps == 0 else str(ft_steps),
         str(scratch_steps)),
        (f"steps to reach the fine-tuned run's final val loss ({hf[-1]['val_loss']:.4f})",
         str(first_step_at_or_below(hf, hf[-1]["val_loss"])),
         str(scratch_to_ft) if scratch_to_ft is not None else f"not within {args.steps}"),
        ("wall time of the pipeline (init..train)", f"{ft_s:.0f} s (+ {pre_s:.0f} s "
         "pretraining)", f"{scratch_s:.0f} s"),
    ]
    ratio_bits = bits(hf[-1]["val_loss"]) / bits(hs[-1]["val_loss"])
    ratio_steps = ft_steps / scratch_steps if ft_steps is not None and scratch_steps else None
    lines = [
        BEGIN, "", "## Fine-tuning from a pretrained model (`benchmarks/finetune.py`)", "",
        f"Written by `python benchmarks/finetune.py --pretrain-steps {args.pretrain_steps} "
        f"--steps {args.steps}`; {cpu_name()}, "
        f"{os.cpu_count()} cores, load {load[0]:.1f} at start; "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; took "
        f"{time.perf_counter() - started:.0f} s.", "",
        f"Pretrained {args.pretrain_steps} steps on the embedded plays; then {args.steps} "
        f"steps on the King James Bible's gospels ({BOOKS}, Debian's bible-kjv: public "
        "domain, English, offline, and not Shakespeare) from that model (fine-tune) and "
        "from a fresh one (scratch, the baseline). Model "
        f"{MODEL['n_layer']}x{MODEL['n_head']}x{MODEL['n_embd']}, context "
        f"{MODEL['block_size']}, char tokenizer, batch 12, one thread, autocast off. "
        f"The gospels: {split['train_tokens']:,} train / {split['val_tokens']:,} val "
        f"characters; {sum(unknown.values())} characters outside the plays' vocabulary "
        f"replaced: {' '.join(sorted(unknown)) or 'none'}; {shared} of their {total} "
        "lines of 40+ characters occur verbatim in the plays.", "",
        "| measure | fine-tune | scratch (same command) |", "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
        f"Ratio fine-tune / scratch: val bits/char after {args.steps} steps "
        f"{ratio_bits:.2f}x"
        + (f"; steps to the scratch run's final loss {ratio_steps:.2f}x"
           if ratio_steps is not None else "") + ". A small, short measurement on a shared machine: the ratios, "
        "measured in one command, are the figures to read.", "", END, ""]
    section = "\n".join(lines)
    print("\n" + section)
    old = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + section
    args.out.write_text(new, encoding="utf-8")
    print(f"wrote the section into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
