"""The ``bpgpu`` command: ``info``, ``train``, ``evaluate``, ``gradcheck``.

Every error a user can cause prints one line on stderr and exits with status 2, with no traceback;
output files (``--save``, ``--json``) are checked before training starts and written atomically, so a
failed run never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time

import numpy as np

__all__ = ["main", "TRAIN_DEFAULTS"]

#: The default `bpgpu train`: >= 97.5 % MNIST test accuracy well within 60 s on a 2-core CPU
#: (measured in bench/NOTES.md).
TRAIN_DEFAULTS = dict(hidden="256", activation="relu", output="softmax", loss="ce", init="he",
                      optimizer="momentum", lr=0.05, momentum=0.9, batch_size=128, epochs=10)


class UsageError(Exception):
    """Bad command-line usage (reported like any other error: one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise UsageError(message)


def _csv_ints(text):
    """``"256,128"`` -> ``[256, 128]`` (an argparse type; a list passes through unchanged)."""
    if isinstance(text, list):
        return text
    try:
        return [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None


def _int_at_least(low):
    """An argparse type: an integer >= ``low``, with a one-line message otherwise."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") \
                from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


_positive_int, _nonnegative_int = _int_at_least(1), _int_at_least(0)


def _writable(path, what):
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"{what} {path}: is a directory, not a file name")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise UsageError(f"{what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"{what} {path}: directory {directory} is not writable")


def _write_json(path, obj):
    from .io import atomic_write
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode() + b"\n"))


# ---------------------------------------------------------------------------------------- info
def cmd_info(args):
    from .sysinfo import machine_record
    rec = machine_record()
    if args.json:
        print(json.dumps(rec, indent=2, default=str))
        return 0
    v = rec["versions"]
    print(f"bpgpu {_version()}  python {v['python']}  numpy {v['numpy']}")
    print(f"cpu: {rec['cpu']} ({rec['cores']} cores)")
    if rec["blas"]:
        for b in rec["blas"]:
            print(f"blas: {b['api']} {b['version']} ({b['library']}), {b['threads']} threads")
    else:
        print("blas: unknown (install threadpoolctl to see it)")
    for k in rec["blas_kernels"]:
        print(f"openblas kernels: {k['summary']}")
    others = ", ".join(f"{k} {val}" for k, val in v.items()
                       if k not in ("python", "numpy") and val is not None)
    print(f"libraries: {others or 'none of the optional ones'}")
    print("backends:")
    for b in rec["backends"]:
        mark = "yes" if b["available"] else "no "
        print(f"  {b['name']:<6} {mark}  {b['reason']}")
    if any(b["name"] == "numba" and b["available"] for b in rec["backends"]):
        from .backends.numba_backend import cache_status
        print(f"numba kernels: {cache_status()}")
    print(f"auto: {rec['auto_reason']}")
    if rec["gpus"]:
        for g in rec["gpus"]:
            print("gpu: " + ", ".join(f"{k} {val}" for k, val in g.items()))
    else:
        print("gpu: none found")
    return 0


def _version():
    from . import __version__
    return __version__


# ---------------------------------------------------------------------------------------- train
def _build_model(args, data):
    from .mlp import MLP
    hidden = _csv_ints(args.hidden) if isinstance(args.hidden, str) else args.hidden
    sizes = [data.n_inputs] + hidden + [data.n_outputs]
    return MLP(sizes, activation=args.activation, output=args.output, loss=args.loss,
               init=args.init, dtype=args.dtype, backend=args.backend, seed=args.seed)


#: `bpgpu train` options a checkpoint keeps, so that `--resume PATH` alone continues the run
#: (the output paths, the backend and --quiet may change between the two runs).
RESUMED_OPTIONS = ("dataset", "target", "hidden", "activation", "output", "loss", "init", "seed",
                   "dtype", "epochs", "batch_size", "optimizer", "lr", "momentum",
                   "weight_decay", "dropout", "validation_split", "early_stopping", "no_shuffle",
                   "checkpoint_every", "augment", "schedule")


def _given_on_command_line(args) -> set:
    """Names of the `bpgpu train` options the command line gave explicitly."""
    train = build_parser().train_parser
    for action in train._actions:
        action.default = argparse.SUPPRESS
    return set(vars(train.parse_args(args.argv[args.argv.index("train") + 1:])))


def _apply_recipe(args):
    """``--recipe NAME``: the recipe's options for ``--dataset`` (bpgpu.recipes), except those the
    command line gives explicitly; says on stderr what it set."""
    from .recipes import recipe_for
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
    from .checkpoint import read_checkpoint
    saved = read_checkpoint(args.resume).state.get("info") or {}
    if "train_options" not in saved:
        raise UsageError(f"--resume {args.resume}: this checkpoint was not written by bpgpu "
                         "train; continue it with fit(resume=...)")
    given = _given_on_command_line(args)
    for name, value in saved["train_options"].items():
        if name in RESUMED_OPTIONS and name not in given:
            setattr(args, name, value)
    if args.checkpoint is None:
        args.checkpoint = args.resume


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


def _apply_tf32(args, backends):
    """``--tf32``: float32 GEMMs on the GPU may use TF32 tensor cores. One process-wide CuPy
    setting (:func:`bpgpu.backends.cupy_backend.set_tf32`): it holds for every cupy model of the
    run, and describe(), ``bpgpu info`` and bench records report it."""
    if not getattr(args, "tf32", False):
        return
    if getattr(args, "dtype", "float32") != "float32":
        raise UsageError(f"--tf32 applies to float32 GEMMs, not --dtype {args.dtype}")
    if not set(backends) & {"auto", "cupy"}:
        raise UsageError("--tf32 applies to the cupy backend (float32 GEMMs on an NVIDIA GPU)")
    from .backends.cupy_backend import set_tf32
    from .errors import BackendUnavailable
    try:
        set_tf32(True)       # ConfigError below compute capability 8.0
    except BackendUnavailable as exc:
        raise UsageError(f"--tf32 needs the cupy backend: {exc}") from None


def cmd_train(args):
    from .backends import auto_reason
    from .datasets import load_dataset
    from .train import TrainingInterrupted
    if args.recipe:
        _apply_recipe(args)
    if args.resume:
        _apply_resume(args)
    _apply_tf32(args, [args.backend])
    from .augment import make_augment
    from .schedules import make_schedule
    make_augment(args.augment)                          # bad specs: one line before any work
    make_schedule(args.schedule, args.lr, args.epochs)
    _writable(args.save, "--save")
    _writable(args.checkpoint, "--checkpoint")
    _writable(args.json, "--json")
    _writable(args.plot, "--plot")
    if args.plot:
        from ._compat import optional_import
        if optional_import("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'bpgpu[plot]'")
    data = load_dataset(args.dataset, target=args.target, seed=args.seed)
    if data.task == "regression" and args.loss == "ce":
        args.output, args.loss = "identity", "mse"
    net = _build_model(args, data)
    why = auto_reason()[1] if args.backend == "auto" else net.backend.describe()
    print(f"backend: {net.backend.name} — {why}", file=sys.stderr)
    print(f"model: {net}; dataset {data.name}: {len(data.X_train)} train, {len(data.X_test)} "
          f"test", file=sys.stderr)
    t0 = time.perf_counter()
    info = {"train_options": {k: getattr(args, k) for k in RESUMED_OPTIONS}}
    try:
        history = net.fit(data.X_train, data.y_train, epochs=args.epochs,
                          batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                          momentum=args.momentum, weight_decay=args.weight_decay,
                          dropout=args.dropout, validation_split=args.validation_split,
                          early_stopping=args.early_stopping, shuffle=not args.no_shuffle,
                          progress=not args.quiet, checkpoint=args.checkpoint,
                          checkpoint_every=args.checkpoint_every, resume=args.resume,
                          checkpoint_info=info, augment=args.augment, schedule=args.schedule,
                          comm=getattr(args, "world", None))
    except TrainingInterrupted as stop:
        return _save_after_interrupt(args, net, stop)
    wall = time.perf_counter() - t0
    test = net.evaluate(data.X_test, data.y_test)
    if history.stop_reason != "completed":
        print(history.stop_reason, file=sys.stderr)
    acc = f", accuracy {test['accuracy']:.4f}" if data.task == "classification" else ""
    print(f"test: loss {test['loss']:.4f}{acc}  ({len(history.epoch)} epochs, {wall:.1f} s, "
          f"backend {net.backend.name})")
    if args.save:
        net.save(args.save)
        print(f"saved model to {args.save}", file=sys.stderr)
    if args.json:
        _write_json(args.json, {"history": history.to_dict(), "test": test,
                                "backend": net.backend.name, "wall_time_s": wall,
                                "model": net.config(), "dataset": data.name,
                                "fit": {k: getattr(args, k) for k in
                                        ("epochs", "batch_size", "optimizer", "lr", "momentum",
                                         "weight_decay", "dropout", "validation_split",
                                         "early_stopping", "augment", "schedule",
                                         "recipe")}})
    if args.plot:
        from .plots import plot_confusion, plot_first_layer, plot_history
        plot_history(history, args.plot)
        written = [args.plot]
        stem = args.plot[:-4] if args.plot.lower().endswith(".png") else args.plot
        if data.task == "classification":
            plot_confusion(data.y_test, net.predict(data.X_test), stem + "-confusion.png")
            written.append(stem + "-confusion.png")
        if net.sizes[0] == 784:
            plot_first_layer(net.get_params()[0][0], stem + "-weights.png")
            written.append(stem + "-weights.png")
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    return 1 if history.diverged else 0


# ---------------------------------------------------------------------------------------- demo
def cmd_demo(args):
    from . import demos
    if args.name == "tabular":
        from ._compat import optional_import
        if optional_import("sklearn") is None:
            raise UsageError("the tabular demo reads scikit-learn's bundled wine data: "
                             "pip install scikit-learn")
    from .backends import get_backend
    get_backend(args.backend)  # a clear error before any work
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    os.makedirs(args.out, exist_ok=True)
    demos.run_demo(args.name, backend=args.backend, out=args.out)
    return 0


# ---------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args):
    from .datasets import load_dataset
    from .io import load
    _apply_tf32(args, [args.backend])
    net = load(args.model, backend=args.backend)
    data = load_dataset(args.dataset, target=args.target)
    if data.n_inputs != net.sizes[0] or data.n_outputs != net.sizes[-1]:
        raise UsageError(f"model {args.model} is {'-'.join(map(str, net.sizes))} but dataset "
                         f"{data.name} has {data.n_inputs} inputs and {data.n_outputs} outputs")
    res = net.evaluate(data.X_test, data.y_test)
    print(f"{args.model} on {data.name} test ({len(data.X_test)} samples, backend "
          f"{net.backend.name}): loss {res['loss']:.4f}, accuracy {res['accuracy']:.4f}")
    return 0


# ---------------------------------------------------------------------------------------- gradcheck
def cmd_gradcheck(args):
    from .datasets import load_dataset
    from .gradcheck import gradcheck_layers
    from .mlp import MLP
    data = load_dataset(args.dataset, seed=args.seed)
    sizes = [data.n_inputs] + list(args.hidden) + [data.n_outputs]
    net = MLP(sizes, activation=args.activation, output=args.output, loss=args.loss,
              init=args.init, dtype="float64", backend=args.backend, seed=args.seed)
    X, y = data.X_train[:args.batch], data.y_train[:args.batch]
    rows = gradcheck_layers(net, X, y, eps=args.eps, max_per_layer=args.per_layer)
    worst = 0.0
    print(f"gradcheck {net} on {len(X)} samples of {data.name}, eps {args.eps}")
    for r in rows:
        worst = max(worst, r["weights"], r["biases"])
        print(f"  layer {r['layer']}: weights {r['weights']:.3e}  biases {r['biases']:.3e}")
    ok = worst < args.tol
    print(f"max relative error {worst:.3e} ({'OK' if ok else 'FAILED'}: tolerance {args.tol:g})")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------- warmup
def cmd_warmup(args):
    from .backends import get_backend
    be = get_backend("numba")
    res = be.warmup()
    state = ("all loaded from the cache" if res["compiled"] == 0 else
             f"{res['compiled']} compiled now, {res['cache_hits']} from the cache")
    print(f"numba kernels ready in {res['seconds']:.1f} s ({res['kernels']} kernels; {state}); "
          f"{be.describe()}")
    return 0


# ---------------------------------------------------------------------------------------- bench
#: The time-to-accuracy recipe: the fastest found on the 2-core CPU (bench/NOTES.md).
TTA_RECIPE = dict(sizes=[784, 256, 10], activation="relu", init="he", optimizer="momentum",
                  lr=0.05, momentum=0.9, batch=128)
QUICK = dict(batch_sizes="64,1024", sizes="784-100-10", epochs=2)


def _sizes_list(text):
    try:
        return [[int(v) for v in item.split("-")] for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--sizes takes layer sizes like 784-100-10,784-1024-10, got {text!r}")


def cmd_bench(args):
    from .backends import available_backends
    from .bench import report
    from .bench.runner import run_matrix, time_to_accuracy
    from .bench.jax_ref import describe_jax, jax_status
    from .bench.torch_ref import torch_status
    from .datasets import mnist
    from .sysinfo import machine_record
    for path, what in ((args.json, "--json"), (args.markdown, "--markdown"), (args.plot, "--plot")):
        _writable(path, what)
    if args.plot or args.update_readme:
        from ._compat import optional_import
        if optional_import("matplotlib") is None:
            raise UsageError("--plot needs matplotlib: pip install 'bpgpu[plot]'")
    if args.quick:
        args.batch_sizes = args.batch_sizes or QUICK["batch_sizes"]
        args.sizes = args.sizes or QUICK["sizes"]
        args.epochs = args.epochs or QUICK["epochs"]
    usable = [b.name for b in available_backends() if b.available]
    backends = args.backends.split(",") if args.backends else usable
    for b in backends:
        if b not in usable:
            from .backends import get_backend
            get_backend(b)  # raises BackendUnavailable with the reason
    _apply_tf32(args, backends)
    batches = _csv_ints(args.batch_sizes or "10,64,256,1024,8192")
    sizes = _sizes_list(args.sizes or "784-100-10,784-1024-10,784-512-512-10")
    from .backends import REGISTRY
    vs = [v for v in (args.vs or "").split(",") if v]
    peers = ("torch", "jax")
    unknown = [v for v in vs if v not in peers and v not in REGISTRY]
    if unknown or len([v for v in vs if v not in peers]) > 1:
        raise UsageError(f"--vs takes torch, jax and/or one backend ({', '.join(REGISTRY)}), "
                         f"got {args.vs!r}")
    vs_jax = "jax" in vs
    if vs_jax and jax_status()[0] is None:
        raise UsageError(f"--vs jax: {jax_status()[1]}")
    vs_backend = next((v for v in vs if v not in peers), None)
    if vs_backend and vs_backend not in usable:
        from .backends import get_backend
        get_backend(vs_backend)  # raises BackendUnavailable with the reason
    vs_torch = "torch" in vs
    torch_mod, torch_why = torch_status()
    if vs_torch and torch_mod is None:
        print(f"note: {torch_why}; the table has no PyTorch column", file=sys.stderr)
        vs_torch = False
    (X_all, y_all), (Xt, yt) = mnist()
    X, y = X_all[:args.samples], y_all[:args.samples]
    machine = machine_record()
    if vs_jax:
        machine["jax"] = describe_jax()

    def show(row):
        if not args.quiet:
            ratio = f"  {row['vs_torch']:.2f}x torch" if row.get("vs_torch") else ""
            for form in ("scan", "step"):
                if row.get(f"vs_jax_{form}"):
                    ratio += f"  {row[f'vs_jax_{form}']:.2f}x jax {form}"
            if row.get("jax_missing"):
                ratio += f"  (no jax: {row['jax_missing']})"
            if row.get(f"vs_{vs_backend}"):
                ratio += f"  {row[f'vs_{vs_backend}']:.2f}x {vs_backend}"
            print(f"  {row['backend']:<6} {row['sizes']:<16} batch {row['batch']:<5} "
                  f"{row['samples_per_s'] / 1e3:8.1f}k samples/s{ratio}", file=sys.stderr,
                  flush=True)

    rows = run_matrix(backends, sizes, batches, args.dtype, X, y, repeats=args.epochs,
                      vs_torch=vs_torch, progress=show, vs_backend=vs_backend, vs_jax=vs_jax)
    tta = []
    if args.time_to_accuracy:   # always on the full training set, whatever --samples says
        for b in backends:
            tta.append(time_to_accuracy(b, TTA_RECIPE, X_all, y_all, Xt, yt))
        if vs_torch:
            for device in sorted({"cupy" if b == "cupy" else "cpu" for b in backends}):
                tta.append(time_to_accuracy(device, TTA_RECIPE, X_all, y_all, Xt, yt,
                                            torch=True))
    table = report.markdown_table(rows)
    print(table)
    extra = ""
    if tta:
        extra = ("\n\nTime to 98.0 % MNIST test accuracy (recipe "
                 f"{json.dumps(TTA_RECIPE)}, data in memory, evaluation after every epoch "
                 "included):\n\n| backend | seconds | epochs | test accuracy |\n|---|---|---|---|\n"
                 + "\n".join(f"| {t['backend']} | {t['seconds']:.2f} | {t['epochs']} | "
                             f"{t['accuracy']:.4f}{'' if t['reached'] else ' (not reached)'} |"
                             for t in tta))
        print(extra)
    if not vs_torch:
        print(f"(no PyTorch comparison: {torch_why if torch_mod is None else 'use --vs torch'})")
    payload = {"machine": machine, "rows": rows, "time_to_accuracy": tta,
               "method": {"repeats": args.epochs, "samples": int(X.shape[0]),
                          "interleaved_with": vs,
                          "warmup_epochs": 1, "train_metrics": False, "dtype": args.dtype}}
    if args.json:
        report.write_json(args.json, payload)
    if args.markdown:
        report.write_markdown(args.markdown, rows, machine, extra)
    if args.plot:
        report.plot_rows(rows, args.plot)
    if args.update_readme:
        if not (args.markdown and args.plot):
            raise UsageError("--update-readme needs --markdown and --plot (the README links them)")
        command = " ".join(["bpgpu"] + [shlex.quote(a) for a in args.argv])
        report.update_readme(args.update_readme, args.markdown, args.plot, rows, machine, command)
    return 0


# ---------------------------------------------------------------------------------------- parser
def _choices():
    """The names each option accepts, from the tables of the modules that own them."""
    from .activations import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
    from .backends import backend_names
    from .demos import DEMOS
    from .init import INITS
    from .mlp import DTYPES
    from .optim import OPTIMIZERS
    from .recipes import RECIPES
    return dict(activation=HIDDEN_ACTIVATIONS, output=OUTPUT_ACTIVATIONS, loss=LOSSES, init=INITS,
                optimizer=OPTIMIZERS, backend=("auto",) + backend_names(), dtype=tuple(DTYPES),
                demo=tuple(DEMOS), recipe=tuple(RECIPES))


def _add_backend_arg(p, choices):
    p.add_argument("--backend", default=os.environ.get("BPGPU_BACKEND", "auto"),
                   choices=choices["backend"], help="default: auto, or $BPGPU_BACKEND")


def _add_model_args(p, defaults, choices):
    p.add_argument("--hidden", default=defaults["hidden"], type=_csv_ints,
                   help="hidden layer widths, comma-separated (default %(default)s)")
    p.add_argument("--activation", default=defaults["activation"], choices=choices["activation"])
    p.add_argument("--output", default=defaults["output"], choices=choices["output"])
    p.add_argument("--loss", default=defaults["loss"], choices=choices["loss"])
    p.add_argument("--init", default=defaults["init"], choices=choices["init"])
    _add_backend_arg(p, choices)
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--dataset", default="mnist",
                   help="mnist, fashion-mnist, xor, moons, an IDX directory or a CSV file")
    p.add_argument("--target", default=None, help="target column of a CSV dataset (default: last)")


def build_parser():
    parser = _Parser(prog="bpgpu", description="Back-propagation MLPs on NumPy, Numba or CuPy.")
    parser.add_argument("--version", action="version", version=f"bpgpu {_version()}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)
    choices = _choices()

    p = sub.add_parser("info", help="versions, CPU, BLAS, backends and GPUs")
    p.add_argument("--json", action="store_true", help="print the machine record as JSON")
    p.set_defaults(func=cmd_info)

    d = TRAIN_DEFAULTS
    p = sub.add_parser("train", help="train a network (default: MNIST, best backend)")
    _add_model_args(p, d, choices)
    p.add_argument("--dtype", default="float32", choices=choices["dtype"])
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"])
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    p.add_argument("--optimizer", default=d["optimizer"], choices=choices["optimizer"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--momentum", type=float, default=d["momentum"])
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--validation-split", type=float, default=None)
    p.add_argument("--early-stopping", type=_positive_int, default=None, metavar="PATIENCE")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--augment", metavar="SPEC", default=None,
                   help="warp every training image on the device, e.g. shift=2,rotate=10,"
                        "scale=0.1,shear=0.2,elastic=34:4 (shape=HxW for non-square images)")
    p.add_argument("--schedule", metavar="SPEC", default=None,
                   help="learning-rate schedule: step:every=10,factor=0.5 | cosine:warmup=5,"
                        "min=0 | nielsen:patience=10,halvings=7 | constant")
    p.add_argument("--recipe", default=None, choices=choices["recipe"],
                   help="the measured recipe for --dataset (mnist, fashion-mnist); options "
                        "given explicitly override it")
    p.add_argument("--save", metavar="PATH", help="write the trained model (.npz)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="write a resumable checkpoint after every epoch (and on Ctrl-C)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="N",
                   help="write the checkpoint every N epochs (default 1)")
    p.add_argument("--resume", metavar="PATH",
                   help="continue the run a checkpoint holds (its options unless given again)")
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
    p.add_argument("--tf32", action="store_true",
                   help="float32 GEMMs on the GPU may use TF32 tensor cores (faster, ~1e-3 "
                        "relative error; compute capability 8.0 or newer)")
    p.set_defaults(func=cmd_train)
    parser.train_parser = p

    p = sub.add_parser("evaluate", help="evaluate a saved model on a dataset's test split")
    p.add_argument("model")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--target", default=None)
    _add_backend_arg(p, choices)
    p.add_argument("--tf32", action="store_true",
                   help="float32 GEMMs on the GPU may use TF32 tensor cores (faster, ~1e-3 "
                        "relative error; compute capability 8.0 or newer)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the textbook networks: moons, xor, regression, digits, "
                                     "costs, init, tabular")
    p.add_argument("name", choices=choices["demo"])
    _add_backend_arg(p, choices)
    p.add_argument("--out", default=".", help="directory for the pictures (default: here)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("warmup", help="compile the numba kernels now (cached on disk)")
    p.set_defaults(func=cmd_warmup)

    p = sub.add_parser("bench", help="throughput of every backend vs PyTorch and the GEMM ceiling")
    p.add_argument("--backends", default=None, help="comma-separated (default: every available)")
    p.add_argument("--batch-sizes", default=None, type=_csv_ints,
                   help="default 10,64,256,1024,8192")
    p.add_argument("--sizes", default=None,
                   help="layer sizes, comma-separated (default 784-100-10,784-1024-10,784-512-512-10)")
    p.add_argument("--dtype", default="float32", choices=choices["dtype"])
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="timed epochs per row (default 3)")
    p.add_argument("--samples", type=_positive_int, default=60000,
                   help="training samples per epoch")
    p.add_argument("--quick", action="store_true",
                   help="batch 64 and 1024 on 784-100-10, 2 epochs: under a minute on 2 cores")
    p.add_argument("--vs", default=None, metavar="torch[,jax][,BACKEND]",
                   help="measure PyTorch eager (torch), JAX on the CPU (jax: its whole-epoch "
                        "lax.scan and its jitted step) and/or another bpgpu backend on identical "
                        "work in the same run, epochs interleaved (e.g. --vs torch,jax,numpy)")
    p.add_argument("--time-to-accuracy", action="store_true",
                   help="also time each backend (and torch) to 98.0 %% MNIST test accuracy")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--plot", metavar="PATH.png")
    p.add_argument("--update-readme", metavar="README.md",
                   help="replace the README's benchmark section with this run's table and chart")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tf32", action="store_true",
                   help="float32 GEMMs on the GPU may use TF32 tensor cores (faster, ~1e-3 "
                        "relative error; compute capability 8.0 or newer)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gradcheck", help="back-propagation vs finite differences, per layer")
    _add_model_args(p, dict(hidden="30", activation="sigmoid", output="softmax", loss="ce",
                            init="normal"), choices)
    p.add_argument("--batch", type=_positive_int, default=16, help="samples in the checked batch")
    p.add_argument("--per-layer", type=_positive_int, default=200,
                   help="entries checked per W and b (random subset)")
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--tol", type=float, default=1e-6)
    p.set_defaults(func=cmd_gradcheck)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``bpgpu`` console script; returns the exit status."""
    from .errors import BpgpuError
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if getattr(args, "distributed", False):   # one rank of mpirun -n P bpgpu ... --distributed
            from .distributed import run_command
            return run_command(args.func, args)
        return args.func(args)
    except (UsageError, BpgpuError, OSError, argparse.ArgumentError,
            argparse.ArgumentTypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"bpgpu: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError as exc:   # e.g. --hidden 100000000: the sizes asked for more than there is
        print(f"bpgpu: error: not enough memory for what was asked{f' ({exc})' if str(exc) else ''}"
              " (smaller --hidden, --batch-size or --samples?)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"bpgpu: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
