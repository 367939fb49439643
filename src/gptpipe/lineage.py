"""Where a run came from: the git commit, the dirty flag, DVC stage hashes.

Read at train time and stored as MLflow tags; `gptpipe lineage RUN_ID` reads
them back and says how to restore that state.
"""
from __future__ import annotations

import hashlib
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


def _git(args: list[str], cwd: Path, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() if strip else out.stdout


def pipeline_outputs(root: Path) -> set[str]:
    """What the pipeline itself writes, relative to `root`: dvc.lock, every out, metric
    and plot dvc.yaml declares, and the .gitignore DVC keeps next to a cached out."""
    paths = {"dvc.lock"}
    try:
        pipeline = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return paths
    for stage in (pipeline.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind) or []:
                out = next(iter(item)) if isinstance(item, dict) else item
                out = Path(str(out)).as_posix().rstrip("/")
                paths.add(out)
                paths.add((Path(out).parent / ".gitignore").as_posix())
    paths.discard(".gitignore")  # the project's own, a person's file
    return paths


def _changed_paths(status: str) -> list[str]:
    """The paths in `git status --porcelain -z` output (both sides of a rename)."""
    entries, paths = status.split("\0"), []
    while entries:
        entry = entries.pop(0)
        if entry:
            paths.append(entry[3:])
            if entry[0] in "RC" and entries:
                paths.append(entries.pop(0))
    return paths


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """The commit and whether a person changed tracked files since: the pipeline's
    own bookkeeping (dvc.lock, its outputs) does not make the tree dirty."""
    cwd = cwd or Path.cwd()
    commit = _git(["rev-parse", "HEAD"], cwd) or "unknown"
    project = next((d for d in (cwd, *cwd.resolve().parents) if (d / "dvc.yaml").is_file()),
                   cwd)
    prefix = _git(["rev-parse", "--show-prefix"], project)  # the project's folder in git
    status = _git(["status", "--porcelain", "-z", "--untracked-files=no"], cwd, strip=False)
    if status is None or prefix is None:
        return {"git.commit": commit, "git.dirty": "unknown"}
    ours = {prefix + path for path in pipeline_outputs(project)}
    mine = [path for path in _changed_paths(status)
            if not any(path == out or path.startswith(out + "/") for out in ours)]
    return {"git.commit": commit, "git.dirty": "true" if mine else "false"}


def stage_hashes(lock_file: Path = Path("dvc.lock"),
                 exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """The output hashes DVC recorded for each stage (but `exclude`d ones), as
    `dvc.<stage>.<path>`."""
    try:
        lock = yaml.safe_load(lock_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for stage, entry in (lock.get("stages") or {}).items():
        if stage in exclude:
            continue
        for item in entry.get("outs") or []:
            digest = item.get("md5") or item.get("hash") or ""
            out[f"dvc.{stage}.{item.get('path')}"] = str(digest)
    return out


def run_ref_md5(run_id: str, experiment: str) -> str:
    """The md5 DVC records for reports/mlflow_run.json as train writes it for this run."""
    from .files import to_json

    return hashlib.md5(to_json({"run_id": run_id, "experiment": experiment})
                       .encode()).hexdigest()


def commit_recording(md5: str, cwd: Path | None = None) -> str | None:
    """The first commit (any branch, tag or `dvc exp`) whose dvc.lock records `md5`:
    the one to check out to get a run's outputs back (not the commit it trained on,
    whose dvc.lock, if any, holds the run before)."""
    out = _git(["log", "--exclude=refs/stash", "--all", "--reverse", "--format=%H",
                "-S", md5, "--", "dvc.lock"], cwd or Path.cwd())
    return out.split()[0] if out else None


def tree_matches(commit: str, cwd: Path | None = None) -> bool:
    """True when the tracked files (code, params, dvc.lock) are as in `commit`."""
    return _git(["diff", "--quiet", commit, "--"], cwd or Path.cwd()) is not None
