"""The few git questions CI asks: a revision's (short) sha, a file at a revision."""
from __future__ import annotations

import subprocess


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True)


def resolve(rev: str) -> str | None:
    """The commit `rev` names (full sha), or None when it names none here."""
    if not rev:
        return None
    out = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if out.returncode != 0:
        return None
    return out.stdout.decode().strip() or None


def short(rev: str) -> str | None:
    if not rev:
        return None
    out = _git("rev-parse", "--short", f"{rev}^{{commit}}")
    if out.returncode != 0:
        return None
    return out.stdout.decode().strip() or None


def origin_default_branch() -> str:
    """The remote's default branch (origin/HEAD), else origin/main."""
    out = _git("symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
    return out.stdout.decode().strip() if out.returncode == 0 else "origin/main"


def show(rev: str, path: str) -> bytes | None:
    """`path` as committed at `rev`, or None when it is not there."""
    out = _git("show", f"{rev}:{path}")
    return out.stdout if out.returncode == 0 else None
