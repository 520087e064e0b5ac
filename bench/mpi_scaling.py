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
    ([784, 100, 10], 256, True),
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


# ---------------------------------------------------------------------------------------- the model
#: FLOPs per sample of one training step (forward GEMMs 2*sum(W), gradient GEMMs 2*sum(W), delta
#: GEMMs 2*sum(W of layers 2..L)) and gradient bytes (float32, plus the stop flag)
def step_flops_per_sample(sizes):
    w = [i * o for i, o in zip(sizes[:-1], sizes[1:])]
    return 4 * sum(w) + 2 * sum(w[1:])


def gradient_bytes(sizes):
    return 4 * (sum(i * o for i, o in zip(sizes[:-1], sizes[1:])) + sum(sizes[1:]) + 1)


#: Links: (name, bandwidth in bytes/s per direction, latency per ring step in s, most ranks it
#: joins): line rates and
#: typical MPI/NCCL small-message latencies, not measurements. CPU ranks talk over networks (or a
#: big node's shared memory); GPU ranks also over NVLink inside a node (NVLink 4 as NCCL's bus
#: bandwidth on an H100 NVSwitch node, at most 8 GPUs there).
ETHERNET_10 = ("10 Gb/s Ethernet (TCP)", 1.25e9, 25e-6, 1024)
ETHERNET_100 = ("100 Gb/s Ethernet (RoCE)", 12.5e9, 3e-6, 1024)
INFINIBAND = ("InfiniBand HDR 200 Gb/s", 25e9, 1.5e-6, 1024)
NVLINK = ("NVLink 4 (NCCL, one node)", 350e9, 3e-6, 8)

#: Ranks: name -> (links, {network: (sustained step FLOP/s, fixed per-step cost in s)}). The CPU
#: figures are the measured numba single-process rates of the 2-core Xeon
#: (bench/results/cpu-full.md: ~100 GFLOP/s on 784-100-10 from batch 256 and ~110 us a step at
#: batch 10; ~145 GFLOP/s on the wide networks); the GPU figures are assumptions (no multi-GPU
#: machine was available): an H100 at 25 TFLOP/s float32 on these GEMM shapes and 100 us of
#: kernel launches and Python a step.
RANKS = {
    "2-core CPU node": ((ETHERNET_10, ETHERNET_100, INFINIBAND),
                        {"784-100-10": (100e9, 110e-6), "784-1024-1024-10": (145e9, 150e-6)}),
    "H100 GPU": ((ETHERNET_100, INFINIBAND, NVLINK),
                 {"784-100-10": (25e12, 100e-6), "784-1024-1024-10": (25e12, 100e-6)}),
}


def allreduce_time(P, nbytes, bandwidth, latency):
    """Ring allreduce: 2(P-1) steps, each moving nbytes/P each way."""
    if P == 1:
        return 0.0
    return 2 * (P - 1) * latency + 2 * (P - 1) / P * nbytes / bandwidth


def step_time(P, batch, sizes, rate, fixed, bandwidth, latency, overlap=False):
    """One global step of ``batch`` rows on P ranks: the largest share's compute plus the
    reduction (with ideal overlap: the reduction hides behind the 2/3 of the compute that
    back-propagation is)."""
    compute = -(-batch // P) * step_flops_per_sample(sizes) / rate
    comm = allreduce_time(P, gradient_bytes(sizes), bandwidth, latency)
    if overlap:
        return fixed + compute / 3 + max(2 * compute / 3, comm)
    return fixed + compute + comm


def model_tables():
    out = []
    for rank_name, (links, per_net) in RANKS.items():
        for net_name, (rate, fixed) in per_net.items():
            sizes = [int(v) for v in net_name.split("-")]
            out.append(f"\n{rank_name} ranks, {net_name} ({gradient_bytes(sizes) / 1e6:.2f} MB of "
                       f"gradient, {step_flops_per_sample(sizes) / 1e6:.2f} MFLOP a sample, "
                       f"{rate / 1e9:g} GFLOP/s and {fixed * 1e6:g} µs a step per rank):\n")
            out.append("| link | global batch | step µs, P=1 | Allreduce µs, P=2 / 8 / 64 | "
                       "speed-up P=2 / 8 / 64 | best P (≤ 1024; NVLink ≤ 8) and its speed-up |")
            out.append("|---|---|---|---|---|---|")
            for link, bw, lat, most in links:
                for batch in (64, 256, 1024, 8192):
                    t1 = step_time(1, batch, sizes, rate, fixed, bw, lat)
                    ps = [P for P in (2, 8, 64) if P <= most]
                    ar = [allreduce_time(P, gradient_bytes(sizes), bw, lat) for P in ps]
                    sp = [t1 / step_time(P, batch, sizes, rate, fixed, bw, lat) for P in ps]
                    cands = [P for P in range(1, most + 1) if P <= batch]
                    best = max(cands, key=lambda P: t1 / step_time(P, batch, sizes, rate, fixed,
                                                                   bw, lat))
                    sb = t1 / step_time(best, batch, sizes, rate, fixed, bw, lat)
                    out.append(f"| {link} | {batch} | {t1 * 1e6:.0f} | "
                               + " / ".join(f"{a * 1e6:.0f}" for a in ar) + " | "
                               + " / ".join(f"{x:.2f}" for x in sp) + f" | {best}: {sb:.1f}× |")
    return "\n".join(out)


def model_summary():
    """One row per rank kind, network and link: the smallest global batch (a power of 2) at which
    P ranks run at 75 % efficiency (speed-up 0.75 P) for P = 2 and 8, and the P that maximises
    samples/s at global batches 1024 and 8192 (at most 8 GPUs on NVLink)."""
    def speedup(P, batch, sizes, rate, fixed, bw, lat, overlap=False):
        t1 = step_time(1, batch, sizes, rate, fixed, bw, lat)
        return t1 / step_time(P, batch, sizes, rate, fixed, bw, lat, overlap)

    def smallest(P, *a, overlap=False):
        for batch in (2 ** k for k in range(3, 21)):
            if batch >= P and speedup(P, batch, *a, overlap=overlap) >= 0.75 * P:
                return f"{batch}"
        return "> 1M"

    def best(batch, most, *a):
        P = max(range(1, min(batch, most) + 1), key=lambda P: speedup(P, batch, *a))
        return f"{P} ({speedup(P, batch, *a):.1f}×)"

    out = ["| ranks | network | link | Allreduce, P=2 / P=8 | global batch for 75 % efficiency, "
           "P=2 / P=8 (ideal overlap) | best P at batch 1024 | best P at batch 8192 |",
           "|---|---|---|---|---|---|---|"]
    for rank_name, (links, per_net) in RANKS.items():
        for net_name, (rate, fixed) in per_net.items():
            sizes = [int(v) for v in net_name.split("-")]
            for link, bw, lat, most in links:
                a = (sizes, rate, fixed, bw, lat)
                ar = [allreduce_time(P, gradient_bytes(sizes), bw, lat) * 1e6 for P in (2, 8)]
                out.append(f"| {rank_name} | {net_name} | {link} | {ar[0]:.0f} / {ar[1]:.0f} µs | "
                           f"{smallest(2, *a)} / {smallest(8, *a)} ({smallest(2, *a, overlap=True)}"
                           f" / {smallest(8, *a, overlap=True)}) | {best(1024, most, *a)} | "
                           f"{best(8192, most, *a)} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="numba")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    p.add_argument("--samples", type=int, default=60000)
    p.add_argument("--json")
    p.add_argument("--model", action="store_true",
                   help="print the ring-allreduce model's tables (no MPI needed)")
    args = p.parse_args()
    if args.model:
        print(model_summary())
        print(model_tables())
    elif args.rank_job:
        rank_job(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
