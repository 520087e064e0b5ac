"""Mini-batch training: epochs, shuffling, validation, early stopping, history and progress.

The loop keeps the data on the device (uploaded once), draws each epoch's permutation from the
model's host generator (so every backend visits the same batches), and accumulates the epoch's loss
and accuracy on the device, reading them once per epoch: a device backend never synchronises inside
a step. Training stops with a clear message when the loss becomes NaN or inf, keeping the weights of
the last good epoch; with early stopping it restores the weights of the best validation epoch.

Every step is :meth:`bpgpu.network.Network.train_step`; this module only orders the steps.
:func:`fit` resolves the options (:class:`bpgpu.options.FitOptions`) into a :class:`Plan` and runs
it as a :class:`Run`. At the end of each epoch the run keeps a snapshot of everything that
continues into the next one (the network's :meth:`~bpgpu.network.Network.state`, the optimizer's
state), so a checkpoint (:mod:`bpgpu.checkpoint`) can be written of it, a resumed run continues
bit for bit, and SIGINT/SIGTERM (:mod:`bpgpu.signals`) put the model back to it before
:class:`~bpgpu.signals.TrainingInterrupted` is raised.

A data-parallel run (:mod:`bpgpu.distributed`) comes in through ``fit(parallel=...)``: an object
with ``start(model, X, y, validation_data, options)`` (check the ranks agree and give them rank
0's state; returns the checkpoint to resume or None) and ``make_run(model, plan)`` (a subclass of
:class:`Run` that overrides its documented hooks).
"""

from __future__ import annotations

import inspect
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ._compat import optional_import
from .augment import resolve_augment
from .checkpoint import CheckpointNotWritten, data_fingerprints, read_checkpoint, write_checkpoint
from .errors import ConfigError, DataError
from .feeder import BatchFeeder
from .history import History
from .optim import make_optimizer
from .options import FitOptions, parameters_doc, signature
from .rows import RowView, as_rows, in_memory, row_count
from .schedules import Constant, make_schedule
from .signals import InterruptGuard, Stopped, TrainingInterrupted
from .weights import check_sample_weight, class_weights, row_factors

__all__ = ["History", "TrainingDiverged", "TrainingInterrupted", "fit", "Plan", "Run"]


class TrainingDiverged(RuntimeWarning):
    """Warned when training stops because the loss became NaN or inf."""


@dataclass
class Plan:
    """What :func:`fit` resolved from its arguments, everything a :class:`Run` needs.

    Attributes
    ----------
    X, y : arrays
        The training rows (after a validation split).
    validation_data : (X_val, y_val) or None
    options : FitOptions
    optimizer : optimizer of :func:`bpgpu.optim.make_optimizer`
    augment : bpgpu.augment.Augment or None
        Resolved for the model's inputs.
    schedule : bpgpu.schedules.Schedule
    validation : None, "data" or ["split", fraction]
        Where the validation data came from.
    split_state : dict or None
        The generator's state before the validation split (a resumed run splits the same way).
    trajectory : dict
        The options a resumed run must match, as the checkpoint records them.
    data_prints : dict or None
        Fingerprints of the data (when a checkpoint is written or read).
    info : dict or None
        ``fit``'s ``checkpoint_info``.
    sample_weight, validation_weight : ndarray (N,) float64 or None
        The training rows' weights (sample times class weights) and the validation rows'.
    continued : TrainingState or None
        The previous fit's state, when this one continues it.
    epochs : int
        The epoch the run trains up to (counting a resumed or continued run's epochs).
    """
    X: object
    y: object
    validation_data: object
    options: FitOptions
    optimizer: object
    augment: object
    schedule: object
    validation: object
    split_state: object
    trajectory: dict
    data_prints: object
    info: object
    sample_weight: object = None
    validation_weight: object = None
    continued: object = None
    epochs: int = 0


@dataclass
class TrainingState:
    """What one call of :func:`fit` leaves on the model (``model.training_state``) for a later
    call with ``continue_training=True``: host data only, so it pickles (the scikit-learn
    estimators keep it between ``partial_fit`` calls)."""
    optimizer: str
    optimizer_state: tuple
    epoch: int
    schedule: dict
    early_stopping: dict
    split_state: object
    network: dict
    last_loss: object = None
    best_params: object = None


def _split_validation(rng, n, fraction):
    """``(training rows, validation rows)`` of ``n``, drawn from ``rng``."""
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise DataError(f"validation_split={fraction} leaves no training samples out of {n}")
    order = rng.permutation(n)
    return order[n_val:], order[:n_val]


def _progress_bar(enabled, total, desc):
    if not enabled:
        return None
    tqdm = optional_import("tqdm")
    if tqdm is None:
        return None
    return tqdm.tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr,
                     dynamic_ncols=True)


def fit(model, X, y, *, sample_weight=None, validation_data=None, progress=False,
        on_epoch=None, checkpoint_info=None, parallel=None, **options):
    """Train ``model`` (a :class:`~bpgpu.network.Network`) on ``(X, y)``."""
    opts = FitOptions.of(options)
    if opts.continue_training and opts.resume is not None:
        raise ConfigError("continue_training and resume: continue a fit of this model, or a "
                          "checkpoint, not both")
    saved = None
    if parallel is not None:   # every rank checks it trains what rank 0 trains, takes its state
        saved = parallel.start(model, X, y, validation_data, opts, sample_weight)
    plan, saved = _plan(model, X, y, sample_weight, validation_data, opts, checkpoint_info,
                        saved, distributed=parallel is not None)
    run = Run(model, plan) if parallel is None else parallel.make_run(model, plan)
    if saved is not None:
        run.resume_from(saved)
    elif plan.continued is not None:
        run.continue_from(plan.continued)
    try:
        history = run.train(progress=progress, on_epoch=on_epoch)
    except TrainingInterrupted as stop:
        if stop.restored:                  # at the end of the last completed epoch
            model.training_state = run.training_state()
        raise
    model.training_state = run.training_state()
    return history


_P = inspect.Parameter
fit.__signature__ = signature(
    [_P(name, _P.POSITIONAL_OR_KEYWORD) for name in ("model", "X", "y")],
    [_P(name, _P.KEYWORD_ONLY, default=default)
     for name, default in (("sample_weight", None), ("validation_data", None),
                           ("progress", False), ("on_epoch", None), ("checkpoint_info", None),
                           ("parallel", None))])
del _P

fit.__doc__ = f"""Train ``model`` on ``(X, y)``.

    Parameters
    ----------
    model : bpgpu.network.Network
    X : array, shape (N, n_0)
        uint8 inputs are scaled by the model's ``input_scale``/``input_shift``; floats used as is.
    y : array, shape (N,) integer labels, or (N, n_out) targets
    sample_weight : array, shape (N,), optional
        Non-negative weight of every sample: each batch descends ``sum(s_i loss_i) / sum(s_i)``
        over its rows (scikit-learn's convention: integer weights equal repeated rows; Keras
        divides by the batch's rows instead), see :mod:`bpgpu.weights`. The epoch's training
        loss is then weighted too; accuracy counts rows.
    validation_data : (X_val, y_val) or (X_val, y_val, sample_weight_val), optional
        With weights, the validation loss is their weighted mean. A validation split keeps the
        held-out rows' ``sample_weight`` for it.
    progress : bool
        Show a progress bar (tqdm, when installed) and print a line per epoch to stderr.
    on_epoch : callable(History) -> bool, optional
        Called after each epoch; returning True stops training there ("stopped by callback").
    checkpoint_info : dict, optional
        JSON-ready data stored in the checkpoint as it is (``bpgpu train`` keeps its command line
        there, so ``--resume`` alone continues the run).
    parallel : data-parallel run, optional
        Train data-parallel on its ranks (:class:`bpgpu.distributed.DataParallel`; ``MLP.fit``
        takes ``comm=`` and makes it): every rank calls ``fit`` with the same model, data and
        options; each global batch of ``batch_size`` rows is split across the ranks and their
        gradients are summed by one Allreduce per step, so the result is that of one process
        (within rounding). Rank 0's generator drives the run; only rank 0 prints and writes.
{parameters_doc()}

    Returns
    -------
    History

    Raises
    ------
    TrainingInterrupted
        On SIGINT (Ctrl-C) or SIGTERM: the current batch is finished, the model is put back to
        the end of the last completed epoch (weights, optimizer, generator; with early stopping
        the model then holds the best epoch's weights, as after a completed run), the checkpoint
        is written (unless no epoch completed), and this is raised (a KeyboardInterrupt) with the
        History. A second signal stops at once.
    bpgpu.checkpoint.CheckpointNotWritten
        The checkpoint could not be written (an OSError: a full disk, say): training stops
        after that epoch, the model holds what fit would have returned there.
    """


def _plan(model, X, y, sample_weight, validation_data, opts, info, saved, distributed):
    """Resolve ``fit``'s arguments into a :class:`Plan` (and the checkpoint to resume, if any).
    The order of the generator's draws is part of the result: the split comes before training."""
    X, y, weights, validation_data = _arrays(model, X, y, sample_weight, validation_data, opts)
    aug = resolve_augment(opts.augment, model.sizes[0],
                          X.shape[1:] if len(X.shape) == 3 else None)
    continued = model.training_state if opts.continue_training else None
    if continued is not None and continued.optimizer != opts.optimizer:
        raise ConfigError(f"continue_training: the previous fit used optimizer "
                          f"{continued.optimizer!r}, this one asks for {opts.optimizer!r}")
    epochs = opts.epochs + (continued.epoch if continued is not None else 0)
    sched = make_schedule(opts.schedule, opts.lr, epochs)
    if not distributed and opts.resume is not None:
        saved = read_checkpoint(opts.resume)
    if saved is not None:
        saved.check_model(model)
    validation, split_state = ("data" if validation_data is not None else None), None
    if validation_data is None and (opts.validation_split or opts.early_stopping
                                    or sched.needs_validation):
        fraction = opts.validation_split or 0.1
        validation = ["split", fraction]
        previous = saved.split_state if saved is not None else (
            continued.split_state if continued is not None else None)
        X, y, weights, validation_data, split_state = _split(model.rng, X, y, weights,
                                                             fraction, previous, continued)
    opt = make_optimizer(opts.optimizer, model.backend, model.n_params, model.dtype, lr=opts.lr,
                         momentum=opts.momentum, weight_decay=opts.weight_decay,
                         n_decay=model.n_weights)
    trajectory = opts.trajectory({
        "momentum": opts.momentum if opts.optimizer in ("momentum", "nesterov") else None,
        "augment": None if aug is None else aug.to_dict(),
        "schedule": None if isinstance(sched, Constant) else sched.settings(),
        "validation_split": validation})
    prints = (data_fingerprints(X, y, validation_data, weights)
              if opts.checkpoint is not None or saved is not None else None)
    val_weight = validation_data[2] if validation_data is not None else None
    plan = Plan(X, y, validation_data and validation_data[:2], opts, opt, aug, sched,
                validation, split_state, trajectory, prints, info, weights, val_weight,
                continued, epochs)
    return plan, saved


def _arrays(model, X, y, sample_weight, validation_data, opts):
    """``(X, y, training weights or None, (X_val, y_val, weights or None) or None)``: the data
    checked, the class weights multiplied into the sample weights."""
    X = as_rows(X)                  # an array-like that is not in memory stays where it is
    y = np.asarray(y)
    if len(X.shape) < 2 or y.ndim < 1 or X.shape[0] != y.shape[0]:
        raise DataError(f"X and y must have the same number of samples, got {X.shape} and "
                        f"{y.shape}")
    weights = None if sample_weight is None else check_sample_weight(sample_weight, X.shape[0])
    per_class = class_weights(opts.class_weight, y, model.sizes[-1])
    if per_class is not None:
        weights = per_class if weights is None else weights * per_class
        check_sample_weight(weights, X.shape[0], "sample_weight times class_weight")
    if validation_data is not None:
        if len(validation_data) not in (2, 3):
            raise DataError("validation_data must be (X_val, y_val) or (X_val, y_val, "
                            f"sample_weight_val), got {len(validation_data)} items")
        Xv, yv = validation_data[:2]
        wv = validation_data[2] if len(validation_data) == 3 else None
        wv = None if wv is None else check_sample_weight(wv, Xv.shape[0], "sample_weight_val")
        validation_data = (Xv, yv, wv)
    return X, y, weights, validation_data


def _split(rng, X, y, weights, fraction, previous, continued):
    """A validation split drawn from ``rng`` (from the ``previous`` run's state when resuming or
    continuing, so the rows are the same; a continued run's generator is then put back)."""
    now = rng.bit_generator.state
    if previous is not None:
        rng.bit_generator.state = previous
    split_state = rng.bit_generator.state
    train, val = _split_validation(rng, X.shape[0], fraction)
    if continued is not None:
        rng.bit_generator.state = now
    def rows(index):                # a copy in memory; a view of the rows out of it
        return X[index] if in_memory(X) else RowView(X, index)
    validation = (rows(val), y[val], None if weights is None else weights[val])
    return (rows(train), y[train], None if weights is None else weights[train], validation,
            split_state)


class Run:
    """One call of :func:`fit`: the data on the device, the optimizer, and the state that changes
    from epoch to epoch (history, early-stopping state, the last completed epoch's state, the
    best parameters). Built complete from a :class:`Plan`.

    Hooks a data-parallel run overrides (:class:`bpgpu.distributed.DistributedRun`):
    :meth:`interrupt_guard`, :meth:`run_epoch`, :meth:`finish_epoch`, :meth:`save_checkpoint`
    and :meth:`train`.
    """

    def __init__(self, model, plan):
        self.model, self.plan = model, plan
        opts = self.options = plan.options
        self.opt, self.schedule = plan.optimizer, plan.schedule
        be = self.be = model.backend
        self.batch = min(opts.batch_size, row_count(plan.X))
        self.feeder = None
        if in_memory(plan.X):           # uploaded once, gathered on the device step by step
            self.X_dev = model.prepare_inputs(plan.X)
            self.T_dev = be.asarray(model.targets_from(plan.y, self.X_dev.shape[0]))
        else:                           # read batch by batch (bpgpu.feeder)
            self.X_dev = self.T_dev = None
            self.feeder = BatchFeeder(model, plan.X, np.asarray(plan.y), self.batch)
        self.n = row_count(plan.X)
        self.val, self.val_on_device = None, True
        if plan.validation_data is not None:
            Xv, yv = plan.validation_data
            self.val_on_device = in_memory(Xv)
            if self.val_on_device:
                Xv_dev = model.prepare_inputs(Xv)
                self.val = (Xv_dev, be.asarray(model.targets_from(yv, Xv_dev.shape[0])))
            else:
                self.val = (Xv, np.asarray(yv))
        self.classify = (model.output == "softmax" or model.multilabel
                         or np.asarray(plan.y).dtype.kind in "iub")
        self.train_metrics = opts.train_metrics
        self.count_correct = self.classify and opts.train_metrics and not model.multilabel
        self.shuffle, self.patience = opts.shuffle, opts.early_stopping
        self.ws = model.workspace(self.batch, dropout=opts.dropout, augment=plan.augment)
        self.metrics = be.zeros((2,), np.float64)    # [loss sum, correct count] of the epoch
        # sample weights: the epoch's per-row factors, rewritten in place every epoch
        self.factors = (be.empty((self.n,), model.dtype) if plan.sample_weight is not None
                        else None)
        self.val_weight = (None if plan.validation_weight is None or self.val is None
                           else be.asarray(plan.validation_weight.astype(model.dtype)))
        step_options = {} if self.factors is None else {"weights": self.factors}
        # the whole epoch as one compiled call where the backend has one (numba), else None
        self.compiled = None if self.feeder is not None else be.compiled_epoch(
            model, self.ws, self.X_dev, self.T_dev, self.opt,
            metrics=self.metrics if opts.train_metrics else None,
            count_correct=self.count_correct, **step_options)
        self.epochs = plan.epochs
        self.previous_loss = None                     # the epoch before this run's first
        self.listeners = []                           # made when training starts
        self.best = be.empty((model.n_params,), model.dtype) if self.patience else None
        self.best_val, self.since_best = math.inf, 0
        self.history = History(backend=be.name)
        self.epoch = 0                                # epochs completed
        self.finished = False                         # early stopping ended the run
        self.interrupt = self.interrupt_guard()
        # the end of the last completed epoch, to go back to on an interrupt or divergence
        self.last_good = model.state()
        self.opt_snapshot = make_optimizer(self.opt.name, be, model.n_params, model.dtype,
                                           lr=self.opt.lr)
        self._snapshot()

    # ------------------------------------------------------------------ hooks
    def interrupt_guard(self):
        """The signal guard of this run (hook): :class:`~bpgpu.signals.InterruptGuard`."""
        return InterruptGuard()

    def make_listeners(self) -> list:
        """What watches this run's epochs (hook; a data-parallel run's rank 0 alone has them):
        the per-epoch log (bpgpu.runlog) and TensorBoard (bpgpu.tensorboard), as the options
        ask. Each has ``append(history)`` after every recorded epoch and ``close()``."""
        opts, listeners = self.options, []
        continues = self.plan.continued.epoch if self.plan.continued is not None else None
        if opts.log is not None:
            from .runlog import EpochLog
            listeners.append(EpochLog(opts.log, self.n, self.history, continues))
        if opts.tensorboard is not None:
            from .tensorboard import TensorBoardLog
            listeners.append(TensorBoardLog(opts.tensorboard, self.model, opts.record(),
                                            self.n, opts.tensorboard_histograms))
        return listeners

    # ------------------------------------------------------------------ state
    def _snapshot(self):
        self.model.state(into=self.last_good)
        self.opt.copy_state(self.opt_snapshot)

    def _back_to_snapshot(self):
        self.model.load_state(self.last_good)
        self.opt_snapshot.copy_state(self.opt)

    def save_checkpoint(self):
        """Write the last completed epoch's state to the checkpoint (hook; atomically); the
        model must be at that state (the end of an epoch, or put back to it). Returns the
        path."""
        model, plan = self.model, self.plan
        best = (self.be.to_host(self.best)
                if self.patience and self.history.best_epoch is not None else None)
        progress = {
            "epoch": self.epoch, "finished": self.finished, "options": plan.trajectory,
            "history": self.history.to_dict(), "split_rng_state": plan.split_state,
            "early_stopping": {"best_val": None if math.isinf(self.best_val) else self.best_val,
                               "since_best": self.since_best},
            "schedule": self.schedule.state(), "data": plan.data_prints,
            "backend": self.be.name, "info": plan.info}
        return write_checkpoint(self.options.checkpoint, model, self.last_good,
                                self.opt_snapshot.state(), progress, best)

    def continue_from(self, state):
        """Continue the previous fit of this model (:class:`TrainingState`): its optimizer
        state, epochs, schedule and early-stopping state, generator and step count."""
        model = self.model
        model.load_state(state.network)
        self.opt.load_state(*state.optimizer_state)
        self.epoch = state.epoch
        self.schedule.load_state(state.schedule or {})
        best_val = state.early_stopping["best_val"]
        self.best_val = math.inf if best_val is None else float(best_val)
        self.since_best = int(state.early_stopping["since_best"])
        self.previous_loss = state.last_loss
        if self.patience and state.best_params is not None:
            self.be.upload(state.best_params.astype(model.dtype, copy=False), self.best)
        self._snapshot()

    def training_state(self) -> TrainingState:
        """The state a later ``fit(..., continue_training=True)`` of this model continues
        (taken at the end of the last completed epoch)."""
        best = (self.be.to_host(self.best)
                if self.patience and (self.history.best_epoch is not None
                                      or not math.isinf(self.best_val)) else None)
        network = {k: v for k, v in self.last_good.items() if k != "params"}
        return TrainingState(
            optimizer=self.opt.name, optimizer_state=self.opt_snapshot.state(), epoch=self.epoch,
            schedule=self.schedule.state(),
            early_stopping={"best_val": None if math.isinf(self.best_val) else self.best_val,
                            "since_best": self.since_best},
            split_state=self.plan.split_state, network=network,
            last_loss=self.history.loss[-1] if self.history.loss else self.previous_loss,
            best_params=best)

    def resume_from(self, saved):
        """Continue from the checkpoint ``saved`` (:class:`bpgpu.checkpoint.Checkpoint`): check
        it matches this run's options and data, then take its state."""
        saved.check_options(self.plan.trajectory)
        saved.check_data(self.plan.data_prints)
        model = self.model
        model.set_params(*saved.parameters(model.n_layers))
        model.load_state(saved.network_state())
        self.opt.load_state(*saved.optimizer_state())
        self.history = History(**saved.state["history"])
        self.epoch = saved.epoch
        self.finished = bool(saved.state.get("finished", False))
        best_val = saved.state["early_stopping"]["best_val"]
        self.best_val = math.inf if best_val is None else float(best_val)
        self.since_best = int(saved.state["early_stopping"]["since_best"])
        self.schedule.load_state(saved.state.get("schedule") or {})
        best = saved.best_parameters()
        if self.patience and best is not None:
            self.be.upload(best.astype(model.dtype, copy=False), self.best)
        self._snapshot()

    # ------------------------------------------------------------------ epochs
    def run_epoch(self, order, bar=None):
        """Every step of one epoch (hook), in the order of the device index array ``order``: one
        compiled call where the backend offers one (``BPGPU_COMPILED_EPOCH=0`` turns it off),
        else -- and wherever it declines -- the steps one by one."""
        model, ws, batch = self.model, self.ws, self.batch
        interrupt = self.interrupt
        if self.compiled is not None:
            ran = self.compiled(order, should_stop=lambda: interrupt.signum is not None,
                                progress=None if bar is None else bar.update)
            if ran is None:                           # abandoned part way: Ctrl-C or SIGTERM
                raise Stopped
            if ran:
                return
        metrics = self.metrics if self.train_metrics else None
        spans = [(start, min(start + batch, self.n)) for start in range(0, self.n, batch)]
        for (start, stop), (X, T, rows) in zip(spans, self.steps(order, spans)):
            if interrupt.signum is not None:
                raise Stopped
            weights = None if self.factors is None else self.factors[start:stop]
            model.train_step(ws.view(stop - start), X, T, rows, self.opt, metrics=metrics,
                             count_correct=self.count_correct, weights=weights)
            if bar is not None:
                bar.update(1)

    def steps(self, order, spans):
        """The inputs of every step of an epoch: for each ``(lo, hi)`` of ``spans`` (positions
        in the epoch's order), ``(X, T, rows)`` for ``train_step`` -- the device-resident data
        and ``order[lo:hi]``, or, for data not in memory, the batch the feeder staged and the
        rows 0 .. b-1."""
        if self.feeder is None:
            for lo, hi in spans:
                yield self.X_dev, self.T_dev, order[lo:hi]
        else:
            yield from self.feeder.batches(self.order_host, spans)

    def train(self, *, progress=False, on_epoch=None):
        """Run epochs ``self.epoch + 1 ..`` up to the options' ``epochs`` (hook); return the
        History."""
        be = self.be
        self.listeners = self.make_listeners()
        # A diverging run overflows on the way to NaN; that is detected and reported below, so
        # numpy's per-op floating-point warnings would only be noise.
        try:
            with self.interrupt, be.compute_threads(self.batch), np.errstate(
                    over="ignore", invalid="ignore", divide="ignore"):
                try:
                    self._epochs(progress, on_epoch)
                except Stopped:
                    self._stopped()
                except CheckpointNotWritten:
                    self._use_best()
                    raise
        finally:
            for listener in self.listeners:
                listener.close()
            if self.feeder is not None:
                self.feeder.close()
        self._use_best()
        return self.history

    def _use_best(self):
        """With early stopping, the best epoch's parameters into the model (what fit leaves)."""
        if self.patience and self.history.best_epoch is not None:
            self.be.copy(self.best, self.model.params)

    def _epochs(self, progress, on_epoch):
        epochs, every = self.epochs, self.options.checkpoint_every
        order_host = np.arange(self.n)
        n_batches = -(-self.n // self.batch)
        self._written = None                          # the epoch last written to the checkpoint
        while not self.finished and self.epoch < epochs:
            epoch = self.epoch + 1
            self.opt.lr = self.schedule.rate(epoch)
            t0 = time.perf_counter()
            if self.shuffle:
                order_host = self.model.rng.permutation(self.n)
            self.order_host = order_host
            if self.factors is not None:
                self.be.upload(row_factors(self.plan.sample_weight, order_host, self.batch,
                                           self.model.dtype), self.factors)
            self.metrics[...] = 0
            bar = _progress_bar(progress, n_batches, f"epoch {epoch}/{epochs}")
            try:
                self.run_epoch(self.be.asarray(order_host), bar)
            finally:
                if bar is not None:
                    bar.close()
            go_on = self.finish_epoch(epoch, t0, progress, on_epoch)
            if self.history.diverged:
                break
            if self.options.checkpoint is not None and (
                    not go_on or self.epoch == epochs or self.epoch % every == 0):
                self._checkpoint_or_stop()
            if not go_on:
                break
            if self.interrupt.signum is not None:
                raise Stopped

    def _checkpoint_or_stop(self):
        """Write the checkpoint; when that fails (a full disk), stop training here with
        :class:`~bpgpu.checkpoint.CheckpointNotWritten` (the model stays this epoch's)."""
        try:
            self.save_checkpoint()
        except OSError as exc:
            failed = CheckpointNotWritten(exc, self.options.checkpoint, self.epoch,
                                          self.history)
            failed.bpgpu_collective = getattr(exc, "bpgpu_collective", False)
            self.history.stop_reason = str(failed)
            raise failed from exc
        self._written = self.epoch

    def _stopped(self):
        """A signal stopped the run: back to the last completed epoch, checkpoint written (when
        an epoch completed: nothing otherwise), the best epoch's parameters in the model with
        early stopping, :class:`TrainingInterrupted` raised."""
        self._back_to_snapshot()
        path = error = None
        if self.options.checkpoint is not None and self.epoch > 0:
            try:
                path = (self.options.checkpoint if self._written == self.epoch
                        else self.save_checkpoint())
            except OSError as exc:          # a full disk: the model is still saved by the caller
                error = exc
        self._use_best()
        signum = self.interrupt.signum
        self.history.stop_reason = (f"interrupted by {signal.Signals(signum).name} after "
                                    f"epoch {self.epoch}")
        raise TrainingInterrupted(signum, self.history, restored=True, checkpoint=path,
                                  checkpoint_error=error) from None

    def finish_epoch(self, epoch, t0, progress, on_epoch) -> bool:
        """Record epoch ``epoch`` and make it the state to go back to (hook); False when
        training stops here (divergence, a callback, early stopping, the schedule)."""
        model, be, history, n = self.model, self.be, self.history, self.n
        loss_sum, correct = be.to_host(self.metrics)       # the epoch's one read from the device
        loss = float(loss_sum) / n if self.train_metrics else None
        finite = ((not self.train_metrics or math.isfinite(loss))
                  and be.all_finite(model.params))
        if not finite:
            return self._diverged(epoch, loss)
        self.epoch = epoch
        history.epoch.append(epoch)
        history.loss.append(loss)
        history.accuracy.append(float(correct) / n if self.count_correct else None)
        before = history.loss[-2] if len(history.loss) > 1 else self.previous_loss
        history.loss_increased.append(self.train_metrics and before is not None
                                      and loss > before)
        history.lr.append(self.opt.lr)
        if self.val is not None:
            measure = model.metrics_on_device if self.val_on_device else model.metrics
            vl, va = measure(*self.val, self.val_weight)
            history.val_loss.append(vl)
            history.val_accuracy.append(va if self.classify else None)
        be.synchronize()
        history.time.append(time.perf_counter() - t0)
        self._snapshot()
        for listener in self.listeners:
            listener.append(history)
        if progress:
            print(history.epoch_line(), file=sys.stderr, flush=True)
        return self._go_on(epoch, on_epoch)

    def _diverged(self, epoch, loss) -> bool:
        self._back_to_snapshot()
        history = self.history
        history.diverged = True
        what = (f"training loss became {loss}" if self.train_metrics and not math.isfinite(loss)
                else "parameters became NaN/inf")
        history.stop_reason = (f"diverged: {what} in epoch {epoch} (lower the learning "
                               f"rate); kept the weights of epoch {epoch - 1}")
        warnings.warn(history.stop_reason, TrainingDiverged, stacklevel=7)
        return False

    def _go_on(self, epoch, on_epoch) -> bool:
        """After a recorded epoch: early stopping, the schedule's end, the callback."""
        history = self.history
        if self.patience:
            vl = history.val_loss[-1]
            if vl < self.best_val:
                self.best_val, self.since_best, history.best_epoch = vl, 0, epoch
                self.be.copy(self.model.params, self.best)
            else:
                self.since_best += 1
                if self.since_best >= self.patience:
                    history.stop_reason = (f"early stopping: no validation improvement for "
                                           f"{self.patience} epochs; restored epoch "
                                           f"{history.best_epoch}")
                    self.finished = True
                    return False
        score = None
        if self.val is not None:    # a schedule's score: validation accuracy (or -loss)
            score = history.val_accuracy[-1] if self.classify else -history.val_loss[-1]
        stop = self.schedule.end_epoch(epoch, score)
        if stop is not None:
            history.stop_reason = stop
            self.finished = True
            return False
        if on_epoch is not None and on_epoch(history):
            history.stop_reason = f"stopped by callback after epoch {epoch}"
            return False
        return True
