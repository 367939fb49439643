"""Sharing a trained pipeline through a DVC remote: repro, push, commit; a fresh
`git clone` + `dvc pull` is up to date and `dvc repro` reruns nothing, even
though the clone has no mlflow.db (evaluate and sample must not rerun)."""
from __future__ import annotations

import pytest

from helpers import dvc_status, env_for, make_project, run, stages_run, tiny_text

OUTS = ("data/raw", "data/clean/corpus.txt", "data/tokens/tokens.npy",
        "data/tokens/tokenizer.json", "data/split/train.npy", "data/split/val.npy",
        "models/model.pt", "reports/samples.md", "reports/samples.json",
        "reports/mlflow_run.json", "reports/loss_curve.png")


@pytest.mark.slow
def test_push_then_clone_and_pull_is_up_to_date_and_reruns_nothing(tmp_path):
    project = make_project(tmp_path / "proj", corpus=tiny_text())
    remote = tmp_path / "remote"
    assert len(stages_run(run(["dvc", "repro"], project).stdout)) == 8  # init + the seven
    run(["dvc", "remote", "add", "-d", "local", str(remote)], project)
    push = run(["dvc", "push"], project)
    assert "pushed" in push.stdout, push.stdout
    assert any(remote.rglob("*")), "nothing in the remote"
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "trained"], project)
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    # mlflow.db, mlartifacts/ and the outs are gitignored: not in the clone
    tracked = run(["git", "ls-files"], project).stdout.split()
    assert "dvc.lock" in tracked and "mlflow.db" not in tracked
    # in git: only the init stage's pin of train.init_from (like a .dvc import file)
    assert [t for t in tracked if t.startswith(("models/", "data/"))
            and not t.endswith(".gitignore")] == ["models/init/source.json"], tracked

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "mlflow.db").exists() and not (clone / "models/model.pt").exists()
    # The clone's own (empty) sqlite store: if a stage did run, it would fail
    # loudly on the missing run id rather than write into the original's store.
    env = env_for(clone)
    pull = run(["dvc", "pull"], clone, env=env)
    assert "failed" not in (pull.stdout + pull.stderr).lower(), pull.stdout + pull.stderr
    for out in OUTS:
        assert (clone / out).exists(), out
        if (project / out).is_file():
            assert (clone / out).read_bytes() == (project / out).read_bytes(), out

    assert dvc_status(clone, env) == {}
    repro = run(["dvc", "repro"], clone, env=env)
    assert stages_run(repro.stdout) == [], repro.stdout
    assert "Stage 'sample' didn't change, skipping" in repro.stdout, repro.stdout
    assert not (clone / "mlflow.db").exists(), "a stage opened MLflow in the clone"
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
