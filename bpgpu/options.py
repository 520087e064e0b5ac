"""The training options, declared once: :class:`FitOptions`.

Every option of :func:`bpgpu.train.fit` is one field of the frozen dataclass :class:`FitOptions`,
with its default, its kind (which fixes its type and range), its help text, its command-line flag
and default, what a resumed run must do with it, whether the ranks of a data-parallel run must
agree on it, and its name in the scikit-learn estimators. Everything else is derived from here:

- ``fit``'s keywords and their documentation (:func:`signature`, :func:`parameters_doc`);
- the ``bpgpu train`` flags (:mod:`bpgpu.cli` walks :func:`declarations`);
- the checkpoint's record of the options a resume must match (:meth:`FitOptions.trajectory`)
  and the options ``bpgpu train --resume`` takes back from it (:func:`restored_names`);
- what the ranks of a data-parallel run compare at the start (:meth:`FitOptions.agreement`);
- the ``fit`` section of ``bpgpu train --json`` (:meth:`FitOptions.record`);
- the scikit-learn estimators' parameters (:func:`sklearn_parameters`).

Adding an option is one field here plus its implementation.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field

from .errors import ConfigError

__all__ = ["FitOptions", "Declaration", "declarations", "signature", "parameters_doc",
           "restored_names", "sklearn_parameters", "MATCH", "RESTORE", "FREE", "plain",
           "SAME_DEFAULT"]

#: What a resumed run does with an option: it must equal the checkpoint's (it shapes the
#: trajectory), ``bpgpu train --resume`` takes it back from the checkpoint unless given again
#: (it may differ: e.g. epochs may grow), or it is free (a file path of this run).
MATCH, RESTORE, FREE = "match", "restore", "free"
#: What the ranks of a data-parallel run must agree on: the value, or only whether it is given.
SAME, PRESENCE = "same", "presence"
#: Kinds: how an option's value is converted and checked (and its command-line type).
KINDS = ("count", "float", "fraction", "rate", "choice", "flag", "spec", "path")


class _Same:
    """A declaration's "the same as the API's default"."""

    def __repr__(self):
        return "SAME_DEFAULT"


SAME_DEFAULT = _Same()


@dataclass(frozen=True)
class Declaration:
    """One option's facts (the field's metadata, plus its name and default)."""
    name: str
    default: object
    kind: str
    help: str
    flag: str | None = None
    cli_default: object = SAME_DEFAULT
    metavar: str | None = None
    choices: str | None = None
    resume: str = MATCH
    ranks: str = SAME
    sklearn: str | None = None
    sklearn_default: object = SAME_DEFAULT
    optional: bool = False

    @property
    def command_line_default(self):
        """The ``bpgpu train`` default (the API's unless declared otherwise)."""
        return self.default if self.cli_default is SAME_DEFAULT else self.cli_default


def _option(default, kind, help, **facts):
    """A :class:`FitOptions` field: ``default`` and the facts of :class:`Declaration`."""
    assert kind in KINDS, kind
    return field(default=default, metadata=dict(facts, kind=kind, help=help))


def _check(decl: Declaration, value):
    """``value`` converted to the option's kind; ConfigError naming the option otherwise."""
    if value is None and decl.optional:
        return None
    kind, name = decl.kind, decl.name
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}") from None
        if number < 1:
            what = f"{name} ({decl.metavar.lower()})" if decl.metavar else name
            raise ConfigError(f"{what} must be >= 1, got {number}")
        return number
    if kind in ("float", "fraction", "rate"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if kind == "fraction" and not 0.0 < number < 1.0:
            raise ConfigError(f"{name} must be in (0, 1), got {value}")
        if kind == "rate" and not 0.0 <= number < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        return number
    if kind == "flag":
        return bool(value)
    return value


@dataclass(frozen=True)
class FitOptions:
    """The options of one call of :func:`bpgpu.train.fit` (see :func:`parameters_doc`)."""

    epochs: int = _option(
        10, "count", "Train until this many epochs are complete (counting those of a resumed "
        "checkpoint).", flag="--epochs", resume=RESTORE, sklearn="max_iter", sklearn_default=200)
    batch_size: int = _option(
        64, "count", "Rows per step; the last batch of an epoch holds the remainder.",
        flag="--batch-size", cli_default=128, sklearn="batch_size")
    optimizer: str = _option(
        "sgd", "choice", "sgd, momentum, nesterov or adam.", flag="--optimizer",
        choices="optimizer", cli_default="momentum", sklearn="optimizer",
        sklearn_default="adam")
    lr: float = _option(
        0.1, "float", "Learning rate (the base rate of a schedule).", flag="--lr",
        cli_default=0.05, sklearn="learning_rate", sklearn_default=1e-3)
    momentum: float = _option(
        0.9, "float", "Momentum of the momentum and nesterov optimizers.", flag="--momentum",
        sklearn="momentum")
    weight_decay: float = _option(
        0.0, "float", "L2 coefficient added to the weights' gradient (biases are not decayed).",
        flag="--weight-decay", sklearn="alpha")
    dropout: float = _option(
        0.0, "rate", "Inverted-dropout rate on the hidden layers in training, in [0, 1); the "
        "masks come from counter-based streams named by (training step, layer), drawn on the "
        "device.", flag="--dropout", sklearn="dropout")
    validation_split: float | None = _option(
        None, "fraction", "Fraction of (X, y) held out for validation (drawn from the model's "
        "generator) when no validation_data is given.", flag="--validation-split",
        optional=True)
    early_stopping: int | None = _option(
        None, "count", "Patience in epochs on the validation loss; the best epoch's weights are "
        "restored. Holds out 10 % of the data when no validation set is given.",
        flag="--early-stopping", metavar="PATIENCE", optional=True)
    shuffle: bool = _option(
        True, "flag", "Draw a new permutation every epoch from the model's generator.",
        flag="--no-shuffle", sklearn="shuffle")
    train_metrics: bool = _option(
        True, "flag", "Accumulate the running training loss and accuracy (False skips that "
        "per-batch work; History then has None for them; divergence is still detected, from "
        "the parameters).")
    augment: object = _option(
        None, "spec", "Warp every training image while its batch is gathered, on the device: "
        "a spec string such as 'shift=2,rotate=10,scale=0.1,shear=0.2,elastic=34:4', a dict or "
        "a bpgpu.augment.Augment (see bpgpu.augment). X must be images: (N, H, W), or (N, H*W) "
        "with a square H*W or shape=HxW in the spec.", flag="--augment", metavar="SPEC",
        optional=True)
    schedule: object = _option(
        None, "spec", "Learning-rate schedule setting every epoch's rate from lr: "
        "'step:every=10,factor=0.5', 'cosine:warmup=5,min=0', 'nielsen:patience=10,halvings=7' "
        "or 'constant' (see bpgpu.schedules); nielsen holds out 10 % for validation when no "
        "validation data is given.", flag="--schedule", metavar="SPEC", optional=True)
    class_weight: object = _option(
        None, "spec", "Weights of the classes (integer labels): 'balanced' (n_samples / "
        "(n_classes * count), as scikit-learn computes it) or a dict of label -> weight (JSON "
        "on the command line); multiplies each row's sample weight. Validation is not "
        "class-weighted.", flag="--class-weight", metavar="balanced|JSON", optional=True,
        sklearn="class_weight")
    continue_training: bool = _option(
        False, "flag", "Continue the previous fit of this model: its optimizer state, epoch "
        "count, schedule state, early-stopping state and validation split carry over, the "
        "generator and step count are the model's own, and epochs more epochs run "
        "(fit(epochs=2) then fit(epochs=3, continue_training=True) equals fit(epochs=5)). The "
        "first fit of a model simply trains.", resume=FREE)
    checkpoint: str | None = _option(
        None, "path", "Write a checkpoint (everything a resumed run needs) here, atomically, "
        "every checkpoint_every epochs, after the last one, and when training is interrupted.",
        flag="--checkpoint", metavar="PATH", resume=FREE, ranks=PRESENCE, optional=True)
    checkpoint_every: int = _option(
        1, "count", "Write the checkpoint every this many epochs.", flag="--checkpoint-every",
        metavar="N", resume=RESTORE)
    log: str | None = _option(
        None, "path", "Append one row per completed epoch (epoch, seconds, samples/s, rate, "
        "training and validation loss and accuracy, backend) to this CSV (.csv) or JSON Lines "
        "(.jsonl) file, flushed and fsynced as each epoch ends (bpgpu.runlog); a resumed run "
        "continues it.", flag="--log", metavar="PATH", resume=RESTORE, ranks=PRESENCE,
        optional=True)
    tensorboard: str | None = _option(
        None, "path", "Write TensorBoard event files to this directory through tensorboardX: "
        "the scalars of every epoch and the hyper-parameters once (bpgpu.tensorboard).",
        flag="--tensorboard", metavar="DIR", resume=RESTORE, ranks=PRESENCE, optional=True)
    tensorboard_histograms: int | None = _option(
        None, "count", "With tensorboard: the weights and biases of every layer as histograms "
        "every this many epochs.", flag="--tensorboard-histograms", metavar="N",
        resume=RESTORE, optional=True)
    resume: str | None = _option(
        None, "path", "Continue from this checkpoint: the model must have its architecture, "
        "the data and the options that shape the trajectory must be the same. The result is "
        "bit-identical to a run that never stopped, on the same backend.", flag="--resume",
        metavar="PATH", resume=FREE, ranks=PRESENCE, optional=True)

    def __post_init__(self):
        if self.early_stopping is False:                 # scikit-learn's spelling of "off"
            object.__setattr__(self, "early_stopping", None)
        for decl in declarations():
            object.__setattr__(self, decl.name, _check(decl, getattr(self, decl.name)))

    @classmethod
    def of(cls, options: dict) -> "FitOptions":
        """From ``fit``'s keywords; a TypeError names a keyword that is not an option."""
        names = {d.name for d in declarations()}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
        return cls(**options)

    def replace(self, **changes) -> "FitOptions":
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)

    def trajectory(self, resolved: dict) -> dict:
        """The options a resumed run must match (:data:`MATCH`), JSON-plain, for the checkpoint.

        ``resolved`` gives, by name, the normalised form of the options whose owners resolve them
        (the augmentation's fields, the schedule's settings, the validation actually used); the
        others are recorded as given."""
        return {d.name: plain(resolved.get(d.name, getattr(self, d.name)))
                for d in declarations() if d.resume == MATCH}

    def agreement(self) -> dict:
        """What every rank of a data-parallel run must have the same (JSON-plain)."""
        return {d.name: plain(getattr(self, d.name)) if d.ranks == SAME
                else getattr(self, d.name) is not None for d in declarations()}

    def record(self) -> dict:
        """Every option, JSON-plain (the ``fit`` section of ``bpgpu train --json``)."""
        return {d.name: plain(getattr(self, d.name)) for d in declarations()}


def plain(value):
    """``value`` as it comes back from JSON (tuples become lists); an object by its
    ``to_dict()`` or ``settings()`` (augmentations, schedules), so saved and given compare."""
    def convert(obj):
        for method in ("to_dict", "settings"):
            if callable(getattr(obj, method, None)):
                return getattr(obj, method)()
        raise TypeError(f"{type(obj).__name__} is not JSON-ready")
    return json.loads(json.dumps(value, default=convert))


def declarations() -> list[Declaration]:
    """Every option's :class:`Declaration`, in :class:`FitOptions`' order."""
    return [Declaration(name=f.name, default=f.default, **f.metadata)
            for f in dataclasses.fields(FitOptions)]


def restored_names() -> list[str]:
    """The options ``bpgpu train --resume`` takes back from the checkpoint unless given again:
    every option except this run's file paths."""
    return [d.name for d in declarations() if d.resume != FREE]


def signature(before=(), after=()) -> inspect.Signature:
    """``fit``'s signature: ``before`` (parameters), every option as a keyword with its
    default, then ``after`` (keyword parameters)."""
    options = [inspect.Parameter(d.name, inspect.Parameter.KEYWORD_ONLY, default=d.default)
               for d in declarations()]
    return inspect.Signature(list(before) + options + list(after))


def parameters_doc(indent: str = "    ") -> str:
    """The numpydoc entries of every option (for ``fit``'s docstring)."""
    import textwrap
    lines = []
    for d in declarations():
        kind = {"count": "int", "float": "float", "fraction": "float", "rate": "float",
                "choice": "str", "flag": "bool", "spec": "str, dict or object",
                "path": "path"}[d.kind]
        lines.append(f"{indent}{d.name} : {kind}{', optional' if d.optional else ''}")
        lines += textwrap.wrap(f"{d.help} Default {d.default!r}.", 96 - len(indent),
                               initial_indent=indent * 2, subsequent_indent=indent * 2)
    return "\n".join(lines)


def sklearn_parameters() -> list[tuple[str, str, object]]:
    """``(estimator parameter, fit option, estimator default)`` of every option the
    scikit-learn estimators expose."""
    return [(d.sklearn, d.name, d.default if d.sklearn_default is SAME_DEFAULT
             else d.sklearn_default) for d in declarations() if d.sklearn]
