"""Temp gptpipe projects: a copy of the repo's pipeline (dvc.yaml, params.yaml,
stages/, src/, corpus/) in a folder, with its params overridden and git + DVC
initialised. The one helper of the tests (helpers.py) and the benchmarks
(benchmarks/, which import this file by path); not part of the product."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")
PIPELINE_FOLDERS = ("stages", "src", "corpus")


def copy_pipeline(dest: Path) -> Path:
    """The repo's pipeline files in `dest` (created)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        shutil.copy2(ROOT / name, dest / name)
    for folder in PIPELINE_FOLDERS:
        shutil.copytree(ROOT / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def merge(base: dict, overrides: dict | None) -> dict:
    """`base` with `overrides` applied, nested dicts merged key by key."""
    out = dict(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def write_params(project: Path, *overrides: dict, base: Path | None = None) -> dict:
    """Apply `overrides` to the project's params.yaml (or to `base`), write it, return it."""
    params = load_yaml(base or project / "params.yaml")
    for over in overrides:
        params = merge(params, over)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def project_env(bin_dir: Path, mlflow_db: Path | None) -> dict:
    """The environment stages run in: this Python's tools first on PATH, MLflow in
    `mlflow_db` (when given), no debug tracebacks."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if mlflow_db is not None:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{mlflow_db}"
    env.pop("GPTPIPE_DEBUG", None)
    return env


def init_git_dvc(run: Callable[[list[str]], object]) -> None:
    """git and DVC in a project, everything committed; `run` runs a command in it."""
    run(["git", "init", "-q"])
    run(["git", "config", "user.email", "test@gptpipe.local"])
    run(["git", "config", "user.name", "gptpipe test"])
    run(["dvc", "init", "-q"])
    run(["dvc", "config", "core.analytics", "false"])
    run(["git", "add", "-A"])
    run(["git", "commit", "-q", "-m", "init"])
