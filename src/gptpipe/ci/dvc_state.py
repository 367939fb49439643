"""What DVC says, through its machine-readable interfaces only: `dvc status
--json`, `dvc metrics diff --json`, `dvc params diff --json`, dvc.api.read, the
merged DVC config (its remotes) and dvc.lock. Nothing here reads DVC's human
output."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

LOCK = Path("dvc.lock")


class DvcError(Exception):
    """A dvc command failed; the message is its stderr's last line."""


def dvc_json(*args: str):
    """`dvc ARGS --json`, parsed ({} for empty output)."""
    out = subprocess.run(["dvc", *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        raise DvcError(lines[-1] if lines else f"exit code {out.returncode}")
    return json.loads(out.stdout) if out.stdout.strip() else {}


def status() -> dict:
    """`dvc status --json`: stage -> what is out of date ({} when all is)."""
    return dvc_json("status")


def metrics_diff(base: str) -> dict:
    """`dvc metrics diff --json BASE`: file -> metric -> {old, new, diff}."""
    return dvc_json("metrics", "diff", base)


def params_diff(base: str) -> dict:
    """`dvc params diff --json BASE`: file -> param -> {old, new}."""
    return dvc_json("params", "diff", base)


def lock_stages(path: Path = LOCK) -> dict:
    """dvc.lock's stages (name -> its entry); {} when there is no lock yet."""
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}


@dataclass
class Remote:
    name: str
    url: str


def remote() -> Remote | None:
    """The DVC remote pushes go to: the default one, else the first configured
    (the merged config: .dvc/config and config.local), or None."""
    from dvc.repo import Repo

    with Repo() as repo:
        remotes = dict(repo.config.get("remote") or {})
        name = (repo.config.get("core") or {}).get("remote")
    if not remotes:
        return None
    if name not in remotes:
        name = next(iter(remotes))
    return Remote(name, str(remotes[name].get("url", "")))


def read_at(path: str, rev: str) -> str | None:
    """A file as the revision `rev` records it, git- or DVC-tracked (from the
    local cache or the remote), or None when it cannot be had."""
    import dvc.api

    try:
        return dvc.api.read(path, rev=rev, encoding="utf-8")
    except Exception:  # noqa: BLE001 - not at that rev, not in any cache, ...
        return None
