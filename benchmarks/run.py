#!/usr/bin/env python
"""gptpipe's benchmarks: `python benchmarks/run.py [--quick] [--out FILE]` (`make bench`).

Prints one table and writes it to BENCHMARKS.md (or --out) with the machine it
ran on. Every figure sits next to a baseline measured in the same command and
is shown as a ratio to it, with the absolute numbers, because these machines are
shared and absolute timings move from run to run. Variants that are compared
step by step are interleaved and reported as medians. A slow machine never
makes it fail: goals are reported as met or not. It exits non-zero only when
something is broken (a stage fails, or cached and uncached greedy sampling
disagree).

--quick is a smoke run for CI (well under a minute on an idle machine): the
same rows with tiny workloads (the long runs show as skipped); its numbers are
not measurements. --repeats N runs each time-to-loss config N times (default
3); --only peak,sampling,... runs some sections. tinyshakespeare: the file
GPTPIPE_TINYSHAKESPEARE names (set to ../shared/data/tinyshakespeare.txt next to
the repo when that exists, and said so), else the presets' URL, checked by its
sha256; when neither works, its rows say n/a.

Sections:
  peak        fp32 and bf16 2048x2048 torch.matmul GFLOP/s (the MFU denominator)
  throughput  training tokens/s at the reference config (4x4x128, context 64,
              batch 12): plain fp32 eager vs gptpipe's train step
  sampling    1000 new tokens at context 256, KV cache vs recomputation
  stages      seconds and peak RSS of each stage on the embedded corpus and on
              tinyshakespeare
  firststeps  the train stage's steps 1-100 against its steady speed, and that
              against the benchmark's step (bench/first_steps.py)
  loss        wall time to val loss <= 1.8857 on tinyshakespeare: nanoGPT's
              baby-GPT config vs benchmarks/tinyshakespeare.yaml
  dvc         a no-op `dvc repro` of gptpipe's pipeline vs a plain chain of as many
              stages, the first always run (as gptpipe's init)
  evaluate    the evaluate stage's inference now vs its fp32 batch-64 past; bf16 and
              fp32 at batch 64 and 256
  sweep       docs/sweeps.md's 2x2 grid through `dvc queue start -j 2` vs `-j 1`:
              wall time, the same runs, versions and champion
  tokenizers  BPE training seconds and encode MB/s

Each section is a module of benchmarks/bench/ (bench/time_to_loss.py for
`loss`, bench/dvc_noop.py for `dvc`); bench/common.py holds the reference
figures and the context, bench/report.py the table and this file's markdown.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import LOSS_REPEATS, ROOT, SECTIONS, Context, machine
from bench.dvc_noop import bench_dvc
from bench.evaluate import bench_evaluate
from bench.first_steps import bench_first_steps
from bench.peak import bench_peak
from bench.report import markdown, table
from bench.sampling import bench_sampling
from bench.stages import bench_stages, use_shared_corpus
from bench.sweep import bench_sweep
from bench.throughput import bench_throughput
from bench.time_to_loss import bench_loss
from bench.tokenizers import bench_tokenizers

BENCHES = {"peak": bench_peak, "throughput": bench_throughput, "sampling": bench_sampling,
           "stages": bench_stages, "firststeps": bench_first_steps, "loss": bench_loss, "dvc": bench_dvc,
           "evaluate": bench_evaluate, "sweep": bench_sweep, "tokenizers": bench_tokenizers}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads (CI smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="markdown file to write (default: BENCHMARKS.md)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"train runs per config in the loss section (default: "
                        f"{LOSS_REPEATS}, --quick: 1); the median is reported")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if "throughput" in only:
        only.append("peak")  # the MFU denominator
    stages_as_dependency = False
    if {"loss", "dvc", "firststeps"} & set(only) and "stages" not in only:
        only.append("stages")  # their projects and data (the data stages are enough)
        stages_as_dependency = True
    started = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C: stages are stopped and the temp dir removed
    signal.signal(signal.SIGTERM, _interrupt)
    if args.quick:  # a smoke run: one thread keeps it quick on a busy machine too
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
    info = machine()
    print(f"gptpipe benchmarks ({'quick' if args.quick else 'full'}): {info['cpu']}, "
          f"{info['cores']} cores, torch {info['torch']}, load {info['load']}\n"
          f"  CPU features: {info['features']}; train.autocast auto: {info['autocast']} "
          f"({info['autocast_reason']})", flush=True)
    use_shared_corpus()
    with tempfile.TemporaryDirectory(prefix="gptpipe-bench-") as tmp:
        ctx = Context(quick=args.quick, tmp=Path(tmp), machine=info,
                      repeats=max(1, args.repeats or (1 if args.quick else LOSS_REPEATS)),
                      data_stages_only=stages_as_dependency)
        for name in SECTIONS:
            if name not in only:
                continue
            print(f"[{name}]", flush=True)
            section_start = time.perf_counter()
            try:
                BENCHES[name](ctx)
            except Exception as exc:  # noqa: BLE001 - report, go on, fail at the end
                message = f"{name}: {type(exc).__name__}: {exc}"
                ctx.errors.append(message.splitlines()[0])
                ctx.add(name, f"{name} failed", "error: " + " ".join(str(exc).split())[:300])
                traceback.print_exc()
            ctx.took[name] = time.perf_counter() - section_start
            print(f"[{name}] {ctx.took[name]:.1f} s", flush=True)
        seconds = time.perf_counter() - started
        existing = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        text = markdown(ctx, info, seconds, existing)
    print()
    print(table(ctx.rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"\nwrote {args.out} in {seconds:.0f} s"
          + (f"; {len(ctx.errors)} section(s) failed" if ctx.errors else ""))
    return 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing too
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.stderr.write("benchmarks: interrupted\n")
        sys.exit(130)
