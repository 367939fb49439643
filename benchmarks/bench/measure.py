"""Running stages in temp gptpipe projects, measured: wall time and peak RSS.
The projects come from tests/projects.py, the tests' helper (imported by path)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import ROOT, STAGE_SCRIPTS


@dataclass
class Measured:
    seconds: float
    rss_mb: float
    returncode: int
    output: str


# Runs a command and reports its wall time and peak RSS. A child forked from this
# (large, torch-importing) process would report this process's RSS as its own
# peak (the kernel carries it over at exec), so a small Python process does the
# forking and the wait4.
_WAIT4 = ("import json, os, subprocess, sys, time\n"
          "start = time.perf_counter()\n"
          "proc = subprocess.Popen(sys.argv[2:])\n"
          "_, status, usage = os.wait4(proc.pid, 0)\n"
          "json.dump({'seconds': time.perf_counter() - start, 'rss_kb': usage.ru_maxrss},"
          " open(sys.argv[1], 'w'))\n"
          "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_measured(cmd: list[str], cwd: Path, env: dict, log: Path) -> Measured:
    log.parent.mkdir(parents=True, exist_ok=True)
    stats = log.with_suffix(".rusage.json")
    with open(log, "wb") as out:
        # its own process group: an interrupted benchmark takes the stage down with it
        proc = subprocess.Popen([sys.executable, "-c", _WAIT4, str(stats), *cmd], cwd=cwd,
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    usage = json.loads(stats.read_text()) if stats.exists() else {"seconds": float("nan"),
                                                                   "rss_kb": 0}
    return Measured(usage["seconds"], usage["rss_kb"] / 1024, proc.returncode,
                    log.read_text(errors="replace"))


def _test_projects():
    """tests/projects.py, by path: the benchmarks build projects as the tests do."""
    spec = importlib.util.spec_from_file_location("gptpipe_test_projects",
                                                  ROOT / "tests" / "projects.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


projects = _test_projects()
load_yaml = projects.load_yaml


class Project:
    """A copy of gptpipe's pipeline in a temp dir; stages run as `python stages/X.py`."""

    def __init__(self, path: Path, python: str, mlflow_db: Path | None, copy: bool = True):
        self.path, self.python = path, python
        if copy:
            projects.copy_pipeline(path)
        self.env = projects.project_env(Path(python).parent, mlflow_db)
        self.env["DVC_ROOT"] = str(path)  # checkpoints and lineage stay in the temp dir
        self.env["DVC_NO_ANALYTICS"] = "1"
        self.env.pop("DVC_EXP_NAME", None)

    def set_params(self, *overrides: dict) -> dict:
        """The repo's params.yaml with `overrides` applied (not cumulative)."""
        return projects.write_params(self.path, *overrides, base=ROOT / "params.yaml")

    def stage(self, name: str, label: str = "") -> Measured:
        log = self.path / "logs" / f"{name}{'-' + label if label else ''}.log"
        result = run_measured([self.python, f"stages/{STAGE_SCRIPTS[name]}"], self.path,
                              self.env, log)
        if result.returncode != 0:
            tail = "\n".join(result.output.splitlines()[-15:])
            raise RuntimeError(f"stage {name} failed ({result.returncode}) in {self.path}:\n{tail}")
        return result

    def run(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(cmd, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {self.path}:\n{out.stdout}{out.stderr}")
        return out


def dvc_bin(python: str) -> str:
    local = Path(python).parent / "dvc"
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def git_dvc_init(project: Project) -> None:
    projects.init_git_dvc(project.run)
