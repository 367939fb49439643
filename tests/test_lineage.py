"""`gptpipe lineage RUN_ID`: the commit a run came from, the command that brings
its code and outputs back (which must really work), and whether the workspace
still matches it. Real git, DVC and MLflow in a temp project."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from conftest import make_project, run, tiny_text, write_params

MATCHES = "the workspace matches this run"


def lineage(project, run_id: str) -> str:
    return run(["gptpipe", "lineage", run_id], project, timeout=120).stdout


def run_id_of(project) -> str:
    return json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]


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
