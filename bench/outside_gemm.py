"""Time outside the GEMMs of a compiled numba epoch.

    python bench/outside_gemm.py [--sizes 784-100-10] [--batch 64] [--rounds 7]

A compiled epoch is one call: its ops cannot be timed one by one, and timing the GEMMs around each
call (what ``bpgpu bench``'s GEMM share does) runs the epoch step by step instead. So this script
times the epoch the model's step generates (bpgpu.backends.numba_epoch) beside the same generated
source with its GEMM calls taken out (every ``_e.gemm(...)`` and ``_e.matmul(...)`` line becomes
``pass``), compiled the same way, on the same buffers, one epoch of each per round, interleaved.
The stripped epoch computes nonsense (its products are never written), but every other op -- the
gathers, activations, output delta, column sums (GEMV), optimizer -- runs on arrays of the same
shapes, so its time is the time of everything but the GEMMs. The share outside GEMMs is the
stripped epoch's time over the full epoch's, per round; the median is printed with the range.
Plain SGD, float32, sigmoid hidden layers, softmax + cross-entropy, training metrics off (the
benchmark's configuration), MNIST.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import bpgpu
from bpgpu.backends import numba_epoch
from bpgpu.optim import make_optimizer
from bpgpu.sysinfo import machine_record

GEMM_CALLS = ("_e.gemm(", "_e.matmul(")


def without_gemms(source: str) -> str:
    """``source`` with every GEMM call replaced by ``pass`` (same indentation)."""
    lines = []
    for line in source.splitlines():
        body = line.lstrip()
        lines.append(line[:len(line) - len(body)] + "pass" if body.startswith(GEMM_CALLS)
                     else line)
    return "\n".join(lines) + "\n"


def load(source: str, directory: str, name: str):
    path = os.path.join(directory, name + ".py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.epoch


def measure(sizes, batch, rounds):
    (X, y), _ = bpgpu.datasets.mnist()
    net = bpgpu.MLP(sizes, backend="numba", seed=0)
    be = net.backend
    opt = make_optimizer("sgd", be, net.n_params, net.dtype, lr=0.1)
    X_dev = net.prepare_inputs(X)
    T_dev = be.asarray(net.targets_from(y, X.shape[0]))
    runner = be.compiled_epoch(net, net.workspace(batch), X_dev, T_dev, opt, metrics=None,
                               count_correct=False)
    if runner is None:
        raise SystemExit(f"compiled epochs are off ({numba_epoch.ENV})")
    order = np.random.default_rng(0).permutation(X.shape[0])
    plan = runner._plan()
    args = runner._arguments(plan, order)
    n_batches = args[2]
    with tempfile.TemporaryDirectory() as tmp:
        full = load(plan["source"], tmp, "epoch_full")
        stripped = load(without_gemms(plan["source"]), tmp, "epoch_without_gemms")
        if stripped is None or plan["source"] == without_gemms(plan["source"]):
            raise SystemExit("the generated epoch has no GEMM call to take out")
        rows = []
        with be.compute_threads(batch):
            for fn in (full, stripped):                      # compile, warm up
                fn(0, n_batches, *args)
            for _ in range(rounds):
                t0 = time.perf_counter()
                full(0, n_batches, *args)
                t1 = time.perf_counter()
                stripped(0, n_batches, *args)
                t2 = time.perf_counter()
                rows.append((t1 - t0, t2 - t1))
    return rows, n_batches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="784-100-10")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split("-")]
    rows, steps = measure(sizes, args.batch, args.rounds)
    rec = machine_record()
    kernels = "; ".join(k["summary"] for k in rec.get("blas_kernels", []))
    print(f"{rec['cpu']} ({rec['cores']} cores), {kernels}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')}; {args.sizes} batch {args.batch}, "
          f"{steps} steps per epoch, {args.rounds} rounds")
    shares = [stripped / full for full, stripped in rows]
    for (full, stripped), share in zip(rows, shares):
        print(f"  full epoch {full * 1e3:7.1f} ms ({full / steps * 1e6:6.0f} µs/step), without "
              f"GEMMs {stripped * 1e3:7.1f} ms: {100 * share:4.1f} % outside GEMMs")
    print(f"median {100 * statistics.median(shares):.1f} % of the step outside GEMMs "
          f"({100 * min(shares):.1f}–{100 * max(shares):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
