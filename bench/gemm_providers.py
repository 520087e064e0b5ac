"""GEMM providers on the exact GEMMs of a training step: which one is fastest, per shape, here.

    python bench/gemm_providers.py [--rounds 3] [--json PATH]

prints a Markdown table (bench/NOTES.md, "GEMM providers"). Float32, row-major, C = A·B with
beta = 0, the five GEMMs of a one-hidden-layer step (sizes n0-n1-n2, batch B):

- forward: (B, n0)·(n0, n1) and (B, n1)·(n1, n2)
- dW: Aᵀ·D, A stored (B, n0) / (B, n1): the transposed-A GEMMs
- delta: D·Wᵀ, W stored (n1, n2): the transposed-B GEMM (into the hidden layer only)

Providers, each in its own worker process (the variables they read are read once, at load):

- ``openblas-haswell`` / ``openblas-auto``: numpy's OpenBLAS with ``OPENBLAS_CORETYPE=Haswell``
  and with the variable unset (OpenBLAS picks its kernels by CPU), through the CBLAS entry point
  bpgpu's numba backend calls (kernels/blas.py), 1 and 2 threads.
- ``blis``: BLIS as the ``blis`` package (cython-blis) ships it, ``bli_sgemm_ex`` with its default
  context -- the kernels BLIS's own CPU detection picks (``blis.py.gemm`` calls the same).
- ``blis-native``: the same library with the context of the kernel set made for this CPU's
  vector width (``bli_cntx_init_skx`` with AVX-512, ``bli_cntx_init_haswell`` with AVX2) passed
  explicitly: what BLIS does where its detection knows the CPU.
- ``xla-1t`` / ``xla-2t``: XLA's dot (jax on the CPU, float32), one jitted call per GEMM with
  ``block_until_ready``; its dispatch cost is measured alone (an empty jitted call) and reported.

OpenBLAS and BLIS are timed from a Numba loop calling the C function by address
(kernels/intrinsics.py): no Python per call, the route a compiled epoch would use. Every provider's
result is checked against a float64 product first. The providers alternate job by job (one shape,
one thread count), with a pause between jobs so the previous provider's spinning threads park;
each figure is the median over ``--rounds`` rounds of the median per-call time of its job.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np

#: (sizes, batch) of the evaluation: the issue's three workloads
WORKLOADS = [((784, 100, 10), 64), ((784, 100, 10), 1024), ((784, 1024, 10), 256)]
#: provider -> (environment changes, thread counts it runs)
PROVIDERS = {
    "openblas-haswell": ({"OPENBLAS_CORETYPE": "Haswell"}, (1, 2)),
    "openblas-auto": ({"OPENBLAS_CORETYPE": None}, (1, 2)),
    "blis": ({}, (1,)),
    "blis-native": ({}, (1,)),
    "xla-1t": ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
                "JAX_PLATFORMS": "cpu"}, (1,)),
    "xla-2t": ({"XLA_FLAGS": None, "JAX_PLATFORMS": "cpu"}, (2,)),
}
_BLIS_TRANS = {False: 0, True: 8}       # BLIS_NO_TRANSPOSE, BLIS_TRANSPOSE


def step_gemms(sizes, batch):
    """The GEMMs of one training step: ``[(role, m, n, k, trans_a, trans_b)]``."""
    n0, n1, n2 = sizes
    return [("forward 1", batch, n1, n0, False, False),
            ("forward 2", batch, n2, n1, False, False),
            ("dW 2 (Aᵀ·D)", n1, n2, batch, True, False),
            ("delta 1 (D·Wᵀ)", batch, n1, n2, False, True),
            ("dW 1 (Aᵀ·D)", n0, n1, batch, True, False)]


def operands(m, n, k, trans_a, trans_b, seed=0):
    """C-contiguous float32 operands stored as the step stores them, and the output."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b, np.zeros((m, n), np.float32)


# ---------------------------------------------------------------------------- worker side
class _Worker:
    """One provider in this process: ``describe()`` and ``time_gemm(...)``."""

    def __init__(self, name):
        self.name = name
        if name.startswith("openblas"):
            self._init_openblas()
        elif name.startswith("blis"):
            self._init_blis(native=name == "blis-native")
        else:
            self._init_xla()

    # -- OpenBLAS through the CBLAS route of kernels/blas.py
    def _init_openblas(self):
        import threadpoolctl
        from numba import njit

        from bpgpu.kernels.blas import find_blas, gemm
        blas = find_blas()
        if blas is None:
            raise RuntimeError("no CBLAS found in numpy's BLAS")
        addr, ilp64 = blas.gemm[np.dtype(np.float32)], blas.ilp64

        @njit(cache=False)
        def loop(a, b, c, trans_a, trans_b, reps):
            for _ in range(reps):
                gemm(addr, ilp64, a, b, c, trans_a, trans_b, np.float32(1), np.float32(0))

        self._loop = loop
        self._limits = lambda t: threadpoolctl.threadpool_limits(t, user_api="blas")
        info = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        self.detail = ", ".join(f"{i.get('internal_api')} {i.get('version')} "
                                f"{i.get('architecture')} kernels" for i in info)

    # -- BLIS from the cython-blis extension, bli_sgemm_ex by address
    def _init_blis(self, native):
        import contextlib
        from importlib import metadata

        import blis.cy
        from numba import njit

        from bpgpu.kernels.intrinsics import call_address
        from bpgpu.sysinfo import cpu_flags, cpu_vector_isa
        lib = ctypes.CDLL(blis.cy.__file__)
        lib.bli_arch_string.restype = ctypes.c_char_p
        lib.bli_info_get_version_str.restype = ctypes.c_char_p
        detected = lib.bli_arch_string(lib.bli_arch_query_id()).decode()
        threading = bool(lib.bli_info_get_enable_threading())
        self._cntx = np.zeros(1 << 20, np.uint8)      # a cntx_t fits many times over
        if native:
            isa = cpu_vector_isa(cpu_flags())[0]
            config = {"AVX-512": "skx", "AVX2": "haswell"}.get(isa)
            if config is None:
                raise RuntimeError(f"no BLIS kernel set for a {isa} CPU in this build")
            getattr(lib, f"bli_cntx_init_{config}")(self._cntx.ctypes.data_as(ctypes.c_void_p))
            cntx, used = self._cntx.ctypes.data, config
        else:
            cntx, used = 0, detected                 # NULL: BLIS's own choice
        addr = ctypes.cast(lib.bli_sgemm_ex, ctypes.c_void_p).value
        one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)

        @njit(cache=False)
        def loop(a, b, c, trans_a, trans_b, reps):
            m, n = c.shape
            k = a.shape[0] if trans_a else a.shape[1]
            ta = np.int32(8 if trans_a else 0)
            tb = np.int32(8 if trans_b else 0)
            for _ in range(reps):
                call_address(addr, ta, tb, np.int64(m), np.int64(n), np.int64(k), one,
                             a, np.int64(a.shape[1]), np.int64(1),
                             b, np.int64(b.shape[1]), np.int64(1),
                             zero, c, np.int64(n), np.int64(1), np.int64(cntx), np.int64(0))

        self._loop = loop
        self._limits = lambda t: contextlib.nullcontext()
        self.detail = (f"blis package {metadata.version('blis')} (BLIS "
                       f"{lib.bli_info_get_version_str().decode()}, threading "
                       f"{'on' if threading else 'off: one thread only'}); CPU detected as "
                       f"{detected!r}; kernels used: {used}")

    # -- XLA through jax
    def _init_xla(self):
        import contextlib

        import jax
        from jax import lax
        self._jax, self._lax = jax, lax
        self._limits = lambda t: contextlib.nullcontext()
        self._cpu = jax.devices("cpu")[0]
        empty = jax.jit(lambda a, b: a[0, 0] + b[0, 0])
        x = jax.device_put(np.ones((2, 2), np.float32), self._cpu)
        self.dispatch_us, self.dispatch_cpu_us = self._per_call(lambda: empty(x, x))
        from bpgpu.sysinfo import xla_cpu_threads
        t = xla_cpu_threads()
        self.detail = (f"jax {jax.__version__}, XLA intra-op threads {t['intra_op_threads']}; "
                       f"an empty jitted call costs {self.dispatch_us:.1f} µs (subtracted below)")

    def _per_call(self, call):
        """Median wall and process-CPU µs of one call (with block_until_ready)."""
        jax = self._jax

        def run(reps):
            for _ in range(reps):
                jax.block_until_ready(call())

        return _timed(run)

    def time_gemm(self, m, n, k, trans_a, trans_b, threads):
        """``{"us": median µs per call, "err": max relative error vs float64}``; for XLA also
        ``us_call``, the whole jitted call, of which ``us`` is the part above an empty call's."""
        a, b, c = operands(m, n, k, trans_a, trans_b)
        want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
        if self.name.startswith("xla"):
            jax, lax = self._jax, self._lax
            dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
            f = jax.jit(lambda x, y: lax.dot_general(x, y, dims))
            ad, bd = jax.device_put((a, b), self._cpu)
            got = np.asarray(f(ad, bd))
            us_call, cpu_call = self._per_call(lambda: f(ad, bd))
            err = float(np.abs(got - want).max() / np.abs(want).max())
            return {"us": max(us_call - self.dispatch_us, 0.1), "us_call": us_call,
                    "cpu_us": max(cpu_call - self.dispatch_cpu_us, 0.1), "err": err}
        with self._limits(threads):
            self._loop(a, b, c, trans_a, trans_b, 1)
            got = c.copy()
            us, cpu_us = _timed(lambda reps: self._loop(a, b, c, trans_a, trans_b, reps))
        err = float(np.abs(got - want).max() / np.abs(want).max())
        return {"us": us, "cpu_us": cpu_us, "err": err}


def _timed(run):
    """``(wall µs, process-CPU µs)`` per call of ``run(reps)``: medians of 5 samples of ~20 ms.

    Process CPU time counts every thread of the worker, spinning included, and not the time the
    process waits for a core: on a busy machine it is the steadier figure for one thread."""
    run(1)
    t0 = time.perf_counter()
    run(3)
    reps = max(3, int(0.02 / max((time.perf_counter() - t0) / 3, 1e-7)))
    wall, cpu = [], []
    for _ in range(5):
        t0, c0 = time.perf_counter(), time.process_time()
        run(reps)
        wall.append((time.perf_counter() - t0) / reps)
        cpu.append((time.process_time() - c0) / reps)
    return float(np.median(wall)) * 1e6, float(np.median(cpu)) * 1e6


def worker_main(name):
    """Serve jobs on stdin (one JSON per line), answer on stdout, until stdin closes."""
    try:
        w = _Worker(name)
        print(json.dumps({"ready": True, "detail": w.detail}), flush=True)
    except Exception as exc:    # report why this provider cannot run, then stop
        print(json.dumps({"ready": False, "detail": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    for line in sys.stdin:
        job = json.loads(line)
        print(json.dumps(w.time_gemm(*job["gemm"], job["threads"])), flush=True)


# ---------------------------------------------------------------------------- orchestrator
def _spawn(name):
    env = dict(os.environ)
    for key, value in PROVIDERS[name][0].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    hello = json.loads(proc.stdout.readline())
    return proc, hello


def measure(rounds=3, pause=0.15, providers=None, progress=None):
    """Every provider × thread count × GEMM of :data:`WORKLOADS`, interleaved job by job.

    Returns ``{"providers": {name: detail}, "results": [row, ...]}``; a row has the workload,
    the GEMM, the provider, the thread count, ``us`` (median over rounds), ``us_all``,
    ``cpu_us`` (process CPU time per call, median over rounds), ``err`` and for XLA ``us_call``
    (median whole-call time, dispatch included).
    """
    names = providers or list(PROVIDERS)
    workers, details = {}, {}
    for name in names:
        proc, hello = _spawn(name)
        details[name] = hello["detail"]
        if hello["ready"]:
            workers[name] = proc
        else:
            proc.wait()
    jobs = [(sizes, batch, g, name, t) for sizes, batch in WORKLOADS
            for g in step_gemms(sizes, batch) for name in workers for t in PROVIDERS[name][1]]
    times = {i: [] for i in range(len(jobs))}
    cpus = {i: [] for i in range(len(jobs))}
    calls = {i: [] for i in range(len(jobs))}
    errs = {}
    for r in range(rounds):
        for i, (sizes, batch, g, name, t) in enumerate(jobs):
            proc = workers[name]
            proc.stdin.write(json.dumps({"gemm": list(g[1:]), "threads": t}) + "\n")
            proc.stdin.flush()
            res = json.loads(proc.stdout.readline())
            times[i].append(res["us"])
            cpus[i].append(res["cpu_us"])
            if "us_call" in res:
                calls[i].append(res["us_call"])
            errs[i] = max(errs.get(i, 0.0), res["err"])
            time.sleep(pause)
        if progress:
            progress(r + 1, rounds)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    results = []
    for i, (sizes, batch, g, name, t) in enumerate(jobs):
        role, m, n, k, ta, tb = g
        results.append({"sizes": "-".join(map(str, sizes)), "batch": batch, "gemm": role,
                        "m": m, "n": n, "k": k, "trans_a": ta, "trans_b": tb,
                        "provider": name, "threads": t, "us": float(np.median(times[i])),
                        "us_all": times[i], "cpu_us": float(np.median(cpus[i])),
                        "err": errs[i],
                        **({"us_call": float(np.median(calls[i]))} if calls[i] else {})})
    return {"providers": details, "results": results}


def markdown(report, metric="us", threads=None) -> str:
    """Per GEMM: µs per call of every provider (GFLOP/s in brackets), the fastest and its margin
    over the best OpenBLAS, and BLIS against OpenBLAS on one thread; then the five GEMMs' sum.

    ``metric``: "us" (wall time) or "cpu_us" (process CPU time); ``threads``: only the columns
    that ran that many threads (default: all)."""
    rows = [dict(r, us=r[metric]) for r in report["results"]
            if threads is None or r["threads"] == threads]
    cols = list(dict.fromkeys((r["provider"], r["threads"]) for r in rows))
    label = {c: f"{c[0]} {c[1]}t" for c in cols}
    what = "wall time" if metric == "us" else "process CPU time"
    out = [f"µs per call ({what}; GFLOP/s in brackets; XLA: the jitted call minus an empty "
           "jitted call):", ""]
    head = ("| sizes | batch | GEMM | m×n×k | " + " | ".join(label[c] for c in cols)
            + " | fastest | best OpenBLAS ÷ fastest | OpenBLAS 1t ÷ BLIS 1t |")
    out += [head, "|" + "---|" * (7 + len(cols))]
    keys = list(dict.fromkeys((r["sizes"], r["batch"], r["gemm"]) for r in rows))
    by = {(r["sizes"], r["batch"], r["gemm"], r["provider"], r["threads"]): r for r in rows}
    sums = {}

    def best_of(key, pred):
        got = [by[key + c] for c in cols if pred(c) and key + c in by]
        return min(got, key=lambda r: r["us"]) if got else None

    for key in keys:
        cells = []
        for c in cols:
            r = by.get(key + c)
            if r is None:
                cells.append("—")
                continue
            gf = 2 * r["m"] * r["n"] * r["k"] / r["us"] / 1e3
            cells.append(f"{r['us']:.1f} ({gf:.0f})")
            sums[(key[0], key[1], c)] = sums.get((key[0], key[1], c), 0.0) + r["us"]
        best = best_of(key, lambda c: True)
        ob = best_of(key, lambda c: c[0].startswith("openblas"))
        ob1 = best_of(key, lambda c: c[0].startswith("openblas") and c[1] == 1)
        bl1 = best_of(key, lambda c: c[0].startswith("blis") and c[1] == 1)
        r0 = by[key + cols[0]]
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {r0['m']}×{r0['n']}×{r0['k']} | "
                   + " | ".join(cells) + f" | {best['provider']} {best['threads']}t"
                   + f" | {_ratio(ob, best)} | {_ratio(ob1, bl1)}"
                   + (f" ({bl1['provider']})" if bl1 else "") + " |")
    out += ["", f"Sum of the five GEMMs of a step, µs ({what}):", "",
            "| sizes | batch | " + " | ".join(label[c] for c in cols) + " |",
            "|" + "---|" * (2 + len(cols))]
    for sizes, batch in dict.fromkeys((k[0], k[1]) for k in keys):
        out.append(f"| {sizes} | {batch} | " + " | ".join(
            f"{sums[(sizes, batch, c)]:.0f}" if (sizes, batch, c) in sums else "—" for c in cols)
            + " |")
    return "\n".join(out)


def _ratio(slow, fast):
    return "—" if slow is None or fast is None else f"{slow['us'] / fast['us']:.2f}×"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--providers", default=None, help="comma-separated subset of "
                   + ", ".join(PROVIDERS))
    p.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    names = args.providers.split(",") if args.providers else None
    unknown = [n for n in names or [] if n not in PROVIDERS]
    if unknown:
        p.error(f"unknown provider(s) {', '.join(unknown)}; choose from {', '.join(PROVIDERS)}")
    report = measure(args.rounds, providers=names,
                     progress=lambda r, n: print(f"round {r}/{n} done", file=sys.stderr,
                                                 flush=True))
    from bpgpu.sysinfo import machine_record
    report["machine"] = machine_record()
    print("Providers:\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in report["providers"].items()))
    print("\n" + markdown(report))
    print("\nOne thread, by process CPU time (steadier than wall time on a busy machine):\n")
    print(markdown(report, "cpu_us", threads=1))
    worst = max(r["err"] for r in report["results"])
    print(f"\nLargest error of any provider against a float64 product: {worst:.1e} "
          "(relative to the largest entry).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
