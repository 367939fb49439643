"""Files for people: the loss history as CSV and the loss curve as a PNG.

Both are deterministic (fixed float formats, no timestamps in the PNG), except
the wall-clock history, which is the one file meant to differ between runs.
"""
from __future__ import annotations

import io
from pathlib import Path

from .files import write_bytes, write_text


def losses_csv(rows) -> str:
    lines = ["step,lr,train_loss,val_loss"]
    lines += [f"{r.step},{r.lr:.6e},{r.train_loss:.6f},{r.val_loss:.6f}" for r in rows]
    return "\n".join(lines) + "\n"


HEALTH_COLUMNS = (("grad_norm_mean", "{:.6g}"), ("grad_norm_max", "{:.6g}"),
                  ("clipped_fraction", "{:.4f}"), ("gflops_per_s", "{:.3f}"), ("mfu", "{:.4f}"))


def history_csv(rows) -> str:
    """Each eval's losses, and the training health of the steps since the previous
    eval: the gradient norm before clipping (mean, max), the fraction of steps
    clipped, tokens/s, achieved GFLOP/s, and MFU (empty: no train.peak_gflops; all
    empty at step 0, before any step)."""
    lines = ["step,lr,train_loss,val_loss,tokens_per_s,elapsed_s,"
             + ",".join(name for name, _ in HEALTH_COLUMNS)]
    for r in rows:
        health = ["" if getattr(r, name) is None else fmt.format(getattr(r, name))
                  for name, fmt in HEALTH_COLUMNS]
        lines.append(f"{r.step},{r.lr:.6e},{r.train_loss:.6f},{r.val_loss:.6f},"
                     f"{r.tokens_per_s:.1f},{r.elapsed_s:.3f}," + ",".join(health))
    return "\n".join(lines) + "\n"


def loss_axes(figsize: tuple[float, float], rows: int = 1):
    """A figure and axes for loss curves (matplotlib without a display); with
    rows > 1, that many panels sharing the step axis (the first is the losses')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows == 1:
        return plt.subplots(figsize=figsize, dpi=100)
    return plt.subplots(rows, 1, figsize=figsize, dpi=100, sharex=True,
                        gridspec_kw={"height_ratios": [2] + [1] * (rows - 1)})


def save_loss_chart(fig, ax, path: Path, title: str) -> None:
    """Label, then write the PNG with no timestamp, so equal curves give equal bytes."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if len(fig.axes) > 1:  # panels below share the step axis, labelled at the bottom
        ax.set_xlabel("")
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def write_loss_curve(rows, path: Path, title: str) -> None:
    """The losses, and below them the gradient norm before clipping (mean and max
    over each eval interval), when the rows carry it."""
    health = [r for r in rows if getattr(r, "grad_norm_mean", None) is not None]
    fig, axes = loss_axes((6, 6) if health else (6, 4), rows=2 if health else 1)
    ax = axes[0] if health else axes
    steps = [r.step for r in rows]
    ax.plot(steps, [r.train_loss for r in rows], label="train loss")
    ax.plot(steps, [r.val_loss for r in rows], label="val loss")
    if health:
        grad = axes[1]
        at = [r.step for r in health]
        grad.plot(at, [r.grad_norm_mean for r in health], label="mean", color="tab:green")
        grad.plot(at, [r.grad_norm_max for r in health], "--", label="max", color="tab:green",
                  alpha=0.6)
        grad.set_ylim(bottom=0)
        grad.set_xlabel("step")
        grad.set_ylabel("grad norm")
        grad.grid(alpha=0.3)
        grad.legend(fontsize="small")
    save_loss_chart(fig, ax, path, title)


__all__ = ["losses_csv", "history_csv", "loss_axes", "save_loss_chart", "write_loss_curve",
           "write_text"]
