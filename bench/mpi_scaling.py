"""Data-parallel scaling on this machine: samples/s of ``fit(comm=...)`` for P ranks, and the cost
of one gradient Allreduce.

Driver (interleaves P = 1 and P = 2 launches, so both see the same background load):

    python bench/mpi_scaling.py --ranks 1,2 --repeats 3 [--json out.json]

Each launch runs ``mpirun -n P python bench/mpi_scaling.py --rank-job`` (P = 1: the script alone, a
singleton), which trains every workload on full MNIST (float32, one warm-up epoch, then timed
epochs; History.time of an epoch includes its end-of-epoch reductions), then times Allreduces of
each workload's gradient buffer (n_params + 1 elements, as the run does) and prints one JSON line
from rank 0. The driver prints a Markdown table: medians over repeats of samples/s, speed-up and
efficiency S_P / (P S_1), and the Allreduce time per step against the step time.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

WORKLOADS = [  # (sizes, global batch, overlap)
    ([784, 100, 10], 64, False),
    ([784, 100, 10], 256, False),
    ([784, 100, 10], 1024, False),
    ([784, 1024, 1024, 10], 256, False),
    ([784, 1024, 1024, 10], 256, True),
    ([784, 1024, 1024, 10], 1024, False),
]


def rank_job(args):
    import numpy as np
    from mpi4py import MPI

    import bpgpu
    from bpgpu.distributed import DataParallel
    comm = MPI.COMM_WORLD
    (X, y), _ = bpgpu.datasets.mnist()
    X, y = X[:args.samples], y[:args.samples]
    rows = []
    for sizes, batch, overlap in WORKLOADS:
        net = bpgpu.MLP(sizes, activation="sigmoid", backend=args.backend, seed=1)
        par = DataParallel(comm, overlap=overlap)
        history = net.fit(X, y, epochs=1 + args.epochs, batch_size=batch, optimizer="momentum",
                          lr=0.05, train_metrics=False, comm=par)
        epoch_s = statistics.median(history.time[1:])
        wire = np.zeros(net.n_params + 1, np.float32)
        comm.Barrier()
        reps = max(20, min(400, int(2e8 / wire.nbytes)))
        t0 = time.perf_counter()
        for _ in range(reps):
            comm.Allreduce(MPI.IN_PLACE, wire, op=MPI.SUM)
        allreduce_s = (time.perf_counter() - t0) / reps
        steps = -(-X.shape[0] // batch)
        rows.append({"sizes": "-".join(map(str, sizes)), "batch": batch, "overlap": overlap,
                     "epoch_s": epoch_s, "samples_per_s": X.shape[0] / epoch_s,
                     "step_us": 1e6 * epoch_s / steps, "allreduce_us": 1e6 * allreduce_s,
                     "gradient_bytes": int(wire.nbytes)})
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps({"ranks": comm.Get_size(), "backend": args.backend,
                                      "rows": rows}), flush=True)


def launch(ranks, args):
    job = [sys.executable, os.path.abspath(__file__), "--rank-job", "--backend", args.backend,
           "--epochs", str(args.epochs), "--samples", str(args.samples)]
    if ranks > 1:
        mpirun = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep
                              + os.environ.get("PATH", ""))
        job = [mpirun, "--oversubscribe", "-n", str(ranks)] + job
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run(job, capture_output=True, text=True, env=env, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def driver(args):
    ranks = [int(r) for r in args.ranks.split(",")]
    runs = {r: [] for r in ranks}
    load = []
    for rep in range(args.repeats):
        for r in ranks:
            load.append(os.getloadavg()[0])
            runs[r].append(launch(r, args))
            print(f"repeat {rep + 1}, P={r} done (load average {load[-1]:.1f})",
                  file=sys.stderr, flush=True)
    table = []
    for i, (sizes, batch, overlap) in enumerate(WORKLOADS):
        base = statistics.median(run["rows"][i]["samples_per_s"] for run in runs[ranks[0]])
        for r in ranks:
            rows = [run["rows"][i] for run in runs[r]]
            sps = statistics.median(x["samples_per_s"] for x in rows)
            table.append({"sizes": rows[0]["sizes"], "batch": batch, "overlap": overlap,
                          "ranks": r, "samples_per_s": sps, "speedup": sps / base,
                          "efficiency": sps / base / r * ranks[0],
                          "step_us": statistics.median(x["step_us"] for x in rows),
                          "allreduce_us": statistics.median(x["allreduce_us"] for x in rows),
                          "all": [round(x["samples_per_s"]) for x in rows]})
    print("| network | global batch | overlap | P | samples/s (median) | speed-up | efficiency "
          "| step µs | Allreduce µs | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        print(f"| {t['sizes']} | {t['batch']} | {'yes' if t['overlap'] else 'no'} | {t['ranks']} "
              f"| {t['samples_per_s'] / 1e3:.1f}k | {t['speedup']:.2f} | {t['efficiency']:.2f} "
              f"| {t['step_us']:.0f} | {t['allreduce_us']:.0f} | {t['all']} |")
    print(f"\nload average during the launches: {min(load):.1f}-{max(load):.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": table, "runs": runs, "load": load}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="numba")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--json")
    args = p.parse_args()
    if args.rank_job:
        rank_job(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
