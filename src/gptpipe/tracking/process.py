"""MLflow in a process of its own, beside the train stage: the training process
never imports mlflow, so its GIL and its cores stay with training.

`TrackerProcess(uri)` starts `python -c '...process import serve ...'` at once. Its
worker thread runs under SCHED_IDLE (Linux schedules threads one by one): it
imports MLflow, opens the store, then creates or reopens the run, logs its params,
tags, datasets, and starts the system metrics monitor, on what the train stage's
start-up and training leave idle; a thread beside it, as idle, imports what the
stage's last calls need (`_warm_imports`). Calls the train stage waits for (the run id at the
first checkpoint, the end of the run, artifacts, the logged model) run in the
process's main thread at normal priority, after everything sent before them.

The parent talks to it over a socket pair (multiprocessing's Connection, bytes
only): each request is JSON (tracking/wire.py: seq, wait, the function's name, its
args); each gets a reply (seq, ok, value or error) in order. No pickle: a function
is looked up by name in a fixed table (`_callables`). `RemoteTracker` is a
runs.Tracker whose methods are such requests: metrics are sent without waiting (an
error surfaces at the next call or `check()`), everything else waits for its reply.
`call(fn, ...)` runs `fn(tracker, ...)` there (fn one of `_callables`, e.g. registry.log_model).

The process ignores SIGINT and SIGTERM (the train stage, which receives them
too, ends the run as KILLED through it) and exits when the socket closes: at
the end of the stage, or when the train stage dies.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import wire
from .wire import TrackingProcessError

LOW_PRIORITY = 19  # the worker thread's nice where SCHED_IDLE is not available


def lower_priority(thread_id: int) -> None:
    """This thread only (the main thread's calls, which the stage waits for, keep the
    normal priority): SCHED_IDLE, so it runs on what training leaves idle. Even nice 10
    took a tenth of a core from training's threads, and each op of torch's 2-thread
    parallel loop waits for its slower thread: steps 1-100 ran at 0.79x steady."""
    try:
        os.sched_setscheduler(thread_id, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.setpriority(os.PRIO_PROCESS, thread_id, LOW_PRIORITY)
        except (OSError, AttributeError):
            pass


@dataclass(frozen=True)
class RunSpec:
    """What open_run opens (BackgroundRun.open sends it): the run `run_id` (a resumed
    train), or a new run in `experiment` named `run_name` with `params`, `tags` (and those naming the
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



def _wire_types() -> dict[str, type]:
    """The dataclasses that cross the socket (wire.py tags them by these names)."""
    from .registry import LoggedModel

    return {"RunSpec": RunSpec, "LoggedModel": LoggedModel}


# -- the train stage's side ----------------------------------------------------------

class TrackerProcess:
    def __init__(self, uri: str, warm_model_imports: bool = False):
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # one OpenMP thread, should anything MLflow runs there use one: not the cores
        # training uses
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        src = str(Path(__file__).resolve().parents[2])  # this gptpipe, wherever it is
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.uri = uri
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from gptpipe.tracking.process import serve; "
             "serve(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == '1')",
             str(theirs.fileno()), uri, sys.argv[0], "1" if warm_model_imports else "0"],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(os.dup(ours.fileno()))
        ours.close()
        self._seq = 0
        self._replies: dict[int, tuple[bool, object]] = {}  # (ok, value or error)
        self._forgotten: set[int] = set()  # sent without waiting, their value not wanted
        self._closed = False

    def submit(self, fn, *args, wait: bool = False, forget: bool = False, **kwargs) -> int:
        """Send fn(tracker, *args, **kwargs) (fn one of `_callables`, or the name of a
        Tracker method); returns its sequence number, for `result`. `wait`: it
        will be waited for at once (the process runs it at normal priority); `forget`:
        its value is not wanted, only its error (raised by the next check or call)."""
        self._check_open()
        # encoded first: a value that cannot be sent fails this call alone
        message = wire.dumps(_wire_types(), {"seq": self._seq + 1, "wait": wait,
                              "fn": wire.function_name(fn), "args": args, "kwargs": kwargs})
        self._seq += 1
        try:
            self._conn.send_bytes(message)
        except (OSError, EOFError):
            raise self._died() from None
        if forget:
            self._forgotten.add(self._seq)
        return self._seq

    def result(self, seq: int):
        """Wait for request `seq`'s reply: its value, or its exception raised here."""
        while seq not in self._replies:
            self._receive(block=True)
        self._raise_failed_forgotten()
        ok, value = self._replies[seq]
        if not ok:
            wire.raise_error(value)
        return value

    def call(self, fn, *args, **kwargs):
        return self.result(self.submit(fn, *args, wait=True, **kwargs))

    def check(self) -> None:
        """Raise the error of any request answered so far, if one failed (no waiting)."""
        if self._closed:
            return
        while self._conn.poll():
            self._receive(block=False)
        self._raise_failed_forgotten()
        for ok, value in self._replies.values():  # kept for `result`, which raises it too
            if not ok:
                wire.raise_error(value)

    def close(self, timeout_s: float = 60.0) -> None:
        """Close the socket: the process stops the monitor if it still runs, and exits."""
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    # -- inside ----------------------------------------------------------------
    def _receive(self, block: bool) -> None:
        try:
            reply = wire.loads(_wire_types(), self._conn.recv_bytes())
        except (OSError, EOFError):
            raise self._died() from None
        self._replies[reply["seq"]] = (reply["ok"], reply["value"])

    def _raise_failed_forgotten(self) -> None:
        for seq in sorted(self._forgotten & set(self._replies)):
            self._forgotten.discard(seq)
            ok, value = self._replies.pop(seq)
            if not ok:
                wire.raise_error(value)

    def _check_open(self) -> None:
        if self._closed:
            raise TrackingProcessError("the MLflow tracking process was closed")

    def _died(self) -> TrackingProcessError:
        self._closed = True
        code = self._proc.poll()
        return TrackingProcessError(f"the MLflow tracking process exited ({code}) before "
                                    "the stage was done; see its messages above")


class RemoteTracker:
    """runs.Tracker's methods, run in the tracking process (module docstring)."""

    _NO_WAIT = frozenset({"log_metrics", "log_missing_metrics"})

    def __init__(self, process: TrackerProcess):
        self._process = process
        self.uri = process.uri

    def call(self, fn, *args, **kwargs):
        """fn(the process's Tracker, *args, **kwargs), there; its value."""
        return self._process.call(fn, *args, **kwargs)

    def flush(self) -> None:
        """Wait until everything sent so far is written (metrics included), raising
        the first error among it."""
        self._process.call(written)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args, **kwargs):
            if name in self._NO_WAIT:
                self._process.submit(name, *args, forget=True, **kwargs)
                return None
            return self._process.call(name, *args, **kwargs)
        method.__name__ = name
        return method


# -- the tracking process ----------------------------------------------------------

def _callables() -> dict:
    """What `call` may run here, by name: a fixed table, no import by name."""
    from . import notes, registry

    return {wire.function_name(fn): fn for fn in (
        open_run, written, stop_monitor, registry.log_model,
        registry.log_eval_weights, notes.describe)}


def serve(fd: int, uri: str, script: str, warm_model_imports: bool = False) -> None:
    """The tracking process: answer the requests on `fd` until it closes, then exit
    at once (everything is written by then: no interpreter teardown to wait for).
    `script` is the stage's own (stages/train.py); `warm_model_imports`: import what
    logging the model needs (_warm_imports) as soon as the store is open."""
    import queue
    import signal
    import threading
    from multiprocessing.connection import Connection

    # the train stage gets these too and ends the run through us: stay until it has
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    # The run's Source tag names the script that opens it (runs.source_tags reads
    # sys.argv[0]): the stage's, not this process's `-c`.
    sys.argv = [script]
    conn = Connection(fd)
    send_lock = threading.Lock()
    state: dict = {}
    low: queue.Queue = queue.Queue()
    callables: dict = {}

    def reply(seq: int, ok: bool, value) -> None:
        try:
            message = wire.dumps(_wire_types(), {"seq": seq, "ok": ok, "value": value})
        except TypeError as exc:  # a value that cannot be sent: that call fails
            message = wire.dumps(_wire_types(),
                                 {"seq": seq, "ok": False, "value": wire.error(exc)})
        with send_lock:
            try:
                conn.send_bytes(message)
            except (OSError, EOFError):
                pass  # the train stage is gone

    def run(request: dict) -> None:
        seq, name = request["seq"], request["fn"]
        try:
            tracker = state.get("tracker")
            if tracker is None:
                raise state.get("error") or TrackingProcessError("no tracker")
            if ":" in name:
                fn = callables.get(name)
                if fn is None:
                    raise TrackingProcessError(f"{name} is not callable in the tracking process")
                target = lambda *a, **k: fn(tracker, *a, **k)  # noqa: E731
            elif name.startswith("_"):
                raise TrackingProcessError(f"{name} is not a Tracker method")
            else:
                target = getattr(tracker, name)
            value = target(*request["args"], **request["kwargs"])
            reply(seq, True, value)
        except BaseException as exc:  # noqa: BLE001 - the train stage decides
            reply(seq, False, wire.error(exc))

    def worker() -> None:
        lower_priority(threading.get_native_id())
        try:
            from .runs import Tracker

            state["tracker"] = Tracker(uri, checked=True)
            callables.update(_callables())
        except BaseException as exc:  # noqa: BLE001 - every request answers with it
            state["error"] = exc
        else:
            # From here, in a thread of its own, beside the run's opening (sharing
            # its GIL): both run on what the stage leaves idle. Where training fills
            # every core (torch's threads spin between ops), that is its start-up and
            # then its end, while the stage writes its files (docs/performance.md).
            threading.Thread(target=_warm_imports, args=(warm_model_imports,), daemon=True,
                             name="mlflow-warm-imports").start()
        while True:
            item = low.get()
            try:
                if item is None:
                    return
                run(item)
            finally:
                low.task_done()

    thread = threading.Thread(target=worker, name="mlflow-low", daemon=True)
    thread.start()
    try:
        while True:
            try:
                request = wire.loads(_wire_types(), conn.recv_bytes())
            except (OSError, EOFError):
                break
            if not request["wait"]:
                low.put(request)
            else:
                low.join()  # everything sent before it is done
                run(request)
    finally:
        low.join()
        low.put(None)
        thread.join()
        try:  # the stage died without ending the run: stop sampling
            stop_monitor(None)
        except Exception:  # noqa: BLE001
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def open_run(tracker, spec) -> str:
    """Create the run `spec` (background.RunSpec) describes, or reopen its run_id;
    its datasets, then the system metrics monitor (stopped by stop_monitor)."""
    from .datasets import log_data_inputs

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
        monitor = tracker.system_metrics(run_id)
        monitor.__enter__()
        _MONITORS.append(monitor)
    return run_id


def _warm_imports(model: bool) -> None:
    """Import what the stage's last calls will need (with `model`, what logging the
    model imports), on what training leaves idle; a call that needs one sooner
    imports it itself (Python's import lock orders them)."""
    import contextlib
    import threading

    lower_priority(threading.get_native_id())
    # Only a head start: a call that needs what failed here imports it and fails there.
    with contextlib.suppress(Exception):
        _import_for_the_last_calls(model)


def _import_for_the_last_calls(model: bool) -> None:
    if model:  # not torch: logging the model does not load it (registry._PyfuncUnchecked)
        import mlflow.pyfunc  # noqa: F401
        import pandas  # noqa: F401

        from . import model_code, registry  # noqa: F401
        # log_model checks its pip requirements against what is installed, through a
        # map of every installed package's files (0.7 s on a 2-core machine), built
        # once per process and kept by MLflow: build it now. Guarded, as it is not
        # MLflow's public API: without it, log_model builds the map itself.
        from mlflow.utils import requirements_utils

        getattr(requirements_utils, "_init_packages_to_modules_map", lambda: None)()


def written(tracker) -> None:
    """Nothing: as a waited call it returns once everything sent before it is done."""


def stop_monitor(tracker) -> None:
    """Stop the system metrics monitor open_run started (its last window logged)."""
    while _MONITORS:
        _MONITORS.pop().__exit__(None, None, None)


_MONITORS: list = []

