"""Mini-batch training: epochs, shuffling, validation, early stopping, history and progress.

The loop keeps the data on the device (uploaded once), draws each epoch's permutation from the
model's host generator (so every backend visits the same batches), and accumulates the epoch's loss
and accuracy on the device, reading them once per epoch: a device backend never synchronises inside
a step. Training stops with a clear message when the loss becomes NaN or inf, keeping the weights of
the last good epoch; with early stopping it restores the weights of the best validation epoch.

Every step is :meth:`bpgpu.MLP.train_step`; this module only orders the steps. At the end of each
epoch the run keeps a snapshot of everything that continues into the next one (parameters,
optimizer state, the generator that draws permutations, the step count that names the dropout
streams), so a checkpoint (:mod:`bpgpu.checkpoint`) can be written of it, a resumed run continues
bit for bit, and SIGINT/SIGTERM put the model back to it before :class:`TrainingInterrupted` is
raised.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from ._compat import optional_import
from .errors import ConfigError, DataError
from .optim import make_optimizer
from .schedules import Constant

__all__ = ["History", "TrainingDiverged", "TrainingInterrupted", "fit"]


class TrainingDiverged(RuntimeWarning):
    """Warned when training stops because the loss became NaN or inf."""


@dataclass
class History:
    """What happened during :func:`fit`, one entry per completed epoch.

    ``loss``/``accuracy`` are running means over the epoch's batches (measured before each update,
    like Keras); ``val_*`` are measured after the epoch. ``loss_increased[i]`` flags an epoch whose
    training loss went up (the textbook "WARNING - Loss Increasing"). ``lr[i]`` is the learning
    rate the epoch ran with (set by the schedule).
    """
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    time: list = field(default_factory=list)
    loss_increased: list = field(default_factory=list)
    lr: list = field(default_factory=list)
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
        if self.lr and len(self.lr) == len(self.epoch) and len(set(self.lr)) > 1:
            parts.append(f"lr {self.lr[i]:.4g}")           # shown once the schedule changed it
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
        early_stopping=None, shuffle=True, train_metrics=True, progress=False, on_epoch=None,
        checkpoint=None, checkpoint_every=1, resume=None, checkpoint_info=None, augment=None,
        schedule=None, comm=None):
    """Train ``model`` on ``(X, y)``.

    Parameters
    ----------
    model : MLP
    X : array, shape (N, n_0)
        uint8 inputs are scaled by the model's ``input_scale``/``input_shift``; floats used as is.
    y : array, shape (N,) integer labels, or (N, n_out) targets
    epochs : int
        Train until this many epochs are complete (counting those of a resumed checkpoint).
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
    augment : str, dict or :class:`bpgpu.augment.Augment`, optional
        Warp every training image while its batch is gathered, on the device: random
        translations, rotation, zoom, shear, elastic distortion (spec string such as
        ``"shift=2,rotate=10,scale=0.1,shear=0.2,elastic=34:4"``; see :mod:`bpgpu.augment`).
        The inputs must be images: X of shape (N, H, W), or (N, H*W) with a square H*W or
        ``shape=HxW`` in the spec. Drawn from counter-based streams named by (training step,
        "augment"): the same images on every backend and after a resume.
    schedule : str, dict or :class:`bpgpu.schedules.Schedule`, optional
        Learning-rate schedule, setting the rate of every epoch from ``lr`` (spec string such
        as ``"step:every=10,factor=0.5"``, ``"cosine:warmup=5"``, ``"nielsen:patience=10,
        halvings=7"``; see :mod:`bpgpu.schedules`). ``nielsen`` needs validation data and holds
        out 10 % when none is given, as early stopping does. History's ``lr`` has the rates.
    train_metrics : bool
        Accumulate the running training loss and accuracy (default). False skips that per-batch
        work (History then has ``None`` for them); divergence is still detected, from the
        parameters.
    progress : bool
        Show a progress bar (tqdm, when installed) and print a line per epoch to stderr.
    on_epoch : callable(History) -> bool, optional
        Called after each epoch; returning True stops training there ("stopped by callback").
    checkpoint : path, optional
        Write a checkpoint (:mod:`bpgpu.checkpoint`: parameters, optimizer state, generator
        state, epoch, history, early-stopping state, options) here, atomically, after every
        ``checkpoint_every`` epochs, after the last one, and when training is interrupted.
    checkpoint_every : int
    checkpoint_info : dict, optional
        JSON-ready data stored in the checkpoint as it is (``bpgpu train`` keeps its command line
        there, so ``--resume`` alone continues the run).
    resume : path, optional
        Continue from this checkpoint: the model must have its architecture, the data and the
        trajectory-shaping options (batch size, optimizer and its settings, dropout, shuffle,
        metrics, early stopping, validation) must be the same. The result is bit-identical to a
        run that never stopped, on the same backend (within the parity tolerances on another).

    comm : mpi4py communicator or :class:`bpgpu.distributed.DataParallel`, optional
        Train data-parallel on its ranks (:mod:`bpgpu.distributed`): every rank calls ``fit``
        with the same model, data and options; each global batch of ``batch_size`` rows is
        split across the ranks and their gradients are summed by one Allreduce per step, so the
        result is that of one process (within rounding). Rank 0's generator drives the run;
        only rank 0 prints and writes the checkpoint.

    Returns
    -------
    History

    Raises
    ------
    TrainingInterrupted
        On SIGINT (Ctrl-C) or SIGTERM: the current batch is finished, the model is put back to
        the end of the last completed epoch (weights, optimizer, generator), the checkpoint is
        written, and this is raised (a KeyboardInterrupt) with the History. A second signal stops
        at once.
    """
    from .augment import make_augment
    from .checkpoint import read_checkpoint
    from .schedules import make_schedule

    parallel = saved = None
    if comm is not None:     # every rank checks it trains what rank 0 trains, takes rank 0's state
        from .distributed import start
        parallel, saved = start(comm, model, X, y, validation_data, resume, dict(
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
            weight_decay=weight_decay, dropout=dropout, validation_split=validation_split,
            early_stopping=early_stopping, shuffle=shuffle, train_metrics=train_metrics,
            checkpoint=checkpoint is not None, checkpoint_every=checkpoint_every,
            augment=augment, schedule=schedule))
    epochs, batch_size, patience = _check_options(epochs, batch_size, dropout, early_stopping)
    checkpoint_every = int(checkpoint_every)
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 2 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        raise DataError(f"X and y must have the same number of samples, got {X.shape} and "
                        f"{y.shape}")
    aug = make_augment(augment)
    if aug is not None:
        aug = aug.resolved(model.sizes[0], X.shape[1:] if X.ndim == 3 else None)
    sched = make_schedule(schedule, lr, epochs)
    if parallel is None and resume is not None:
        saved = read_checkpoint(resume)
    if saved is not None:
        saved.check_model(model)
    validation = "data" if validation_data is not None else None
    if validation_data is None and (validation_split or patience or sched.needs_validation):
        fraction = validation_split or 0.1
        validation = ["split", fraction]
        if saved is not None and saved.state.get("split_rng_state") is not None:
            model.rng.bit_generator.state = saved.state["split_rng_state"]
        split_state = model.rng.bit_generator.state
        X, y, validation_data = _split_validation(model.rng, X, y, fraction)
    else:
        split_state = None
    opt = make_optimizer(optimizer, model.backend, model.n_params, model.dtype, lr=lr,
                         momentum=momentum, weight_decay=weight_decay, n_decay=model.n_weights)
    options = _json_plain({"batch_size": batch_size, "optimizer": opt.hyperparameters(),
                           "dropout": float(dropout), "shuffle": bool(shuffle),
                           "train_metrics": bool(train_metrics), "patience": patience,
                           "validation": validation,
                           "augment": None if aug is None else aug.to_dict(),
                           "schedule": None if isinstance(sched, Constant) else sched.settings()})
    run = (_Run if parallel is None else parallel.make_run)(
        model, X, y, validation_data, opt, batch_size=batch_size, dropout=dropout,
        patience=patience, shuffle=shuffle, train_metrics=train_metrics, augment=aug)
    run.schedule = sched
    if checkpoint is not None or saved is not None:
        run.data_prints = _data_prints(X, y, validation_data)
    run.checkpoint_path, run.checkpoint_every = checkpoint, checkpoint_every
    run.options, run.split_state, run.info = options, split_state, checkpoint_info
    if saved is not None:
        saved.check_options(options)
        saved.check_data(run.data_prints)
        run.restore(saved)
    return run.train(epochs, progress=progress, on_epoch=on_epoch)


def _json_plain(obj):
    """``obj`` as it comes back from JSON (tuples become lists), so saved and given compare."""
    return json.loads(json.dumps(obj))


def _data_prints(X, y, validation_data):
    from .checkpoint import fingerprint
    prints = {"train_X": fingerprint(X), "train_y": fingerprint(y)}
    if validation_data is not None:
        prints["validation_X"] = fingerprint(np.asarray(validation_data[0]))
        prints["validation_y"] = fingerprint(np.asarray(validation_data[1]))
    return prints


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by SIGINT (Ctrl-C) or SIGTERM.

    Attributes
    ----------
    signum : int
        The signal.
    history : History or None
        The completed epochs; None when a second signal stopped training at once.
    restored : bool
        True when the model was put back to the end of the last completed epoch (and the
        checkpoint, if any, written): what a caller saves is then a consistent state.
    checkpoint : str or None
        The checkpoint written, if any.
    """

    def __init__(self, signum, history=None, restored=False, checkpoint=None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.history, self.restored = signum, history, restored
        self.checkpoint = checkpoint


class _InterruptGuard:
    """While training: the first SIGINT/SIGTERM asks the loop to stop at the next batch boundary
    (``signum`` is set); a second one raises :class:`TrainingInterrupted` at once. Signal
    handlers can only be set from the main thread; elsewhere signals keep their usual effect."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        self._restore()
        raise TrainingInterrupted(signum)


class _Stopped(Exception):
    """Internal: the interrupt guard asked the epoch loop to stop."""


class _Run:
    """One call of :func:`fit`: the data on the device, the optimizer, and the state that changes
    from epoch to epoch (history, early-stopping state, the last completed epoch's parameters,
    optimizer state and generator state, and the best parameters)."""

    checkpoint_path = None
    checkpoint_every = 1
    options = None
    split_state = None
    data_prints = None
    info = None

    def __init__(self, model, X, y, validation_data, opt, *, batch_size, dropout, patience,
                 shuffle, train_metrics, augment=None):
        self.model, self.opt = model, opt
        self.schedule = Constant(opt.lr, 1)           # fit sets the run's schedule
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
        self.ws = model.workspace(self.batch, dropout=dropout, augment=augment)
        self.metrics = be.zeros((2,), np.float64)    # [loss sum, correct count] of the epoch
        # the whole epoch as one compiled call where the backend has one (numba), else None
        self.compiled = be.compiled_epoch(model, self.ws, self.X_dev, self.T_dev, opt,
                                          metrics=self.metrics if train_metrics else None,
                                          count_correct=self.count_correct)
        self.best = be.empty((model.n_params,), model.dtype) if patience else None
        self.best_val, self.since_best = math.inf, 0
        self.history = History(backend=be.name)
        self.epoch = 0                                # epochs completed
        self.finished = False                         # early stopping ended the run
        self.interrupt = _InterruptGuard()
        # the end of the last completed epoch, to go back to on an interrupt or divergence
        self.last_good = be.empty((model.n_params,), model.dtype)
        self.opt_snapshot = make_optimizer(opt.name, be, model.n_params, model.dtype, lr=opt.lr)
        self._snapshot()

    # ------------------------------------------------------------------ state
    def _snapshot(self):
        model = self.model
        self.be.copy(model.params, self.last_good)
        self.opt.copy_state(self.opt_snapshot)
        self.rng_snapshot = copy.deepcopy(model.rng.bit_generator.state)
        self.steps_snapshot = model.steps

    def _back_to_snapshot(self):
        model = self.model
        self.be.copy(self.last_good, model.params)
        self.opt_snapshot.copy_state(self.opt)
        model.rng.bit_generator.state = copy.deepcopy(self.rng_snapshot)
        model.steps = self.steps_snapshot

    def write_checkpoint(self):
        """Write the last completed epoch's state to ``checkpoint_path`` (atomically); the model
        must be at that state (the end of an epoch, or put back to it)."""
        from .checkpoint import write_checkpoint
        model = self.model
        scalars, arrays = self.opt_snapshot.state()
        arrays = {f"optimizer_{k}": v for k, v in arrays.items()}
        if self.patience and self.history.best_epoch is not None:
            arrays["best_params"] = self.be.to_host(self.best)
        state = {
            "epoch": self.epoch, "finished": self.finished, "options": self.options,
            "history": self.history.to_dict(), "rng_state": self.rng_snapshot,
            "split_rng_state": self.split_state, "steps": self.steps_snapshot,
            "stream_key": list(model.stream_key), "optimizer": scalars,
            "early_stopping": {"best_val": None if math.isinf(self.best_val) else self.best_val,
                               "since_best": self.since_best},
            "schedule": self.schedule.state(),
            "data": self.data_prints, "backend": self.be.name, "info": self.info,
        }
        # the model is at the snapshot here: the end of an epoch, or put back to it
        return write_checkpoint(self.checkpoint_path, model, state, arrays)

    def restore(self, saved):
        """Continue from the checkpoint ``saved`` (already checked against this run)."""
        model, be, st = self.model, self.be, saved.state
        weights = [saved.arrays[f"W{i}"] for i in range(model.n_layers)]
        biases = [saved.arrays[f"b{i}"] for i in range(model.n_layers)]
        model.set_params(weights, biases)
        model.rng.bit_generator.state = st["rng_state"]
        model.steps = int(st["steps"])
        model.stream_key = tuple(int(k) for k in st["stream_key"])
        arrays = {k[len("optimizer_"):]: v for k, v in saved.arrays.items()
                  if k.startswith("optimizer_")}
        self.opt.load_state(st["optimizer"], arrays)
        self.history = History(**st["history"])
        self.epoch = int(st["epoch"])
        self.finished = bool(st.get("finished", False))
        best_val = st["early_stopping"]["best_val"]
        self.best_val = math.inf if best_val is None else float(best_val)
        self.since_best = int(st["early_stopping"]["since_best"])
        self.schedule.load_state(st.get("schedule") or {})
        if self.patience and "best_params" in saved.arrays:
            be.upload(saved.arrays["best_params"].astype(model.dtype, copy=False), self.best)
        self._snapshot()

    # ------------------------------------------------------------------ epochs
    def run_epoch(self, order, bar=None):
        """Every step of one epoch, in the order of the device index array ``order``: one
        compiled call where the backend offers one (``BPGPU_COMPILED_EPOCH=0`` turns it off),
        else -- and wherever it declines -- the steps one by one."""
        model, ws, batch = self.model, self.ws, self.batch
        interrupt = self.interrupt
        if self.compiled is not None:
            ran = self.compiled(order, should_stop=lambda: interrupt.signum is not None,
                                progress=None if bar is None else bar.update)
            if ran is None:                           # abandoned part way: Ctrl-C or SIGTERM
                raise _Stopped
            if ran:
                return
        metrics = self.metrics if self.train_metrics else None
        for start in range(0, self.n, batch):
            if interrupt.signum is not None:
                raise _Stopped
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
        written = None                                # the epoch last written to the checkpoint
        # A diverging run overflows on the way to NaN; that is detected and reported below, so
        # numpy's per-op floating-point warnings would only be noise.
        with self.interrupt, be.compute_threads(self.batch), np.errstate(
                over="ignore", invalid="ignore", divide="ignore"):
            try:
                while not self.finished and self.epoch < epochs:
                    epoch = self.epoch + 1
                    self.opt.lr = self.schedule.rate(epoch)
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
                    go_on = self._end_epoch(epoch, t0, progress, on_epoch)
                    if history.diverged:
                        break
                    if self.checkpoint_path is not None and (
                            not go_on or self.epoch == epochs
                            or self.epoch % self.checkpoint_every == 0):
                        self.write_checkpoint()
                        written = self.epoch
                    if not go_on:
                        break
                    if self.interrupt.signum is not None:
                        raise _Stopped
            except _Stopped:
                self._back_to_snapshot()
                path = None
                if self.checkpoint_path is not None:
                    path = self.checkpoint_path if written == self.epoch else \
                        self.write_checkpoint()
                signum = self.interrupt.signum
                history.stop_reason = (f"interrupted by {signal.Signals(signum).name} after "
                                       f"epoch {self.epoch}")
                raise TrainingInterrupted(signum, history, restored=True,
                                          checkpoint=path) from None
        if self.patience and history.best_epoch is not None:
            be.copy(self.best, model.params)
        return history

    def _end_epoch(self, epoch, t0, progress, on_epoch) -> bool:
        """Record epoch ``epoch`` and make it the state to go back to; False when training stops
        here (divergence, a callback, early stopping)."""
        model, be, history, n = self.model, self.be, self.history, self.n
        loss_sum, correct = be.to_host(self.metrics)       # the epoch's one read from the device
        loss = float(loss_sum) / n if self.train_metrics else None
        finite = ((not self.train_metrics or math.isfinite(loss))
                  and be.all_finite(model.params))
        if not finite:
            self._back_to_snapshot()
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
        history.lr.append(self.opt.lr)
        if self.val is not None:
            vl, va = model.metrics_on_device(*self.val)
            history.val_loss.append(vl)
            history.val_accuracy.append(va if self.classify else None)
        be.synchronize()
        history.time.append(time.perf_counter() - t0)
        self._snapshot()
        if progress:
            print(history.epoch_line(), file=sys.stderr, flush=True)
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
                    self.finished = True
                    return False
        if self.val is not None:    # a schedule's score: validation accuracy (or -loss)
            score = (history.val_accuracy[-1] if self.classify else -history.val_loss[-1])
        else:
            score = None
        stop = self.schedule.end_epoch(epoch, score)
        if stop is not None:
            history.stop_reason = stop
            self.finished = True
            return False
        if on_epoch is not None and on_epoch(history):
            history.stop_reason = f"stopped by callback after epoch {epoch}"
            return False
        return True
