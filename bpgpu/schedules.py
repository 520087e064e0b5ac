"""Learning-rate schedules: the rate of each epoch, set on the optimizer before the epoch runs.

Three, as the textbooks and practice use them:

- ``step``: multiply the rate by ``factor`` every ``every`` epochs.
- ``cosine``: a linear warm-up over ``warmup`` epochs to the base rate, then half a cosine down to
  ``min`` times the base rate at the last epoch.
- ``nielsen``: Nielsen's rule (*Neural Networks and Deep Learning*, ch. 3): keep the rate until
  the validation accuracy has not improved for ``patience`` epochs, then halve it (``factor``);
  stop training when it would fall to the base rate / 2**``halvings`` (his exercise: patience 10,
  stop at 1/128, i.e. halvings 7).

A schedule is a small object with the rate of the next epoch, what it does at the end of an epoch
(only Nielsen's has state), its state as JSON-ready numbers (checkpoints keep it, so a resumed run
continues bit for bit), and its settings (compared when resuming). The optimizer reads ``opt.lr``
every step, so setting it once per epoch is all a schedule needs.

Spec strings (``bpgpu train --schedule``, ``fit(schedule=...)``): a name, then optional
``:key=value,...`` settings -- ``"step:every=10,factor=0.5"``, ``"cosine:warmup=5,min=0.01"``,
``"nielsen:patience=10,halvings=7"``, or ``"constant"``.
"""

from __future__ import annotations

import math

from .errors import ConfigError

__all__ = ["SCHEDULES", "Schedule", "Constant", "StepDecay", "Cosine", "Nielsen",
           "make_schedule"]


class Schedule:
    """The base: a constant rate. Subclasses override :meth:`rate` and perhaps :meth:`end_epoch`.

    Parameters
    ----------
    lr : float
        The base rate (``fit``'s ``lr``).
    epochs : int
        The run's last epoch (``fit``'s ``epochs``).
    """

    name = "constant"
    #: setting name -> (type, default, check, what it must be)
    SETTINGS: dict = {}
    #: True when :meth:`end_epoch` needs a validation score
    needs_validation = False

    def __init__(self, lr, epochs, **settings):
        self.lr, self.epochs = float(lr), int(epochs)
        for key, (kind, default, ok, what) in self.SETTINGS.items():
            value = settings.pop(key, default)
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"schedule {self.name}: {key} must be {what}, got {value!r}") \
                    from None
            if not ok(value):
                raise ConfigError(f"schedule {self.name}: {key} must be {what}, got {value!r}")
            setattr(self, key, value)
        if settings:
            known = ", ".join(self.SETTINGS) or "none"
            raise ConfigError(f"schedule {self.name}: unknown setting(s) "
                              f"{', '.join(sorted(settings))} (known: {known})")

    def rate(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (1-based), given the state so far."""
        return self.lr

    def end_epoch(self, epoch: int, score) -> str | None:
        """Update the state after epoch ``epoch`` completed with validation ``score`` (higher is
        better; None without validation). Returns a stop reason, or None to go on."""
        return None

    def settings(self) -> dict:
        """What shapes the rates: the name and every setting (compared when resuming)."""
        return {"name": self.name, **{k: getattr(self, k) for k in self.SETTINGS}}

    def state(self) -> dict:
        """The state that changes from epoch to epoch (JSON-ready)."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned."""

    def describe(self) -> str:
        """One line for people."""
        parts = ",".join(f"{k}={getattr(self, k):g}" for k in self.SETTINGS)
        return self.name + (f":{parts}" if parts else "")


def _positive(v):
    return v > 0


class Constant(Schedule):
    """The base rate every epoch."""


class StepDecay(Schedule):
    """``lr * factor ** ((epoch - 1) // every)``."""

    name = "step"
    SETTINGS = {"every": (int, 10, _positive, "an integer >= 1"),
                "factor": (float, 0.5, lambda v: 0 < v <= 1, "a number in (0, 1]")}

    def rate(self, epoch):
        return self.lr * self.factor ** ((epoch - 1) // self.every)


class Cosine(Schedule):
    """Linear warm-up, then half a cosine: epoch ``e <= warmup`` runs at ``lr * e / warmup``;
    after it, the k-th of the ``K = epochs - warmup`` remaining epochs (k = 0 .. K - 1) runs at
    ``low + (lr - low) (1 + cos(pi k / K)) / 2`` with ``low = min * lr`` (the curve would reach
    ``low`` one epoch after the last, so no epoch is spent at the floor)."""

    name = "cosine"
    SETTINGS = {"warmup": (int, 0, lambda v: v >= 0, "an integer >= 0"),
                "min": (float, 0.0, lambda v: 0 <= v <= 1, "a number in [0, 1]")}

    def __init__(self, lr, epochs, **settings):
        super().__init__(lr, epochs, **settings)
        if self.warmup >= self.epochs:
            raise ConfigError(f"schedule cosine: warmup ({self.warmup}) must be shorter than the "
                              f"run ({self.epochs} epochs)")

    def settings(self):
        return dict(super().settings(), epochs=self.epochs)    # the curve depends on the length

    def rate(self, epoch):
        if epoch <= self.warmup:
            return self.lr * epoch / self.warmup
        k, K = epoch - self.warmup - 1, self.epochs - self.warmup
        low = self.min * self.lr
        return low + (self.lr - low) * 0.5 * (1 + math.cos(math.pi * k / K))


class Nielsen(Schedule):
    """Halve (``factor``) when the validation accuracy has not improved for ``patience`` epochs;
    stop when the rate would reach ``lr * factor ** halvings``."""

    name = "nielsen"
    SETTINGS = {"patience": (int, 10, _positive, "an integer >= 1"),
                "halvings": (int, 7, _positive, "an integer >= 1"),
                "factor": (float, 0.5, lambda v: 0 < v < 1, "a number in (0, 1)")}
    needs_validation = True

    def __init__(self, lr, epochs, **settings):
        super().__init__(lr, epochs, **settings)
        self.cuts, self.best, self.since_best = 0, -math.inf, 0

    def rate(self, epoch):
        return self.lr * self.factor ** self.cuts

    def end_epoch(self, epoch, score):
        if score is None:
            raise ConfigError("schedule nielsen needs a validation score every epoch")
        if score > self.best:
            self.best, self.since_best = score, 0
            return None
        self.since_best += 1
        if self.since_best < self.patience:
            return None
        self.since_best = 0
        self.cuts += 1
        if self.cuts >= self.halvings:
            return (f"schedule nielsen: no validation improvement for {self.patience} epochs "
                    f"at rate {self.rate(epoch) / self.factor:g}, cut {self.halvings} would take "
                    f"it to {self.rate(epoch):g}: stopped")
        return None

    def state(self):
        return {"cuts": self.cuts, "best": None if math.isinf(self.best) else self.best,
                "since_best": self.since_best}

    def load_state(self, state):
        self.cuts = int(state["cuts"])
        self.best = -math.inf if state["best"] is None else float(state["best"])
        self.since_best = int(state["since_best"])


#: name -> class
SCHEDULES = {cls.name: cls for cls in (Constant, StepDecay, Cosine, Nielsen)}


def parse_spec(spec: str):
    """``"name:key=value,..."`` -> ``(name, {key: value-as-text})``."""
    name, _, rest = str(spec).strip().partition(":")
    name = name.strip().lower()
    settings = {}
    for item in rest.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"schedule: expected key=value after {name}:, got {item!r} "
                              "(e.g. step:every=10,factor=0.5)")
        if key.strip() in settings:
            raise ConfigError(f"schedule: {key.strip()} is given twice in {spec!r}")
        settings[key.strip()] = value.strip()
    return name, settings


def make_schedule(schedule, lr, epochs) -> Schedule:
    """A :class:`Schedule` from a spec string, a dict (``{"name": ..., settings}``), a Schedule,
    or None (constant), for a run with base rate ``lr`` and ``epochs`` epochs."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule is None:
        name, settings = "constant", {}
    elif isinstance(schedule, str):
        name, settings = parse_spec(schedule)
    elif isinstance(schedule, dict):
        settings = dict(schedule)
        name = str(settings.pop("name", "constant"))
        settings.pop("epochs", None)
    else:
        raise ConfigError(f"schedule must be a spec string, a dict or a Schedule, got "
                          f"{type(schedule).__name__}")
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return cls(lr, epochs, **settings)
