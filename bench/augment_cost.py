"""What on-device augmentation costs: the augmented gather beside the plain one, and whole epochs.

    python bench/augment_cost.py [--backend numba] [--rounds 5] [--json PATH]

prints two Markdown tables (bench/NOTES.md, "Augmentation cost"):

- per batch (MNIST uint8 rows, shuffled indices): the plain gather (``gather_rows``) and the
  augmented gather as a training step runs it (``Augment.gather``: the Philox draws, the elastic
  fields when asked, the warp) for a shift, an affine transform and an affine + elastic one;
- per epoch (60,000 images, ``fit(epochs=1, train_metrics=False)``): the recipe network
  784-1024-1024-10 relu, dropout 0.2, momentum, batch 128, and the textbook 784-100-10 sigmoid,
  SGD, batch 64, with each augmentation and without.

Every configuration is measured once per round, configurations interleaved within a round (this
machine's speed drifts, and other work shares it); each figure is the median over rounds, each
ratio the median of per-round ratios to the plain run of the same round. The load average before
and after is printed: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import bpgpu
from bpgpu.augment import make_augment
from bpgpu.sysinfo import machine_record

AUGMENTS = {"none": None, "shift=2": "shift=2",
            "affine": "shift=2,rotate=10,scale=0.1,shear=0.2",
            "affine+elastic": "shift=2,rotate=10,scale=0.1,shear=0.2,elastic=34:4"}
NETS = {"784-1024-1024-10 relu b128 dropout 0.2": dict(
            sizes=[784, 1024, 1024, 10], activation="relu", init="he",
            fit=dict(batch_size=128, optimizer="momentum", lr=0.05, dropout=0.2)),
        "784-100-10 sigmoid b64": dict(
            sizes=[784, 100, 10], activation="sigmoid", init="normal",
            fit=dict(batch_size=64, optimizer="sgd", lr=0.1))}


def op_times(backend, X, rounds, batch=128, calls=200):
    """Median µs per batch of the plain and each augmented gather."""
    net = bpgpu.MLP([784, 10], backend=backend, seed=0)
    be = net.backend
    X_dev = be.asarray(X)
    order = np.random.default_rng(0).permutation(len(X))
    runs = {}
    for name, spec in AUGMENTS.items():
        aug = make_augment(spec)
        aug = aug and aug.resolved(784)
        ws = net.workspace(batch, augment=aug)
        idx = [be.asarray(order[i * batch:(i + 1) * batch]) for i in range(calls)]
        if aug is None:
            def run(ws=ws, idx=idx):
                for i in idx:
                    be.gather_rows(X_dev, i, ws.a[0], net.input_scale)
        else:
            def run(ws=ws, idx=idx, aug=aug):
                for step, i in enumerate(idx):
                    aug.gather(be, ws, X_dev, i, net.stream_key, step, 0, net.input_scale, 0.0)
        run()                                               # compile, warm the caches
        runs[name] = run
    times = {name: [] for name in runs}
    with be.compute_threads(batch):
        for _ in range(rounds):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                be.synchronize()
                times[name].append((time.perf_counter() - t0) / calls * 1e6)
    return times


def epoch_times(backend, X, y, rounds):
    """Seconds per epoch for every network x augmentation, interleaved."""
    models = {}
    for net_name, spec in NETS.items():
        for aug_name, aug in AUGMENTS.items():
            net = bpgpu.MLP(spec["sizes"], activation=spec["activation"], init=spec["init"],
                            backend=backend, seed=0)
            net.fit(X[:2000], y[:2000], epochs=1, augment=aug, train_metrics=False,
                    **spec["fit"])                          # compile, allocate
            models[net_name, aug_name] = (net, aug, spec["fit"])
    times = {key: [] for key in models}
    for _ in range(rounds):
        for key, (net, aug, fit) in models.items():
            h = net.fit(X, y, epochs=1, augment=aug, train_metrics=False, **fit)
            times[key].append(h.time[-1])
    return times


def ratios(times, key, base):
    return statistics.median(t / b for t, b in zip(times[key], times[base]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numba")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    (X, y), _ = bpgpu.datasets.mnist()
    load_before = os.getloadavg()
    ops = op_times(args.backend, X, args.rounds)
    epochs = epoch_times(args.backend, X, y, args.rounds)
    load_after = os.getloadavg()
    rec = machine_record()
    print(f"{rec['cpu']} ({rec['cores']} cores), backend {args.backend}, {args.rounds} rounds; "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}\n")
    print("| per batch of 128 | µs (median) | min–max | × plain gather |\n|---|---|---|---|")
    for name, t in ops.items():
        print(f"| {'plain gather' if name == 'none' else name} | {statistics.median(t):.0f} | "
              f"{min(t):.0f}–{max(t):.0f} | {ratios(ops, name, 'none'):.2f} |")
    print("\n| network | augmentation | s/epoch (median) | min–max | × no augmentation |\n"
          "|---|---|---|---|---|")
    for (net_name, aug_name), t in epochs.items():
        print(f"| {net_name} | {aug_name} | {statistics.median(t):.2f} | "
              f"{min(t):.2f}–{max(t):.2f} | {ratios(epochs, (net_name, aug_name), (net_name, 'none')):.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": rec, "backend": args.backend, "rounds": args.rounds,
                       "load_average": [load_before, load_after], "augments": AUGMENTS,
                       "op_us": ops, "epoch_s": {" | ".join(k): v for k, v in epochs.items()}},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
