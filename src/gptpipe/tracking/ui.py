"""`gptpipe ui`: MLflow's UI on the project's store, opened at the experiment in
its Model training view.

MLflow 3.17.2's UI starts in its GenAI view; `?workflowType=machine_learning` in
the hash route (`#/experiments/<id>?workflowType=machine_learning`) selects the
Model training one (its JS reads the `workflowType` search param first, then
the browser's remembered choice). On a tracking server (MLFLOW_TRACKING_URI
http(s)://) nothing is started: the link points at that server.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from ..errors import UserError
from .store import check_reachable, redact_uri, tracking_uri

WORKFLOW = "workflowType=machine_learning"
START_TIMEOUT_S = 120  # mlflow server's start on 2 busy cores


def experiment_url(base: str, experiment_id: str | None) -> str:
    """The link that opens the experiment (its runs) in the Model training view."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{WORKFLOW}"
    return f"{base}/#/experiments/{experiment_id}?{WORKFLOW}"


def models_url(base: str, experiment_id: str) -> str:
    """The experiment's Models tab: its LoggedModels and their metrics."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/models?{WORKFLOW}"


def _experiment_id(uri: str, experiment: str) -> str | None:
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    found = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    return found.experiment_id if found is not None else None


def _public(uri: str) -> str:
    """The server's address without credentials (a link to share)."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def ui(port: int, experiment: str, out=sys.stdout) -> int:
    """Print the link; on a local store, serve the UI on 127.0.0.1:`port` until stopped."""
    uri = tracking_uri()
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        check_reachable(uri)
        print(f"MLflow tracking server {redact_uri(uri)} (MLFLOW_TRACKING_URI): nothing to "
              "start", file=out)
        print(experiment_url(_public(uri), _experiment_id(uri, experiment)), file=out,
              flush=True)
        return 0
    if scheme == "sqlite" and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store yet at {uri}: train a model first (`dvc repro`)")
    check_reachable(uri)
    experiment_id = _experiment_id(uri, experiment)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job runner: less CPU
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--backend-store-uri", uri]
    if scheme == "sqlite":  # new experiments' artifacts beside the store, as the stages put them
        cmd += ["--artifacts-destination", str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts")]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(cmd, env=env)
    try:
        _wait_until_up(server, base)
        print(f"MLflow UI on {redact_uri(uri)} (Ctrl-C stops it); the experiment "
              f"{experiment!r} in the Model training view:", file=out)
        print(experiment_url(base, experiment_id), file=out, flush=True)
        if experiment_id is not None:
            print(f"its models, ranked by val bits/char: {models_url(base, experiment_id)}",
                  file=out, flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_until_up(server: subprocess.Popen, base: str) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"mlflow server exited ({server.returncode}) before answering on "
                            f"{base}: is the port taken? try --port")
        try:
            if requests.get(base + "/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise UserError(f"mlflow server did not answer on {base} within {START_TIMEOUT_S} s")
