"""Loss curves of two runs on one chart: the base's and the new train_losses.csv.

CI draws it for its job summary (gptpipe.ci.loss_curves); by hand:

    python -m gptpipe.curves --base old.csv --new reports/train_losses.csv -o curves.png

A base without a loss history (the base never trained, or did not commit its
reports) draws the new run alone, and says so in the title.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from .errors import UserError, run_main
from .reporting import loss_axes, save_loss_chart

COLUMNS = ("step", "train_loss", "val_loss")


def read_losses(path: Path) -> dict[str, list[float]]:
    """step, train_loss and val_loss columns of a train_losses.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    if not rows or any(c not in rows[0] for c in COLUMNS):
        raise UserError(f"{path}: not a train_losses.csv (needs columns {', '.join(COLUMNS)})")
    try:
        return {c: [float(r[c]) for r in rows] for c in COLUMNS}
    except (TypeError, ValueError):
        raise UserError(f"{path}: a non-numeric value in {', '.join(COLUMNS)}") from None


def write_comparison(base: dict | None, new: dict, path: Path, base_label: str,
                     new_label: str) -> None:
    fig, ax = loss_axes((7, 4.5))
    for losses, label, style in ((base, base_label, "--"), (new, new_label, "-")):
        if losses is None:
            continue
        ax.plot(losses["step"], losses["train_loss"], style, color="tab:blue",
                label=f"{label}: train")
        ax.plot(losses["step"], losses["val_loss"], style, color="tab:orange",
                label=f"{label}: val")
    title = f"loss: {base_label} (dashed) vs {new_label}" if base is not None else \
        f"loss: {new_label} (no loss history for {base_label})"
    save_loss_chart(fig, ax, path, title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gptpipe.curves", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="the base's train_losses.csv (optional)")
    parser.add_argument("--new", type=Path, required=True, help="the new train_losses.csv")
    parser.add_argument("--base-label", default="base")
    parser.add_argument("--new-label", default="new")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    base = read_losses(args.base) if args.base else None
    write_comparison(base, read_losses(args.new), args.output, args.base_label,
                     args.new_label)
    print(f"curves: wrote {args.output}")


if __name__ == "__main__":
    run_main(main, "curves")
