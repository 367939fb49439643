"""One run of the train stage, resumable: the Trainer built from params, its
checkpoint, and the metric rows it owes the tracker.

- Resume: a checkpoint under .gptpipe/checkpoints/<hash of params, data and
  world size>/ (where DVC never deletes it) continues exactly; one from other
  params or data is refused.
- Training starts at once: MLflow opens in the background (tracking.BackgroundRun),
  started once the first step is done;
  the first checkpoint waits for it, since it stores the run id.
- Metrics reach the tracker only once the checkpoint covering them is on disk,
  and the checkpoint keeps them too: a resumed run sends those the tracker lacks,
  so its history continues without gaps or duplicates.
- SIGTERM / Ctrl-C stop at a step boundary, after a checkpoint.

Under DDP every rank trains; rank 0 alone has a tracker and writes files. The
tracker is a tracking.BackgroundRun (check, get -> a Tracker with log_metrics /
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
    tracker: object | None = None  # rank 0's BackgroundRun; None on the other ranks
    run_id: str | None = None
    unlogged: list[MetricRow] = field(default_factory=list)  # a kill kept from the tracker
    pending: list[MetricRow] = field(default_factory=list)  # evals since the last checkpoint

    @classmethod
    def build(cls, p: Params, device: torch.device, world: World, tracker,
              begin: Start, train_data: np.ndarray, val_data: np.ndarray,
              data_hashes: dict[str, str]) -> "TrainRun":
        threads = use_threads(p.train.threads)  # 0: the cores / the stages running now
        # auto resolves per machine: the resolved dtype is part of what identifies
        # the run, so a checkpoint never resumes in another precision.
        amp = choose_autocast(device, p.train.autocast)
        identity = {**p.flat(("model", "train")), "world_size": world.size,
                    "autocast_dtype": amp.name,
                    **{f"sha256.{k}": v for k, v in data_hashes.items()},
                    "sha256.init_model": begin.source.get("model_sha256", "")}
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

            ddp_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        trainer = Trainer(model, train_data, val_data, p.train, device, amp.dtype,
                          world=world, ddp_model=ddp_model)
        return cls(trainer, cfg, identity, ckpt_dir / "checkpoint.pt", amp, threads,
                   tracker)

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
        """Continue from this run's checkpoint, if one is on disk."""
        if not self.checkpoint.exists():
            return False
        payload = checkpoints.load(self.checkpoint)
        if payload["format"] != checkpoints.CHECKPOINT_FORMAT:
            raise UserError(f"{self.checkpoint}: a checkpoint of an older gptpipe "
                            f"({payload['format']}), refused: delete "
                            f"{self.checkpoint.parent} to train from step 0")
        checkpoints.check_identity(self.checkpoint, payload["identity"], self.identity)
        self.trainer.load_state_dict(payload["trainer"])
        self.run_id = payload["run_id"]
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
                if world.is_main:
                    bar.write(f"step {row.step:>6}: train {row.train_loss:.4f}, "
                              f"val {row.val_loss:.4f}")

            def progress(step: int, loss: float, tokens_per_s: float) -> None:
                if self.threads and step % THREADS_EVERY == 0:  # a stage started or ended
                    self.threads.apply()
                if world.is_main:
                    self.tracker.check()  # MLflow failed in the background: stop now
                    if step == first_step:
                        bar.write(f"train: first step done {process_age_s():.2f} s after "
                                  "the process started")
                        self.tracker.start()  # MLflow from here on, beside training
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}",
                                refresh=False)

            trainer.run(on_eval, self._save_checkpoint, should_stop, progress)
        if world.is_main and self.unlogged:  # resumed at the end: no checkpoint since
            tracker, run_id = self._tracked()
            tracker.log_missing_metrics(run_id, self.unlogged)
            self.unlogged = []
        digests = distributed.gather(distributed.weights_digest(trainer.model), world)
        if world.is_main:
            if len(set(digests)) != 1:
                raise RuntimeError(f"ranks ended with different weights: {digests}")
            if world.size > 1:
                print(f"train: weights identical on all {world.size} ranks ({digests[0][:12]})")

    def _buffer_eval(self, row: EvalRow) -> None:
        self.pending.extend([("train_loss", row.train_loss, row.step),
                             ("val_loss", row.val_loss, row.step)])
        if row.step:
            self.pending.append(("tokens_per_s", row.tokens_per_s, row.step))

    def _save_checkpoint(self, trainer: Trainer) -> None:
        state = trainer.state_dict()  # a collective under DDP: every rank takes part
        if not self.world.is_main:
            return
        tracker, run_id = self._tracked()  # the checkpoint names the run: wait for it
        rows = self.pending + [(k, v, s) for s, lr, loss in trainer.batch_losses
                               for k, v in (("batch_loss", loss), ("lr", lr))]
        # The rows go in the checkpoint too: a kill between the save and the log
        # would lose them; a resume logs those the tracker lacks. So do the rows
        # the resumed checkpoint owed the tracker, until they are logged.
        owed = [tuple(r) for r in self.unlogged]
        checkpoints.save(self.checkpoint, {"format": checkpoints.CHECKPOINT_FORMAT,
                                           "identity": self.identity, "run_id": run_id,
                                           "trainer": state,
                                           "unlogged": [list(r) for r in owed + rows]})
        if owed:
            tracker.log_missing_metrics(run_id, owed)
            self.unlogged = []
        tracker.log_metrics(run_id, rows)
        self.pending.clear()
        trainer.batch_losses.clear()

    def _tracked(self):
        """The tracker and run id, once the background has opened the run."""
        tracker, run_id = self.tracker.get()
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
