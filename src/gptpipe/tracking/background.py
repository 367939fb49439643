"""The train stage's MLflow run, opened in a background thread so training does not
wait for MLflow's imports, the store or the server. When MLflow starts is decided
here, and only here:

1. `BackgroundRun()` checks the store synchronously (one loopback request, no
   mlflow import): a down server or refused credentials stop the stage before
   training.
2. `open(RunSpec(...))` says what to open: data, nothing runs yet.
3. `step_done()`, called after every training step, raises the thread's error as
   soon as it is known; its first call starts the thread (MLflow's imports hold
   the GIL, and would slow the first step's Python side as much as they overlap
   it). The thread opens the store (runs.Tracker), creates the run (or reopens
   the one a checkpoint names), logs its datasets and starts the system metrics.
4. `get()` waits for (tracker, run_id), starting the thread if need be: the first
   checkpoint calls it, since it stores the run id and metrics reach MLflow only
   after it. `stage()` ends the run: FINISHED, or FAILED / KILLED.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import StopRequested
from .datasets import log_data_inputs
from .runs import Tracker
from .store import check_reachable, tracking_uri


@dataclass(frozen=True)
class RunSpec:
    """What the background opens: the run `run_id` (a resumed train), or a new run
    in `experiment` named `run_name` with `params`, `tags` (and those naming the
    model `init_source` describes, the fine-tune's parent) and its first `metrics`.
    Either way the run's `datasets` ({name: (path, sha256)}, and the corpus from
    `download_report`), then `system_metrics` (CPU, memory) until the run ends."""
    experiment: str
    run_id: str | None = None
    run_name: str | None = None
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    init_source: dict = field(default_factory=dict)  # models/init/source.json
    metrics: tuple[tuple[str, float, int], ...] = ()  # (key, value, step)
    datasets: dict[str, tuple[Path, str]] = field(default_factory=dict)
    download_report: Path | None = None
    system_metrics: bool = False


class BackgroundRun:
    """An MLflow run opening in a background thread (module docstring)."""

    def __init__(self, uri: str | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self._uri = uri or tracking_uri()
        # Here, not in the thread: a down server or refused credentials stop the stage
        # before training (a loopback request, not MLflow's seconds of imports).
        check_reachable(self._uri)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-start")
        self._tracker = None  # futures, once started
        self._run = None
        self._spec: RunSpec | None = None
        self._monitor = None

    def open(self, spec: RunSpec) -> None:
        """Open the run `spec` describes once started (at once if already started)."""
        self._spec = spec
        if self._tracker is not None:
            self._run = self._pool.submit(self._open)

    def step_done(self) -> None:
        """After each training step: raise the thread's error; start it after the first."""
        self._check()
        self._start()

    def get(self) -> tuple[Tracker, str]:
        """The tracker and the run's id, once open (started now if need be)."""
        if self._spec is None:
            raise RuntimeError("BackgroundRun.get before open")
        self._start()
        return self._run.result()

    @contextlib.contextmanager
    def stage(self) -> Iterator[None]:
        """Tracker.stage for a run still being opened: FINISHED at the end, FAILED
        (or KILLED) if the stage fails; a run that never opened is left alone."""
        try:
            yield
        except BaseException as exc:
            opened = None
            if self._run is not None:
                with contextlib.suppress(Exception):
                    opened = self._run.result()
            if opened is not None:
                with contextlib.suppress(Exception):
                    self._stop_monitor()
                stopped = isinstance(exc, (KeyboardInterrupt, StopRequested))
                opened[0].end(opened[1], "KILLED" if stopped else "FAILED")
            raise
        tracker, run_id = self.get()
        self._stop_monitor()
        tracker.end(run_id, "FINISHED")

    # -- in the thread ---------------------------------------------------------
    def _start(self) -> None:
        """Begin opening the store, and the run if `open` was called (idempotent)."""
        if self._tracker is None:
            self._tracker = self._pool.submit(Tracker, self._uri, checked=True)
            if self._spec is not None:
                self._run = self._pool.submit(self._open)

    def _open(self) -> tuple[Tracker, str]:
        spec, tracker = self._spec, self._tracker.result()
        run_id = spec.run_id
        if run_id is None:
            tags = {**spec.tags, **tracker.parent_tags(spec.init_source, spec.experiment)}
            run_id = tracker.create_run(spec.experiment, spec.run_name, spec.params, tags)
            if spec.metrics:
                tracker.log_metrics(run_id, spec.metrics)
        tracker.reopen(run_id)
        if spec.datasets or spec.download_report is not None:
            log_data_inputs(tracker, run_id, spec.datasets, spec.download_report)
        if spec.system_metrics:
            self._monitor = tracker.system_metrics(run_id)
            self._monitor.__enter__()
        return tracker, run_id

    def _check(self) -> None:
        for future in (self._tracker, self._run):
            if future is not None and future.done() and future.exception() is not None:
                raise future.exception()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.__exit__(None, None, None)
