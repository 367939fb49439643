"""The training loop: AdamW, warmup + cosine, clipping, fixed-batch evals,
checkpoints that resume bit-exactly.

Everything that decides the next step is in the checkpoint: weights, optimizer
moments, the step, and every RNG (python, numpy, torch, the window sampler).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .batches import WindowSampler, fixed_batches, gather
from .distributed import World, micro_batching
from .errors import StopRequested, UserError
from .model import loss_fn
from .params import TrainParams
from .schedule import lr_at


class NonFiniteLoss(UserError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but torch sees no CUDA device")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise UserError("train.device: mps was asked for but is not available")
    return torch.device(name)


def autocast_dtype(device: torch.device, mode: str) -> torch.dtype | None:
    if mode == "off":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # On CPUs with AMX (bf16 matrix tiles), bf16 matmuls run ~6x faster than fp32
    # and training the lecture's model ~1.5x faster, to the same loss (benchmarks/;
    # attention stays fp32, see model._attention). Elsewhere `auto` keeps fp32.
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return None


def cpu_has_amx() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - a private torch API; absent means no
        return False


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_deterministic(seed: int) -> None:
    """Seed every RNG and ask torch for deterministic kernels.

    On CUDA that also means: no cuDNN autotuning, no TF32, and the cuBLAS
    workspace setting deterministic GEMMs need (set before CUDA starts)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if hasattr(torch._C, "_set_deterministic_algorithms") and "torch._inductor" not in sys.modules:
        # What use_deterministic_algorithms does, minus importing torch._inductor to
        # set its flag: ~3 s of start-up per train stage, for a compiler never used here.
        torch._C._set_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def configure_optimizer(model: nn.Module, tp: TrainParams, device: torch.device):
    """AdamW; weight decay on 2-D weights (matmuls, embeddings) only.

    train.optimizer muon: the blocks' 2-D weights go to Muon (at train.muon_lr,
    following the same warmup and decay as train.lr); embeddings, the head and
    1-D params stay with AdamW."""
    muon = []
    if tp.optimizer == "muon":
        muon = [p for name, p in model.named_parameters()
                if p.requires_grad and p.dim() == 2 and name.startswith("blocks.")]
    in_muon = {id(p) for p in muon}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in in_muon]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tp.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=tp.lr, betas=(tp.beta1, tp.beta2),
                              fused=device.type in ("cuda", "cpu"))
    if not muon:
        return adamw
    return OptimizerChain([adamw, Muon(muon, lr=tp.lr, lr_ratio=tp.muon_lr / tp.lr,
                                       weight_decay=tp.weight_decay)])


def _newton_schulz(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately orthogonalise a stack of wide (rows <= cols) matrices: the
    quintic iteration of Muon, in bf16 where matmuls are fast in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    fast_bf16 = G.is_cuda or cpu_has_amx()
    X = G.bfloat16() if fast_bf16 else G.float()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A
        X = torch.baddbmm(X, B, X, beta=a)           # a*X + B@X
    return X


class Muon(torch.optim.Optimizer):
    """Muon (K. Jordan, 2024): Nesterov momentum whose update for each weight matrix
    is orthogonalised by a Newton-Schulz iteration, scaled by sqrt(max(1, rows/cols)).
    Matrices of one shape are orthogonalised together, as one batched chain of
    matmuls. The step is group["lr"] * group["lr_ratio"]: the trainer sets lr from
    the schedule. Weight decay is decoupled and uses the unscaled lr, so it shrinks
    weights as AdamW would."""

    def __init__(self, params, lr: float = 1e-3, lr_ratio: float = 20.0,
                 momentum: float = 0.95, weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, lr_ratio=lr_ratio, momentum=momentum,
                                      weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"])
                tall = update.size(0) > update.size(1)
                update = update.mT if tall else update
                by_shape.setdefault(tuple(update.shape), []).append((p, tall, update))
            step_lr = group["lr"] * group["lr_ratio"]
            for shape, items in by_shape.items():
                ortho = _newton_schulz(torch.stack([u for _, _, u in items]), group["ns_steps"])
                for (p, tall, _), o in zip(items, ortho):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    scale = step_lr * max(1.0, p.size(0) / p.size(1)) ** 0.5
                    p.add_((o.mT if tall else o).to(p.dtype), alpha=-scale)


class OptimizerChain:
    """Several optimizers stepped as one: what the trainer and checkpoints need."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"chain": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["chain"], strict=True):
            opt.load_state_dict(s)


@dataclass
class EvalRow:
    step: int
    lr: float
    train_loss: float
    val_loss: float
    tokens_per_s: float
    elapsed_s: float


@dataclass
class Trainer:
    model: nn.Module
    train_data: np.ndarray
    val_data: np.ndarray
    tp: TrainParams
    device: torch.device
    amp_dtype: torch.dtype | None = None
    world: World = field(default_factory=World)
    ddp_model: nn.Module | None = None
    step: int = 0
    elapsed_s: float = 0.0
    history: list[EvalRow] = field(default_factory=list)
    batch_losses: list[tuple[int, float, float]] = field(default_factory=list)

    def __post_init__(self):
        block = self.model.cfg.block_size
        self.optimizer = configure_optimizer(self.model, self.tp, self.device)
        self.micro_batch, self.accum_steps = micro_batching(
            self.tp.batch_size, self.tp.grad_accum, self.world.size)
        self.sampler = WindowSampler(self.train_data, block, self.micro_batch,
                                     self.tp.seed, stream=self.world.rank)
        self.eval_sets = {
            split: fixed_batches(data, block, self.tp.batch_size, self.tp.eval_batches,
                                 self.tp.seed, split)
            for split, data in (("train", self.train_data), ("val", self.val_data))}

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the next step depends on (a collective under DDP: every
        rank's RNG states are gathered, so each resumes its own stream)."""
        from .distributed import gather

        return {
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": gather(self._rng_state(), self.world),
            "history": [row.__dict__ for row in self.history],
        }

    def _rng_state(self) -> dict:
        return {
            "python": _python_rng_state(),
            "numpy_global": _numpy_global_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sampler": self.sampler.state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"][self.world.rank]
        random.setstate(_to_python_rng_state(rng["python"]))
        np.random.set_state(_to_numpy_global_state(rng["numpy_global"]))
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.sampler.load_state(rng["sampler"])
        self.history = [EvalRow(**row) for row in state["history"]]

    # -- evaluation ----------------------------------------------------------
    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """Mean loss on the fixed eval batches: the same windows every time."""
        self.model.eval()
        out = {}
        for split, data in (("train", self.train_data), ("val", self.val_data)):
            losses = []
            for starts in self.eval_sets[split]:
                x, y = gather(data, starts, self.model.cfg.block_size, self.device)
                with autocast(self.device, self.amp_dtype):
                    losses.append(loss_fn(self.model(x), y).item())
            out[split] = float(np.mean(losses))
        self.model.train()
        return out

    # -- the loop ------------------------------------------------------------
    def train_step(self) -> float:
        lr = lr_at(self.step, self.tp.lr, self.tp.min_lr, self.tp.warmup_iters,
                   self.tp.max_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        net = self.ddp_model or self.model
        total = 0.0
        for micro in range(self.accum_steps):
            x, y = self.sampler.next(self.device)
            sync = contextlib.nullcontext()
            if self.ddp_model is not None and micro < self.accum_steps - 1:
                sync = self.ddp_model.no_sync()  # all-reduce once, on the last micro-step
            with sync:
                with autocast(self.device, self.amp_dtype):
                    loss = loss_fn(net(x), y) / self.accum_steps
                loss.backward()
            total += loss.item()
        if not math.isfinite(total):
            raise NonFiniteLoss(f"loss is {total} at step {self.step + 1}; stopped "
                                "(the last good checkpoint is kept); lower train.lr or "
                                "raise train.grad_clip")
        if self.tp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tp.grad_clip,
                                           foreach=self.device.type in ("cuda", "cpu"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batch_losses.append((self.step, lr, total))
        return total

    def run(self, on_eval: Callable[[EvalRow], None] | None = None,
            on_checkpoint: Callable[["Trainer"], None] | None = None,
            should_stop: Callable[[], bool] = lambda: False,
            progress: Callable[[int, float, float], None] | None = None) -> None:
        tokens_per_step = (self.tp.batch_size * self.tp.grad_accum
                           * self.model.cfg.block_size)  # global: the same for any world size
        self.model.train()
        if self.step == 0:
            self._evaluate(on_eval, tokens_per_s=0.0)
        t_last, steps_since = time.perf_counter(), 0
        while self.step < self.tp.max_iters:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            self.elapsed_s += dt
            steps_since += 1
            if progress is not None:
                progress(self.step, loss, tokens_per_step / max(dt, 1e-9))
            if self.step % self.tp.eval_interval == 0 or self.step == self.tp.max_iters:
                rate = tokens_per_step * steps_since / max(time.perf_counter() - t_last, 1e-9)
                t_eval = time.perf_counter()
                self._evaluate(on_eval, tokens_per_s=rate)
                self.elapsed_s += time.perf_counter() - t_eval
                t_last, steps_since = time.perf_counter(), 0
            if on_checkpoint is not None and (self.step % self.tp.checkpoint_interval == 0
                                              or self.step == self.tp.max_iters):
                on_checkpoint(self)
            if should_stop():
                if on_checkpoint is not None and self.step % self.tp.checkpoint_interval:
                    on_checkpoint(self)
                raise StopRequested(f"stopped by a signal at step {self.step}; the "
                                    "checkpoint is kept: rerun `dvc repro` to resume")

    def _evaluate(self, on_eval, tokens_per_s: float) -> None:
        losses = self.estimate_loss()
        lr = lr_at(max(self.step - 1, 0), self.tp.lr, self.tp.min_lr, self.tp.warmup_iters,
                   self.tp.max_iters)
        row = EvalRow(self.step, lr, losses["train"], losses["val"], tokens_per_s,
                      self.elapsed_s)
        self.history.append(row)
        if on_eval is not None:
            on_eval(row)


# RNG states as plain lists/ints, so checkpoints load with weights_only=True.
def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _to_python_rng_state(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def _numpy_global_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _to_numpy_global_state(state: dict) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
            state["has_gauss"], state["cached"])
