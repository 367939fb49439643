"""throughput: training tokens/s at the reference config, plain fp32 eager
vs gptpipe's train step (and torch.compile)."""
from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np

from .common import REF_TOKENS_S, Context, median, ratio
from .peak import matmul_gflops


def train_flops_per_token(model, cfg) -> float:
    """nanoGPT's estimate (gptpipe.model's, which train's history uses too)."""
    from gptpipe.model import train_flops_per_token as estimate

    return estimate(model)


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


def newton_schulz_work(model, bf16: bool):
    """Muon's orthogonalisation alone for this model's block matrices, as the
    optimizer batches it (one stack per shape): a callable doing one step's worth,
    and its GFLOP. No Muon step can take less than the AdamW step plus this."""
    import torch

    from gptpipe.optim import _newton_schulz, _same_shape
    from gptpipe.params import TrainParams

    row = TrainParams()  # the Muon row trains with train's defaults
    kind, steps = row.muon_ns_coefficients, row.muon_ns_steps
    mats = [p for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("blocks.")]
    stacks = [torch.randn(len(group), *sorted(mats[group[0]].shape)) for group in _same_shape(mats)]
    # per iteration: X X^T (2 r r c), A A (2 r^3), B X (2 r r c) for each (r, c) matrix
    gflop = sum(s.size(0) * steps * (4 * s.size(1) ** 2 * s.size(2) + 2 * s.size(1) ** 3)
                for s in stacks) / 1e9

    def work() -> None:
        for stack in stacks:
            _newton_schulz(stack, kind, steps, bf16)
    return work, gflop


def bench_throughput(ctx: Context) -> None:
    import torch

    from gptpipe.model import ModelConfig, build
    from gptpipe.params import TrainParams
    from gptpipe.devices import autocast_dtype
    from gptpipe.training import Trainer

    cpu = torch.device("cpu")
    peak = max(ctx.peak_fp32 or 0.0,
               matmul_gflops(reps=3 if ctx.quick else 8, dtypes=("float32",))["float32"])
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
    trainer("model.kind modern + AdamW (train.autocast auto)", "modern")
    muon_label = "model.kind modern + train.optimizer muon"
    trainer(muon_label, "modern", optimizer="muon")
    ns_work, ns_gflop = newton_schulz_work(variants[muon_label][0], variants[muon_label][2] is not None)
    timed = {label: step for label, (_, step, _) in variants.items()}
    timed["newton-schulz"] = ns_work  # timed between the steps, so under the same load
    for step in timed.values():
        for _ in range(1 if ctx.quick else 3):
            step()
    times = {label: [] for label in timed}
    for _ in range(5 if ctx.quick else 60):
        for label, step in timed.items():
            start = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - start)
    flops = train_flops_per_token(plain_model, ModelConfig(kind="gpt", **ref))
    base_label = next(iter(variants))
    base = 12 * 64 / median(times[base_label])
    adamw_label = "model.kind modern + AdamW (train.autocast auto)"
    bf16_cpu = ctx.machine.get("bf16_instructions", False)
    for label, (_, _, amp) in variants.items():
        tok_s = 12 * 64 / median(times[label])
        mfu = flops * tok_s / (peak * 1e9)
        extra = ", bf16 autocast" if amp is not None else ""
        row = dict(baseline=f"{base:,.0f} tok/s", ratio=ratio(tok_s, base), goal="")
        if label == base_label:
            row["baseline"] = f"context: nanoGPT's own {REF_TOKENS_S:,} tok/s (another day)"
        elif "default" in label:
            row["goal"] = (ctx.judge(">= 1.3x", tok_s / base >= 1.3) if bf16_cpu else
                           ">= 1.3x: n/a (no bf16 instructions on this CPU)")
        elif label == muon_label:  # the Muon step's cost against AdamW's, same model
            adamw_s = median(times[adamw_label])
            muon_cost = median(times[label]) / adamw_s
            ns_s = median(times["newton-schulz"])
            extra += (f"; Newton-Schulz alone {ns_s * 1e3:.1f} ms/step ({ns_gflop:.2f} GFLOP at "
                      f"{ns_gflop / ns_s:.0f} GFLOP/s), so no Muon step here can cost less "
                      f"than {1 + ns_s / adamw_s:.2f}x")
            row = dict(baseline=f"modern + AdamW {adamw_s * 1e3:.1f} ms/step",
                       ratio=f"{muon_cost:.2f}x time",
                       goal=ctx.judge("<= 1.15x the AdamW step", muon_cost <= 1.15))
        ctx.add("throughput", f"train, 4x4x128, ctx 64, batch 12: {label}",
                f"{tok_s:,.0f} tok/s ({median(times[label]) * 1e3:.1f} ms/step), "
                f"MFU {mfu:.0%} of the fp32 peak ({peak:.0f} GFLOP/s){extra}", **row)
    _bench_compile(ctx)


_COMPILE_WORKER = r"""
import json, sys, time, numpy as np, torch
from gptpipe.model import ModelConfig, build
from gptpipe.params import TrainParams
from gptpipe.devices import autocast_dtype
from gptpipe.training import Trainer
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
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
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
