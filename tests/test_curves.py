"""`python -m gptpipe.curves`: the base's and the new loss curves on one PNG (CI's
job summary links it); a bad CSV is one line naming the file."""
from __future__ import annotations

import os
import subprocess
import sys

from projects import ROOT

CSV = "step,lr,train_loss,val_loss\n0,1.0e-03,4.2,4.3\n10,1.0e-03,3.1,3.3\n20,1.0e-03,2.5,2.9\n"


def _curves(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptpipe.curves", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def test_base_and_new_curves_make_one_png_and_a_base_is_optional(tmp_path):
    (tmp_path / "old.csv").write_text(CSV)
    (tmp_path / "new.csv").write_text(CSV.replace("2.9", "2.7"))
    both = _curves("--base", "old.csv", "--new", "new.csv", "-o", "out/both.png",
                   cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    alone = _curves("--new", "new.csv", "-o", "alone.png", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    for png in ("out/both.png", "alone.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # two more lines drawn: a different picture
    assert (tmp_path / "out/both.png").read_bytes() != (tmp_path / "alone.png").read_bytes()


def test_a_csv_without_the_loss_columns_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "bad.csv").write_text("step,loss\n0,4.2\n")
    result = _curves("--new", "bad.csv", "-o", "out.png", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("curves: error: bad.csv: not a train_losses.csv "
                                     "(needs columns step, train_loss, val_loss)")
    assert not (tmp_path / "out.png").exists()
