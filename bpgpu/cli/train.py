"""``bpgpu train``: a network on a dataset, with the options of :class:`bpgpu.options.FitOptions`.

The training options' flags, types, defaults and help come from their declaration
(:mod:`bpgpu.options`); this module adds the model's and the dataset's (:data:`MODEL_ARGS`), the
output files, recipes, ``--resume`` from a checkpoint alone, and the one-line report of Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ..options import declarations, restored_names
from .common import (UsageError, add_backend_arg, add_tf32_arg, apply_tf32, csv_ints,
                     need_matplotlib, nonnegative_int, positive_int, writable, write_json)

__all__ = ["add_parser", "cmd_train", "add_model_args", "add_fit_args", "RESUMED_OPTIONS",
           "MODEL_DEFAULTS"]

#: The default `bpgpu train` network: >= 97.5 % MNIST test accuracy well within 60 s on a 2-core
#: CPU (measured in bench/NOTES.md) with the training options' command-line defaults.
MODEL_DEFAULTS = dict(hidden="256", activation="relu", output="softmax", loss="ce", init="he")

#: The model's and dataset's options of ``bpgpu train`` (their argparse names; the flags are
#: :func:`add_model_args`): a checkpoint keeps them for ``--resume``.
MODEL_ARGS = ("hidden", "activation", "output", "loss", "init", "seed", "dataset", "target")

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


def _apply_resume(args):
    """Fill ``args`` from the checkpoint ``--resume`` names (options given explicitly win; those
    that change the training's path then make fit refuse the resume with a clear error)."""
    from ..checkpoint import read_checkpoint
    saved = read_checkpoint(args.resume).state.get("info") or {}
    if "train_options" not in saved:
        raise UsageError(f"--resume {args.resume}: this checkpoint was not written by bpgpu "
                         "train; continue it with fit(resume=...)")
    options = dict(saved["train_options"])
    if "no_shuffle" in options:          # checkpoints of version 1 kept the flag's dest
        options["shuffle"] = not options.pop("no_shuffle")
    given = _given_on_command_line(args)
    for name, value in options.items():
        if name in RESUMED_OPTIONS and name not in given:
            setattr(args, name, value)
    if args.checkpoint is None:
        args.checkpoint = args.resume


def _prepare(args):
    """Everything that can be refused before any work: recipe and resume applied, the specs
    parsed, the output paths checked."""
    from ..augment import make_augment
    from ..schedules import make_schedule
    if args.recipe:
        _apply_recipe(args)
    if args.resume:
        _apply_resume(args)
    apply_tf32(args, [args.backend])
    make_augment(args.augment)                          # bad specs: one line before any work
    make_schedule(args.schedule, args.lr, args.epochs)
    for path, what in ((args.save, "--save"), (args.checkpoint, "--checkpoint"),
                       (args.json, "--json"), (args.plot, "--plot")):
        writable(path, what)
    if args.plot:
        need_matplotlib("--plot")


def _build_model(args, data):
    from ..mlp import MLP
    hidden = csv_ints(args.hidden) if isinstance(args.hidden, str) else args.hidden
    sizes = [data.n_inputs] + hidden + [data.n_outputs]
    return MLP(sizes, activation=args.activation, output=args.output, loss=args.loss,
               init=args.init, dtype=args.dtype, backend=args.backend, seed=args.seed)


def _labels(data):
    """The dataset's class labels as its file wrote them (``--class-weight`` names them), or
    None."""
    pipeline = getattr(data, "pipeline", None)
    return None if pipeline is None else getattr(pipeline, "classes", None)


def _fit_options(args) -> dict:
    """The training options the command line sets (every one with a flag)."""
    return {d.name: getattr(args, d.name) for d in declarations() if d.flag}


# ---------------------------------------------------------------------------------------- run
def cmd_train(args):
    from ..backends import auto_reason
    from ..datasets import load_dataset
    from ..signals import TrainingInterrupted
    from ..weights import class_weight_by_label
    _prepare(args)
    data = load_dataset(args.dataset, target=args.target, seed=args.seed)
    if data.task == "regression" and args.loss == "ce":
        args.output, args.loss = "identity", "mse"
    if data.task == "multilabel" and args.loss == "ce":      # independent yes/no outputs
        args.output, args.loss = "sigmoid", "bce"
    net = _build_model(args, data).record_dataset(data)   # its pipeline and source: saved
    if isinstance(args.class_weight, str):              # --class-weight names labels
        args.class_weight = class_weight_by_label(args.class_weight, _labels(data))
    why = auto_reason()[1] if args.backend == "auto" else net.backend.describe()
    print(f"backend: {net.backend.name} — {why}", file=sys.stderr)
    print(f"model: {net}; dataset {data.name}: {len(data.X_train)} train, {len(data.X_test)} "
          f"test", file=sys.stderr)
    t0 = time.perf_counter()
    info = {"train_options": {k: getattr(args, k) for k in RESUMED_OPTIONS}}
    try:
        history = net.fit(data.X_train, data.y_train, progress=not args.quiet,
                          checkpoint_info=info, comm=getattr(args, "world", None),
                          **_fit_options(args))
    except TrainingInterrupted as stop:
        return _save_after_interrupt(args, net, stop)
    wall = time.perf_counter() - t0
    test = net.evaluate(data.X_test, data.y_test)
    if history.stop_reason != "completed":
        print(history.stop_reason, file=sys.stderr)
    acc = f", accuracy {test['accuracy']:.4f}" if data.task != "regression" else ""
    if "hamming_loss" in test:
        acc += f" (every label right), hamming loss {test['hamming_loss']:.4f}"
    print(f"test: loss {test['loss']:.4f}{acc}  ({len(history.epoch)} epochs, {wall:.1f} s, "
          f"backend {net.backend.name})")
    _write_outputs(args, net, data, history, test, wall)
    return 1 if history.diverged else 0


def _write_outputs(args, net, data, history, test, wall):
    """--save, --json and --plot after a completed run."""
    from ..options import FitOptions
    if args.save:
        net.save(args.save)
        print(f"saved model to {args.save}", file=sys.stderr)
    if args.json:
        fit = dict(FitOptions.of(_fit_options(args)).record(), recipe=args.recipe)
        write_json(args.json, {"history": history.to_dict(), "test": test,
                               "backend": net.backend.name, "wall_time_s": wall,
                               "model": net.config(), "dataset": data.name, "fit": fit})
    if args.plot:
        _write_plots(args.plot, net, data, history)


def _write_plots(path, net, data, history):
    from ..plots import plot_confusion, plot_first_layer, plot_history
    plot_history(history, path)
    written = [path]
    stem = path[:-4] if path.lower().endswith(".png") else path
    if data.task == "classification":
        plot_confusion(data.y_test, net.predict(data.X_test), stem + "-confusion.png")
        written.append(stem + "-confusion.png")
    if net.sizes[0] == 784:
        plot_first_layer(net.get_params()[0][0], stem + "-weights.png")
        written.append(stem + "-weights.png")
    print(f"wrote {', '.join(written)}", file=sys.stderr)


def _save_after_interrupt(args, net, stop):
    """What a first Ctrl-C/SIGTERM leaves: the last completed epoch in --save (and the
    checkpoint fit wrote), said on one line; the exit status is 128 + the signal."""
    name = signal.Signals(stop.signum).name
    if not stop.restored:
        print(f"bpgpu: {name} again: stopped at once (files written before are complete)",
              file=sys.stderr)
        return 128 + stop.signum
    epoch = stop.history.epoch[-1] if stop.history.epoch else 0
    written = []
    if args.save:
        net.save(args.save)
        written.append(f"model {args.save}")
    if stop.checkpoint:
        written.append(f"checkpoint {stop.checkpoint}")
    what = " and ".join(written) if written else "nothing (no --save or --checkpoint given)"
    print(f"bpgpu: {name}: stopped; saved epoch {epoch}: {what}", file=sys.stderr)
    return 128 + stop.signum
