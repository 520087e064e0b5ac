"""Training from a memory-mapped file against training from memory, interleaved.

``python bench/out_of_core.py [--backend numba] [--batch 64,256] [--rounds 5]`` writes MNIST's
60,000 training images to an ``.npy`` file, then alternates, per round: an epoch with the array
in memory (uploaded once; on numba an epoch compiled into one call), an epoch from the file with
its pages in the page cache (warm), and an epoch from the file after its pages were dropped from
the cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (cold: read from the disk, as far as the
machine's storage lets a guest tell). Prints samples/s per form and the ratios memmap / memory
(median of the per-round ratios), and writes a JSON record with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

import bpgpu
from bpgpu.sysinfo import machine_record


def _drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _epoch(net, X, y, batch):
    t0 = time.perf_counter()
    net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False)
    return time.perf_counter() - t0


def measure(backend, batch, rounds, path, X, y):
    m = np.load(path, mmap_mode="r")
    nets = {form: bpgpu.MLP([784, 100, 10], backend=backend, seed=0)
            for form in ("memory", "warm", "cold")}
    data = {"memory": X, "warm": m, "cold": m}
    for form, net in nets.items():                   # warm-up: compile, fill the page cache
        _epoch(net, data[form], y, batch)
    times = {form: [] for form in nets}
    for _ in range(rounds):
        for form, net in nets.items():
            if form == "cold":
                _drop_cache(path)
            times[form].append(_epoch(net, data[form], y, batch))
    n = X.shape[0]
    row = {"backend": backend, "batch": batch, "rounds": rounds}
    for form, ts in times.items():
        row[f"{form}_samples_per_s"] = n / statistics.median(ts)
    for form in ("warm", "cold"):
        row[f"{form}_vs_memory"] = statistics.median(
            m_t / f_t for m_t, f_t in zip(times["memory"], times[form]))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="numba")
    p.add_argument("--batch", default="64,256")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    (X, y), _ = bpgpu.datasets.mnist()
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BPGPU_BENCH_DIR")) as tmp:
        path = os.path.join(tmp, "mnist-train.npy")
        np.save(path, X)
        for batch in (int(b) for b in args.batch.split(",")):
            row = measure(args.backend, batch, args.rounds, path, X, y)
            rows.append(row)
            print(f"{args.backend} 784-100-10 b{batch}: memory {row['memory_samples_per_s']:,.0f}"
                  f"  memmap warm {row['warm_samples_per_s']:,.0f} "
                  f"({row['warm_vs_memory']:.2f}x)  cold {row['cold_samples_per_s']:,.0f} "
                  f"({row['cold_vs_memory']:.2f}x) samples/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_record(), "rows": rows,
                       "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}, f, indent=1,
                      default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
