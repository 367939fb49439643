"""The loss curves of the base (its committed reports/train_losses.csv) and the
new model on one chart, a PNG beside the job summary."""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import git
from .report import Curves

LOSSES = Path("reports/train_losses.csv")
PNG_NAME = "loss_curves.png"


def draw(base: str, artifacts_dir: Path, losses: Path = LOSSES) -> Curves:
    from ..curves import read_losses, write_comparison

    if not losses.exists():
        return Curves()
    committed = git.show(base, losses.as_posix()) if base else None
    out = artifacts_dir / PNG_NAME
    try:
        base_losses = None
        if committed is not None:
            with tempfile.TemporaryDirectory() as tmp:
                base_csv = Path(tmp) / "base.csv"
                base_csv.write_bytes(committed)
                base_losses = read_losses(base_csv)
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        write_comparison(base_losses, read_losses(losses), out,
                         f"base {git.short(base) or base}", "new")
    except Exception as exc:  # noqa: BLE001 - the report says why, the job goes on
        return Curves(error=f"{type(exc).__name__}: {exc}")
    return Curves(path=out.as_posix(), with_base=base_losses is not None)
