"""The skip-or-fail rule for missing tools (helpers.require_tool): locally a test
whose tool is missing skips saying how to install it; in CI (CI=true) it fails,
naming the install step, so CI can never go green without it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from projects import ROOT

MISSING_TOOL_TEST = '''
from helpers import require_tool

def test_needs_a_tool():
    require_tool("gptpipe-no-such-tool", "`bash scripts/install_nothing.sh`")
'''


def _run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    test_file = tmp_path / "test_missing_tool.py"
    test_file.write_text(MISSING_TOOL_TEST)
    env = dict(os.environ)
    env.pop("CI", None)
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(test_file)],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120)


def test_missing_tool_skips_locally_saying_how_to_install(tmp_path):
    result = _run_pytest(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "gptpipe-no-such-tool is missing: install it with " \
           "`bash scripts/install_nothing.sh`" in result.stdout


def test_missing_tool_fails_in_ci_naming_the_install_step(tmp_path):
    result = _run_pytest(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout
    assert "CI=true and gptpipe-no-such-tool is missing: install it with" in result.stdout
    assert "scripts/install_nothing.sh" in result.stdout
