"""Mini-batch training: epochs, shuffling, validation, early stopping, history and progress.

The loop keeps the data on the device (uploaded once), draws each epoch's permutation from the
model's host generator (so every backend visits the same batches), and accumulates the epoch's loss
and accuracy on the device, reading them once per epoch: a device backend never synchronises inside
a step. Training stops with a clear message when the loss becomes NaN or inf, keeping the weights of
the last good epoch; with early stopping it restores the weights of the best validation epoch.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from ._compat import optional_import
from .errors import ConfigError, DataError
from .optim import make_optimizer

__all__ = ["History", "TrainingDiverged", "fit"]


class TrainingDiverged(RuntimeWarning):
    """Warned when training stops because the loss became NaN or inf."""


@dataclass
class History:
    """What happened during :func:`fit`, one entry per completed epoch.

    ``loss``/``accuracy`` are running means over the epoch's batches (measured before each update,
    like Keras); ``val_*`` are measured after the epoch. ``loss_increased[i]`` flags an epoch whose
    training loss went up (the textbook "WARNING - Loss Increasing").
    """
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    time: list = field(default_factory=list)
    loss_increased: list = field(default_factory=list)
    best_epoch: int | None = None
    stop_reason: str = "completed"
    diverged: bool = False
    backend: str = ""

    def to_dict(self) -> dict:
        """Plain-Python form for JSON."""
        return asdict(self)

    def epoch_line(self, i: int = -1) -> str:
        """One human-readable line for epoch ``i``."""
        parts = [f"epoch {self.epoch[i]}"]
        if self.loss[i] is not None:
            parts.append(f"loss {self.loss[i]:.4f}")
        if self.accuracy[i] is not None:
            parts.append(f"acc {self.accuracy[i]:.4f}")
        if self.val_loss and self.val_loss[i] is not None:
            parts.append(f"val_loss {self.val_loss[i]:.4f}")
            if self.val_accuracy[i] is not None:
                parts.append(f"val_acc {self.val_accuracy[i]:.4f}")
        parts.append(f"{self.time[i]:.2f}s")
        line = "  ".join(parts)
        if self.loss_increased[i]:
            line += "  WARNING - Loss Increasing"
        return line


def _split_validation(rng, X, y, fraction):
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"validation_split must be in (0, 1), got {fraction}")
    n = X.shape[0]
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise DataError(f"validation_split={fraction} leaves no training samples out of {n}")
    order = rng.permutation(n)
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], (X[val], y[val])


def _progress_bar(enabled, total, desc):
    if not enabled:
        return None
    tqdm = optional_import("tqdm")
    if tqdm is None:
        return None
    return tqdm.tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                     dynamic_ncols=True)


def _check_options(epochs, batch_size, dropout, early_stopping):
    epochs, batch_size = int(epochs), int(batch_size)
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if early_stopping is not None and early_stopping is not False and int(early_stopping) < 1:
        raise ConfigError(f"early_stopping patience must be >= 1, got {early_stopping}")
    patience = int(early_stopping) if early_stopping not in (None, False) else None
    return epochs, batch_size, patience


def fit(model, X, y, *, epochs=10, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9,
        weight_decay=0.0, dropout=0.0, validation_data=None, validation_split=None,
        early_stopping=None, shuffle=True, train_metrics=True, progress=False, on_epoch=None):
    """Train ``model`` on ``(X, y)``.

    Parameters
    ----------
    model : MLP
    X : array, shape (N, n_0)
        uint8 inputs are scaled by the model's ``input_scale``/``input_shift``; floats used as is.
    y : array, shape (N,) integer labels, or (N, n_out) targets
    epochs : int
    batch_size : int
        The last batch of an epoch holds the remainder.
    optimizer : {"sgd", "momentum", "nesterov", "adam"}
    lr, momentum, weight_decay : float
        ``weight_decay`` is the L2 coefficient added to the weights' gradient.
    dropout : float
        Inverted-dropout rate on hidden layers during training, in [0, 1). The masks come from
        counter-based streams named by (training step, layer), drawn on the device.
    validation_data : (X_val, y_val), optional
    validation_split : float, optional
        Fraction of ``(X, y)`` held out (drawn from the model's generator) when no
        ``validation_data`` is given.
    early_stopping : int, optional
        Patience in epochs on the validation loss; the best epoch's weights are restored. Holds out
        10 % of the data when no validation set is given.
    shuffle : bool
        Draw a new permutation every epoch from the model's generator.
    train_metrics : bool
        Accumulate the running training loss and accuracy (default). False skips that per-batch
        work (History then has ``None`` for them); divergence is still detected, from the
        parameters.
    progress : bool
        Show a progress bar (tqdm, when installed) and print a line per epoch to stderr.
    on_epoch : callable(History) -> bool, optional
        Called after each epoch; returning True stops training there ("stopped by callback").

    Returns
    -------
    History
    """
    epochs, batch_size, patience = _check_options(epochs, batch_size, dropout, early_stopping)
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 2 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        raise DataError(f"X and y must have the same number of samples, got {X.shape} and "
                        f"{y.shape}")
    if validation_data is None and (validation_split or patience):
        X, y, validation_data = _split_validation(model.rng, X, y, validation_split or 0.1)
    opt = make_optimizer(optimizer, model.backend, model.n_params, model.dtype, lr=lr,
                         momentum=momentum, weight_decay=weight_decay, n_decay=model.n_weights)
    run = _Run(model, X, y, validation_data, opt, batch_size=batch_size, dropout=dropout,
               patience=patience, shuffle=shuffle, train_metrics=train_metrics)
    return run.train(epochs, progress=progress, on_epoch=on_epoch)


class _Run:
    """One call of :func:`fit`: the data on the device, the optimizer, and the state that changes
    from epoch to epoch (history, early-stopping state, the last good and best parameters)."""

    def __init__(self, model, X, y, validation_data, opt, *, batch_size, dropout, patience,
                 shuffle, train_metrics):
        self.model, self.opt = model, opt
        be = self.be = model.backend
        self.X_dev = model.prepare_inputs(X)
        self.T_dev = be.asarray(model.targets_from(y, self.X_dev.shape[0]))
        self.n = self.X_dev.shape[0]
        self.val = None
        if validation_data is not None:
            Xv, yv = validation_data
            Xv_dev = model.prepare_inputs(Xv)
            self.val = (Xv_dev, be.asarray(model.targets_from(yv, Xv_dev.shape[0])))
        self.classify = model.output == "softmax" or np.asarray(y).dtype.kind in "iub"
        self.train_metrics = train_metrics
        self.count_correct = self.classify and train_metrics
        self.shuffle, self.patience = shuffle, patience
        self.batch = min(batch_size, self.n)
        self.ws = model.workspace(self.batch, dropout=dropout)
        self.metrics = be.zeros((2,), np.float64)    # [loss sum, correct count] of the epoch
        self.last_good = be.empty((model.n_params,), model.dtype)
        be.copy(model.params, self.last_good)
        self.best = be.empty((model.n_params,), model.dtype) if patience else None
        self.best_val, self.since_best = math.inf, 0
        self.history = History(backend=be.name)
        self.epoch = 0                                # epochs completed

    def run_epoch(self, order, bar=None):
        """Every step of one epoch, in the order of the device index array ``order``."""
        model, ws, batch = self.model, self.ws, self.batch
        metrics = self.metrics if self.train_metrics else None
        for start in range(0, self.n, batch):
            stop = min(start + batch, self.n)
            model.train_step(ws.view(stop - start), self.X_dev, self.T_dev, order[start:stop],
                             self.opt, metrics=metrics, count_correct=self.count_correct)
            if bar is not None:
                bar.update(1)

    def train(self, epochs, *, progress=False, on_epoch=None):
        """Run epochs ``self.epoch + 1 .. epochs``; return the History."""
        model, be, history, n = self.model, self.be, self.history, self.n
        order_host = np.arange(n)
        n_batches = -(-n // self.batch)
        # A diverging run overflows on the way to NaN; that is detected and reported below, so
        # numpy's per-op floating-point warnings would only be noise.
        with be.compute_threads(self.batch), np.errstate(over="ignore", invalid="ignore",
                                                         divide="ignore"):
            while self.epoch < epochs:
                epoch = self.epoch + 1
                t0 = time.perf_counter()
                if self.shuffle:
                    order_host = model.rng.permutation(n)
                self.metrics[...] = 0
                bar = _progress_bar(progress, n_batches, f"epoch {epoch}/{epochs}")
                try:
                    self.run_epoch(be.asarray(order_host), bar)
                finally:
                    if bar is not None:
                        bar.close()
                if not self._end_epoch(epoch, t0, progress, on_epoch):
                    break
        if self.patience and history.best_epoch is not None:
            be.copy(self.best, model.params)
        return history

    def _end_epoch(self, epoch, t0, progress, on_epoch) -> bool:
        """Record epoch ``epoch``; False when training stops here."""
        model, be, history, n = self.model, self.be, self.history, self.n
        loss_sum, correct = be.to_host(self.metrics)       # the epoch's one read from the device
        loss = float(loss_sum) / n if self.train_metrics else None
        finite = ((not self.train_metrics or math.isfinite(loss))
                  and be.all_finite(model.params))
        if not finite:
            be.copy(self.last_good, model.params)
            history.diverged = True
            what = (f"training loss became {loss}"
                    if self.train_metrics and not math.isfinite(loss)
                    else "parameters became NaN/inf")
            history.stop_reason = (f"diverged: {what} in epoch {epoch} (lower the learning "
                                   f"rate); kept the weights of epoch {epoch - 1}")
            warnings.warn(history.stop_reason, TrainingDiverged, stacklevel=5)
            return False
        self.epoch = epoch
        history.epoch.append(epoch)
        history.loss.append(loss)
        history.accuracy.append(float(correct) / n if self.count_correct else None)
        history.loss_increased.append(self.train_metrics and len(history.loss) > 1
                                      and loss > history.loss[-2])
        if self.val is not None:
            vl, va = model.metrics_on_device(*self.val)
            history.val_loss.append(vl)
            history.val_accuracy.append(va if self.classify else None)
        be.synchronize()
        history.time.append(time.perf_counter() - t0)
        be.copy(model.params, self.last_good)
        if progress:
            print(history.epoch_line(), file=sys.stderr, flush=True)
        if on_epoch is not None and on_epoch(history):
            history.stop_reason = f"stopped by callback after epoch {epoch}"
            return False
        if self.patience:
            vl = history.val_loss[-1]
            if vl < self.best_val:
                self.best_val, self.since_best, history.best_epoch = vl, 0, epoch
                be.copy(model.params, self.best)
            else:
                self.since_best += 1
                if self.since_best >= self.patience:
                    history.stop_reason = (f"early stopping: no validation improvement for "
                                           f"{self.patience} epochs; restored epoch "
                                           f"{history.best_epoch}")
                    return False
        return True
