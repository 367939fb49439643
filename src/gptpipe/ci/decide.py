"""CI's decisions, as pure functions of plain data (no git, DVC or MLflow here):
which revision to diff against, whether the download stage must be forced, and
which stages ran."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..sources import source_is_watched

ALWAYS_CHANGED = "always changed"  # `dvc status --json` for an always_changed stage
DOWNLOAD_STAGE = "download"


def choose_base(arg: str, *, resolve: Callable[[str], str | None], head: str | None,
                github_base_ref: str = "", default_branch: str = "origin/main",
                warn: Callable[[str], None] = lambda message: None) -> str:
    """The revision to diff metrics and params against ("" when there is none).

    `arg` when it is a commit (`resolve(rev)` gives its sha, else None); an empty or
    all-zero `arg` (a new branch's "before") counts as not given. Not given:
    origin/`github_base_ref` in a pull request; else `default_branch` when HEAD
    (sha `head`) is not that commit; else HEAD, when there is one."""
    if arg and not re.fullmatch(r"0+", arg):
        if resolve(arg):
            return arg
        warn(f"base '{arg}' is not a commit in this clone (shallow clone or force-push?): "
             "using the default base")
    if github_base_ref and resolve(f"origin/{github_base_ref}"):
        return f"origin/{github_base_ref}"
    default_sha = resolve(default_branch)
    if default_sha and default_sha != head:
        return default_branch
    return "HEAD" if head else ""


def is_full_sha(rev: str) -> bool:
    """A full sha (as CI passes it) makes a wide table header: shorten it."""
    return re.fullmatch(r"[0-9a-f]{40}", rev) is not None


def force_download(source: str, corpus_dir: Path = Path("corpus")) -> bool:
    """Rerun the download stage although DVC sees no change: data.source is
    something DVC does not watch (sources.source_is_watched, the one rule)."""
    return not source_is_watched(source, corpus_dir)


def stages_run(status_before: Mapping[str, Sequence], lock_before: Mapping[str, object],
               lock_after: Mapping[str, object], forced_download: bool = False
               ) -> tuple[list[str], list[str]]:
    """(ran, restored): the stages `dvc repro` ran, and those whose outputs it only
    brought back (checked out or pulled; their dvc.lock entry is unchanged).

    From `dvc status --json` before the repro (what was out of date) and the
    dvc.lock stages before and after it: a stage ran when its lock entry changed,
    when it is always_changed, or when the download stage was forced. A stage
    restored from DVC's run cache also changes its lock entry: it counts as run."""
    order = list(lock_after) + [s for s in list(lock_before) + list(status_before)
                                if s not in lock_after]
    order = list(dict.fromkeys(order))
    ran = [s for s in order
           if lock_before.get(s) != lock_after.get(s)
           or ALWAYS_CHANGED in (status_before.get(s) or [])
           or (forced_download and s == DOWNLOAD_STAGE)]
    restored = [s for s in order if status_before.get(s) and s not in ran]
    return ran, restored
