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


def history_csv(rows) -> str:
    lines = ["step,lr,train_loss,val_loss,tokens_per_s,elapsed_s"]
    lines += [f"{r.step},{r.lr:.6e},{r.train_loss:.6f},{r.val_loss:.6f},"
              f"{r.tokens_per_s:.1f},{r.elapsed_s:.3f}" for r in rows]
    return "\n".join(lines) + "\n"


def loss_axes(figsize: tuple[float, float]):
    """A figure and axes for loss curves (matplotlib without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=100)


def save_loss_chart(fig, ax, path: Path, title: str) -> None:
    """Label, then write the PNG with no timestamp, so equal curves give equal bytes."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def write_loss_curve(rows, path: Path, title: str) -> None:
    fig, ax = loss_axes((6, 4))
    steps = [r.step for r in rows]
    ax.plot(steps, [r.train_loss for r in rows], label="train loss")
    ax.plot(steps, [r.val_loss for r in rows], label="val loss")
    save_loss_chart(fig, ax, path, title)


__all__ = ["losses_csv", "history_csv", "loss_axes", "save_loss_chart", "write_loss_curve",
           "write_text"]
