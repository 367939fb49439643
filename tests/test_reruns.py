"""DVC reruns exactly the stages a change reaches: real `dvc repro`, one project
reused across the steps (each step is the state the previous one left)."""
from __future__ import annotations

import pytest

from helpers import dvc_status, make_project, run, stages_run, tiny_text
from projects import write_params

ALL = ["init", "download", "clean", "tokenize", "split", "train", "evaluate", "sample"]


def ran(project) -> list[str]:
    """The stages a `dvc repro` ran, in order."""
    return stages_run(run(["dvc", "repro"], project, timeout=300).stdout)


def with_typographic_quotes(text: str) -> str:
    """clean.ascii_punctuation folds ’ back to ', so turning it on changes the corpus."""
    assert "'" in text
    return text.replace("'", "\u2019")


@pytest.mark.slow
def test_each_change_reruns_exactly_the_stages_it_reaches(tmp_path):
    project = make_project(tmp_path / "proj", corpus=with_typographic_quotes(tiny_text()))
    assert ran(project) == ALL
    assert ran(project) == []  # no change: nothing runs

    write_params(project, {"sample": {"temperature": 0.5}})
    assert ran(project) == ["sample"]

    write_params(project, {"evaluate": {"batch_size": 32}})
    assert ran(project) == ["evaluate"]

    corpus = (project / "data/clean/corpus.txt").read_bytes()
    write_params(project, {"clean": {"ascii_punctuation": True}})
    assert ran(project) == ALL[2:]  # clean and everything after it
    assert (project / "data/clean/corpus.txt").read_bytes() != corpus
    assert "\u2019" not in (project / "data/clean/corpus.txt").read_text(encoding="utf-8")

    source = project / "corpus" / "corpus.txt"  # where data.source points
    source.write_text(with_typographic_quotes(tiny_text(30_000)), encoding="utf-8")
    assert ran(project) == ALL[1:]  # download and everything after it
    assert ran(project) == []


@pytest.mark.slow
def test_your_own_text_under_dvc_add(tmp_path):
    """docs/your-text.md, "Keep your corpus under DVC": `dvc add corpus/gibran.txt`, commit the .dvc file, point
    data.source at it. A text change reruns every stage from download on; a sample.*
    change reruns only sample; no change runs nothing."""
    import yaml

    project = make_project(tmp_path / "proj")
    text = project / "corpus" / "gibran.txt"
    text.write_text(tiny_text(30_000), encoding="utf-8")
    run(["dvc", "add", "corpus/gibran.txt"], project)
    assert "/gibran.txt" in (project / "corpus" / ".gitignore").read_text()  # not in git
    write_params(project, {"data": {"source": "corpus/gibran.txt"}})
    run(["git", "add", "corpus/gibran.txt.dvc", "corpus/.gitignore", "params.yaml"], project)
    run(["git", "commit", "-qm", "my corpus under DVC"], project)

    assert ran(project) == ALL
    raw = project / "data" / "raw" / "gibran.txt"
    assert raw.read_bytes() == text.read_bytes()
    assert ran(project) == []
    write_params(project, {"sample": {"temperature": 0.5}})
    assert ran(project) == ["sample"]

    text.write_text(tiny_text(34_000), encoding="utf-8")  # the text changes
    run(["dvc", "add", "corpus/gibran.txt"], project)
    recorded = yaml.safe_load((project / "corpus" / "gibran.txt.dvc").read_text())
    assert recorded["outs"][0]["size"] == text.stat().st_size
    assert ran(project) == ALL[1:]
    assert raw.read_bytes() == text.read_bytes()
    assert ran(project) == []
    assert dvc_status(project) == {}
