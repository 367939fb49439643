"""Atomic writes under SIGKILL: no temp file ever sits beside an output.

Real processes are killed mid-write (SIGKILL, as the OOM killer would). Inside a
project the temp file lives in .gptpipe/tmp/ (ignored by git and DVC); the next
write sweeps temp files whose process is gone.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import env_for

KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from gptpipe.files import atomic_dir, atomic_path
kind, target = sys.argv[1], Path(sys.argv[2])
if kind == "file":
    with atomic_path(target) as tmp:
        tmp.write_text("half a report")
        os.kill(os.getpid(), signal.SIGKILL)
else:
    with atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half a corpus")
        os.kill(os.getpid(), signal.SIGKILL)
"""

WRITE = """
import sys
from gptpipe.files import write_text
write_text(sys.argv[1], "whole\\n")
"""


def python(cwd: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env_for(cwd),
                          capture_output=True, text=True, timeout=60)


def everything(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.parametrize("kind, target", [("file", "reports/clean.json"),
                                          ("dir", "data/raw")])
def test_sigkill_mid_write_leaves_nothing_beside_the_output(tmp_path, kind, target):
    project = tmp_path / "proj"
    old = project / "data" / "raw" / "old.txt"  # an earlier good output
    old.parent.mkdir(parents=True)
    old.write_text("earlier corpus\n")
    (project / "reports").mkdir()
    killed = python(project, KILLED_MID_WRITE, kind, target)
    assert killed.returncode == -9, killed.stderr
    outside_tmp = [p for p in everything(project) if not p.startswith(".gptpipe")]
    assert outside_tmp == ["data", "data/raw", "data/raw/old.txt", "reports"]
    assert old.read_text() == "earlier corpus\n"
    stale = everything(project / ".gptpipe" / "tmp")
    assert len(stale) >= 1, "the kill landed mid-write: its temp is in .gptpipe/tmp"
    # The next write (any process) sweeps the dead process's temp files.
    done = python(project, WRITE, "reports/train.json")
    assert done.returncode == 0, done.stderr
    assert everything(project / ".gptpipe" / "tmp") == []
    assert (project / "reports/train.json").read_text() == "whole\n"


def test_a_target_outside_the_project_is_swept_beside_it(tmp_path):
    project, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    target = elsewhere / "out.json"
    killed = python(project, KILLED_MID_WRITE, "file", str(target))
    assert killed.returncode == -9, killed.stderr
    left = everything(elsewhere)
    assert len(left) == 1 and left[0].startswith(".out.json.") and left[0].endswith(".tmp")
    assert python(project, WRITE, str(target)).returncode == 0
    assert everything(elsewhere) == ["out.json"]
