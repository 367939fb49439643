"""MLflow models: log the trained model (model_code.py, "models from code"),
register each one as a new version, move the `champion` alias, and resolve a
model reference (path or URI) to local weight and tokenizer files.

The champion rule: after evaluate measures a version, `champion` points at the
version with the lowest val bits/char among the versions measured on the same
val data (same val.npy sha256) as that version; ties go to the older version.
Models measured on other val data are never compared: the champion follows the
data the pipeline evaluated last, and on new data its first model is champion
until a better one on that data arrives.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import __version__
from ..errors import UserError
from ..init_source import is_uri
from .runs import Tracker
from .store import redact_uri, retry_locked, store_lock

MODEL_NAME = "model"       # runs:/<run_id>/model
CHAMPION = "champion"
_PROMOTE_ROUNDS = 10  # re-reads after moving the alias (parallel evaluates)
_UNSET = object()
VAL_SHA_TAG, BPC_TAG = "data.sha256.val.npy", "val.bits_per_char"
# run tags copied onto each model version
VERSION_TAGS_FROM_RUN = ("git.commit", "git.dirty", "data.sha256.train.npy", VAL_SHA_TAG,
                         "data.sha256.tokenizer.json", "data.sha256.raw",
                         # a fine-tune's start (train.init_from): what it was fine-tuned from
                         "gptpipe.init_from", "gptpipe.parent_run_id",
                         "gptpipe.parent_model_version", "gptpipe.parent_model_sha256")


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from .model_code import predict_defaults

    kinds = {int: "long", float: "double"}
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(key, kinds[type(value)], value)
                            for key, value in predict_defaults().items()]))


class _PyfuncUnchecked:
    """mlflow.pyfunc as Model.log's flavor ("a module with save_model"), taking the
    validate_serving_input=False that pyfunc.save_model refuses. Model.log's check
    loads the model and predicts its input example, only to warn if that fails;
    here it would import torch into the tracking process, which gets no CPU while
    training runs: ~2 s at the end of every train stage on a 2-core CPU.
    tests/test_mlflow_models.py loads and serves the logged model for real."""

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(validate_serving_input: bool = True, **kwargs):
        import mlflow.pyfunc

        return mlflow.pyfunc.save_model(**kwargs)


@dataclass(frozen=True)
class LoggedModel:
    model_id: str        # the MLflow 3 LoggedModel (models:/<model_id>)
    version: str | None  # its registered version, when registered


def log_model(tracker: Tracker, run_id: str, weights: Path, tokenizer: Path,
              registered_model: str | None, exp_name: str | None = None,
              example_prompt: str = "\n", step: int = 0,
              name: str = MODEL_NAME) -> LoggedModel:
    """Log the model of `run_id` as an MLflow 3 LoggedModel ("models from code")
    linked to the run at training step `step` (the step whose weights these are:
    MLflow copies the run's metrics at that step, val_loss among them, onto the
    model), and register it as a new version of `registered_model` (None: not
    registered, as for an eval-step checkpoint)."""
    from importlib.metadata import version as installed_version

    import mlflow
    import pandas as pd
    from mlflow.entities import LoggedModelStatus
    from mlflow.models import Model

    from . import model_code

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs
    client = tracker.client
    run = retry_locked(client.get_run, run_id)
    # Created here, in the run's experiment (Model.log would use the active one).
    logged = retry_locked(client.create_logged_model, run.info.experiment_id, name=name,
                          source_run_id=run_id, params=run.data.params, model_type="gptpipe",
                          tags={"gptpipe.step": str(step)})

    config = {model_code.FORMAT_KEY: model_code.FORMAT, model_code.VERSION_KEY: __version__}
    try:  # Model.log (not pyfunc.log_model): it takes the run id, no active run needed
        info = Model.log(  # not retried on a locked store: it would log twice
            artifact_path=None, name=name, flavor=_PyfuncUnchecked, run_id=run_id,
            model_id=logged.model_id, step=int(step), python_model=model_code.__file__,
            artifacts={"weights": str(weights), "tokenizer": str(tokenizer)},
            model_config=config, metadata=config, signature=_signature(),
            input_example=(pd.DataFrame({"prompt": [example_prompt]}), {"max_new_tokens": 8}),
            pip_requirements=[f"mlflow=={mlflow.__version__}",
                              f"torch=={installed_version('torch').split('+')[0]}",
                              f"gptpipe=={__version__}"],
            registered_model_name=registered_model, await_registration_for=0,
            validate_serving_input=False)
    except BaseException:
        retry_locked(client.finalize_logged_model, logged.model_id, LoggedModelStatus.FAILED)
        raise
    if registered_model is None:
        return LoggedModel(logged.model_id, None)
    version = str(info.registered_model_version)
    tags = {key: run.data.tags[key] for key in VERSION_TAGS_FROM_RUN if key in run.data.tags}
    tags["dvc.exp_name"] = exp_name or "(workspace)"
    tags["gptpipe.model_id"], tags["gptpipe.step"] = logged.model_id, str(step)
    for key, value in tags.items():
        retry_locked(client.set_model_version_tag, registered_model, version, key, value)
    return LoggedModel(logged.model_id, version)


def log_eval_weights(tracker: Tracker, run_id: str, weights: list[tuple[int, Path]],
                     tokenizer: Path) -> None:
    """Each (step, weights file) as a LoggedModel `checkpoint-<step>` of the run, at that
    step (so with that step's val_loss and train_loss); not registered. A step the run
    already has (a rerun after a kill) is not logged twice."""
    outputs = retry_locked(tracker.client.get_run, run_id).outputs
    have = {retry_locked(tracker.client.get_logged_model, o.model_id).name
            for o in (outputs.model_outputs if outputs else [])}
    for step, path in weights:
        if f"checkpoint-{step}" not in have:
            log_model(tracker, run_id, path, tokenizer, None, step=step,
                      name=f"checkpoint-{step}")


def shipped_model_id(tracker: Tracker, ref: dict) -> str | None:
    """The LoggedModel train shipped for the run reports/mlflow_run.json names: its
    `model_id`, or (a ref from an older gptpipe) the run's output named `model`;
    None when the run logged no model."""
    if ref.get("model_id"):
        return ref["model_id"]
    run = retry_locked(tracker.client.get_run, ref["run_id"])
    for output in (run.outputs.model_outputs if run.outputs else []):
        model = retry_locked(tracker.client.get_logged_model, output.model_id)
        if model.name == MODEL_NAME:
            return model.model_id
    return None


def run_version(tracker: Tracker, run_id: str):
    """The registered model version logged by `run_id`, or None."""
    found = retry_locked(tracker.client.search_model_versions, f"run_id = '{run_id}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def promote(tracker: Tracker, run_id: str, val_bits_per_char: float) -> str | None:
    """Tag the run's model version with its val bits/char and apply the champion
    rule (module docstring). Returns what happened, for the log; None when the
    run logged no model."""
    client = tracker.client
    version = run_version(tracker, run_id)
    if version is None:
        return None
    name = version.name
    retry_locked(client.set_model_version_tag, name, version.version, BPC_TAG,
                 repr(float(val_bits_per_char)))
    val_sha = version.tags.get(VAL_SHA_TAG)
    first, moved = _UNSET, None
    with store_lock(tracker.uri, "registry"):  # parallel `dvc exp run -j 2` evaluates
        # On a server no lock spans the machines: evaluates racing each set the alias
        # from what they read. So read again after setting, until the champion read is
        # the best read: the evaluate that reads last sees every score and leaves the
        # alias right, whatever the order of the others' writes.
        for _ in range(_PROMOTE_ROUNDS):
            versions = retry_locked(client.search_model_versions, f"name = '{name}'")
            rivals = [v for v in versions if v.tags.get(VAL_SHA_TAG) == val_sha
                      and (BPC_TAG in v.tags or v.version == version.version)]
            score = {v.version: float(v.tags.get(BPC_TAG, val_bits_per_char)) for v in rivals}
            best = min(rivals, key=lambda v: (score[v.version], int(v.version)))
            current = _current_champion(client, name)
            if first is _UNSET:
                first = current
            if current is not None and current.version == best.version:
                break
            retry_locked(client.set_registered_model_alias, name, CHAMPION, best.version)
            moved = best
    if moved is None:
        return (f"champion stays {name} v{best.version} "
                f"({score[best.version]:.4f} val bits/char)")
    was = f"; was v{first.version}" if first is not None else ""
    return f"champion -> {name} v{best.version} ({score[best.version]:.4f} val bits/char{was})"


def _current_champion(client, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - MlflowException: no such alias yet
        return None


# ---- resolving a model reference -------------------------------------------------

@contextlib.contextmanager
def model_files(ref: str) -> Iterator[tuple[Path, Path | None]]:
    """(weights, tokenizer) files for a model reference, in one place for every
    command that loads a model:

        models/model.pt               a model file (its tokenizer: the path it records)
        DIR                           a downloaded MLflow model (holds MLmodel)
        runs:/<run_id>/model          the model a run logged
        models:/<name>@<alias>        a registered version by alias (e.g. champion)
        models:/<name>/<version>      a registered version by number

    URIs are downloaded to a temp dir that lives for the `with` block. The
    tokenizer is None when the model file names it itself."""
    if not is_uri(ref):
        path = Path(ref)
        if (path / "MLmodel").is_file():
            yield _mlmodel_files(path, ref)
        else:
            yield path, None
        return
    with tempfile.TemporaryDirectory(prefix="gptpipe-model-") as tmp:
        yield _download(ref, Path(tmp))


def _mlmodel_files(folder: Path, ref: str) -> tuple[Path, Path]:
    from mlflow.models import Model

    from .model_code import check_format

    conf = Model.load(str(folder)).flavors.get("python_function", {})
    check_format(conf.get("config"), ref)  # the model_config given to Model.log
    artifacts = conf.get("artifacts", {})
    try:
        return tuple(folder / artifacts[key]["path"] for key in ("weights", "tokenizer"))
    except KeyError:
        raise UserError(f"{ref}: an MLflow model without gptpipe weights and tokenizer") \
            from None


def _download(uri: str, dest: Path) -> tuple[Path, Path]:
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line or none
    try:
        tracker = Tracker()
    except UserError as exc:
        raise UserError(f"{uri}: {exc}") from None
    store = redact_uri(tracker.uri)
    _check_exists(tracker.client, uri, store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest),
                                                         tracking_uri=tracker.uri))
    except MlflowException as exc:
        if uri.startswith("runs:/"):
            raise UserError(f"{uri}: run has no logged model {uri.split('/')[-1]!r} "
                            "(trained with mlflow.log_model: false?)") from None
        raise UserError(f"{uri}: cannot download the model ({str(exc).splitlines()[0]})") \
            from None
    if (local / "MLmodel").is_file():
        return _mlmodel_files(local, uri)
    if uri.startswith("runs:/") and (local / "model.pt").is_file():
        # Logged by gptpipe 0.1.0 before MLflow models: model.pt and the tokenizer
        # as plain run artifacts; still loadable.
        run_id = uri[len("runs:/"):].split("/")[0]
        try:
            tokenizer = mlflow.artifacts.download_artifacts(
                artifact_uri=f"runs:/{run_id}/tokenizer/tokenizer.json",
                dst_path=str(dest / "tokenizer"), tracking_uri=tracker.uri)
        except MlflowException:
            raise UserError(f"{uri}: the run has model.pt but no tokenizer/tokenizer.json "
                            "artifact") from None
        return local / "model.pt", Path(tokenizer)
    raise UserError(f"{uri}: no MLflow model there (no MLmodel file)")


def _check_exists(client, uri: str, store: str) -> None:
    """Name the missing piece (model, alias, version, run) before downloading."""
    from mlflow.exceptions import MlflowException

    def missing(call, *args) -> bool:
        try:
            call(*args)
            return False
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                return True
            raise UserError(f"{uri}: {str(exc).splitlines()[0]}") from None

    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/")[0]
        if not run_id or missing(client.get_run, run_id):
            raise UserError(f"{uri}: no run {run_id!r} in {store}")
        return
    rest = uri[len("models:/"):]
    name, alias = rest.split("@", 1) if "@" in rest else (rest.split("/")[0], None)
    version = None if alias is not None else (rest.split("/") + [""])[1]
    if not name or missing(client.get_registered_model, name):
        raise UserError(f"{uri}: no registered model {name!r} in {store}")
    if alias is not None and missing(client.get_model_version_by_alias, name, alias):
        aliases = sorted(client.get_registered_model(name).aliases)
        raise UserError(f"{uri}: registered model {name!r} has no alias {alias!r} "
                        f"(aliases: {', '.join(aliases) or 'none'})")
    if alias is None and (not version.isdigit() or missing(client.get_model_version, name,
                                                            version)):
        raise UserError(f"{uri}: registered model {name!r} has no version {version!r}")


def pin(uri: str) -> dict:
    """A runs:/ or models:/ URI made concrete now: the version an alias points at,
    the run that logged it. {"uri" (runs:/... or models:/<name>/<version>),
    "run_id", "model_name", "version"}; train.init_from's init stage downloads that
    concrete URI, so a moving alias cannot change between naming and download."""
    try:
        tracker = Tracker()
    except UserError as exc:
        raise UserError(f"{uri}: {exc}") from None
    client = tracker.client
    _check_exists(client, uri, redact_uri(tracker.uri))
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/")[0]
        version = run_version(tracker, run_id)
        return {"uri": uri, "run_id": run_id,
                "model_name": version.name if version is not None else "",
                "version": str(version.version) if version is not None else ""}
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        found = retry_locked(client.get_model_version_by_alias, name, alias)
    else:
        name, number = rest.split("/")[:2]
        found = retry_locked(client.get_model_version, name, number)
    return {"uri": f"models:/{name}/{found.version}", "run_id": found.run_id or "",
            "model_name": name, "version": str(found.version)}
