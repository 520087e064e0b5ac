"""What the ``"checkpoint"`` section of a checkpoint must hold, checked field by field on read.

A checkpoint may have been edited by hand or by a script (valid JSON, a sound archive, content
changed): :func:`validate` checks every field a resumed run reads before anything uses it -- its
type and range, the lengths of the History's lists, the generator states (by giving them to a
fresh generator of the model's kind), the learning-rate schedule's state (by loading it into the
schedule the options name), and the arrays (every buffer the optimizer needs, of the model's
parameter count, in floating point). Every defect is a :class:`~bpgpu.errors.ModelFileError`
naming the field, so a damaged checkpoint can never fail later with a ``KeyError`` or
``TypeError`` in the middle of a resume.
"""

from __future__ import annotations

import copy
import math
from dataclasses import fields

import numpy as np

from .errors import BpgpuError, ModelFileError
from .history import History

__all__ = ["validate"]

_U64 = 2 ** 64
#: History fields that hold one entry per completed epoch, and what an entry may be
_PER_EPOCH = {"epoch": "int", "loss": "number?", "accuracy": "number?", "time": "number",
              "loss_increased": "bool"}
#: History fields that are empty (no validation; no schedule record) or one entry per epoch
_PER_EPOCH_OR_EMPTY = {"val_loss": "number?", "val_accuracy": "number?", "lr": "number"}


class _Field:
    """Checks of one checkpoint's fields; each failure a ModelFileError naming the field."""

    def __init__(self, path):
        self.path = path

    def fail(self, name, what):
        raise ModelFileError(f"{self.path}: corrupt checkpoint: {name} {what}")

    def is_int(self, name, value, low=0, high=None):
        if type(value) is not int or value < low or (high is not None and value >= high):
            top = f" and < {high}" if high is not None else ""
            self.fail(name, f"must be an integer >= {low}{top}, got {value!r}")
        return value

    def is_kind(self, name, value, kind):
        """``kind``: "int", "bool", "str", "number" (finite or not), "number?" (or None)."""
        if kind.endswith("?") and value is None:
            return value
        base = kind.rstrip("?")
        ok = {"int": type(value) is int, "bool": type(value) is bool,
              "str": isinstance(value, str),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool)}[base]
        if not ok:
            self.fail(name, f"must be {'a' if base != 'int' else 'an'} {base}"
                            f"{' or null' if kind.endswith('?') else ''}, got {value!r}")
        return value

    def is_dict(self, name, value, optional=False):
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(name, f"must be a JSON object, got {type(value).__name__}")
        return value

    def generator_state(self, name, value):
        """``value`` must be a state numpy's default generator (PCG64) takes."""
        self.is_dict(name, value)
        try:
            np.random.default_rng(0).bit_generator.state = copy.deepcopy(value)
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            self.fail(name, f"is not a generator state ({type(exc).__name__}: {exc})")

    def array(self, name, arrays, n_params):
        a = arrays.get(name)
        if a is None:
            self.fail(f"array {name!r}", "is missing")
        if a.shape != (n_params,) or a.dtype.kind != "f":
            self.fail(f"array {name!r}", f"must be {n_params} floating-point values (the "
                                         f"model's parameters), got {a.shape} {a.dtype}")


def _history(check, section):
    history = check.is_dict("history", section["history"])
    known = {f.name for f in fields(History)}
    unknown = sorted(set(history) - known)
    if unknown:
        check.fail("history", f"has unknown field(s) {', '.join(map(repr, unknown))}")
    n = section["epoch"]
    for key, kind in {**_PER_EPOCH, **_PER_EPOCH_OR_EMPTY}.items():
        entries = history.get(key, [])
        if not isinstance(entries, list):
            check.fail(f"history.{key}", f"must be a list, got {type(entries).__name__}")
        if len(entries) != n and not (key in _PER_EPOCH_OR_EMPTY and not entries):
            check.fail(f"history.{key}", f"has {len(entries)} entries for {n} completed epochs")
        for i, value in enumerate(entries):
            check.is_kind(f"history.{key}[{i}]", value, kind)
    best = history.get("best_epoch")
    if best is not None:
        check.is_int("history.best_epoch", best, low=1, high=n + 1)
    for key, kind in (("stop_reason", "str"), ("diverged", "bool"), ("backend", "str")):
        if key in history:
            check.is_kind(f"history.{key}", history[key], kind)


def _optimizer_buffers(name):
    """The names of the state buffers of optimizer ``name``, and whether it counts steps."""
    from .backends import get_backend
    from .optim import make_optimizer
    opt = make_optimizer(name, get_backend("numpy"), 1, np.float64, lr=1.0)
    return opt.buffers, hasattr(opt, "t")


def _options(check, section):
    """The options record; returns (optimizer name, early-stopping patience, schedule)."""
    from .optim import OPTIMIZERS
    options = check.is_dict("options", section["options"])
    if section["version"] == 1:      # the optimizer a dict of hyperparameters, "patience"
        hyper = check.is_dict("options.optimizer", options.get("optimizer"), optional=True)
        name, patience = hyper.get("optimizer", "sgd"), options.get("patience")
    else:
        name, patience = options.get("optimizer", "sgd"), options.get("early_stopping")
    if name not in OPTIMIZERS:
        check.fail("options.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if patience is not None:
        check.is_int("options.early_stopping", patience, low=1)
    return name, patience, options.get("schedule")


def _scalars(check, section):
    check.is_int("epoch", section["epoch"])
    check.is_int("steps", section["steps"])
    if "finished" in section:
        check.is_kind("finished", section["finished"], "bool")
    key = section["stream_key"]
    if not isinstance(key, list) or len(key) != 2:
        check.fail("stream_key", f"must be a list of two 64-bit integers, got {key!r}")
    for i, word in enumerate(key):
        check.is_int(f"stream_key[{i}]", word, high=_U64)
    check.generator_state("rng_state", section["rng_state"])
    if section.get("split_rng_state") is not None:
        check.generator_state("split_rng_state", section["split_rng_state"])
    stopping = check.is_dict("early_stopping", section["early_stopping"])
    for key in ("best_val", "since_best"):
        if key not in stopping:
            check.fail("early_stopping", f"lacks {key}")
    best = check.is_kind("early_stopping.best_val", stopping["best_val"], "number?")
    if best is not None and math.isnan(best):
        check.fail("early_stopping.best_val", "is NaN")
    check.is_int("early_stopping.since_best", stopping["since_best"])
    data = check.is_dict("data", section["data"])
    for key, value in data.items():
        check.is_kind(f"data.{key}", value, "str?")
    if "backend" in section:
        check.is_kind("backend", section["backend"], "str")
    check.is_dict("info", section.get("info"), optional=True)


def _schedule(check, section, settings):
    """The schedule's state must load into the schedule the options record."""
    from .schedules import make_schedule
    state = check.is_dict("schedule", section.get("schedule"), optional=True)
    epochs = settings.get("epochs") if isinstance(settings, dict) else None
    epochs = epochs if type(epochs) is int and epochs >= 1 else 2 ** 31   # the run's length
    try:
        make_schedule(settings, 1.0, epochs).load_state(dict(state))
    except (BpgpuError, TypeError, ValueError, KeyError, OverflowError) as exc:
        check.fail("schedule", f"does not fit the schedule {settings!r} ({type(exc).__name__}: "
                               f"{exc})")


def validate(path, section: dict, arrays: dict, n_params: int, has_best: bool) -> None:
    """Check the ``"checkpoint"`` section ``section`` (its version and required keys already
    checked) and the state ``arrays`` of a model of ``n_params`` parameters; ``has_best``: the
    file holds the best epoch's parameters.

    Raises
    ------
    ModelFileError
        Naming the first field that is missing, of the wrong type or out of range.
    """
    check = _Field(path)
    _scalars(check, section)
    _history(check, section)
    name, patience, schedule = _options(check, section)
    _schedule(check, section, schedule)
    buffers, counts_steps = _optimizer_buffers(name)
    scalars = check.is_dict("optimizer", section["optimizer"])
    if counts_steps or "t" in scalars:
        check.is_int("optimizer.t", scalars.get("t"))
    for buffer in buffers:
        check.array(f"optimizer_{buffer}", arrays, n_params)
    for extra in ("best_params", "train_params"):
        if extra in arrays:
            check.array(extra, arrays, n_params)
    if patience is not None and section["history"].get("best_epoch") is not None \
            and not has_best:
        check.fail("array 'best_params'", "is missing (early stopping has a best epoch)")
