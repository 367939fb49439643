"""pytest's hooks and the shared fixtures; the helpers are in helpers.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import TINYSHAKESPEARE, make_project, tiny_corpus_note, tiny_text


def pytest_report_header(config) -> str:
    return tiny_corpus_note()


def pytest_terminal_summary(terminalreporter) -> None:
    if not TINYSHAKESPEARE.exists():  # said again at the end, also under -q
        terminalreporter.write_line(tiny_corpus_note())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny gptpipe project on the first 40 kB of the lecture's corpus."""
    return make_project(tmp_path / "proj", corpus=tiny_text())


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A project with the stages' code and no corpus, built once per test module; a
    module overrides it to start its tests from another state (e.g. downloaded)."""
    return make_project(tmp_path_factory.mktemp("template") / "proj", corpus="unused\n")


@pytest.fixture
def proj(template: Path, tmp_path: Path) -> Path:
    """This module's `template`, copied afresh for each test."""
    return Path(shutil.copytree(template, tmp_path / "proj", symlinks=True))
