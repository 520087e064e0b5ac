"""``bpgpu bench``: throughput of every backend beside PyTorch, JAX and the GEMM ceiling.

The measuring is :mod:`bpgpu.bench.runner`, the tables and charts :mod:`bpgpu.bench.report`;
this module checks the arguments (before anything is measured) and writes what was asked for.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass

from .common import (UsageError, add_tf32_arg, apply_tf32, csv_ints, distinct_outputs,
                     need_matplotlib, positive_int, writable)

__all__ = ["add_parser", "cmd_bench", "QUICK"]

#: What ``--quick`` runs (options given explicitly win).
QUICK = dict(batch_sizes=[64, 1024], sizes="784-100-10", epochs=2)
_DEFAULTS = dict(batch_sizes=[10, 64, 256, 1024, 8192],
                 sizes="784-100-10,784-1024-10,784-512-512-10", epochs=3)
_PEERS = ("torch", "jax")


def _positive_ints(text):
    """``"64,256"`` -> ``[64, 256]``, every one >= 1 (an argparse type)."""
    values = csv_ints(text)
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def add_parser(sub, names):
    p = sub.add_parser("bench", help="throughput of every backend vs PyTorch and the GEMM ceiling")
    p.add_argument("--backends", default=None, help="comma-separated (default: every available)")
    p.add_argument("--batch-sizes", default=None, type=_positive_ints,
                   help="default " + ",".join(map(str, _DEFAULTS["batch_sizes"])))
    p.add_argument("--sizes", default=None,
                   help=f"layer sizes, comma-separated (default {_DEFAULTS['sizes']})")
    p.add_argument("--dtype", default="float32", choices=names["dtype"])
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"timed epochs per row (default {_DEFAULTS['epochs']})")
    p.add_argument("--samples", type=positive_int, default=60000,
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
    add_tf32_arg(p)
    p.set_defaults(func=cmd_bench)
    return p


def _sizes_list(text):
    try:
        sizes = [[int(v) for v in item.split("-")] for item in text.split(",") if item.strip()]
    except ValueError:
        raise UsageError(f"--sizes takes layer sizes like 784-100-10,784-1024-10, got "
                         f"{text!r}") from None
    if not sizes or any(len(s) < 2 or min(s) < 1 for s in sizes):
        raise UsageError(f"--sizes takes layer sizes like 784-100-10,784-1024-10, got {text!r}")
    return sizes


@dataclass
class _Plan:
    """What the arguments ask to measure."""
    backends: list
    sizes: list
    batches: list
    repeats: int
    vs: list
    vs_torch: bool
    vs_jax: bool
    vs_backend: str | None
    torch_why: str | None


def _check_outputs(args):
    """Every file the run writes, checked before anything is measured: writable now (a real
    create-and-rename in its directory), each its own file, the README one to update."""
    outputs = [("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot),
               ("--update-readme", args.update_readme)]
    for what, path in outputs:
        writable(path, what)
    if args.update_readme is not None:
        if not (args.markdown and args.plot):
            raise UsageError("--update-readme needs --markdown and --plot (the README links them)")
        from ..bench.report import check_readme
        check_readme(args.update_readme)
    distinct_outputs(outputs)
    if args.plot or args.update_readme:
        need_matplotlib("--plot")


def _plan(args) -> _Plan:
    """The arguments checked and resolved, before anything is measured."""
    from ..backends import REGISTRY, available_backends, get_backend
    from ..bench.jax_ref import jax_status
    from ..bench.torch_ref import torch_status
    _check_outputs(args)
    pick = {k: getattr(args, k) or (QUICK[k] if args.quick else _DEFAULTS[k]) for k in QUICK}
    usable = [b.name for b in available_backends() if b.available]
    backends = args.backends.split(",") if args.backends else usable
    vs = [v for v in (args.vs or "").split(",") if v]
    named = [v for v in vs if v not in _PEERS]
    if any(v not in REGISTRY for v in named) or len(named) > 1:
        raise UsageError(f"--vs takes torch, jax and/or one backend ({', '.join(REGISTRY)}), "
                         f"got {args.vs!r}")
    for b in backends + named:
        if b not in usable:
            get_backend(b)  # raises BackendUnavailable with the reason
    apply_tf32(args, backends)
    if "jax" in vs and jax_status()[0] is None:
        raise UsageError(f"--vs jax: {jax_status()[1]}")
    torch_mod, torch_why = torch_status()
    vs_torch = "torch" in vs and torch_mod is not None
    if "torch" in vs and torch_mod is None:
        print(f"note: {torch_why}; the table has no PyTorch column", file=sys.stderr)
    return _Plan(backends, _sizes_list(pick["sizes"]), pick["batch_sizes"], pick["epochs"], vs,
                 vs_torch, "jax" in vs, named[0] if named else None,
                 torch_why if torch_mod is None else None)


def cmd_bench(args):
    from ..bench import report
    from ..bench.jax_ref import describe_jax
    from ..bench.runner import TTA_RECIPE, run_matrix, time_to_accuracy
    from ..datasets import mnist
    from ..sysinfo import machine_record
    plan = _plan(args)
    (X_all, y_all), (Xt, yt) = mnist()
    X, y = X_all[:args.samples], y_all[:args.samples]
    machine = machine_record()
    if plan.vs_jax:
        machine["jax"] = describe_jax()

    def show(row):
        if not args.quiet:
            print(report.progress_line(row, plan.vs_backend), file=sys.stderr, flush=True)

    rows = run_matrix(plan.backends, plan.sizes, plan.batches, args.dtype, X, y,
                      repeats=plan.repeats, vs_torch=plan.vs_torch, progress=show,
                      vs_backend=plan.vs_backend, vs_jax=plan.vs_jax)
    tta = []
    if args.time_to_accuracy:   # always on the full training set, whatever --samples says
        tta = [time_to_accuracy(b, TTA_RECIPE, X_all, y_all, Xt, yt) for b in plan.backends]
        if plan.vs_torch:
            tta += [time_to_accuracy(device, TTA_RECIPE, X_all, y_all, Xt, yt, torch=True)
                    for device in sorted({"cupy" if b == "cupy" else "cpu"
                                          for b in plan.backends})]
    print(report.markdown_table(rows))
    extra = report.time_to_accuracy_table(tta, TTA_RECIPE) if tta else ""
    if extra:
        print(extra)
    if not plan.vs_torch:
        print(f"(no PyTorch comparison: {plan.torch_why or 'use --vs torch'})")
    payload = {"machine": machine, "rows": rows, "time_to_accuracy": tta,
               "method": {"repeats": plan.repeats, "samples": int(X.shape[0]),
                          "interleaved_with": plan.vs, "warmup_epochs": 1,
                          "train_metrics": False, "dtype": args.dtype}}
    if args.json:
        report.write_json(args.json, payload)
    if args.markdown:
        report.write_markdown(args.markdown, rows, machine, extra)
    if args.plot:
        report.plot_rows(rows, args.plot)
    if args.update_readme:
        command = " ".join(["bpgpu"] + [shlex.quote(a) for a in args.argv])
        report.update_readme(args.update_readme, args.markdown, args.plot, rows, machine, command)
    return 0
