"""An MLflow run, through one client: create or reopen it, log params (once),
metrics, tags and artifacts, end it; the lineage between a fine-tune and its parent.

Everything goes through MlflowClient with explicit run ids: no global active run,
so MLFLOW_RUN_ID and fluent state cannot leak between stages. Every call to the
store goes through store.retry_locked.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import StopRequested, UserError
from .store import TrackingUnreachable, check_reachable, redact_uri, retry_locked, \
    store_lock, tracking_uri

# The experiment's kind: "custom_model_development" is the value MLflow 3's UI writes
# for a machine-learning (model training) experiment (its ExperimentKind enum). MLflow
# 3.17.2's UI picks the view from its GenAI / Model training switch instead (remembered
# by the browser, or `?workflowType=machine_learning` in the URL); the tag still
# labels the experiment for the UIs and tools that read it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"
# The DVC experiment a run was trained in (`dvc exp run -n NAME`); `gptpipe runs` shows it.
DVC_EXPERIMENT_TAG = "gptpipe.dvc_experiment"


class Tracker:
    """One MLflow store's client (`client` is its MlflowClient)."""

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
            retry_locked(self.client.search_experiments, max_results=1)

    def experiment_id(self, name: str) -> str:
        exp = retry_locked(self.client.get_experiment_by_name, name)
        if exp is not None:
            if EXPERIMENT_KIND_TAG not in exp.tags:  # a store from an older gptpipe
                retry_locked(self.client.set_experiment_tag, exp.experiment_id,
                             EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            # Pin artifacts beside the store, not in the cwd (a temp dir under dvc exp).
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            return retry_locked(self.client.create_experiment, name,
                                artifact_location=location,
                                tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND})
        except Exception:
            exp = retry_locked(self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def create_run(self, experiment: str, run_name: str | None, params: dict,
                   tags: dict) -> str:
        run = retry_locked(self.client.create_run, self.experiment_id(experiment),
                           run_name=run_name, tags={**source_tags(tags), **tags})
        self.log_params_once(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        try:
            retry_locked(self.client.update_run, run_id, status="RUNNING")
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"MLflow run {run_id} not found in {redact_uri(self.uri)} "
                            f"({type(exc).__name__}); rerun train with "
                            "`dvc repro --force train`") from None

    def end(self, run_id: str, status: str) -> None:
        retry_locked(self.client.set_terminated, run_id, status=status)

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

    def log_params_once(self, run_id: str, params: dict) -> None:
        """Log keys the run lacks; a key it holds with another value becomes a tag
        (MLflow keeps one value per param key per run)."""
        from mlflow.entities import Param, RunTag

        have = retry_locked(self.client.get_run, run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in have]
        changed = [RunTag(f"current.{k}", str(v)) for k, v in params.items()
                   if k in have and have[k] != str(v)]
        for i in range(0, len(new), 100):
            retry_locked(self.client.log_batch, run_id, params=new[i:i + 100])
        if changed:
            retry_locked(self.client.log_batch, run_id, tags=changed)

    def log_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int]],
                    model_id: str | None = None,
                    dataset: tuple[str, str] | None = None) -> None:
        """Log (key, value, step) rows to the run; with `model_id`, to that MLflow 3
        LoggedModel too (the experiment's Models tab, search_logged_models), measured
        on `dataset` ((name, digest), as the run's dataset inputs name it)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        name, digest = dataset or (None, None)
        metrics = [Metric(key, float(value), now, int(step), model_id=model_id,
                          dataset_name=name, dataset_digest=digest)
                   for key, value, step in rows]
        for i in range(0, len(metrics), 1000):
            retry_locked(self.client.log_batch, run_id, metrics=metrics[i:i + 1000])

    def log_missing_metrics(self, run_id: str, rows: Iterable[tuple[str, float, int]]) -> None:
        """Log the rows whose (key, step) the run does not hold yet (a resumed
        train re-sends its checkpoint's rows, which a kill may have cut off)."""
        rows = [tuple(row) for row in rows]
        have = {(key, m.step) for key in {row[0] for row in rows}
                for m in retry_locked(self.client.get_metric_history, run_id, key)}
        self.log_metrics(run_id, [row for row in rows if (row[0], int(row[2])) not in have])

    def log_best_val(self, run_id: str, loss: float, step: int) -> None:
        """`best_val_loss` (logged at its step) and `best_val_step`, beside the last
        `val_loss` on the run page. Once: a train resumed after its last checkpoint
        (the server lost while it logged its artifacts) logs them again."""
        self.log_missing_metrics(run_id, [("best_val_loss", loss, step),
                                          ("best_val_step", step, step)])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        retry_locked(self.client.log_batch, run_id,
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None):
        retry_locked(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        import mlflow

        columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
        # Replace, not append: a rerun of sample shows its own rows.
        retry_locked(mlflow.log_table, data=columns, artifact_file=artifact_file,
                     run_id=run_id)

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
                parent_exp = retry_locked(self.client.get_run, parent).info.experiment_id
            except Exception:  # noqa: BLE001 - a run deleted since: keep the gptpipe tags
                parent_exp = None
            if parent_exp is not None and parent_exp == self.experiment_id(experiment):
                tags["mlflow.parentRunId"] = parent
        return {k: v for k, v in tags.items() if v != ""}

    def find_run_by_model_sha(self, sha256: str) -> str:
        """The newest run whose models/model.pt had these bytes ("" if none)."""
        runs = retry_locked(self.client.search_runs, [e.experiment_id for e in
                            retry_locked(self.client.search_experiments)],
                            filter_string=f"tags.`gptpipe.model_sha256` = '{sha256}'",
                            order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else ""

    def chain(self, run_id: str, limit: int = 100) -> list[dict]:
        """The run and the runs it was fine-tuned from, back to the scratch one:
        [{run_id, name, init_from, version, parent_sha256}], newest first."""
        out, seen = [], set()
        while run_id and run_id not in seen and len(out) < limit:
            seen.add(run_id)
            try:
                run = retry_locked(self.client.get_run, run_id)
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


def read_run_ref(path: Path) -> dict:
    """reports/mlflow_run.json as train wrote it: the run evaluate and sample log to."""
    from ..files import read_json

    if not Path(path).exists():
        raise UserError(f"{path}: not found: no trained model yet; run the train stage "
                        "first (`dvc repro train`)")
    ref = read_json(path)
    if "run_id" not in ref:
        raise UserError(f"{path}: no run_id (rerun the train stage)")
    return ref


class _WaitsForTheStore:
    """An MlflowClient whose log_batch waits its turn on a busy sqlite store, as every
    other write here does (the system metrics thread writes beside the stage's own)."""

    def __init__(self, client):
        self._client = client

    def log_batch(self, *args, **kwargs):
        return retry_locked(self._client.log_batch, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)
