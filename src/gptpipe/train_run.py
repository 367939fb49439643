"""One run of the train stage, resumable: the Trainer built from params, its
checkpoint, and the metric rows it owes MLflow.

- Resume: a checkpoint under .gptpipe/checkpoints/<hash of params, data and
  world size>/ (where DVC never deletes it) continues exactly; one from other
  params or data is refused.
- Training starts at once: MLflow opens in a process of its own, at low priority
  (tracking/background.py's BackgroundRun, told of every step: it raises that
  process's error); the first checkpoint waits for it, since it stores the run id.
- Metrics reach MLflow only once the checkpoint covering them is on disk, and the
  checkpoint keeps them too: a resumed run sends those the MLflow run lacks, so its
  history continues without gaps or duplicates. They are sent without waiting; the
  next checkpoint, which no longer carries them, waits until they are written.
- SIGTERM / Ctrl-C stop at a step boundary, after a checkpoint.

Under DDP every rank trains; rank 0 alone has a BackgroundRun and writes files
(step_done, and get -> a tracking.runs.Tracker with log_metrics /
log_missing_metrics, and the run id): no MLflow code here.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import checkpoints, distributed
from .devices import (AutocastChoice, ThreadPolicy, choose_autocast, make_deterministic,
                      pick_device, use_threads)
from .distributed import World
from .errors import UserError
from .lineage import repo_root
from .model import ModelConfig, build, count_params
from .params import Params
from .training import EvalRow, Trainer
from .warm_start import Start

MetricRow = tuple[str, float, int]  # (key, value, step)
# EvalRow's fields logged as metrics beside the losses, at each eval's step
HEALTH_METRICS = ("grad_norm_mean", "grad_norm_max", "clipped_fraction", "gflops_per_s", "mfu")


def start_world(device_name: str) -> tuple[torch.device, World]:
    """The device and, under torchrun, this process's rank (else a world of 1)."""
    device = pick_device(device_name)
    world = distributed.init(device)  # torchrun: one process per rank
    return distributed.local_device(device, world), world


def stop_on_signals() -> Callable[[], bool]:
    """From now on SIGTERM and Ctrl-C only ask the loop to stop; the answer to
    "was a stop asked for?"."""
    received: list[int] = []

    def request_stop(signum, frame) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return lambda: bool(received)


THREADS_EVERY = 20  # steps between counts of the torch stages running (train.threads 0)


@dataclass
class TrainRun:
    trainer: Trainer
    config: ModelConfig
    identity: dict
    checkpoint: Path
    autocast: AutocastChoice
    threads: ThreadPolicy | None = None  # train.threads (build sets it)
    background_run: object | None = None  # rank 0's BackgroundRun; None on the other ranks
    run_id: str | None = None
    saved_step: int | None = None  # the step of the last checkpoint, once there is one
    unlogged: list[MetricRow] = field(default_factory=list)  # a kill kept from MLflow
    pending: list[MetricRow] = field(default_factory=list)  # evals since the last checkpoint
    on_eval_main: Callable[[EvalRow], None] | None = None  # rank 0, after each eval
    # rank 0, once, when the last step is taken (before its checkpoint waits for MLflow)
    on_trained_main: Callable[[], None] | None = None

    @classmethod
    def build(cls, p: Params, device: torch.device, world: World, background_run,
              begin: Start, train_data: np.ndarray, val_data: np.ndarray,
              data_hashes: dict[str, str]) -> "TrainRun":
        threads = use_threads(p.train.threads)  # 0: the cores / the stages running now
        # auto resolves per machine: the resolved dtype is part of what identifies
        # the run, so a checkpoint never resumes in another precision.
        amp = choose_autocast(device, p.train.autocast)
        # Not train.launcher: how the processes were started (one machine or several,
        # which rendezvous) changes no bytes, and differs between the nodes' commands.
        flat = {k: v for k, v in p.flat(("model", "train")).items() if k != "train.launcher"}
        identity = {**flat, "world_size": world.size,
                    "autocast_dtype": amp.name,
                    **{f"sha256.{k}": v for k, v in data_hashes.items()},
                    "sha256.init_model": begin.source.get("model_sha256", "")}
        distributed.agree(identity, world)  # the same params and data on every node
        ckpt_dir = repo_root() / ".gptpipe" / "checkpoints" / checkpoints.identity_key(identity)
        make_deterministic(p.train.seed)
        cfg = begin.config
        model = build(cfg)
        if not begin.is_scratch:
            begin.load_into(model)  # fine-tuning: the init_from weights
        model = model.to(device)
        ddp_model = None
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            with distributed.lost_contact(world):  # DDP starts with rank 0's weights
                ddp_model = DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
        trainer = Trainer(model, train_data, val_data, p.train, device, amp.dtype,
                          world=world, ddp_model=ddp_model)
        return cls(trainer, cfg, identity, ckpt_dir / "checkpoint.pt", amp, threads,
                   background_run)

    @property
    def world(self) -> World:
        return self.trainer.world

    @property
    def params_key(self) -> str:
        """The checkpoint folder's name: the hash of what identifies the run."""
        return self.checkpoint.parent.name

    def describe(self) -> str:
        world, trainer = self.world, self.trainer
        return (f"{self.config.kind}, {count_params(trainer.model):,} parameters, device "
                f"{trainer.device}, {self.autocast.name} ({self.autocast.reason})"
                f"{f', {self.threads.describe()}' if self.threads else ''}"
                f"{f', {world.size} processes' if world.size > 1 else ''}")

    # -- resume ---------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from this run's checkpoint, if one is on rank 0's disk: rank 0
        alone writes checkpoints, so on several machines only its node has one, and
        it sends it to the other ranks (a collective under DDP)."""
        payload, problem = None, None
        if self.world.is_main and self.checkpoint.exists():
            try:
                payload = checkpoints.load(self.checkpoint)
                if payload["format"] != checkpoints.CHECKPOINT_FORMAT:
                    raise UserError(f"{self.checkpoint}: a checkpoint of an older gptpipe "
                                    f"({payload['format']}), refused: delete "
                                    f"{self.checkpoint.parent} to train from step 0")
                checkpoints.check_identity(self.checkpoint, payload["identity"],
                                           self.identity)
            except UserError as exc:
                payload, problem = None, str(exc)
        with distributed.lost_contact(self.world):
            payload, problem = distributed.broadcast((payload, problem), self.world)
        if problem is not None:
            raise UserError(problem if self.world.is_main else f"rank 0: {problem}")
        if payload is None:
            return False
        self.trainer.load_state_dict(payload["trainer"])
        self.run_id = payload["run_id"]
        self.saved_step = self.trainer.step
        if self.world.is_main:
            print(f"train: resuming from step {self.trainer.step} ({self.checkpoint})",
                  flush=True)
            self.unlogged = payload.get("unlogged", [])
        return True

    def close(self) -> None:
        """The run is done and its outputs written: leave the process group, and
        drop the checkpoint (nothing to resume any more)."""
        distributed.shutdown(self.world)
        if self.world.is_main:
            shutil.rmtree(self.checkpoint.parent, ignore_errors=True)

    # -- the loop -------------------------------------------------------------
    def train(self, should_stop: Callable[[], bool]) -> None:
        """Train to max_iters (or a stop), then check every rank holds the same weights."""
        from tqdm import tqdm

        world, trainer = self.world, self.trainer
        first_step = trainer.step + 1
        with tqdm(total=trainer.tp.max_iters, initial=trainer.step, desc="train",
                  mininterval=1.0, dynamic_ncols=True, disable=not world.is_main) as bar:
            def on_eval(row: EvalRow) -> None:
                self._buffer_eval(row)
                if world.is_main and self.on_eval_main is not None:
                    self.on_eval_main(row)
                if world.is_main:
                    bar.write(f"step {row.step:>6}: train {row.train_loss:.4f}, "
                              f"val {row.val_loss:.4f}")

            def progress(step: int, loss: float, tokens_per_s: float) -> None:
                if self.threads and step % THREADS_EVERY == 0:  # a stage started or ended
                    self.threads.apply()
                if world.is_main:
                    if step == first_step:
                        bar.write(f"train: first step done {process_age_s():.2f} s after "
                                  "the process started")
                    # MLflow's error, if it failed in its process (no waiting)
                    self.background_run.step_done()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}",
                                refresh=False)

            with distributed.lost_contact(world, self._resume_hint):
                trainer.run(on_eval, self._save_checkpoint, should_stop, progress)
        if world.is_main and trainer.early_stop is not None:
            print(f"train: {trainer.early_stop.message()}", flush=True)
        if world.is_main and self.unlogged:  # resumed at the end: no checkpoint since
            tracker, run_id = self._tracked()
            tracker.log_missing_metrics(run_id, self.unlogged)
            self.unlogged = []
        with distributed.lost_contact(world, self._resume_hint):
            digests = distributed.gather(distributed.weights_digest(trainer.model), world)
        if world.is_main:
            if len(set(digests)) != 1:
                raise RuntimeError(f"ranks ended with different weights: {digests}")
            if world.size > 1:
                print(f"train: weights identical on all {world.size} ranks ({digests[0][:12]})")

    def _resume_hint(self) -> str:
        where = "" if self.world.is_main else " (on rank 0's node)"
        if self.saved_step is None:
            return "no checkpoint yet: rerunning on every node starts from step 0"
        return (f"rerun on every node: it resumes from the last checkpoint{where}, "
                f"step {self.saved_step}")

    def _buffer_eval(self, row: EvalRow) -> None:
        self.pending.extend([("train_loss", row.train_loss, row.step),
                             ("val_loss", row.val_loss, row.step)])
        if row.step:
            self.pending.append(("tokens_per_s", row.tokens_per_s, row.step))
        # the interval's training health (None at step 0, mfu without train.peak_gflops)
        self.pending.extend((key, getattr(row, key), row.step) for key in HEALTH_METRICS
                            if getattr(row, key) is not None)

    def _save_checkpoint(self, trainer: Trainer) -> None:
        state = trainer.state_dict()  # a collective under DDP: every rank takes part
        if not self.world.is_main:
            self.saved_step = trainer.step  # rank 0 is writing it
            return
        if self.on_trained_main is not None and (trainer.step >= trainer.tp.max_iters
                                                 or trainer.early_stop is not None):
            # The tracking process may still be opening MLflow (while training runs it
            # gets next to no CPU): what needs no MLflow is done before waiting for it.
            self.on_trained_main()
            self.on_trained_main = None
        tracker, run_id = self._tracked()  # the checkpoint names the run: wait for it
        # The last checkpoint's rows went to MLflow without waiting, and this checkpoint
        # will not carry them: they must be written before it replaces that one.
        tracker.flush()
        rows = self.pending + [(k, v, s) for s, lr, loss in trainer.batch_losses
                               for k, v in (("batch_loss", loss), ("lr", lr))]
        # The rows go in the checkpoint too: a kill between the save and the log
        # would lose them; a resume logs those the MLflow run lacks. So do the rows
        # the resumed checkpoint owed it, until they are logged.
        owed = [tuple(r) for r in self.unlogged]
        checkpoints.save(self.checkpoint, {"format": checkpoints.CHECKPOINT_FORMAT,
                                           "identity": self.identity, "run_id": run_id,
                                           "trainer": state,
                                           "unlogged": [list(r) for r in owed + rows]})
        if owed:
            tracker.log_missing_metrics(run_id, owed)
            self.unlogged = []
        self.saved_step = trainer.step
        tracker.log_metrics(run_id, rows)
        self.pending.clear()
        trainer.batch_losses.clear()

    def _tracked(self):
        """The tracker and run id, once the background has opened the run."""
        tracker, run_id = self.background_run.get()
        if self.run_id is None:
            self.run_id = run_id
        return tracker, run_id


def process_age_s() -> float:
    """Seconds since this process started: from /proc on Linux (interpreter
    start-up and imports included), else since this module was imported."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()
