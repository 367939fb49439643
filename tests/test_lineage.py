"""`gptpipe lineage RUN_ID`: the commit a run came from, the command that brings
its code and outputs back (which must really work), and whether the workspace
still matches it. Real git, DVC and MLflow in a temp project."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from helpers import TINY_PARAMS, dvc_status, make_project, run, run_id_of, tiny_text
from projects import ROOT, merge, write_params
from gptpipe.lineage import git_state

MATCHES = "the workspace matches this run"


def lineage(project, run_id: str) -> str:
    return run(["gptpipe", "lineage", run_id], project, timeout=120).stdout


def model_sha256(project) -> str:
    return hashlib.sha256((project / "models/model.pt").read_bytes()).hexdigest()


def head(project) -> str:
    return run(["git", "rev-parse", "HEAD"], project).stdout.strip()


def commit_all(project, message: str) -> str:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message], project)
    return head(project)


@pytest.mark.slow
def test_lineage_names_the_commit_restores_the_run_and_sees_changes(tmp_path):
    project = make_project(tmp_path / "proj", corpus=tiny_text())
    trained_on = head(project)
    run(["dvc", "repro"], project, timeout=300)
    first, first_model = run_id_of(project), model_sha256(project)

    out = lineage(project, first)  # not committed yet: nothing to check out
    assert f"git commit {trained_on}" in out and "(the working tree was dirty)" not in out
    assert "dvc checkout" not in out and MATCHES in out

    c1 = commit_all(project, "trained")
    out = lineage(project, first)
    assert f"git commit {trained_on}" in out
    assert f"git checkout {c1} && dvc checkout" in out  # the commit holding its dvc.lock
    assert MATCHES in out

    # A second run (another seed; evaluate and sample skipped to save time),
    # committed: it matches, the first no longer does.
    write_params(project, {"train": {"seed": 7}})
    run(["dvc", "repro", "train"], project, timeout=300)
    second = run_id_of(project)
    assert second != first and model_sha256(project) != first_model
    c2 = commit_all(project, "seed 7")
    out = lineage(project, second)
    assert f"git commit {c1}  (the working tree was dirty)" in out  # params.yaml edited
    assert f"git checkout {c2} && dvc checkout" in out and MATCHES in out
    out = lineage(project, first)
    assert f"git checkout {c1} && dvc checkout" in out
    assert "the workspace does not match: tracked files differ" in out

    # The printed command brings the first run back, model bytes and all.
    run(f"git checkout -q {c1} && dvc checkout", project, timeout=120)
    assert run_id_of(project) == first and model_sha256(project) == first_model
    assert MATCHES in lineage(project, first)

    # A new corpus through the data stages: no longer the run's data.
    (project / "corpus" / "corpus.txt").write_text(tiny_text(30_000), encoding="utf-8")
    run(["dvc", "repro", "split"], project, timeout=120)
    differ = re.search(r"the workspace does not match: (.*)", lineage(project, first))
    assert differ, "lineage did not notice the new data"
    assert "dvc.split.data/split/train.npy" in differ.group(1)
    assert "dvc.download.data/raw" in differ.group(1)

    # An unknown run id: one line, non-zero exit.
    unknown = run(["gptpipe", "lineage", "0" * 32], project, check=False, timeout=120)
    assert unknown.returncode != 0
    lines = [line for line in unknown.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gptpipe: error: run 0000"), unknown.stderr
    assert "not found" in lines[0] and "Traceback" not in unknown.stderr


# --- git.dirty: a person's changes, not the pipeline's bookkeeping ------------------------


def test_dirty_ignores_the_pipelines_own_files_but_not_a_persons(tmp_path):
    repo = tmp_path / "repo"
    project = repo / "sub"  # a DVC project in a folder of its git repo
    (project / "src").mkdir(parents=True)
    shutil.copy2(ROOT / "dvc.yaml", project / "dvc.yaml")
    files = {"src/code.py": "x = 1\n", "params.yaml": "train: {}\n", "dvc.lock": "a\n",
             "reports/metrics.json": "{}\n", "reports/train_losses.csv": "step\n",
             "reports/.gitignore": "/train.json\n", "data/.gitignore": "/raw\n",
             "README.md": "hello\n"}
    for path, text in files.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(text)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "files"], repo)
    assert git_state(project)["git.dirty"] == "false"

    # what `dvc repro` rewrites: the lock, outs, metrics, plots, DVC's .gitignore files
    for path in ("dvc.lock", "reports/metrics.json", "reports/train_losses.csv",
                 "reports/.gitignore", "data/.gitignore"):
        (project / path).write_text("rewritten by the pipeline\n")
    (project / "reports" / "samples.md").write_text("untracked output\n")
    (project / "notes.txt").write_text("an untracked file of mine\n")
    assert git_state(project)["git.dirty"] == "false"
    assert git_state(project / "src")["git.dirty"] == "false"  # from a subfolder too

    for path in ("src/code.py", "params.yaml", "README.md"):
        original = (project / path).read_text()
        (project / path).write_text(original + "# edited\n")
        assert git_state(project)["git.dirty"] == "true", path
        (project / path).write_text(original)
    run(["git", "rm", "-q", "--cached", "sub/README.md"], repo)  # staged: dirty too
    assert git_state(project)["git.dirty"] == "true"


def clone_of_the_repo(dest: Path) -> Path:
    """What a fresh clone holds: the repo's tracked files, as they are now, in a new
    git repo with one commit (no DVC cache, no MLflow store, no outputs)."""
    tracked = run(["git", "ls-files", "-z"], ROOT).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():  # (a file deleted but not yet committed: gone)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@gptpipe.local"], dest)
    run(["git", "config", "user.name", "gptpipe test"], dest)
    commit_all(dest, "clone")
    return dest


def git_tags(project: Path, run_id: str) -> dict[str, str]:
    with sqlite3.connect(project / "mlflow.db") as db:
        return dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))


@pytest.mark.slow
def test_a_fresh_clone_runs_clean_and_its_committed_lock_restores_the_run(tmp_path):
    project = clone_of_the_repo(tmp_path / "clone")
    assert not (project / "dvc.lock").exists(), "the repo ships no dvc.lock (docs/reproducibility.md says why)"
    # A person's own config (tiny, on a corpus file), committed before the run.
    (project / "corpus" / "corpus.txt").write_text(tiny_text(20_000), encoding="utf-8")
    write_params(project, merge(TINY_PARAMS, {
        "data": {"source": "corpus/corpus.txt"},
        "train": {"max_iters": 12, "eval_interval": 6, "checkpoint_interval": 6},
        "sample": {"max_new_tokens": 16}}))
    config = commit_all(project, "my config")

    # No lock: no stage claims to have run with other code or params; every stage
    # simply has not run yet (DVC, with no lock to compare, lists all its deps as
    # changed and all its outputs as deleted).
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert set(status) == set(stages), status
    for name, changes in status.items():
        outs = next(c["changed outs"] for c in changes if "changed outs" in c)
        assert set(outs.values()) == {"deleted"}, (name, changes)

    result = run(["bash", "scripts/run_pipeline.sh"], project, timeout=600)
    assert "==> metrics" in result.stdout
    run_id = run_id_of(project)
    assert git_tags(project, run_id)["git.commit"] == config
    assert git_tags(project, run_id)["git.dirty"] == "false"
    # the run touched no file of the clone: it only added its lock (which DVC's
    # core.autostage stages) and its outputs
    changed = run(["git", "status", "--porcelain"], project).stdout.splitlines()
    assert "A  dvc.lock" in changed, changed
    assert all(line.startswith("?? ") for line in changed if line != "A  dvc.lock"), changed
    out = lineage(project, run_id)
    assert f"git commit {config}" in out and "(the working tree was dirty)" not in out
    assert "no commit holds this run's dvc.lock" in out

    # Commit your own dvc.lock (and reports/): the run is restorable from it.
    recorded = commit_all(project, "my run")
    out = lineage(project, run_id)
    assert f"git checkout {recorded} && dvc checkout" in out and MATCHES in out
    assert dvc_status(project) == {}
