"""``bpgpu train``: a network on a dataset, with the options of :class:`bpgpu.options.FitOptions`.

The training options' flags, types, defaults and help come from their declaration
(:mod:`bpgpu.options`); this module adds the model's and the dataset's (:data:`MODEL_ARGS`), the
output files, recipes, ``--resume`` from a checkpoint alone, and the one-line report of Ctrl-C.

What one command writes is checked before training (:func:`_check_outputs`: every output a
regular file or a new one, in a directory where a file can be created and renamed, all of them
different files, none of them the data or the checkpoint being resumed -- except the checkpoint
that continues it). From the start of training to the last file written a signal guard is held
(:class:`bpgpu.signals.InterruptGuard`): a first SIGINT or SIGTERM at any point after an epoch
completed writes that epoch and exits 128 + the signal, before any epoch completed it writes
nothing, and a second one stops at once, saying which file was not written.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ..options import declarations, restored_names
from .common import (UsageError, add_backend_arg, add_tf32_arg, apply_tf32, csv_ints,
                     distinct_outputs, need_matplotlib, nonnegative_int, positive_int, writable,
                     write_json)

__all__ = ["add_parser", "cmd_train", "add_model_args", "add_fit_args", "network_for",
           "plot_files", "RESUMED_OPTIONS", "MODEL_DEFAULTS"]

#: The default `bpgpu train` network: >= 97.5 % MNIST test accuracy well within 60 s on a 2-core
#: CPU (measured in bench/NOTES.md) with the training options' command-line defaults.
MODEL_DEFAULTS = dict(hidden="256", activation="relu", output="softmax", loss="ce", init="he")

#: The model's and dataset's options of ``bpgpu train`` (their argparse names; the flags are
#: :func:`add_model_args`): a checkpoint keeps them for ``--resume``.
MODEL_ARGS = ("hidden", "activation", "output", "loss", "init", "seed", "dataset", "target",
              "labels")

#: `bpgpu train` options a checkpoint keeps, so that `--resume PATH` alone continues the run
#: (the output paths, the backend and --quiet may change between the two runs): the model's and
#: dataset's, the dtype, and every training option with a flag that is not a path of this run.
RESUMED_OPTIONS = MODEL_ARGS + ("dtype",) + tuple(
    d.name for d in declarations() if d.flag and d.name in restored_names())


def add_model_args(p, defaults, names):
    """The network's and the dataset's options (``train`` and ``gradcheck``)."""
    p.add_argument("--hidden", default=defaults["hidden"], type=csv_ints,
                   help="hidden layer widths, comma-separated (default %(default)s)")
    p.add_argument("--activation", default=defaults["activation"], choices=names["activation"])
    p.add_argument("--output", default=defaults["output"], choices=names["output"])
    p.add_argument("--loss", default=defaults["loss"], choices=names["loss"])
    p.add_argument("--init", default=defaults["init"], choices=names["init"])
    add_backend_arg(p, names)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--dataset", default="mnist",
                   help="mnist, fashion-mnist, xor, moons, an IDX directory or a CSV file")
    p.add_argument("--target", default=None, help="target column of a CSV dataset (default: last)")
    p.add_argument("--labels", default=None, metavar="FILE.npy",
                   help="with --dataset FILE.npy: the labels (integer classes, or float targets "
                        "to regress); the inputs are memory-mapped, so they may exceed memory")


#: argparse type of each option kind of bpgpu.options
_TYPES = {"count": positive_int, "float": float, "fraction": float, "rate": float, "choice": str,
          "spec": str, "path": str}


def add_fit_args(p, names):
    """A flag for every training option that declares one (:mod:`bpgpu.options`)."""
    for d in declarations():
        if not d.flag:
            continue
        if d.kind == "flag":          # a switch that turns a default-on option off
            p.add_argument(d.flag, dest=d.name, action="store_false", help=d.help)
            continue
        extra = {"choices": names[d.choices]} if d.choices else {}
        p.add_argument(d.flag, dest=d.name, type=_TYPES[d.kind], default=d.command_line_default,
                       metavar=d.metavar, help=d.help.replace("%", "%%"), **extra)


def add_parser(sub, names):
    p = sub.add_parser("train", help="train a network (default: MNIST, best backend)")
    add_model_args(p, MODEL_DEFAULTS, names)
    p.add_argument("--dtype", default="float32", choices=names["dtype"])
    add_fit_args(p, names)
    p.add_argument("--recipe", default=None, choices=names["recipe"],
                   help="the measured recipe for --dataset (mnist, fashion-mnist); options "
                        "given explicitly override it")
    p.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    p.add_argument("--distributed", action="store_true",
                   help="one rank of `mpirun -n P bpgpu train --distributed`: each batch split "
                        "across the ranks, gradients summed by MPI (NCCL on GPUs), the result "
                        "of one process (needs bpgpu[mpi])")
    p.add_argument("--overlap", action="store_true",
                   help="with --distributed: sum each layer's gradient while the layers below "
                        "are still back-propagated (non-blocking Iallreduce)")
    p.add_argument("--json", metavar="PATH", help="write history, test metrics, backend, time")
    p.add_argument("--plot", metavar="PATH.png", help="plot loss and accuracy per epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    add_tf32_arg(p)
    p.set_defaults(func=cmd_train)
    return p


# ---------------------------------------------------------------------------------------- setup
def _given_on_command_line(args) -> set:
    """Names of the `bpgpu train` options the command line gave explicitly."""
    from .common import Parser, choices
    train = add_parser(Parser(prog="bpgpu").add_subparsers(parser_class=Parser), choices())
    for action in train._actions:
        action.default = argparse.SUPPRESS
    return set(vars(train.parse_args(args.argv[args.argv.index("train") + 1:])))


def _apply_recipe(args):
    """``--recipe NAME``: the recipe's options for ``--dataset`` (bpgpu.recipes), except those the
    command line gives explicitly; says on stderr what it set."""
    from ..recipes import recipe_for
    try:
        options = recipe_for(args.recipe, args.dataset)
    except KeyError as exc:
        raise UsageError(f"--recipe: {exc.args[0]}") from None
    given = _given_on_command_line(args)
    used = {k: v for k, v in options.items() if k not in given}
    for name, value in used.items():
        setattr(args, name, value)
    shown = " ".join(f"--{k.replace('_', '-')} "
                     f"{','.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in used.items())
    print(f"recipe {args.recipe} for {args.dataset}: {shown}", file=sys.stderr)


def _check_saved_option(parser, name, value, path):
    """ModelFileError unless ``value`` is what the ``bpgpu train`` option ``name`` accepts (a
    checkpoint's record of its command line, perhaps edited by hand)."""
    from ..errors import ModelFileError
    action = next(a for a in parser._actions if a.dest == name)

    def bad(why):
        raise ModelFileError(f"{path}: corrupt checkpoint: train_options.{name} {value!r}: "
                             f"{why}")
    if isinstance(action, argparse._StoreFalseAction):
        if type(value) is not bool:
            bad("must be true or false")
        return
    if value is None:
        if action.default is not None:
            bad("must be given")
        return
    if name == "hidden":
        if not (isinstance(value, list) and all(type(v) is int and v >= 1 for v in value)):
            bad("must be a list of layer widths >= 1")
        return
    if isinstance(value, (bool, list, dict)) or (action.type in (None, str)
                                                 and not isinstance(value, str)):
        bad("is of the wrong type")
    try:
        value = action.type(str(value)) if action.type else value
    except (argparse.ArgumentTypeError, ValueError) as exc:
        bad(str(exc))
    if action.choices is not None and value not in action.choices:
        bad(f"must be one of {', '.join(map(str, action.choices))}")


def _apply_resume(args):
    """Fill ``args`` from the checkpoint ``--resume`` names (options given explicitly win; those
    that change the training's path then make fit refuse the resume with a clear error)."""
    from ..checkpoint import read_checkpoint
    from ..errors import ModelFileError
    from .common import Parser, choices
    saved = read_checkpoint(args.resume).state.get("info") or {}
    if "train_options" not in saved:
        raise UsageError(f"--resume {args.resume}: this checkpoint was not written by bpgpu "
                         "train; continue it with fit(resume=...)")
    options = saved["train_options"]
    if not isinstance(options, dict):
        raise ModelFileError(f"{args.resume}: corrupt checkpoint: train_options is not a JSON "
                             "object")
    options = dict(options)
    if "no_shuffle" in options:          # checkpoints of version 1 kept the flag's dest
        options["shuffle"] = not options.pop("no_shuffle")
    parser = add_parser(Parser(prog="bpgpu").add_subparsers(parser_class=Parser), choices())
    given = _given_on_command_line(args)
    for name, value in options.items():
        if name in RESUMED_OPTIONS and name not in given:
            _check_saved_option(parser, name, value, args.resume)
            setattr(args, name, value)
    from ..datasets.named import find_dataset
    for name in ("dataset", "labels"):   # a relative path of an older checkpoint: beside it
        if name not in given and getattr(args, name, None) is not None:
            setattr(args, name, find_dataset(getattr(args, name), beside=args.resume))
    if args.checkpoint is None:
        args.checkpoint = args.resume


def _prepare(args):
    """Everything that can be refused before any work: recipe and resume applied, the specs
    parsed, the training options checked."""
    from ..augment import make_augment
    from ..options import FitOptions
    from ..schedules import make_schedule
    for name in ("resume", "dataset", "target", "labels"):
        if getattr(args, name) == "":
            raise UsageError(f"--{name} '': an empty name")
    if args.recipe:
        _apply_recipe(args)
    if args.resume:
        _apply_resume(args)
    apply_tf32(args, [args.backend])
    make_augment(args.augment)                          # bad specs: one line before any work
    make_schedule(args.schedule, args.lr, args.epochs)
    FitOptions.of(_fit_options(args))                   # e.g. --weight-decay nan


def plot_files(path, data) -> list:
    """``(what, path)`` of every file ``--plot PATH`` writes for ``data``: the curves, the
    confusion matrix (classification) and the first layer's weights (28x28 inputs)."""
    stem = path[:-4] if path.lower().endswith(".png") else path
    files = [("--plot", path)]
    if data.task == "classification":
        files.append(("--plot's confusion matrix", stem + "-confusion.png"))
    if data.n_inputs == 784:
        files.append(("--plot's first-layer weights", stem + "-weights.png"))
    return files


def _check_outputs(args, data):
    """UsageError, before training, unless every file this run writes can be written and is
    its own file (see the module docstring)."""
    import os
    from ..datasets.named import dataset_reference
    outputs = [("--save", args.save), ("--checkpoint", args.checkpoint), ("--json", args.json),
               ("--log", args.log)]
    if args.plot is not None:
        outputs += plot_files(args.plot, data)
    for what, path in outputs:
        writable(path, what)
    inputs = [("--resume", args.resume, ("--checkpoint",))]
    for what, path in (("--dataset", args.dataset), ("--labels", args.labels)):
        if path is not None and os.path.isfile(dataset_reference(path)):
            inputs.append((what, path, ()))
    distinct_outputs(outputs, inputs)
    if args.plot is not None:
        need_matplotlib("--plot")


def network_for(args, data, dtype=None):
    """The network ``bpgpu train`` builds for ``data`` (``bpgpu gradcheck`` builds the same):
    a regression target turns the default softmax/ce output into identity/mse, several 0/1
    targets (multi-label) into independent sigmoids with binary cross-entropy."""
    from ..mlp import MLP
    if data.task == "regression" and args.loss == "ce":
        args.output, args.loss = "identity", "mse"
    if data.task == "multilabel" and args.loss == "ce":
        args.output, args.loss = "sigmoid", "bce"
    hidden = csv_ints(args.hidden) if isinstance(args.hidden, str) else args.hidden
    sizes = [data.n_inputs] + list(hidden) + [data.n_outputs]
    return MLP(sizes, activation=args.activation, output=args.output, loss=args.loss,
               init=args.init, dtype=dtype or args.dtype, backend=args.backend, seed=args.seed)


def _fit_options(args) -> dict:
    """The training options the command line sets (every one with a flag)."""
    return {d.name: getattr(args, d.name) for d in declarations() if d.flag}


def _train_options(args) -> dict:
    """What the checkpoint keeps of the command line (the dataset found from anywhere)."""
    from ..datasets.named import dataset_reference
    return dict({k: getattr(args, k) for k in RESUMED_OPTIONS},
                dataset=dataset_reference(args.dataset),
                labels=None if args.labels is None else dataset_reference(args.labels))


class _Outputs:
    """The files this command has written, and the one it is writing (what a line reports)."""

    def __init__(self):
        self.done, self.pending = [], None

    def write(self, what, path, write):
        self.pending = f"{what} {path}"
        write()
        self.done.append(self.pending)
        self.pending = None


# ---------------------------------------------------------------------------------------- run
def cmd_train(args):
    from ..backends import auto_reason
    from ..datasets import load_dataset
    from ..signals import InterruptGuard, TrainingInterrupted
    from ..weights import class_weight_by_label
    _prepare(args)
    data = load_dataset(args.dataset, target=args.target, seed=args.seed, labels=args.labels)
    _check_outputs(args, data)
    net = network_for(args, data).record_dataset(data)   # its pipeline and source: saved
    if isinstance(args.class_weight, str):              # --class-weight names labels
        args.class_weight = class_weight_by_label(args.class_weight, data.classes)
    why = auto_reason()[1] if args.backend == "auto" else net.backend.describe()
    print(f"backend: {net.backend.name} — {why}", file=sys.stderr)
    print(f"model: {net}; dataset {data.name}: {len(data.X_train)} train, {len(data.X_test)} "
          f"test", file=sys.stderr)
    outputs = _Outputs()
    with InterruptGuard() as guard:       # from here to the last file: see the module docstring
        try:
            return _train_and_write(args, net, data, guard, outputs)
        except TrainingInterrupted as stop:           # a second signal: at once
            return _stopped_at_once(stop, outputs)


def _train_and_write(args, net, data, guard, outputs):
    """Train, evaluate, write the outputs; the exit status."""
    from ..checkpoint import CheckpointNotWritten
    from ..signals import TrainingInterrupted
    t0 = time.perf_counter()
    failed = None
    try:
        history = net.fit(data.X_train, data.y_train, progress=not args.quiet,
                          checkpoint_info={"train_options": _train_options(args)},
                          comm=getattr(args, "world", None), **_fit_options(args))
    except TrainingInterrupted as stop:
        if not stop.restored:
            raise
        return _save_after_interrupt(args, net, stop, outputs)
    except CheckpointNotWritten as exc:   # a full disk: the model is kept, the rest written
        failed, history = exc, exc.history
    wall = time.perf_counter() - t0
    test = net.evaluate(data.X_test, data.y_test)
    if history.stop_reason != "completed" and failed is None:
        print(history.stop_reason, file=sys.stderr)
    acc = f", accuracy {test['accuracy']:.4f}" if data.task != "regression" else ""
    if "hamming_loss" in test:
        acc += f" (every label right), hamming loss {test['hamming_loss']:.4f}"
    print(f"test: loss {test['loss']:.4f}{acc}  ({len(history.epoch)} epochs, {wall:.1f} s, "
          f"backend {net.backend.name})")
    _write_outputs(args, net, data, history, test, wall, outputs)
    if failed is not None:
        print(f"bpgpu: {failed}; wrote {', '.join(outputs.done) or 'nothing else'}",
              file=sys.stderr)
        return 1
    if guard.signum is not None:          # a signal after the last epoch: all written anyway
        written = outputs.done + ([f"checkpoint {args.checkpoint}"] if args.checkpoint else [])
        _say_stopped(guard.signum, history, written)
        return 128 + guard.signum
    return 1 if history.diverged else 0


def _write_outputs(args, net, data, history, test, wall, outputs):
    """--save, --json and --plot after a run (its last epoch, or the best one)."""
    from ..options import FitOptions
    if args.save:
        outputs.write("model", args.save, lambda: net.save(args.save))
        print(f"saved model to {args.save}", file=sys.stderr)
    if args.json:
        fit = dict(FitOptions.of(_fit_options(args)).record(), recipe=args.recipe)
        record = {"history": history.to_dict(), "test": test, "backend": net.backend.name,
                  "wall_time_s": wall, "model": net.config(), "dataset": data.name, "fit": fit}
        outputs.write("record", args.json, lambda: write_json(args.json, record))
    if args.plot:
        _write_plots(args.plot, net, data, history, outputs)


def _write_plots(path, net, data, history, outputs):
    from ..plots import plot_confusion, plot_first_layer, plot_history
    draw = {"--plot": lambda p: plot_history(history, p),
            "--plot's confusion matrix":
                lambda p: plot_confusion(data.y_test, net.predict(data.X_test), p),
            "--plot's first-layer weights": lambda p: plot_first_layer(net.get_params()[0][0], p)}
    files = plot_files(path, data)
    for what, file in files:
        outputs.write("plot", file, lambda: draw[what](file))
    print(f"wrote {', '.join(file for _, file in files)}", file=sys.stderr)


def _say_stopped(signum, history, written):
    name = signal.Signals(signum).name
    epoch = history.epoch[-1] if history.epoch else 0
    print(f"bpgpu: {name}: stopped; saved epoch {epoch}: "
          f"{' and '.join(written) or 'nothing (no --save or --checkpoint given)'}",
          file=sys.stderr)


def _save_after_interrupt(args, net, stop, outputs):
    """What a first Ctrl-C/SIGTERM during training leaves: the last completed epoch in --save
    (and the checkpoint fit wrote) -- or nothing at all before the first epoch completed --,
    said on one line; the exit status is 128 + the signal."""
    if not stop.history.epoch:
        kept = ", ".join(p for p in (args.save, args.checkpoint) if p)
        print(f"bpgpu: {signal.Signals(stop.signum).name}: stopped before the first epoch "
              f"completed; nothing written" + (f" ({kept} unchanged)" if kept else ""),
              file=sys.stderr)
        return 128 + stop.signum
    if args.save:
        outputs.write("model", args.save, lambda: net.save(args.save))
    written = list(outputs.done)
    if stop.checkpoint:
        written.append(f"checkpoint {stop.checkpoint}")
    if stop.checkpoint_error is not None:
        written.append(f"not the checkpoint ({stop.checkpoint_error})")
    _say_stopped(stop.signum, stop.history, written)
    return 128 + stop.signum


def _stopped_at_once(stop, outputs):
    """A second signal: one line -- what was written, and the file that was not."""
    name = signal.Signals(stop.signum).name
    wrote = f"; wrote {', '.join(outputs.done)}" if outputs.done else ""
    pending = (f"; {outputs.pending} not written (the file there is unchanged)"
               if outputs.pending else "")
    print(f"bpgpu: {name} again: stopped at once (files written before are complete"
          f"{wrote}{pending})", file=sys.stderr)
    return 128 + stop.signum
