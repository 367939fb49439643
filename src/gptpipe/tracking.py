"""All MLflow code: where runs go, creating and reopening them, logging.

The tracking URI is MLFLOW_TRACKING_URI when set, else a sqlite store at the
project root (from DVC_ROOT under `dvc exp`), so `mlflow ui` started in the
repo shows every run. Everything goes through MlflowClient with explicit run
ids: no global active run, so MLFLOW_RUN_ID and fluent state cannot leak
between stages.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import StopRequested, UserError
from .lineage import repo_root

_LOCK_RETRIES = 20

# The experiment's kind: "custom_model_development" is the value MLflow 3's UI writes
# for a machine-learning (model training) experiment (its ExperimentKind enum). MLflow
# 3.17.2's UI picks the view from its GenAI / Model training switch instead (remembered
# by the browser, or `?workflowType=machine_learning` in the URL); the tag still
# labels the experiment for the UIs and tools that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
# The DVC experiment a run was trained in (`dvc exp run -n NAME`); `gptpipe runs` shows it.
DVC_EXPERIMENT_TAG = "gptpipe.dvc_experiment"
# A dataset's digest is its sha256's first 12 hex digits, as git abbreviates commits:
# MLflow caps digests at 36 characters and its Datasets column cuts long ones off.
# The whole sha256 is in the dataset's profile (and in the run's data.sha256.* tags).
_DATASET_DIGEST_CHARS = 12


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if "@" in parts.netloc:
        return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    return uri


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before training, not after, when the tracking store cannot be used: a
    server that does not answer, or refuses the credentials given in
    MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN. One request, the
    cheapest authenticated one, without importing mlflow (seconds). Credentials
    from elsewhere (~/.mlflow/credentials, MLFLOW_TRACKING_AUTH, AWS SigV4) are
    MLflow's to judge: a refusal without ours is left to it."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        import requests

        user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                          os.environ.get("MLFLOW_TRACKING_PASSWORD"))
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        ours = bool(user and password or token) and not (
            os.environ.get("MLFLOW_TRACKING_AUTH") or os.environ.get("MLFLOW_TRACKING_AWS_SIGV4"))
        try:
            response = requests.get(
                uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                params={"max_results": 1}, timeout=timeout_s,
                headers={"Authorization": f"Bearer {token}"} if ours and token else {},
                auth=(user, password) if ours and user and password else None)
        except requests.RequestException as exc:
            raise UserError(f"MLflow tracking server {redact_uri(uri)} is unreachable "
                            f"({type(exc).__name__}); start it or unset "
                            "MLFLOW_TRACKING_URI") from None
        if response.status_code in (401, 403):
            if ours:
                raise UserError(
                    f"MLflow tracking server {redact_uri(uri)} refused the credentials (HTTP "
                    f"{response.status_code}); check MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
        elif response.status_code >= 500:
            raise UserError(f"MLflow tracking server {redact_uri(uri)} is unreachable (HTTP "
                            f"{response.status_code}); start it or unset MLFLOW_TRACKING_URI")
    elif scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"MLflow store {uri}: folder {folder} is missing or not writable")


class TrackingUnreachable(UserError):
    """The tracking server went away mid-stage (after MLflow's own HTTP retries)."""


def _connection_lost(exc: BaseException) -> bool:
    """MLflow wraps the requests error in an MlflowException, chained as context."""
    import requests

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, (requests.ConnectionError, requests.Timeout)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_locked(fn, *args, **kwargs):
    """sqlite allows one writer: parallel `dvc exp run -j 2` jobs wait their turn.
    A server that stopped answering becomes one line saying what to do."""
    for attempt in range(_LOCK_RETRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException wraps OperationalError
            if _connection_lost(exc):
                raise TrackingUnreachable(
                    f"MLflow tracking server {redact_uri(tracking_uri())} stopped answering "
                    "mid-stage; what was done is kept (a training checkpoint too): rerun "
                    "`dvc repro` once the server is back, it resumes the same run") from None
            if "database is locked" not in str(exc) or attempt == _LOCK_RETRIES - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


@contextlib.contextmanager
def store_lock(uri: str, purpose: str = "init") -> Iterator[None]:
    """One process at a time does `purpose` on a sqlite store: parallel `dvc exp run
    -j 2` jobs on a new mlflow.db otherwise race through the schema migrations and
    fail ("duplicate column name"), or both move the champion alias. The lock file
    sits beside the store (gitignored)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri[len("sqlite:///"):] + f"-{purpose}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Tracker:
    def __init__(self, uri: str | None = None, checked: bool = False):
        import logging

        self.uri = uri or tracking_uri()
        if not checked:
            check_reachable(self.uri)  # before importing mlflow (seconds): fail fast

        import mlflow
        from mlflow.tracking import MlflowClient

        # MLflow's and alembic's INFO lines (creating tables...) are not the user's
        # business; warnings and errors still show.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):  # opens (on first use creates) the store
            self.client = MlflowClient(tracking_uri=self.uri)
            _retry_locked(self.client.search_experiments, max_results=1)

    def experiment_id(self, name: str) -> str:
        exp = _retry_locked(self.client.get_experiment_by_name, name)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:  # a store from an older gptpipe
                _retry_locked(self.client.set_experiment_tag, exp.experiment_id,
                              EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            # Pin artifacts beside the store, not in the cwd (a temp dir under dvc exp).
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            return _retry_locked(self.client.create_experiment, name,
                                 artifact_location=location,
                                 tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND})
        except Exception:  # noqa: BLE001 - a parallel job created it first
            exp = _retry_locked(self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def create_run(self, experiment: str, run_name: str | None, params: dict,
                   tags: dict) -> str:
        run = _retry_locked(self.client.create_run, self.experiment_id(experiment),
                            run_name=run_name, tags={**source_tags(tags), **tags})
        self.log_params_once(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        try:
            _retry_locked(self.client.update_run, run_id, status="RUNNING")
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"MLflow run {run_id} not found in {redact_uri(self.uri)} "
                            f"({type(exc).__name__}); rerun train with "
                            "`dvc repro --force train`") from None

    def end(self, run_id: str, status: str) -> None:
        _retry_locked(self.client.set_terminated, run_id, status=status)

    def log_params_once(self, run_id: str, params: dict) -> None:
        """Log keys the run lacks; a key it holds with another value becomes a tag
        (MLflow keeps one value per param key per run)."""
        from mlflow.entities import Param, RunTag

        have = _retry_locked(self.client.get_run, run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in have]
        changed = [RunTag(f"current.{k}", str(v)) for k, v in params.items()
                   if k in have and have[k] != str(v)]
        for i in range(0, len(new), 100):
            _retry_locked(self.client.log_batch, run_id, params=new[i:i + 100])
        if changed:
            _retry_locked(self.client.log_batch, run_id, tags=changed)

    def log_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value, step in rows]
        for i in range(0, len(metrics), 1000):
            _retry_locked(self.client.log_batch, run_id, metrics=metrics[i:i + 1000])

    def log_missing_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
        """Log the rows whose (key, step) the run does not hold yet (a resumed
        train re-sends its checkpoint's rows, which a kill may have cut off)."""
        rows = [tuple(row) for row in rows]
        have = {(key, m.step) for key in {row[0] for row in rows}
                for m in _retry_locked(self.client.get_metric_history, run_id, key)}
        self.log_metrics(run_id, [row for row in rows if (row[0], int(row[2])) not in have])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        _retry_locked(self.client.log_batch, run_id,
                      tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None):
        _retry_locked(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        import mlflow

        columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
        # Replace, not append: a rerun of sample shows its own rows.
        _retry_locked(mlflow.log_table, data=columns, artifact_file=artifact_file,
                      run_id=run_id)

    def find_run_by_model_sha(self, sha256: str) -> str:
        """The newest run whose models/model.pt had these bytes ("" if none)."""
        runs = _retry_locked(self.client.search_runs, [e.experiment_id for e in
                             _retry_locked(self.client.search_experiments)],
                             filter_string=f"tags.`gptpipe.model_sha256` = '{sha256}'",
                             order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else ""

    def parent_tags(self, source: dict, experiment: str) -> dict:
        """The tags naming the model a fine-tune starts from (none for scratch).

        The parent run comes from the URI (runs:/, models:/) or, for a file, from
        its sha256 (train tags each run with its model's). mlflow.parentRunId is set
        too when the parent is in the same experiment: MLflow then shows the
        fine-tune nested under the run it continues, which is what it is; across
        experiments MLflow cannot show nesting, the gptpipe.* tags still link them.
        """
        if source.get("init_from", "scratch") == "scratch":
            return {}
        parent = source.get("run_id") or self.find_run_by_model_sha(source["model_sha256"])
        tags = {"gptpipe.init_from": source["init_from"],
                "gptpipe.parent_model_sha256": source["model_sha256"],
                "gptpipe.parent_run_id": parent,
                "gptpipe.parent_model_version": (f"{source['model_name']}/{source['version']}"
                                                 if source.get("version") else "")}
        if parent:
            try:
                parent_exp = _retry_locked(self.client.get_run, parent).info.experiment_id
            except Exception:  # noqa: BLE001 - a run deleted since: keep the gptpipe tags
                parent_exp = None
            if parent_exp is not None and parent_exp == self.experiment_id(experiment):
                tags["mlflow.parentRunId"] = parent
        return {k: v for k, v in tags.items() if v != ""}

    def chain(self, run_id: str, limit: int = 100) -> list[dict]:
        """The run and the runs it was fine-tuned from, back to the scratch one:
        [{run_id, name, init_from, version, parent_sha256}], newest first."""
        out, seen = [], set()
        while run_id and run_id not in seen and len(out) < limit:
            seen.add(run_id)
            try:
                run = _retry_locked(self.client.get_run, run_id)
            except Exception:  # noqa: BLE001 - MlflowException for an unknown/deleted run
                out.append({"run_id": run_id, "missing": True})
                break
            tags = run.data.tags
            out.append({"run_id": run_id, "name": run.info.run_name,
                        "init_from": tags.get("gptpipe.init_from", "scratch"),
                        "version": tags.get("gptpipe.parent_model_version", ""),
                        "parent_sha256": tags.get("gptpipe.parent_model_sha256", "")})
            run_id = tags.get("gptpipe.parent_run_id", "")
        return out

    def log_data_inputs(self, run_id: str, arrays: dict[str, tuple[Path, str]],
                        download_report: Path) -> None:
        """The train and val arrays and the raw corpus as the run's dataset inputs
        (the run page's Datasets). Logging them again is a no-op: MLflow keeps one
        input per (name, digest)."""
        from mlflow.entities import DatasetInput, InputTag

        inputs = [DatasetInput(array_dataset(name, path, sha256),
                               [InputTag("mlflow.data.context", _DATASET_CONTEXTS.get(name, name))])
                  for name, (path, sha256) in arrays.items()]
        if Path(download_report).exists():
            inputs.append(DatasetInput(corpus_dataset(download_report),
                                       [InputTag("mlflow.data.context", "source")]))
        _retry_locked(self.client.log_inputs, run_id, datasets=inputs)

    @contextlib.contextmanager
    def system_metrics(self, run_id: str) -> Iterator[None]:
        """CPU, memory, disk and network use as `system/*` metrics (the run page's
        System metrics tab) while the block runs, from MLflow's monitor thread (psutil).

        Its thread wakes every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides) for
        one psutil sample and one small MLflow write, so training barely notices it. It
        continues the step count of an interrupted attempt of the same run."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.uri)
        monitor.mlflow_logger.client = _WaitsForTheStore(monitor.mlflow_logger.client)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()  # wakes the thread at once and joins it
            # MLflow drops the window cut short by the stop: log it too, so a train
            # shorter than one interval still shows its CPU and memory.
            with contextlib.suppress(Exception):  # never fail a finished train over it
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()

    def log_best_val(self, run_id: str, loss: float, step: int) -> None:
        """`best_val_loss` (logged at its step) and `best_val_step`, beside the last
        `val_loss` on the run page."""
        self.log_metrics(run_id, [("best_val_loss", loss, step), ("best_val_step", step, step)])

    @contextlib.contextmanager
    def stage(self, run_id: str) -> Iterator[None]:
        """Reopen a run for a stage; mark it FAILED (or KILLED) if the stage fails."""
        self.reopen(run_id)
        try:
            yield
        except KeyboardInterrupt:
            self.end(run_id, "KILLED")
            raise
        except TrackingUnreachable:
            raise  # the run cannot be marked; the resumed stage reopens it
        except BaseException as exc:
            self.end(run_id, "KILLED" if isinstance(exc, StopRequested) else "FAILED")
            raise
        self.end(run_id, "FINISHED")


class BackgroundRun:
    """The train stage's MLflow side, run in a background thread so the first
    training step does not wait for MLflow's import, the store or the server.

    Nothing starts until `start` (the train stage calls it once the first step
    is done: MLflow's imports hold the GIL, and would slow that step's Python
    side as much as they overlap it). The thread then opens the store (Tracker),
    and creates or reopens the run as `open` said (the server itself was checked
    when this was made). `check` raises the thread's error as soon as it is known;
    `get` starts the thread if need be and waits for the run. train_run.TrainRun
    calls `get` before its first checkpoint, since the checkpoint stores the run
    id and metrics reach MLflow only after it."""

    def __init__(self, uri: str | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self._uri = uri or tracking_uri()
        # Here, not in the thread: a down server or refused credentials stop the stage
        # before training (a loopback request, not MLflow's seconds of imports).
        check_reachable(self._uri)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-start")
        self._tracker = None  # futures, once started
        self._run = None
        self._work: Callable[[], tuple[Tracker, str]] | None = None
        self._monitor = None

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            monitor.__exit__(None, None, None)

    def open(self, run_id_for: Callable[[Tracker], str],
             then: Callable[[Tracker, str], None] | None = None,
             system_metrics: bool = False) -> None:
        """Once started: run_id_for(tracker) (create a run, or name the resumed
        one), mark it RUNNING, then `then(tracker, run_id)`, then start the
        system-metrics monitor (stopped by `stage`'s end)."""
        def work() -> tuple[Tracker, str]:
            tracker = self._tracker.result()
            run_id = run_id_for(tracker)
            tracker.reopen(run_id)
            if then is not None:
                then(tracker, run_id)
            if system_metrics:
                self._monitor = tracker.system_metrics(run_id)
                self._monitor.__enter__()
            return tracker, run_id

        self._work = work
        if self._tracker is not None:
            self._run = self._pool.submit(work)

    def start(self) -> None:
        """Begin opening the store, and the run if `open` was called (idempotent)."""
        if self._tracker is None:
            self._tracker = self._pool.submit(Tracker, self._uri, checked=True)
            if self._work is not None:
                self._run = self._pool.submit(self._work)

    def check(self) -> None:
        for future in (self._tracker, self._run):
            if future is not None and future.done() and future.exception() is not None:
                raise future.exception()

    def get(self) -> tuple[Tracker, str]:
        if self._work is None:
            raise RuntimeError("BackgroundRun.get before open")
        self.start()
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


def read_run_ref(path: Path) -> dict:
    from .files import read_json

    if not Path(path).exists():
        raise UserError(f"{path}: not found: no trained model yet; run the train stage "
                        "first (`dvc repro train`)")
    ref = read_json(path)
    if "run_id" not in ref:
        raise UserError(f"{path}: no run_id (rerun the train stage)")
    return ref


_DATASET_CONTEXTS = {"train": "training", "val": "validation"}


class _WaitsForTheStore:
    """An MlflowClient whose log_batch waits its turn on a busy sqlite store, as every
    other write here does (the system metrics thread writes beside the stage's own)."""

    def __init__(self, client):
        self._client = client

    def log_batch(self, *args, **kwargs):
        return _retry_locked(self._client.log_batch, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def source_tags(tags: dict) -> dict:
    """MLflow's standard run tags (the run page's Source, Git commit and Created by):
    the script that created the run, the commit of `tags["git.commit"]`, the user,
    and the DVC experiment's name when DVC runs the stage."""
    import getpass
    import sys

    from mlflow.utils.mlflow_tags import (MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME,
                                          MLFLOW_SOURCE_TYPE, MLFLOW_USER)

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        user = "unknown"
    script = Path(sys.argv[0])
    try:  # relative to the project: the same name on every machine and under dvc exp --temp
        script = script.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        script = Path(script.name)
    out = {MLFLOW_SOURCE_NAME: script.as_posix(), MLFLOW_SOURCE_TYPE: "LOCAL",
           MLFLOW_USER: user}
    if tags.get("git.commit", "unknown") != "unknown":
        out[MLFLOW_GIT_COMMIT] = tags["git.commit"]
    if os.environ.get("DVC_EXP_NAME"):
        out[DVC_EXPERIMENT_TAG] = os.environ["DVC_EXP_NAME"]
    return out


def _local_source(path: str):
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    return get_dataset_source_from_json(json.dumps({"uri": path}), source_type="local")


def array_dataset(name: str, path: Path, sha256: str):
    """A token array as an MLflow dataset entity: its dtype and shape (from the .npy
    header of a memory map: nothing is read or copied), its abbreviated sha256 as the
    digest and the whole one in the profile."""
    import mlflow.data
    import numpy as np
    from mlflow.entities import Dataset

    tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    dataset = mlflow.data.from_numpy(tokens, source=_local_source(Path(path).as_posix()),
                                     name=name, digest=sha256[:_DATASET_DIGEST_CHARS])
    fields = dataset.to_dict()
    fields["profile"] = json.dumps({**json.loads(fields["profile"]), "sha256": sha256})
    return Dataset(**fields)


def corpus_dataset(download_report: Path):
    """The raw corpus as an MLflow dataset entity, from the download stage's report:
    its (redacted) source, its abbreviated sha256 as the digest, and in the profile the
    whole sha256, its size and file count."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset

    from .files import read_json

    report = read_json(download_report)
    origin = report.get("source", "unknown")
    if urllib.parse.urlsplit(origin).scheme in ("http", "https"):
        source = HTTPDatasetSource(origin)  # already redacted by the download stage
    else:  # a path, or the embedded plays: DVC tracks what was read in data/raw
        source = _local_source(origin if report.get("kind") != "shakespeare" else "data/raw")
    sha256 = report.get("sha256", "unknown")
    fields = MetaDataset(source, name="corpus", digest=sha256[:_DATASET_DIGEST_CHARS]).to_dict()
    fields["profile"] = json.dumps({"data.source": origin, "kind": report.get("kind"),
                                    "files": len(report.get("files", [])),
                                    "bytes": report.get("bytes"), "sha256": sha256})
    return Dataset(**fields)
