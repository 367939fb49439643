"""The training loop: the lr schedule, clipping, fixed-batch evals, the best
weights so far, early stopping, and the Trainer's state, so checkpoints resume
bit-exactly.

Everything that decides the next step is in the checkpoint: weights, optimizer
moments, the step, and every RNG (python, numpy, torch, the window sampler);
and everything that decides what is shipped: the best eval's weights (a CPU
copy taken at that eval, train.keep: best) and early stopping's countdown.
Each eval row carries the interval's training health: the gradient norm before
clipping (mean, max), the fraction of steps clipped, tokens/s, achieved FLOP/s
and, with train.peak_gflops, MFU.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .batches import WindowSampler, fixed_batches, gather
from .devices import autocast
from .distributed import World, micro_batching
from .errors import StopRequested, UserError
from .model import loss_fn, train_flops_per_token
from .optim import configure_optimizer
from .params import TrainParams
from .schedule import lr_multiplier


class NonFiniteLoss(UserError):
    pass


@dataclass
class EvalRow:
    step: int
    lr: float
    train_loss: float
    val_loss: float
    tokens_per_s: float
    elapsed_s: float
    # the steps since the previous eval (None at step 0: no step yet)
    grad_norm_mean: float | None = None  # before clipping
    grad_norm_max: float | None = None
    clipped_fraction: float | None = None  # of those steps, how many clip_grad_norm_ scaled
    gflops_per_s: float | None = None    # achieved: train_flops_per_token x tokens/s
    mfu: float | None = None             # gflops_per_s / train.peak_gflops, when that is set


@dataclass
class EarlyStop:
    """Why and where training stopped before train.max_iters."""
    step: int
    patience: int
    min_delta: float
    kept_step: int

    def message(self) -> str:
        return (f"early stop at step {self.step}: no val improvement ≥ {self.min_delta:g} "
                f"in {self.patience} evals; keeping step {self.kept_step}")


def cpu_copy(state: dict) -> dict:
    """A detached CPU copy of a state_dict (the best weights stay put while training
    moves on, and off the GPU)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def total_grad_norm(params, foreach: bool) -> torch.Tensor:
    """The 2-norm over all gradients, without touching them (train.grad_clip 0)."""
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads, foreach=foreach)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


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
    best_step: int | None = None       # the eval with the lowest val loss so far
    best_val: float = math.inf
    best_state: dict | None = None     # its weights (CPU), train.keep: best only
    stop_ref: float = math.inf         # early stopping: the val loss to beat by min_delta
    stale_evals: int = 0               # evals since stop_ref was last beaten
    early_stop: EarlyStop | None = None
    # the steps since the last eval: [sum of grad norms, max, steps clipped, steps]
    health: list[float] = field(default_factory=lambda: [0.0, 0.0, 0, 0])

    def __post_init__(self):
        block = self.model.cfg.block_size
        self.optimizer = configure_optimizer(self.model, self.tp, self.device, self.amp_dtype)
        self._schedule_lr()  # step 0's, which the first eval row reports
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
            "best": {"step": self.best_step, "val_loss": self.best_val,
                     "state_dict": self.best_state},
            "early_stop": {"ref": self.stop_ref, "stale_evals": self.stale_evals,
                           "stopped": None if self.early_stop is None
                           else self.early_stop.__dict__},
            "health": list(self.health),
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
        best = state["best"]
        self.best_step, self.best_val = best["step"], float(best["val_loss"])
        self.best_state = best["state_dict"]
        stop = state["early_stop"]
        self.stop_ref, self.stale_evals = float(stop["ref"]), int(stop["stale_evals"])
        self.early_stop = None if stop["stopped"] is None else EarlyStop(**stop["stopped"])
        self.health = list(state["health"])

    # -- what is shipped -----------------------------------------------------
    @property
    def kept_step(self) -> int:
        """The step whose weights are shipped: the best eval's (train.keep: best) or
        the last step's."""
        if self.tp.keep == "best" and self.best_step is not None:
            return self.best_step
        return self.step

    def kept_state_dict(self) -> dict:
        """The weights to ship (train.keep), as a CPU state_dict."""
        if self.tp.keep == "best" and self.best_state is not None:
            return self.best_state
        return cpu_copy(self.model.state_dict())

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
    def _schedule_lr(self) -> None:
        """Every param group's lr for this step: its peak lr times the schedule's
        multiplier (as nanochat does)."""
        tp = self.tp
        lrm = lr_multiplier(self.step, tp.lr, tp.min_lr, tp.warmup_iters, tp.max_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm

    @property
    def lr(self) -> float:
        """train.lr as scheduled for the last step taken (before any: for the first),
        read from the optimizer (its first group is AdamW's)."""
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self) -> float:
        self._schedule_lr()
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
        foreach = self.device.type in ("cuda", "cpu")
        if self.tp.grad_clip > 0:  # returns the norm before clipping
            norm = float(torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.tp.grad_clip, foreach=foreach))
        else:
            norm = float(total_grad_norm(self.model.parameters(), foreach))
        self._note_grad_norm(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batch_losses.append((self.step, self.lr, total))
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
        while self.step < self.tp.max_iters and self.early_stop is None:
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
                                              or self.step == self.tp.max_iters
                                              or self.early_stop is not None):
                on_checkpoint(self)
            if should_stop():
                if on_checkpoint is not None and self.step % self.tp.checkpoint_interval:
                    on_checkpoint(self)
                raise StopRequested(f"stopped by a signal at step {self.step}; the "
                                    "checkpoint is kept: rerun `dvc repro` to resume")

    def _note_grad_norm(self, norm: float) -> None:
        health = self.health
        health[0] += norm
        health[1] = max(health[1], norm)
        # clip_grad_norm_ scales the gradients when the norm exceeds train.grad_clip
        health[2] += int(0 < self.tp.grad_clip < norm)
        health[3] += 1

    def _health(self, tokens_per_s: float) -> dict:
        """The interval's gradient norms, clipping and throughput (empty at step 0)."""
        total, peak, clipped, steps = self.health
        self.health = [0.0, 0.0, 0, 0]
        if not steps:
            return {}
        gflops = train_flops_per_token(self.model) * tokens_per_s / 1e9
        return {"grad_norm_mean": total / steps, "grad_norm_max": peak,
                "clipped_fraction": clipped / steps, "gflops_per_s": gflops,
                "mfu": gflops / self.tp.peak_gflops if self.tp.peak_gflops > 0 else None}

    def _evaluate(self, on_eval, tokens_per_s: float) -> None:
        losses = self.estimate_loss()
        row = EvalRow(self.step, self.lr, losses["train"], losses["val"], tokens_per_s,
                      self.elapsed_s, **self._health(tokens_per_s))
        self.history.append(row)
        self._track_best(row.val_loss)
        if on_eval is not None:
            on_eval(row)

    def _track_best(self, val_loss: float) -> None:
        """The lowest val loss so far (its weights, for train.keep: best), and
        early stopping's countdown: evals since val loss last dropped by more than
        train.early_stop_min_delta."""
        tp = self.tp
        if val_loss < self.best_val:  # ties keep the earlier step
            self.best_val, self.best_step = val_loss, self.step
            if tp.keep == "best":
                self.best_state = cpu_copy(self.model.state_dict())
        if val_loss < self.stop_ref and self.stop_ref - val_loss >= tp.early_stop_min_delta:
            self.stop_ref, self.stale_evals = val_loss, 0  # an improvement of at least min_delta
        else:
            self.stale_evals += 1
        if 0 < tp.early_stop_patience <= self.stale_evals and self.step < tp.max_iters:
            self.early_stop = EarlyStop(self.step, tp.early_stop_patience,
                                        tp.early_stop_min_delta, self.kept_step)


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
