"""Where a run came from: the git commit, the dirty flag, DVC stage hashes.

Read at train time and stored as MLflow tags; `gptpipe lineage RUN_ID` reads
them back and says how to restore that state.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml


def repo_root() -> Path:
    """The project root: DVC_ROOT under DVC (also in `dvc exp` temp dirs), else git's."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    top = _git(["rev-parse", "--show-toplevel"], Path.cwd())
    return Path(top).resolve() if top else Path.cwd().resolve()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(cwd: Path | None = None) -> dict[str, str]:
    cwd = cwd or Path.cwd()
    commit = _git(["rev-parse", "HEAD"], cwd) or "unknown"
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    dirty = "unknown" if status is None else ("true" if status else "false")
    return {"git.commit": commit, "git.dirty": dirty}


def stage_hashes(lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """The output hashes DVC recorded for each stage, as `dvc.<stage>.<path>`."""
    try:
        lock = yaml.safe_load(lock_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for item in entry.get("outs") or []:
            digest = item.get("md5") or item.get("hash") or ""
            out[f"dvc.{stage}.{item.get('path')}"] = str(digest)
    return out
