"""One server, many writers: WRITERS train stages log to ONE `mlflow server` on a
PostgreSQL backend (the throwaway cluster of tests/servers.py) at the same time,
then their evaluates move the `champion` alias at the same time.

1. Steady load: every run FINISHED, every metric step logged exactly once
   (batch_loss and lr at 1..MAX_ITERS, the eval rows at every eval step), the
   champion the version the registry's rule picks. Prints the load: writers,
   metric points, metric points/s and requests/s at the server.
2. The server SIGKILLed (its whole process group) in the middle of the writers'
   training and restarted on the same port: a writer that lost it fails with the
   one-line "stopped answering mid-stage" error and its rerun resumes the same
   MLflow run from its checkpoint; again every run FINISHED, every step once.

Needs Debian's postgresql (scripts/install_postgres.sh) and psycopg2 (the dev
extra): skips locally without them, fails in CI (CI=true)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import env_for, make_project, run, tiny_text
from projects import write_params
from servers import LOOPBACK, MlflowServer, PostgresCluster, missing

WRITERS = 4            # train stages logging to the one server at once
MAX_ITERS = 500        # steps per writer: batch_loss and lr at each
EVAL_INTERVAL = 50     # eval rows (train_loss, val_loss, tokens_per_s) every this many steps
CHECKPOINT_INTERVAL = 50  # metrics go to MLflow once per checkpoint: one log_batch each
STAGE_TIMEOUT_S = 240
MODEL = "gptpipe"      # params.yaml's mlflow.registered_model

PARAMS = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
          "train": {"max_iters": MAX_ITERS, "eval_interval": EVAL_INTERVAL,
                    "checkpoint_interval": CHECKPOINT_INTERVAL, "eval_batches": 1,
                    "batch_size": 8, "threads": 1, "device": "cpu", "autocast": "off",
                    "warmup_iters": 10},
          "evaluate": {"batch_size": 64},
          "mlflow": {"log_model": True}}
EVAL_STEPS = sorted({0, *range(EVAL_INTERVAL, MAX_ITERS + 1, EVAL_INTERVAL), MAX_ITERS})
EXPECTED_STEPS = {"batch_loss": list(range(1, MAX_ITERS + 1)),
                  "lr": list(range(1, MAX_ITERS + 1)),
                  "train_loss": EVAL_STEPS, "val_loss": EVAL_STEPS,
                  "tokens_per_s": [s for s in EVAL_STEPS if s]}
EVALUATED = {"val.bits_per_char": [0], "val.loss": [0], "train.loss": [0]}
ACCESS_LINE = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (\S+) HTTP/[\d.]+" (\d{3})\b')
STOPPED = ("train: error: MLflow tracking server {url} stopped answering mid-stage; what "
           "was done is kept (a training checkpoint too): rerun `dvc repro` once the "
           "server is back, it resumes the same run")


@dataclass
class Writer:
    project: Path
    proc: subprocess.Popen | None = None

    @property
    def run_id(self) -> str:
        return json.loads((self.project / "reports/mlflow_run.json").read_text())["run_id"]

    def checkpoint(self) -> Path | None:
        found = list((self.project / ".gptpipe" / "checkpoints").glob("*/checkpoint.pt"))
        return found[0] if found else None

    def log(self, name: str) -> str:
        return (self.project / f"{name}.log").read_text(errors="replace")

    def start(self, stage: str, env: dict, name: str | None = None) -> None:
        name = name or stage
        with open(self.project / f"{name}.log", "w") as out, \
                open(self.project / f"{name}.err", "w") as err:
            self.proc = subprocess.Popen(["python", f"stages/{stage}.py"], cwd=self.project,
                                         env=env, stdout=out, stderr=err, text=True,
                                         stdin=subprocess.DEVNULL)

    def wait(self, name: str) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=STAGE_TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return (code, self.log(name),
                (self.project / f"{name}.err").read_text(errors="replace"))


@pytest.fixture(scope="module")
def server(request, tmp_path_factory) -> MlflowServer:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        missing("psycopg2 (MLflow's PostgreSQL driver)",
                "pip install -e '.[dev]' (psycopg2-binary)")
    postgres = PostgresCluster()
    request.addfinalizer(postgres.cleanup)
    postgres.start()
    mlflow = MlflowServer(tmp_path_factory.mktemp("load") / "mlflow",
                          backend_uri=postgres.url)
    request.addfinalizer(mlflow.stop)
    return mlflow.start()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A project with its data split once: the writers are copies (the same val data,
    so the champion rule compares them all), each with its own lr and seed."""
    project = make_project(tmp_path_factory.mktemp("tpl") / "proj",
                           corpus=tiny_text(20_000), overrides=PARAMS)
    run(["dvc", "repro", "split"], project)
    return project


def writers(template: Path, root: Path, phase: int) -> list[Writer]:
    out = []
    for i in range(WRITERS):
        project = root / f"writer{i}"
        shutil.copytree(template, project, symlinks=True)
        n = i + WRITERS * phase
        write_params(project, {"train": {"lr": (1 + n) * 1.5e-3, "seed": 1000 + n}})
        out.append(Writer(project))
    return out


def writer_env(project: Path, server: MlflowServer) -> dict:
    # No MLflow HTTP retries: a lost server fails the stage at once (the resume is
    # what is tested); 30 s covers a slow answer under load.
    return env_for(project, MLFLOW_TRACKING_URI=server.url, **LOOPBACK,
                   MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="30",
                   PYTHONUNBUFFERED="1")


def history(server: MlflowServer, run_id: str, key: str) -> list[dict]:
    # A key with no rows yet comes back as {} (empty lists are left out of the JSON):
    # writer 0 may checkpoint before its first batch_loss rows reach the server.
    return server.get("/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key=key,
                      max_results=100_000).get("metrics", [])


def check_runs(server: MlflowServer, group: list[Writer],
               expected: dict[str, list[int]]) -> tuple[int, int, int]:
    """Every run FINISHED, every expected step exactly once, no other step; returns
    (metric points of every key, first and last metric timestamp in ms)."""
    points, first, last = 0, None, None
    for writer in group:
        run_id = writer.run_id
        got = server.get("/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
        assert got["info"]["status"] == "FINISHED", (writer.project, got["info"])
        for key, steps in expected.items():
            seen = sorted(m["step"] for m in history(server, run_id, key))
            assert seen == steps, (f"{writer.project.name} {run_id} {key}: "
                                   f"duplicates {sorted({s for s in seen if seen.count(s) > 1})}, "
                                   f"missing {sorted(set(steps) - set(seen))}")
        for key in ("best_val_loss", "best_val_step"):
            assert len(history(server, run_id, key)) == 1, (run_id, key)
        for metric in got["data"]["metrics"]:
            rows = history(server, run_id, metric["key"])
            points += len(rows)
            if not metric["key"].startswith(("system/", "val.", "train.")):  # train's own
                stamps = [int(m["timestamp"]) for m in rows]
                first = min([first or min(stamps), *stamps])
                last = max([last or 0, *stamps])
    return points, first, last


def check_champion(server: MlflowServer, group: list[Writer]) -> str:
    """The alias is on the version with the lowest val bits/char among the versions
    on the same val data (ties: the older), as registry.promote's rule says."""
    versions = server.get("/api/2.0/mlflow/model-versions/search",
                          filter=f"name = '{MODEL}'", max_results=1000)["model_versions"]
    tags = {v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])} for v in versions}
    by_run = {v["run_id"]: v["version"] for v in versions}
    for writer in group:  # each writer's version carries its evaluate's bits/char
        version = by_run[writer.run_id]
        measured = json.loads((writer.project / "reports/metrics.json").read_text())
        assert float(tags[version]["val.bits_per_char"]) == pytest.approx(
            measured["val"]["bits_per_char"], abs=1e-6)
    val_sha = {t["data.sha256.val.npy"] for t in tags.values()}
    assert len(val_sha) == 1, val_sha  # one val split: every version is a rival
    scored = [v for v in tags if "val.bits_per_char" in tags[v]]  # evaluated versions
    best = min(scored, key=lambda v: (float(tags[v]["val.bits_per_char"]), int(v)))
    alias = server.get("/api/2.0/mlflow/registered-models/alias", name=MODEL,
                       alias="champion")["model_version"]
    assert alias["version"] == best, (alias["version"], best, tags)
    return best


def requests_in(log: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method, path, _ in ACCESS_LINE.findall(log):
        endpoint = f"{method} {path.split('?')[0]}"
        counts[endpoint] = counts.get(endpoint, 0) + 1
    return counts


def evaluate_all(group: list[Writer], server: MlflowServer) -> None:
    """The evaluates at once: each promotes its version, racing for the alias."""
    for writer in group:
        writer.start("evaluate", writer_env(writer.project, server))
    for writer in group:
        code, out, err = writer.wait("evaluate")
        assert code == 0, f"{writer.project.name}: evaluate failed:\n{out}\n{err}"


def report(what: str, group: list[Writer], points: int, first: int, last: int,
           log_before: int, server: MlflowServer, wall_s: float) -> None:
    window_s = max(last - first, 1) / 1000
    log = server.log.read_text(errors="replace")[log_before:]
    counts = requests_in(log)
    total = sum(counts.values())
    batches = counts.get("POST /api/2.0/mlflow/runs/log-batch", 0)
    print(f"\n{what}: {len(group)} writers, {points} metric points in {window_s:.1f} s of "
          f"logging ({points / window_s:.0f} points/s), {total} requests "
          f"({total / window_s:.1f}/s; {batches} log-batch), phase wall time {wall_s:.0f} s")


def freeze_once_checkpointed(group: list[Writer], deadline: float) -> None:
    """SIGSTOP each writer as soon as it has a checkpoint (so its run too); return once
    all are frozen, none finished. 500 tiny steps take a few seconds: unfrozen, a fast
    writer could finish before a slow one's first checkpoint."""
    frozen: set[int] = set()
    while len(frozen) < len(group):
        assert time.monotonic() < deadline, "no checkpoints"
        for n, writer in enumerate(group):
            assert writer.proc.poll() is None, writer.log("train") + writer.project.joinpath(
                "train.err").read_text()
            if n not in frozen and writer.checkpoint() is not None:
                writer.proc.send_signal(signal.SIGSTOP)
                frozen.add(n)
        time.sleep(0.1)


@pytest.mark.slow
def test_many_writers_on_one_server(server, template, tmp_path):
    """WRITERS trains at once, then their evaluates at once (racing for the alias)."""
    group = writers(template, tmp_path, 0)
    log_before = len(server.log.read_text(errors="replace"))
    t0 = time.monotonic()
    for writer in group:
        writer.start("train", writer_env(writer.project, server))
    for writer in group:
        code, out, err = writer.wait("train")
        assert code == 0, f"{writer.project.name}: train failed:\n{out}\n{err}"
    train_wall = time.monotonic() - t0
    evaluate_all(group, server)
    points, first, last = check_runs(server, group, {**EXPECTED_STEPS, **EVALUATED})
    check_champion(server, group)
    report("steady", group, points, first, last, log_before, server, train_wall)


@pytest.mark.slow
def test_server_killed_and_restarted_mid_training(server, template, tmp_path):
    """The server's process group SIGKILLed once every writer has a checkpoint (and a
    run), restarted on the same port. Writer 0 is SIGKILLed at the same moment (its
    machine went down too): its rerun re-sends rows the server already holds."""
    group = writers(template, tmp_path, 1)
    log_before = len(server.log.read_text(errors="replace"))
    t0 = time.monotonic()
    for writer in group:
        writer.start("train", writer_env(writer.project, server))
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    from gptpipe import checkpoints

    try:
        freeze_once_checkpointed(group, deadline)
        # Writer 0 dies once the server holds the rows of its last checkpoint: its
        # rerun re-sends them (the checkpoint keeps them), and must not log them twice.
        # It stays frozen while we look, so it cannot checkpoint again between the look
        # and the kill (its steps are milliseconds: a checkpoint every 50 can fall in
        # that gap); its tracking process still sends.
        while True:
            saved = checkpoints.load(group[0].checkpoint())
            step, run_id = int(saved["trainer"]["step"]), saved["run_id"]
            if any(m["step"] == step for m in history(server, run_id, "batch_loss")):
                group[0].proc.kill()
                break
            group[0].proc.send_signal(signal.SIGCONT)
            time.sleep(0.1)
            group[0].proc.send_signal(signal.SIGSTOP)
            assert time.monotonic() < deadline and group[0].proc.poll() is None, "writer 0"
    except BaseException:
        for writer in group:  # a frozen writer would never exit on its own
            writer.proc.kill()
        raise
    server.kill()
    for writer in group[1:]:  # they go on training against a dead server
        writer.proc.send_signal(signal.SIGCONT)
    saved = checkpoints.load(group[0].checkpoint())
    assert int(saved["trainer"]["step"]) == step, "writer 0 checkpointed again: kill sooner"
    killed_at = time.monotonic() - t0
    server.start()
    reruns = {}  # writer -> (the checkpoint's step, its run id)
    for n, writer in enumerate(group):
        code, out, err = writer.wait("train")
        if code == 0:  # it did not need the server while it was down
            continue
        if n:  # writer 0 was SIGKILLed: no message
            last_line = err.strip().splitlines()[-1]
            assert last_line == STOPPED.format(url=server.url), err
            assert "Traceback" not in err, err
        saved = checkpoints.load(writer.checkpoint())
        reruns[n] = int(saved["trainer"]["step"]), saved["run_id"]
        writer.start("train", writer_env(writer.project, server), name="train-rerun")
    for n, (step, run_id) in reruns.items():
        code, out, err = group[n].wait("train-rerun")
        assert code == 0, f"writer{n}: the rerun failed:\n{out}\n{err}"
        assert f"train: resuming from step {step} " in out, out
        assert group[n].run_id == run_id
    resumed = len(reruns)
    train_wall = time.monotonic() - t0
    points, first, last = check_runs(server, group, EXPECTED_STEPS)
    report(f"restart (killed {killed_at:.0f} s in, {resumed} of {WRITERS} resumed)",
           group, points, first, last, log_before, server, train_wall)
    assert resumed >= 2, "writer 0 and at least one other must have resumed"
