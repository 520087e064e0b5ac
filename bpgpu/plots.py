"""Pictures of training runs (matplotlib, an optional extra: ``pip install 'bpgpu[plot]'``)."""

from __future__ import annotations

import numpy as np

from ._compat import optional_import
from .errors import ConfigError
from .files import atomic_write

__all__ = ["plot_history", "plot_confusion", "plot_first_layer"]


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


def plot_confusion(y_true, y_pred, path, labels=None):
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    plt = _pyplot()
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k = int(max(y_true.max(), y_pred.max())) + 1
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.55 * k))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ticks = labels if labels is not None else list(range(k))
    ax.set_xticks(range(k), ticks)
    ax.set_yticks(range(k), ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {np.trace(cm) / cm.sum():.4f})")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return cm


def plot_first_layer(W, path, shape=(28, 28), max_units=100):
    """The first layer's weights, one tile per hidden unit (what the units learned to look for).

    Parameters
    ----------
    W : ndarray, shape (n_in, n_hidden) with n_in == shape[0] * shape[1]
    """
    plt = _pyplot()
    W = np.asarray(W)
    if W.shape[0] != shape[0] * shape[1]:
        raise ConfigError(f"first layer has {W.shape[0]} inputs, not {shape[0]}x{shape[1]} images")
    n = min(W.shape[1], max_units)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9), squeeze=False)
    for idx, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if idx < n:
            w = W[:, idx].reshape(shape)
            lim = np.abs(w).max() or 1.0
            ax.imshow(w, cmap="seismic", vmin=-lim, vmax=lim)
    fig.suptitle("first-layer weights per hidden unit (red +, blue −)")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return path
