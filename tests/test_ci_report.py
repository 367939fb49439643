"""CI's job summary and decisions (gptpipe.ci) without DVC, git or MLflow: plain
dicts as `dvc metrics diff --json` / `dvc params diff --json` / `dvc status --json`
give them, and the markdown a user sees in the job summary.
tests/test_ci_retrain.py runs the whole script for real."""
from __future__ import annotations

from pathlib import Path

import pytest

from gptpipe.ci.decide import choose_base, force_download, stages_run
from gptpipe.ci.report import (Curves, Report, Runs, describe_remote, diff_table, render,
                               warnings)
from gptpipe.cli import main as cli_main

METRICS_DIFF = {"reports/metrics.json": {
    "val.loss": {"old": 2.4612345678, "new": 2.1, "diff": -0.3612345678},
    "train.loss": {"old": 2.3, "new": 2.0, "diff": -0.3},
}}
PARAMS_DIFF = {"params.yaml": {"train.lr": {"old": 0.001, "new": 0.003}}}


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table_rows(markdown: str) -> list[list[str]]:
    """A markdown table's rows as cells, header first, without the --- line."""
    rows = [cells(line) for line in markdown.splitlines() if line.startswith("|")]
    return [rows[0], *rows[2:]]


def section(report: str, title: str) -> str:
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0].strip()


def bullets(report: str) -> list[str]:
    return [line for line in report.split("\n## ", 1)[0].splitlines() if line.startswith("- ")]


# ---- the diffs ----------------------------------------------------------------

def test_metrics_rows_are_dvcs_columns_sorted_and_rounded():
    header, *rows = table_rows(diff_table(METRICS_DIFF, "metrics", "origin/main"))
    assert header == ["Path", "Metric", "origin/main", "workspace", "Change"]
    assert rows == [["reports/metrics.json", "train.loss", "2.3", "2.0", "-0.3"],
                    ["reports/metrics.json", "val.loss", "2.46123", "2.1", "-0.36123"]]


def test_params_rows_have_no_change_column():
    header, *rows = table_rows(diff_table(PARAMS_DIFF, "params", "HEAD"))
    assert header == ["Path", "Param", "HEAD", "workspace"]
    assert rows == [["params.yaml", "train.lr", "0.001", "0.003"]]


def test_no_change_is_a_sentence_not_an_empty_table():
    assert diff_table({}, "metrics", "HEAD") == "_No metrics changed against `HEAD`._"
    assert diff_table({"params.yaml": {}}, "params", "abc1234") == \
        "_No params changed against `abc1234`._"


def test_a_base_without_metrics_shows_a_dash():
    # the repo ships no reports: the base's side of every metric is missing
    diff = {"reports/metrics.json": {"val.loss": {"old": None, "new": 2.1}}}
    _header, row = table_rows(diff_table(diff, "metrics", "HEAD"))
    assert row == ["reports/metrics.json", "val.loss", "-", "2.1", "-"]


def test_no_base_and_a_failed_diff_are_said():
    assert diff_table(METRICS_DIFF, "metrics", "") == "_No base revision to compare with._"
    assert diff_table("ERROR: unexpected error", "params", "HEAD") == \
        "_`dvc params diff` failed: ERROR: unexpected error_"


def test_a_pipe_in_a_value_does_not_break_the_table():
    diff = {"params.yaml": {"data.source": {"old": "a|b", "new": "c"}}}
    row = diff_table(diff, "params", "HEAD").splitlines()[-1]
    assert row == "| params.yaml | data.source | a\\|b | c |"


# ---- the whole report ---------------------------------------------------------

def full_report(**overrides) -> Report:
    report = Report(base="origin/main", base_sha="abc1234", head_sha="def5678",
                    ran=["init", "train", "evaluate"], restored=["download"],
                    remote=describe_remote("storage", "s3://bucket/gptpipe"), pushed=True,
                    tracking_uri="https://mlflow.example.com", metrics=METRICS_DIFF,
                    params={}, runs=Runs(new="run-new", base="run-base",
                                         champion_before="run-base",
                                         table="| run_id | champion |\n| --- | --- |\n"
                                               "| run-new | yes |\n"),
                    curves=Curves(path="ci-artifacts/loss_curves.png", with_base=True))
    for key, value in overrides.items():
        setattr(report, key, value)
    return report


def test_the_report_a_user_sees():
    text = render(full_report())
    assert text.startswith("# Retraining report\n\n")
    assert bullets(text) == [
        "- Base: `origin/main` (abc1234); HEAD: `def5678` plus the retrained workspace",
        "- Stages run: init, train, evaluate",
        "- Outputs restored, not rerun (DVC cache or remote): download",
        "- Outputs and run cache pushed to DVC remote 'storage' (s3://bucket/gptpipe)",
        "- MLflow: https://mlflow.example.com"]
    assert [line.split(" |")[0] for line in text.splitlines() if line.startswith("## ")] == \
        ["## Metrics diff", "## Params diff", "## MLflow runs", "## Loss curves"]
    assert table_rows(section(text, "Metrics diff"))[1][1] == "train.loss"
    assert section(text, "Params diff") == "_No params changed against `origin/main`._"
    assert section(text, "MLflow runs").splitlines()[0] == (
        "New run `run-new`; the base's run: `run-base`; the champion before this job: "
        "`run-base`.")
    assert "| run-new | yes |" in section(text, "MLflow runs")
    assert section(text, "Loss curves") == \
        "Loss curves (base dashed, new solid): `ci-artifacts/loss_curves.png`"
    assert warnings(full_report()) == []


def test_nothing_ran_and_nothing_new():
    text = render(full_report(ran=[], restored=[], runs=Runs(new="r1", base="r1")))
    assert "- Stages run: none (everything was up to date)" in bullets(text)
    assert not any(b.startswith("- Outputs restored") for b in bullets(text))
    assert section(text, "MLflow runs") == "_No new MLflow run: the model is the base's._"


def test_no_remote_is_a_warning_in_the_summary_and_the_log():
    report = full_report(remote=None, pushed=False)
    assert any(b.startswith("- **Warning: no DVC remote is configured.**")
               for b in bullets(render(report)))
    assert warnings(report) == [
        "no DVC remote is configured: the outputs of this dvc.lock cannot be pulled by anyone"]
    not_pushed = render(full_report(pushed=False))
    assert ("- Outputs not pushed to DVC remote 'storage' (s3://bucket/gptpipe) (no --commit)"
            in bullets(not_pushed))


@pytest.mark.parametrize("uri, shown", [
    ("https://alice:s3cr3t@mlflow.example.com/", "https://***@mlflow.example.com/"),
    # a password holding '@': everything up to the last '@' goes
    ("https://alice:p@ss@mlflow.example.com:5000", "https://***@mlflow.example.com:5000"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    (None, "mlflow.db (sqlite; no MLFLOW_TRACKING_URI)"),
])
def test_the_tracking_uri_is_shown_without_credentials(uri, shown):
    text = render(full_report(tracking_uri=uri))
    assert f"- MLflow: {shown}" in bullets(text)
    assert "s3cr3t" not in text and "p@ss" not in text


def test_the_remote_url_is_shown_without_credentials():
    assert describe_remote("storage", "s3://key:se@cret@bucket/x") == \
        "DVC remote 'storage' (s3://***@bucket/x)"


def test_no_base_at_all():
    text = render(full_report(base="", base_sha=None, head_sha="none"))
    assert bullets(text)[0] == "- Base: none (no commit yet); HEAD: `none` plus the retrained workspace"
    assert section(text, "Metrics diff") == "_No base revision to compare with._"
    assert section(text, "Params diff") == "_No base revision to compare with._"


def test_an_unwatched_source_is_said():
    text = render(full_report(unwatched_source="/data/plays.txt"))
    assert any(b.startswith("- data.source `/data/plays.txt` is not watched by DVC")
               for b in bullets(text))
    assert not any("data.source" in b for b in bullets(render(full_report())))


def test_runs_and_curves_that_could_not_be_had_are_said():
    text = render(full_report(runs=Runs(new="r2", error="UserError: server\nunreachable"),
                              curves=Curves(error="UserError: bad.csv: not a csv")))
    runs = section(text, "MLflow runs")
    assert "the base's run: `none`; the champion before this job: `none`." in runs
    assert runs.endswith("_`gptpipe runs` failed: UserError: server unreachable_")
    assert section(text, "Loss curves") == \
        "_Could not draw the loss curves: UserError: bad.csv: not a csv_"
    assert section(render(full_report(curves=Curves())), "Loss curves") == \
        "_No loss curves: no reports/train_losses.csv._"
    alone = section(render(full_report(curves=Curves(path="x/loss_curves.png"))), "Loss curves")
    assert alone.endswith("_The base has no committed reports/train_losses.csv: the new "
                          "curves alone._")


# ---- the decisions ------------------------------------------------------------

@pytest.fixture
def in_project(tmp_path, monkeypatch) -> Path:
    (tmp_path / "corpus").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("source, forced", [
    ("shakespeare", False),                       # embedded: changes only with data.*
    ("corpus/corpus.txt", False),                 # a dep of the download stage
    ("corpus", False),
    ("./corpus/sub/more.txt", False),
    ("corpus/../elsewhere.txt", True),            # resolves outside corpus/
    ("elsewhere/plays.txt", True),
    ("/srv/texts/plays.txt", True),
    ("https://example.com/input.txt", True),      # the text behind a URL can change
    ("HTTP://example.com/input.txt", True),
    ("file://localhost/srv/texts/plays.txt", True),
    ("file://otherhost/corpus/x.txt", True),      # another machine's file
])
def test_the_download_is_forced_when_dvc_cannot_watch_the_source(in_project, source, forced):
    assert force_download(source) is forced


def test_a_file_url_inside_corpus_is_watched(in_project):
    inside = (in_project / "corpus" / "corpus.txt").as_uri()
    assert inside.startswith("file:///")
    assert force_download(inside) is False
    assert force_download((in_project / "other.txt").as_uri()) is True


def test_gptpipe_ci_source_says_why_it_forces(in_project, capsys):
    (in_project / "params.yaml").write_text("data:\n  source: https://u:pw@example.com/t.txt\n")
    cli_main(["ci", "source"])
    out = capsys.readouterr().out
    assert out.startswith("data.source (https://***@example.com/t.txt) is not watched by DVC")
    (in_project / "params.yaml").write_text("data:\n  source: corpus/c.txt\n")
    cli_main(["ci", "source"])
    assert capsys.readouterr().out == ""


def commits(**names: str):
    return lambda rev: names.get(rev)


@pytest.mark.parametrize("arg, github_base_ref, known, head, expected", [
    ("abc", "", {"abc": "a" * 40}, "h" * 40, "abc"),
    ("", "", {"origin/main": "m" * 40}, "h" * 40, "origin/main"),
    ("0000000000000000000000000000000000000000", "", {"origin/main": "m" * 40}, "h" * 40,
     "origin/main"),                              # a new branch's "before"
    ("gone", "", {}, "h" * 40, "HEAD"),           # not a commit here: the default
    ("", "dev", {"origin/dev": "d" * 40, "origin/main": "m" * 40}, "h" * 40, "origin/dev"),
    ("", "", {"origin/main": "h" * 40}, "h" * 40, "HEAD"),  # on the default branch
    ("", "", {}, None, ""),                       # no commit yet
])
def test_the_base(arg, github_base_ref, known, head, expected):
    said = []
    base = choose_base(arg, resolve=commits(**known), head=head,
                       github_base_ref=github_base_ref, warn=said.append)
    assert base == expected
    assert bool(said) == (arg == "gone")


def test_stages_run_from_status_and_lock():
    before = {"train": {"md5": "1"}, "evaluate": {"md5": "2"}, "init": {"md5": "0"}}
    after = {"init": {"md5": "0"}, "train": {"md5": "9"}, "evaluate": {"md5": "2"}}
    status = {"init": ["always changed"], "train": [{"changed deps": {"x": "modified"}}],
              "evaluate": [{"changed outs": {"reports/metrics.json": "deleted"}}]}
    assert stages_run(status, before, after) == (["init", "train"], ["evaluate"])
    # nothing out of date: only the always_changed init runs
    assert stages_run({"init": ["always changed"]}, after, after) == (["init"], [])
    # a forced download ran even though it wrote the same lock entry
    lock = {"download": {"md5": "d"}}
    assert stages_run({}, lock, lock, forced_download=True) == (["download"], [])
    # a fresh project: no lock before, every stage ran
    assert stages_run({"train": ["x"]}, {}, after)[0] == ["init", "train", "evaluate"]
