"""Pictures of training runs (matplotlib, an optional extra: ``pip install 'bpgpu[plot]'``)."""

from __future__ import annotations

from ._compat import optional_import
from .errors import ConfigError
from .io import atomic_write

__all__ = ["plot_history"]


def _pyplot():
    mpl = optional_import("matplotlib")
    if mpl is None:
        raise ConfigError("plots need matplotlib: pip install 'bpgpu[plot]'")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history, path):
    """Training and validation loss (left) and accuracy (right) per epoch, written to ``path``."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ep = history.epoch
    for values, label, ax in ((history.loss, "training loss", ax_loss),
                              (history.val_loss, "validation loss", ax_loss),
                              (history.accuracy, "training accuracy", ax_acc),
                              (history.val_accuracy, "validation accuracy", ax_acc)):
        pts = [(e, v) for e, v in zip(ep, values) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.suptitle(f"training history ({history.backend} backend)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
