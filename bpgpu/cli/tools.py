"""The smaller ``bpgpu`` commands: ``info``, ``evaluate``, ``gradcheck``, ``demo``, ``warmup``."""

from __future__ import annotations

import json
import math
import os

from .common import (UsageError, add_backend_arg, add_tf32_arg, apply_tf32, positive_float,
                     positive_int)
from .train import add_model_args, network_for

__all__ = ["add_parsers", "cmd_info", "cmd_evaluate", "cmd_gradcheck", "cmd_demo",
           "cmd_warmup"]


def add_parsers(sub, names):
    """The parsers of this module's commands, in the order ``bpgpu --help`` lists them."""
    p = sub.add_parser("info", help="versions, CPU, BLAS, backends and GPUs")
    p.add_argument("--json", action="store_true", help="print the machine record as JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("evaluate", help="evaluate a saved model on a dataset's test split")
    p.add_argument("model")
    p.add_argument("--dataset", default=None,
                   help="default: the one the model file records (else mnist)")
    p.add_argument("--target", default=None, help="a CSV's target column (default: the "
                                                  "model's)")
    p.add_argument("--force", action="store_true",
                   help="evaluate even on another dataset than the model's (with a warning)")
    add_backend_arg(p, names)
    add_tf32_arg(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("demo", help="the textbook networks: " + ", ".join(names["demo"]))
    p.add_argument("name", choices=names["demo"])
    add_backend_arg(p, names)
    p.add_argument("--out", default=".", help="directory for the pictures (default: here)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("warmup", help="compile the numba kernels now (cached on disk)")
    p.set_defaults(func=cmd_warmup)
    p = sub.add_parser("gradcheck", help="back-propagation vs finite differences, per layer")
    add_model_args(p, dict(hidden="30", activation="sigmoid", output="softmax", loss="ce",
                           init="normal"), names)
    p.add_argument("--batch", type=positive_int, default=16, help="samples in the checked batch")
    p.add_argument("--per-layer", type=positive_int, default=200,
                   help="entries checked per W and b (random subset)")
    p.add_argument("--eps", type=positive_float, default=1e-6,
                   help="finite-difference step (a finite number > 0; default %(default)s)")
    p.add_argument("--tol", type=positive_float, default=1e-6,
                   help="largest relative error that passes (default %(default)s)")
    p.set_defaults(func=cmd_gradcheck)


def cmd_info(args):
    from .._version import __version__
    from ..sysinfo import machine_record
    rec = machine_record()
    if args.json:
        print(json.dumps(rec, indent=2, default=str))
        return 0
    v = rec["versions"]
    print(f"bpgpu {__version__}  python {v['python']}  numpy {v['numpy']}")
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
        from ..backends.numba_cache import cache_status
        print(f"numba kernels: {cache_status()}")
    print(f"auto: {rec['auto_reason']}")
    for g in rec["gpus"] or [None]:
        print("gpu: " + (", ".join(f"{k} {val}" for k, val in g.items()) if g else "none found"))
    return 0


def cmd_evaluate(args):
    """The model on its dataset's test split -- the split it was trained with (the file records
    the dataset, its fingerprint and split); another dataset is refused without --force."""
    from ..mlp import load
    apply_tf32(args, [args.backend])
    net = load(args.model, backend=args.backend)
    data, X_test, y_test = _evaluation_data(args, net)
    res = net.evaluate(X_test, y_test)
    figures = (f"mse {res['mse']:.6g}, mae {res['mae']:.6g}, r2 {res['r2']:.4f}"
               if net.task == "regression" else f"accuracy {res['accuracy']:.4f}")
    if "hamming_loss" in res:
        figures += f" (every label right), hamming loss {res['hamming_loss']:.4f}"
    print(f"{args.model} on {data.name} test ({len(X_test)} samples, backend "
          f"{net.backend.name}): loss {res['loss']:.4f}, {figures}")
    return 0


def _evaluation_data(args, net):
    """``(dataset, X_test, y_test)`` for ``bpgpu evaluate``: the recorded dataset and split
    unless told otherwise, checked against the model's record."""
    import sys

    from ..datasets import load_dataset
    from ..datasets.pipeline import same_source
    recorded, pipeline = net.data_source, net.pipeline
    split = (recorded or {}).get("split") or {}
    name = args.dataset or (recorded["name"] if recorded else "mnist")
    target = args.target or (pipeline.target if pipeline is not None else None)
    data = load_dataset(name, target=target, seed=split.get("seed", 0),
                        test_fraction=split.get("test_fraction", 0.2))
    if data.n_inputs != net.sizes[0] or data.n_outputs != net.sizes[-1]:
        raise UsageError(f"model {args.model} is {'-'.join(map(str, net.sizes))} but dataset "
                         f"{data.name} has {data.n_inputs} inputs and {data.n_outputs} outputs")
    if recorded is None:
        print(f"bpgpu: note: {args.model} records no training dataset (a version-1 file, or "
              f"trained on arrays): evaluated on {data.name} as asked", file=sys.stderr)
    elif data.source is not None and not same_source(recorded, data.source):
        what = (f"{args.model} was trained on {recorded['name']}, not on {name} (its data "
                "differs)")
        if not args.force:
            raise UsageError(f"{what}: its figures there would mean nothing; --force evaluates "
                             "anyway, `bpgpu predict MODEL FILE.csv` scores new labelled rows")
        print(f"bpgpu: warning: {what}; evaluating anyway (--force)", file=sys.stderr)
    X_test, y_test = data.X_test, data.y_test
    if pipeline is not None and pipeline.kind == "tabular" and data.source is not None and \
            data.source.get("kind") == "csv":
        from ..datasets.rows import csv_split
        X_test, y_test = csv_split(pipeline, data.source["name"], split.get("seed", 0),
                                   split.get("test_fraction", 0.2))
    return data, X_test, y_test


def cmd_gradcheck(args):
    from ..datasets import load_dataset
    from ..gradcheck import gradcheck_layers
    data = load_dataset(args.dataset, target=args.target, seed=args.seed, labels=args.labels)
    net = network_for(args, data, dtype="float64")           # the network train would build
    X, y = data.X_train[:args.batch], data.y_train[:args.batch]
    rows = gradcheck_layers(net, X, y, eps=args.eps, max_per_layer=args.per_layer)
    print(f"gradcheck {net} on {len(X)} samples of {data.name}, eps {args.eps}")
    for r in rows:
        print(f"  layer {r['layer']}: weights {r['weights']:.3e}  biases {r['biases']:.3e}")
    errors = [r[k] for r in rows for k in ("weights", "biases")]
    worst = math.nan if any(math.isnan(e) for e in errors) else max(errors, default=0.0)
    ok = worst < args.tol                                     # NaN fails
    print(f"max relative error {worst:.3e} ({'OK' if ok else 'FAILED'}: tolerance {args.tol:g})")
    return 0 if ok else 1


def cmd_demo(args):
    from .. import demos
    if args.name == "tabular":
        from .._compat import optional_import
        if optional_import("sklearn") is None:
            raise UsageError("the tabular demo reads scikit-learn's bundled wine data: "
                             "pip install scikit-learn")
    from ..backends import get_backend
    get_backend(args.backend)  # a clear error before any work
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    os.makedirs(args.out, exist_ok=True)
    demos.run_demo(args.name, backend=args.backend, out=args.out)
    return 0


def cmd_warmup(args):
    from ..backends import get_backend
    from ..warmup import warmup
    be = get_backend("numba")
    res = warmup(be)
    state = ("all loaded from the cache" if res["compiled"] == 0 else
             f"{res['compiled']} compiled now, {res['cache_hits']} from the cache")
    print(f"numba kernels ready in {res['seconds']:.1f} s ({res['kernels']} kernels; {state}); "
          f"{be.describe()}")
    return 0
