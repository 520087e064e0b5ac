"""What sample weights cost: weighted against unweighted epochs, interleaved in one process.

``python bench/weights_cost.py [--backend numba] [--sizes 784-100-10] [--batch 64,256,1024]``
trains MNIST epochs alternately without weights and with integer sample weights (and so the
per-epoch factors computed on the host and the weighted output delta), on the same backend --
on numba both as compiled epochs -- and prints samples/s of each and the median of the per-round
ratios weighted / unweighted (1 = free).
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
from bpgpu.backends import numba_epoch
from bpgpu.sysinfo import machine_record


def _epoch(net, X, y, batch, weights):
    t0 = time.perf_counter()
    net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False,
            sample_weight=weights)
    return time.perf_counter() - t0


def measure(backend, sizes, batch, rounds, X, y):
    weights = np.random.default_rng(0).integers(1, 4, X.shape[0])
    nets = [bpgpu.MLP(sizes, backend=backend, seed=0) for _ in range(2)]
    forms = [(nets[0], None), (nets[1], weights)]
    before = numba_epoch.STATS["compiled_epochs"]
    for net, w in forms:
        _epoch(net, X, y, batch, w)                         # warm-up: compile
    times = [[], []]
    for _ in range(rounds):
        for k, (net, w) in enumerate(forms):
            times[k].append(_epoch(net, X, y, batch, w))
    compiled = numba_epoch.STATS["compiled_epochs"] - before
    n = X.shape[0]
    return {"backend": backend, "sizes": "-".join(map(str, sizes)), "batch": batch,
            "rounds": rounds, "compiled_epochs": compiled,
            "unweighted_samples_per_s": n / statistics.median(times[0]),
            "weighted_samples_per_s": n / statistics.median(times[1]),
            "weighted_vs_unweighted": statistics.median(
                u / w for u, w in zip(times[0], times[1]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numba")
    p.add_argument("--sizes", default="784-100-10")
    p.add_argument("--batch", default="64,256,1024")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    (X, y), _ = bpgpu.datasets.mnist()
    rows = []
    for sizes in args.sizes.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            row = measure(args.backend, [int(v) for v in sizes.split("-")], batch,
                          args.rounds, X, y)
            rows.append(row)
            print(f"{row['backend']} {row['sizes']} b{batch}: unweighted "
                  f"{row['unweighted_samples_per_s']:,.0f}  weighted "
                  f"{row['weighted_samples_per_s']:,.0f} samples/s  weighted/unweighted "
                  f"{row['weighted_vs_unweighted']:.3f} (compiled epochs "
                  f"{row['compiled_epochs']})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_record(), "rows": rows,
                       "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}, f, indent=1,
                      default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
