"""The pipeline against a real `mlflow server` (the team set-up, on loopback):
runs, metrics and artifacts go over HTTP, artifacts proxied by the server into
its --artifacts-destination. Checked over the REST API, not the client library.

The servers live in tests/servers.py (shared with tests/test_browser.py and
tests/test_team_loop.py)."""
from __future__ import annotations

import json
import os

import pytest
import requests

from helpers import env_for, make_project, require_module, run, stages_run, tiny_text
from servers import (  # noqa: F401 - free_port, start_server: for test_mlflow_models, test_browser
    MlflowServer, free_port, start_server)


@pytest.fixture
def mlflow_server(request, tmp_path) -> MlflowServer:
    return start_server(request, tmp_path / "mlflow-server")


@pytest.mark.slow
def test_pipeline_logs_runs_metrics_and_artifacts_to_a_tracking_server(mlflow_server,
                                                                       tmp_path):
    server = mlflow_server
    project = make_project(tmp_path / "proj", corpus=tiny_text())
    env = env_for(project, MLFLOW_TRACKING_URI=server.url,
                  NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    result = run(["dvc", "repro"], project, env=env)
    assert stages_run(result.stdout) == ["init", "download", "clean", "tokenize", "split", "train",
                                   "evaluate", "sample"]
    assert not (project / "mlflow.db").exists(), "the run went to a local store"
    run_id = json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]

    exp = server.get("/api/2.0/mlflow/experiments/get-by-name",
                     experiment_name="gptpipe")["experiment"]
    # The server chose the artifact root: its proxy, not a path on the client.
    assert exp["artifact_location"].startswith("mlflow-artifacts:"), exp
    runs = server.post("/api/2.0/mlflow/runs/search",
                       {"experiment_ids": [exp["experiment_id"]]}).get("runs", [])
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    info, data = runs[0]["info"], runs[0]["data"]
    assert info["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["train.max_iters"] == "30" and params["sample.num_samples"] == "1"
    metrics = {m["key"]: m["value"] for m in data["metrics"]}
    assert metrics["val.loss"] > 0

    history = server.get("/api/2.0/mlflow/metrics/get-history", run_id=run_id,
                         metric_key="val_loss")["metrics"]
    # TINY_PARAMS: 30 steps, evals every 10 from step 0
    assert sorted(m["step"] for m in history) == [0, 10, 20, 30]
    assert all(m["value"] > 0 for m in history)

    listed = server.get("/api/2.0/mlflow/artifacts/list", run_id=run_id,
                        path="samples")
    files = {f["path"]: f for f in listed.get("files", [])}
    assert {"samples/samples.md", "samples/samples.json", "samples/table.json"} <= set(files)
    assert int(files["samples/samples.md"]["file_size"]) > 0

    # Through the artifact proxy, and on the server's disk, not the client's.
    proxied = server.get("/api/2.0/mlflow-artifacts/artifacts",
                         path=f"{exp['experiment_id']}/{run_id}/artifacts/samples")
    assert "samples.md" in {f["path"] for f in proxied.get("files", [])}
    text = requests.get(f"{server.url}/get-artifact", timeout=30,
                        params={"run_uuid": run_id, "path": "samples/samples.md"})
    assert text.ok and text.text.startswith("# Samples")
    on_disk = server.artifacts / exp["experiment_id"] / run_id / "artifacts/samples/samples.md"
    assert on_disk.read_text() == text.text == (project / "reports/samples.md").read_text()
    assert not (project / "mlartifacts").exists()

    # Nothing changed: nothing reruns, and the server still holds one run.
    assert stages_run(run(["dvc", "repro"], project, env=env).stdout) == []
    again = server.post("/api/2.0/mlflow/runs/search",
                        {"experiment_ids": [exp["experiment_id"]]}).get("runs", [])
    assert len(again) == 1


@pytest.mark.slow
def test_server_process_tree_is_gone_after_stop(tmp_path):
    server = MlflowServer(tmp_path / "srv")
    try:
        server.start()
        pid = server.proc.pid
    finally:
        server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/health", timeout=2)


@pytest.mark.slow
def test_pipeline_on_a_shared_server_with_basic_auth(request, tmp_path):
    """docs/team.md, "A shared MLflow server": `mlflow server --app-name basic-auth`, each user
    with MLFLOW_TRACKING_USERNAME/PASSWORD. The run lands on the server under that
    user; a request without credentials is refused; the password lands nowhere."""
    require_module("flask_wtf", "`pip install -e '.[dev]'` (make test; the dev extra "
                                "has mlflow[auth])")
    root = tmp_path / "auth-server"
    root.mkdir()
    admin_password, alice_password = "admin-Pw-4242", "alice-Pw-1717"
    (root / "basic_auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    server = MlflowServer(root, app_name="basic-auth", auth=("admin", admin_password),
                          extra_env={"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
                                     "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
                                     "MLFLOW_FLASK_SERVER_SECRET_KEY": "gptpipe-test"})
    request.addfinalizer(server.stop)
    server.start()
    server.post("/api/2.0/mlflow/users/create",
                {"username": "alice", "password": alice_password})
    anonymous = requests.post(f"{server.url}/api/2.0/mlflow/runs/search",
                              json={"experiment_ids": ["0"]}, timeout=30)
    assert anonymous.status_code == 401, anonymous.text

    project = make_project(tmp_path / "proj", corpus=tiny_text())
    env = env_for(project, MLFLOW_TRACKING_URI=server.url,
                  MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=alice_password,
                  NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    result = run(["dvc", "repro"], project, env=env)
    assert not (project / "mlflow.db").exists(), "the run went to a local store"
    run_id = json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]
    info = server.get("/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    assert info["info"]["status"] == "FINISHED"
    metrics = {m["key"] for m in info["data"]["metrics"]}
    assert {"val_loss", "val.loss"} <= metrics  # train and evaluate both got in
    text = requests.get(f"{server.url}/get-artifact", timeout=30, auth=server.auth,
                        params={"run_uuid": run_id, "path": "samples/samples.md"})
    assert text.ok and text.text == (project / "reports/samples.md").read_text()

    # The password is nowhere a user could commit or read.
    seen = result.stdout + result.stderr + (project / "dvc.lock").read_text()
    for path in (project / "reports").rglob("*"):
        if path.is_file():
            seen += path.read_text(errors="replace")
    tags = {t["key"]: t["value"] for t in info["data"].get("tags", [])}
    params = {p["key"]: p["value"] for p in info["data"].get("params", [])}
    seen += json.dumps(tags) + json.dumps(params)
    assert alice_password not in seen

    # A wrong password: refused before training, one line, without the password.
    (project / "params.yaml").write_text(
        (project / "params.yaml").read_text().replace("max_iters: 30", "max_iters: 31"))
    wrong = run(["python", "stages/train.py"], project, check=False, timeout=300,
                env={**env, "MLFLOW_TRACKING_PASSWORD": "not-" + alice_password})
    assert wrong.returncode != 0
    assert "not-" + alice_password not in wrong.stdout + wrong.stderr
    assert " step " not in wrong.stdout, "it trained with credentials the server refuses"
    assert wrong.stderr.strip().splitlines()[-1] == (
        f"train: error: MLflow tracking server {server.url} refused the credentials (HTTP 401); "
        "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
