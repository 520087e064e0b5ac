"""Run benchmark cases: samples/s, µs per step, GFLOP/s against the measured GEMM ceiling, the
GEMM/other time split, steady-state allocations, and the ratios against PyTorch and JAX on
identical work.

Method (bench/NOTES.md): one warm-up epoch (numba compile, CUDA kernel compile, context creation,
BLAS thread start), then ``repeats`` timed epochs; each epoch's time ends with a device
synchronisation. The split and allocation figures come from one extra, instrumented epoch so the
timers never perturb the headline numbers: ``gemm_time_fraction`` is the seconds spent in the
backend's GEMMs in that epoch over the timed epochs' median (so for a compiled numba epoch, which
runs the same BLAS calls, ``1 - gemm_time_fraction`` is its time outside GEMMs), and
``compiled_epoch`` says whether the timed epochs ran as one compiled call. That estimate is only
as good as the machine is steady between the two: a value of 1 (capped) means the instrumented
GEMMs took as long as the whole timed epoch, and the table shows no figure for it.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from ..backends import get_backend
from ..mlp import MLP
from .jax_ref import FORMS as JAX_FORMS
from .jax_ref import JaxTrainer, jax_status, jax_unsupported
from .timing import GemmTimer
from .torch_ref import TorchTrainer, torch_status
from .workload import gemm_flops, step_bytes, step_flops

__all__ = ["BenchCase", "run_case", "run_matrix", "gemm_ceiling", "time_to_accuracy",
           "TTA_RECIPE"]

#: The time-to-accuracy recipe: the fastest found on the 2-core CPU (bench/NOTES.md).
TTA_RECIPE = dict(sizes=[784, 256, 10], activation="relu", init="he", optimizer="momentum",
                  lr=0.05, momentum=0.9, batch=128)


@dataclass(frozen=True)
class BenchCase:
    """One configuration: backend, layer sizes, batch size, dtype."""
    backend: str
    sizes: tuple
    batch: int
    dtype: str = "float32"

    @property
    def arch(self) -> str:
        return "-".join(map(str, self.sizes))


def gemm_ceiling(backend_name, dtype="float32", n=2048, repeats=5) -> float:
    """Measured GFLOP/s of a large square GEMM on the backend's device, all threads it would use
    for a large batch (the ceiling the training step is compared with)."""
    be = get_backend(backend_name)
    rng = np.random.default_rng(0)
    a = be.asarray(rng.standard_normal((n, n)), dtype=dtype)
    b = be.asarray(rng.standard_normal((n, n)), dtype=dtype)
    out = be.empty((n, n), np.dtype(dtype))
    times = []
    with be.compute_threads(1 << 30):
        for i in range(repeats + 1):
            be.synchronize()
            t0 = time.perf_counter()
            be.gemm(a, b, out)
            be.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    return gemm_flops(n, n, n) / np.median(times) / 1e9


def _instrumented_epoch(net, X, y, batch):
    """One epoch with the model's ops sent to a :class:`~bpgpu.bench.timing.GemmTimer` and
    allocations traced: (seconds inside gemm, seconds of the epoch, peak traced bytes). The
    timer has no compiled epoch, so the epoch runs step by step: the GEMM seconds are those of
    the same BLAS calls either way."""
    timer = GemmTimer(net.backend)
    with net.redirected(timer):
        net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False)  # workspaces exist
        timer.seconds = 0.0
        tracemalloc.start()
        t0 = time.perf_counter()
        net.fit(X, y, epochs=1, batch_size=batch, lr=0.1, train_metrics=False)
        total = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return timer.seconds, total, peak


def _compiled_epochs() -> int:
    """Epochs run compiled so far in this process (numba's compiled epoch; 0 without numba)."""
    ne = sys.modules.get("bpgpu.backends.numba_epoch")
    return 0 if ne is None else ne.STATS["compiled_epochs"]


def _threads(be, batch):
    plan = be.thread_plan(batch)
    info = {"blas_threads": plan["blas_threads"]} if "blas_threads" in plan else {}
    if "kernel_threads" in plan:
        info["numba_threads"] = plan["kernel_threads"]
    return info


def _launch_counts(be, counted=None, pause=None):
    """Launches (kernels + cuBLAS calls, replayed graph nodes included) and host calls of a
    backend that counts them (cupy), summed over our timed epochs only: ``pause=True`` after one
    of ours adds what it did, ``pause=False`` after the peers' epochs skips what they did (they
    may share the backend's counters). None for a backend that does not count."""
    if not hasattr(be, "_launches") or not hasattr(be, "_host_calls"):
        return None
    now = {"launches": sum(be._launches.values()), "host_calls": be._host_calls}
    if counted is None:
        return {"launches": 0, "host_calls": 0, "launches_mark": now["launches"],
                "host_calls_mark": now["host_calls"]}
    out = dict(counted)
    if pause:
        out["launches"] += now["launches"] - counted["launches_mark"]
        out["host_calls"] += now["host_calls"] - counted["host_calls_mark"]
    out["launches_mark"], out["host_calls_mark"] = now["launches"], now["host_calls"]
    return out


def _peer_stats(prefix, n, peer_times, our_times):
    """Row fields of one interleaved peer: its samples/s (median, min, max) and ``vs_<prefix>``,
    the median of the per-round ratios (peer time / our time: how many times faster we are)."""
    sps = n / np.array(peer_times)
    return {f"{prefix}_samples_per_s": float(np.median(sps)),
            f"{prefix}_samples_per_s_min": float(sps.min()),
            f"{prefix}_samples_per_s_max": float(sps.max()),
            f"vs_{prefix}": float(np.median(np.array(peer_times) / np.array(our_times)))}


def _peers(case, X, y, vs_torch, vs_backend, vs_jax):
    """The peers a case interleaves with, warmed up: ``{prefix: one timed epoch -> seconds}``
    in the order they run, and the row fields that describe them (or why one is missing)."""
    peers, extra = {}, {}

    def fresh():           # bpgpu's weights and generator, as this case's model starts
        return MLP(case.sizes, dtype=case.dtype, backend="numpy", seed=0)
    if vs_torch:
        torch, why = torch_status()
        if torch is None:
            extra["torch_missing"] = why
        else:
            trainer = TorchTrainer(fresh(), device="cuda" if case.backend == "cupy" else "cpu")
            trainer.fit(X, y, epochs=1, batch_size=case.batch)                  # warm-up
            peers["torch"] = lambda: trainer.fit(X, y, epochs=1, batch_size=case.batch)[0]
            extra.update(torch_threads=trainer.torch.get_num_threads(),
                         torch_device=trainer.device.type)
            if case.backend == "cupy":             # the whole step as one torch.cuda graph
                graphed = TorchTrainer(fresh(), device="cuda", graph=True)
                graphed.fit(X, y, epochs=1, batch_size=case.batch)          # warm-up, capture
                peers["torch_graph"] = lambda: graphed.fit(X, y, epochs=1,
                                                           batch_size=case.batch)[0]
    if vs_backend and vs_backend != case.backend:
        other = MLP(case.sizes, dtype=case.dtype, backend=vs_backend, seed=0)
        other.fit(X, y, epochs=1, batch_size=case.batch, lr=0.1, train_metrics=False)  # warm-up
        peers[vs_backend] = lambda: other.fit(X, y, epochs=1, batch_size=case.batch, lr=0.1,
                                              train_metrics=False).time[0]
    if vs_jax:
        jax_mod, why = jax_status()
        why = why if jax_mod is None else jax_unsupported(case.backend, case.dtype)
        if why is not None:
            extra["jax_missing"] = why
        for form in (JAX_FORMS if why is None else ()):
            device = "gpu" if case.backend == "cupy" else "cpu"
            peer = JaxTrainer(fresh(), form, device=device)
            peer.fit(X, y, epochs=1, batch_size=case.batch)   # warm-up: jit compile
            peers[f"jax_{form}"] = (lambda p: lambda: p.fit(X, y, epochs=1,
                                                            batch_size=case.batch)[0])(peer)
            extra.update(jax_threads=peer.threads, jax_device=peer.device.platform)
    return peers, extra


def _row(case, n, times, compiled, ceiling):
    """A row's own fields: throughput with its spread, µs per step, GFLOP/s, work, threads."""
    steps = -(-n // case.batch)
    sps = n / times
    flops = step_flops(case.sizes, case.batch) * (n // case.batch) + \
        step_flops(case.sizes, n % case.batch)
    row = {"backend": case.backend, "sizes": case.arch, "batch": case.batch,
           "dtype": case.dtype, "samples": n, "repeats": len(times),
           "samples_per_s": float(np.median(sps)), "samples_per_s_min": float(sps.min()),
           "samples_per_s_max": float(sps.max()),
           "us_per_step": float(np.median(times) / steps * 1e6),
           "gflops": float(flops / np.median(times) / 1e9),
           "step_flops": step_flops(case.sizes, case.batch),
           "step_bytes": step_bytes(case.sizes, case.batch, np.dtype(case.dtype).itemsize),
           "compiled_epoch": compiled}
    if ceiling:
        row["gemm_ceiling_gflops"] = ceiling
        row["fraction_of_ceiling"] = row["gflops"] / ceiling
    return row


def run_case(case, X, y, repeats=3, vs_torch=False, ceiling=None, split=True, vs_backend=None,
             vs_jax=False):
    """Measure one case; return a JSON-ready row (see the module docstring for the method).

    With ``vs_torch`` the two sides alternate epoch by epoch (ours, torch, ours, torch, ...), and
    the ratio is the median of the per-pair ratios: slow drift of the machine cancels out.
    ``vs_backend`` (another bpgpu backend's name) joins the alternation the same way and gives
    ``vs_<name>``: how many times faster this case's backend is than that one. ``vs_jax`` adds
    JAX on the CPU in both of its forms (:mod:`bpgpu.bench.jax_ref`), each one more epoch per
    round: ``vs_jax_scan`` (the whole epoch one jitted ``lax.scan``) and ``vs_jax_step`` (the
    jitted step from a Python loop); a case JAX cannot run (GPU backend, float64) gets
    ``jax_missing`` with the reason.
    """
    net = MLP(case.sizes, dtype=case.dtype, backend=case.backend, seed=0)
    n = X.shape[0]
    peers, extra = _peers(case, X, y, vs_torch, vs_backend, vs_jax)
    net.fit(X, y, epochs=1, batch_size=case.batch, lr=0.1, train_metrics=False)  # warm-up
    ours, theirs = [], {prefix: [] for prefix in peers}
    compiled_before = _compiled_epochs()
    launches = _launch_counts(net.backend)
    for _ in range(repeats):
        ours.append(net.fit(X, y, epochs=1, batch_size=case.batch, lr=0.1,
                            train_metrics=False).time[0])
        launches = _launch_counts(net.backend, launches, pause=True)
        for prefix, epoch in peers.items():
            theirs[prefix].append(epoch())
        launches = _launch_counts(net.backend, launches, pause=False)
    compiled = _compiled_epochs() - compiled_before == repeats
    times = np.array(ours)
    row = _row(case, n, times, compiled, ceiling)
    row.update(_threads(net.backend, case.batch))
    if split:
        # the GEMMs' seconds in an instrumented epoch over the timed epochs' median: for a
        # compiled epoch (which the timer would bypass) the rest is its time outside GEMMs
        gemm_seconds, _, peak = _instrumented_epoch(net, X, y, case.batch)
        row["gemm_time_fraction"] = min(1.0, gemm_seconds / float(np.median(times)))
        row["host_alloc_peak_bytes_per_epoch"] = int(peak)
    row["resident_bytes"] = net.resident_bytes()
    if launches is not None:
        steps = repeats * -(-n // case.batch)
        row["launches_per_step"] = launches["launches"] / steps
        row["host_calls_per_step"] = launches["host_calls"] / steps
    if net.backend.name == "cupy":
        row["device_pool_bytes"] = int(net.backend.xp.get_default_memory_pool().total_bytes())
    for prefix, peer_times in theirs.items():
        row.update(_peer_stats(prefix, n, peer_times, times))
    row.update(extra)
    return row


def run_matrix(backends, sizes_list, batches, dtype, X, y, repeats=3, vs_torch=False,
               progress=None, vs_backend=None, vs_jax=False):
    """Every backend × sizes × batch; ceilings measured once per (device, dtype) in the run.
    ``vs_torch``, ``vs_backend`` and ``vs_jax`` as in :func:`run_case`."""
    ceilings, rows = {}, []
    for backend in backends:
        device = "gpu" if backend == "cupy" else "cpu"
        if (device, dtype) not in ceilings:
            ceilings[(device, dtype)] = gemm_ceiling(backend, dtype)
        for sizes in sizes_list:
            for batch in batches:
                case = BenchCase(backend, tuple(sizes), batch, dtype)
                row = run_case(case, X, y, repeats, vs_torch, ceilings[(device, dtype)],
                               vs_backend=vs_backend, vs_jax=vs_jax)
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def time_to_accuracy(backend, recipe, X, y, Xt, yt, target=0.98, max_epochs=30, torch=False):
    """Wall seconds from data in memory to ``target`` test accuracy (evaluated after each epoch,
    evaluation included). ``recipe``: sizes, activation, init, optimizer, lr, momentum, batch."""
    net = MLP(recipe["sizes"], activation=recipe["activation"], init=recipe["init"],
              backend=backend if not torch else "numpy", seed=recipe.get("seed", 0))
    if torch:
        trainer = TorchTrainer(net, device="cuda" if backend == "cupy" else "cpu")
        t0 = time.perf_counter()
        for epoch in range(1, max_epochs + 1):
            trainer.fit(X, y, epochs=1, batch_size=recipe["batch"], lr=recipe["lr"],
                        momentum=recipe.get("momentum", 0.0))
            acc = trainer.evaluate(Xt, yt)
            if acc >= target:
                break
        return {"backend": f"torch-{'cuda' if backend == 'cupy' else 'cpu'}", "epochs": epoch,
                "accuracy": acc, "seconds": time.perf_counter() - t0, "reached": acc >= target}
    # warm-up (compile kernels, create contexts) on a tiny slice, then start the clock
    warm = MLP(recipe["sizes"], activation=recipe["activation"], backend=backend, seed=1)
    warm.fit(X[:recipe["batch"] * 4], y[:recipe["batch"] * 4], epochs=1,
             batch_size=recipe["batch"], optimizer=recipe["optimizer"], lr=recipe["lr"])
    state = {}

    def reached(history):
        state["acc"] = net.evaluate(Xt, yt)["accuracy"]
        return state["acc"] >= target

    t0 = time.perf_counter()
    hist = net.fit(X, y, epochs=max_epochs, batch_size=recipe["batch"],
                   optimizer=recipe["optimizer"], lr=recipe["lr"],
                   momentum=recipe.get("momentum", 0.9), train_metrics=False, on_epoch=reached)
    seconds = time.perf_counter() - t0
    return {"backend": backend, "epochs": len(hist.epoch), "accuracy": state.get("acc"),
            "seconds": seconds, "reached": state.get("acc", 0) >= target}
