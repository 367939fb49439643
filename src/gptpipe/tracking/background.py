"""The train stage's MLflow run, opened in a process of its own (tracking/process.py)
so training neither waits for MLflow nor shares its GIL or its cores with it at
normal priority. When MLflow starts is decided here, and only here:

1. `BackgroundRun()` checks the store synchronously (one loopback request, no
   mlflow import): a down server or refused credentials stop the stage before
   training. Then it starts the tracking process, which imports MLflow and opens
   the store at idle priority (SCHED_IDLE) while the train stage starts up.
2. `open(RunSpec(...))` sends what to open: the process creates the run (or
   reopens the one a checkpoint names), logs its params, tags and datasets and
   starts the system metrics monitor, at low priority, while training runs.
3. `step_done()`, called after every training step, raises the process's error
   as soon as it is known (without waiting for it).
4. `get()` waits for (tracker, run_id): the first checkpoint calls it, since it
   stores the run id and metrics reach MLflow only after it. The tracker is a
   process.RemoteTracker: runs.Tracker's methods, run in the tracking process.
   `stage()` ends the run (FINISHED, or FAILED / KILLED) and the process.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..errors import StopRequested
from .process import RemoteTracker, RunSpec, TrackerProcess, open_run, stop_monitor

__all__ = ["BackgroundRun", "RunSpec"]
from .store import check_reachable, tracking_uri


class BackgroundRun:
    """An MLflow run opening in the tracking process (module docstring)."""

    def __init__(self, uri: str | None = None, warm_model_imports: bool = False):
        """warm_model_imports: the stage will log a model (tracking/process.py)."""
        self._uri = uri or tracking_uri()
        # Here, before the process: a down server or refused credentials stop the
        # stage before training (a loopback request, not MLflow's seconds of imports).
        check_reachable(self._uri)
        # imports MLflow, opens the store
        self._process = TrackerProcess(self._uri, warm_model_imports)
        self._tracker = RemoteTracker(self._process)
        self._opening: int | None = None  # the open request's sequence number

    def open(self, spec: RunSpec) -> None:
        """Open the run `spec` describes, in the tracking process, without waiting."""
        self._opening = self._process.submit(open_run, spec)

    def step_done(self) -> None:
        """After each training step: raise the tracking process's error, if any."""
        self._process.check()

    def get(self) -> tuple[RemoteTracker, str]:
        """The tracker and the run's id, once open."""
        if self._opening is None:
            raise RuntimeError("BackgroundRun.get before open")
        return self._tracker, self._process.result(self._opening)

    @contextlib.contextmanager
    def stage(self) -> Iterator[None]:
        """Tracker.stage for a run still being opened: FINISHED at the end, FAILED
        (or KILLED) if the stage fails; a run that never opened is left alone. The
        tracking process exits at the end either way."""
        try:
            try:
                yield
            except BaseException as exc:
                opened = None
                if self._opening is not None:
                    with contextlib.suppress(Exception):
                        opened = self.get()
                if opened is not None:
                    with contextlib.suppress(Exception):
                        self._tracker.call(stop_monitor)
                    stopped = isinstance(exc, (KeyboardInterrupt, StopRequested))
                    opened[0].end(opened[1], "KILLED" if stopped else "FAILED")
                raise
            tracker, run_id = self.get()
            tracker.call(stop_monitor)
            tracker.end(run_id, "FINISHED")
        finally:
            self._process.close()
