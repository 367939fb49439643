"""The team loop, with real servers on 127.0.0.1 (tests/servers.py): PostgreSQL
as MLflow's backend store, moto's S3 server (standing in for S3/MinIO) as the
artifact store and as the DVC remote, and a real `mlflow server` on both.

The data changes -> CI retrains (scripts/ci_retrain.sh --push), pushes the
outputs and commits dvc.lock -> a teammate pulls the commit and the outputs and
gets the same model -> the champion is served from the tracking server. And the
faults: a DVC remote that rejects the push, a tracking server that goes away
while training.

Needs Debian's postgresql (scripts/install_postgres.sh) and the dev extra
(psycopg2-binary, moto[server], boto3, dvc-s3): skips locally without them,
fails in CI (CI=true)."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from helpers import dvc_status, env_for, make_project, run, run_id_of, tiny_text
from projects import ROOT
from servers import LOOPBACK, S3_KEYS, TeamServers

SCRIPT = ROOT / "scripts" / "ci_retrain.sh"
FAST = {"train": {"max_iters": 12, "eval_interval": 6, "checkpoint_interval": 6,
                  "eval_batches": 1},
        "sample": {"max_new_tokens": 16}}
# The team loop registers each trained model: evaluate moves the `champion` alias.
LOOP = {**FAST, "mlflow": {"log_model": True}}
REMOTE = f"s3://{TeamServers.BUCKET}/dvc"
# What GitHub Actions sets: none of it from the machine running the tests.
CI_VARS = ("CI_COMMIT_LOCK", "CI_PUSH", "GITHUB_STEP_SUMMARY", "GITHUB_BASE_REF",
           "GITHUB_ACTIONS", "GITHUB_EVENT_NAME", "GITHUB_REF_NAME", "CI_ARTIFACTS_DIR",
           "DVC_REMOTE_ENDPOINT_URL")


@pytest.fixture(scope="module")
def team(request, tmp_path_factory) -> TeamServers:
    return TeamServers(request, tmp_path_factory.mktemp("team"))


def team_env(project: Path, team: TeamServers, **extra: str) -> dict:
    """A user's (or CI's) environment: the tracking server, the remote's keys."""
    env = env_for(project, MLFLOW_TRACKING_URI=team.mlflow.url, **LOOPBACK, **S3_KEYS)
    for var in CI_VARS:
        env.pop(var, None)
    env.update(extra)
    return env


def sha(project: Path, rev: str = "HEAD") -> str:
    return run(["git", "rev-parse", rev], project).stdout.strip()


@pytest.mark.slow
def test_ci_retrains_pushes_and_a_teammate_pulls_the_same_model(team, tmp_path):
    # A developer's project: trained against the team server, outputs on the
    # remote, pushed to `origin` (a bare repo standing in for GitHub).
    dev = make_project(tmp_path / "dev", corpus=tiny_text(20_000), overrides=LOOP)
    (dev / "scripts").mkdir()
    shutil.copy2(SCRIPT, dev / "scripts" / "ci_retrain.sh")
    run(["dvc", "remote", "add", "-d", "storage", REMOTE], dev)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", team.s3.url], dev)
    env = team_env(dev, team)
    run(["dvc", "repro"], dev, env=env)
    run(["dvc", "push"], dev, env=env)
    run(["git", "add", "-A"], dev)
    run(["git", "commit", "-qm", "trained"], dev)
    origin = tmp_path / "origin.git"
    run(["git", "clone", "-q", "--bare", str(dev), str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], dev)
    branch = run(["git", "symbolic-ref", "--short", "HEAD"], dev).stdout.strip()
    base = sha(dev)
    base_run = run_id_of(dev)

    # The data changes: pushed, it triggers CI.
    with open(dev / "corpus" / "corpus.txt", "a", encoding="utf-8") as fh:
        fh.write("\n\nNEW SPEAKER:\nA few more lines of text, so that the corpus,\n"
                 "the split and the trained model all change.\n" * 40)
    run(["git", "commit", "-qam", "more text"], dev)
    run(["git", "push", "-q", "origin", f"HEAD:{branch}"], dev)
    trained_commit = sha(dev)

    # CI: a fresh clone (empty DVC cache), the remote's endpoint and keys from
    # "secrets" (env), the job summary in a file.
    ci = tmp_path / "ci"
    run(["git", "clone", "-q", str(origin), str(ci)], tmp_path)
    summary = tmp_path / "summary.md"
    ci_env = team_env(ci, team, DVC_REMOTE_ENDPOINT_URL=team.s3.url,
                      GITHUB_STEP_SUMMARY=str(summary))

    # 1. The remote rejects the push (its bucket is missing): one line naming
    # the remote, nothing committed, nothing pushed to origin.
    run(["dvc", "remote", "modify", "--local", "storage", "url", "s3://no-such-bucket/dvc"], ci)
    failed = run(["bash", "scripts/ci_retrain.sh", "--push", base], ci, env=ci_env,
                 check=False)
    assert failed.returncode != 0, failed.stdout
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("ci_retrain.sh: error: dvc push to DVC remote 'storage' "
                           "(s3://no-such-bucket/dvc) failed"), failed.stderr
    assert last.endswith("nothing committed") and "Traceback" not in failed.stderr
    assert sha(ci) == trained_commit
    assert run(["git", "rev-parse", branch], origin).stdout.strip() == trained_commit
    assert "**Error:** ci_retrain.sh: error: dvc push" in summary.read_text()

    # 2. The secret fixed, the job reruns: outputs and run cache pushed first,
    # then dvc.lock and reports/ committed and pushed.
    run(["dvc", "remote", "modify", "--local", "--unset", "storage", "url"], ci)
    summary.unlink()
    result = run(["bash", "scripts/ci_retrain.sh", "--push", base], ci, env=ci_env)
    out = result.stdout
    pushed, committed = out.index("==> dvc push -r storage"), out.index("==> committed")
    assert pushed < committed
    report = summary.read_text()
    assert f"Outputs and run cache pushed to DVC remote 'storage' ({REMOTE})" in report
    assert f"- MLflow: {team.mlflow.url}" in report
    new_run = run_id_of(ci)
    assert new_run != base_run
    runs_section = report.split("## MLflow runs")[1].split("\n## ")[0]
    assert f"New run `{new_run}`; the base's run: `{base_run}`" in runs_section
    # the `gptpipe runs` table: the new run next to the base's (the champion before
    # this rerun is one of them: the failed attempt's evaluate may have moved it)
    table_rows = [line for line in runs_section.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in table_rows[0].strip("|").split("|")]
    assert header[0] == "run_id" and "champion" in header, runs_section
    rows = {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in row.strip("|").split("|")] for row in table_rows[2:])}
    assert set(rows) == {new_run, base_run}, runs_section
    assert rows[new_run]["champion"] == "yes" and rows[base_run]["champion"] == ""
    metrics = report.split("## Metrics diff")[1].split("##")[0]
    assert "val.loss" in metrics and "_No metrics changed" not in metrics
    curves = ci / "ci-artifacts" / "loss_curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ci-artifacts/loss_curves.png" in report.split("## Loss curves")[1]
    keys = team.s3.keys(TeamServers.BUCKET, "dvc/")
    assert any(k.startswith("dvc/runs/") for k in keys), "no run cache on the remote"
    ci_commit = run(["git", "rev-parse", branch], origin).stdout.strip()
    assert ci_commit == sha(ci) and sha(ci, "HEAD~1") == trained_commit
    assert "[skip ci]" in run(["git", "log", "-1", "--format=%s", ci_commit], origin).stdout

    # 3. A teammate: clone, pull, and the very same model; nothing to rerun.
    mate = tmp_path / "mate"
    run(["git", "clone", "-q", str(origin), str(mate)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", team.s3.url], mate)
    mate_env = team_env(mate, team)
    run(["dvc", "pull"], mate, env=mate_env)
    assert (mate / "models/model.pt").read_bytes() == (ci / "models/model.pt").read_bytes()
    assert dvc_status(mate, mate_env) == {}
    assert run_id_of(mate) == new_run

    # The run on the server: the commit CI trained, finished, with its metrics.
    got = team.mlflow.get("/api/2.0/mlflow/runs/get", run_id=new_run)["run"]
    tags = {t["key"]: t["value"] for t in got["data"].get("tags", [])}
    commit_tag = tags.get("mlflow.source.git.commit") or tags["git.commit"]
    assert commit_tag == trained_commit
    assert got["info"]["status"] == "FINISHED"
    assert {m["key"] for m in got["data"]["metrics"]} >= {"val.loss", "val_loss"}

    # The champion is CI's model (the new corpus made a new val split, and the
    # champion rule compares runs on the same val split only), served from the
    # server's registry where no model file is.
    alias = team.mlflow.get("/api/2.0/mlflow/registered-models/alias", name="gptpipe",
                            alias="champion")["model_version"]
    assert alias["run_id"] == new_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sample = run(["gptpipe", "sample", "--model", "models:/gptpipe@champion",
                  "--prompt", "\n", "--max-new-tokens", "24"], elsewhere,
                 env=team_env(elsewhere, team))
    assert len(sample.stdout.strip()) > 0 and not list(elsewhere.iterdir())


STEP_LINE = re.compile(r"^step +(\d+):", re.M)


@pytest.mark.slow
def test_tracking_server_down_mid_training_then_back_resumes_the_same_run(team, tmp_path):
    project = make_project(tmp_path / "proj", corpus=tiny_text(20_000),
                           overrides={"train": {"max_iters": 300, "eval_interval": 10,
                                                "checkpoint_interval": 10,
                                                "eval_batches": 1}})
    # MLflow's own HTTP retries (minutes, by default) cut short for the test.
    env = team_env(project, team, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                   MLFLOW_HTTP_REQUEST_TIMEOUT="10", PYTHONUNBUFFERED="1")
    run(["dvc", "repro", "split"], project, env=env)

    # Train; once step 10 is evaluated and its checkpoint is on disk, freeze it, stop
    # the server, let it go on.
    proc = subprocess.Popen(["python", "stages/train.py"], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    checkpoints_dir = project / ".gptpipe" / "checkpoints"
    try:
        while not (any(int(m.group(1)) >= 10 for m in STEP_LINE.finditer("".join(lines)))
                   and any(checkpoints_dir.glob("*/checkpoint.pt"))):
            assert proc.poll() is None, "".join(lines) + proc.stderr.read()
            reader.join(timeout=0.05)
        proc.send_signal(signal.SIGSTOP)
        team.mlflow.stop()
        proc.send_signal(signal.SIGCONT)
        stderr = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if team.mlflow.proc is None:
            team.mlflow.start()  # the other tests' server, back whatever happened
    reader.join(timeout=10)
    stdout = "".join(lines)
    assert proc.returncode != 0, stdout
    # one line (above it: only tqdm's progress bar)
    assert stderr.strip().splitlines()[-1] == (
        f"train: error: MLflow tracking server {team.mlflow.url} stopped answering "
        "mid-stage; what was done is kept (a training checkpoint too): rerun `dvc repro` "
        "once the server is back, it resumes the same run"), stderr
    assert "Traceback" not in stderr and stderr.count("error") == 1, stderr
    (checkpoint,) = (project / ".gptpipe" / "checkpoints").glob("*/checkpoint.pt")
    from gptpipe import checkpoints

    saved = checkpoints.load(checkpoint)
    step, run_id = int(saved["trainer"]["step"]), saved["run_id"]
    # The run was created by then (in the background: training starts before MLflow is
    # open, so the stage had not printed its id yet); the resume below must reuse it.
    assert 10 <= step < 300 and re.fullmatch(r"[0-9a-f]{32}", run_id), (step, run_id)

    # The server is back (started again in `finally`): dvc repro resumes the
    # checkpoint into the same run, which ends FINISHED with one history.
    result = run(["dvc", "repro", "train"], project, env=env)
    assert f"train: resuming from step {step} " in result.stdout, result.stdout
    assert run_id_of(project) == run_id
    got = team.mlflow.get("/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    assert got["info"]["status"] == "FINISHED"
    history = team.mlflow.get("/api/2.0/mlflow/metrics/get-history", run_id=run_id,
                              metric_key="val_loss")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(0, 301, 10))
    assert not list((project / ".gptpipe" / "checkpoints").glob("*/checkpoint.pt"))
