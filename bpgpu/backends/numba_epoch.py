"""A whole training epoch as ONE call into Numba-compiled code, derived from ``MLP.train_step``.

The numba backend's steps are fused kernels and BLAS calls, but each is dispatched from Python:
at batch 64 that dispatch is a sizeable part of the step (bench/NOTES.md). This module removes it
without writing the model's math a second time. The step stays defined once, in
:meth:`bpgpu.network.Network.train_step`; what is compiled is the sequence of backend ops that
method issues, in four parts, each its own module:

1. **Record** the ops of three full batches and up to two shorter ones, and **generalise** them
   (:mod:`bpgpu.backends.recording`): every integer argument ``c0 + c1 * step + c2 * rows``.
2. **Lower** each op to a call of the function of the same name in ``kernels/epoch.py``, after
   the numba backend's own fast-path check (:mod:`bpgpu.backends.epoch_lowering`).
3. **Generate** the ``@njit`` epoch loop's source (:mod:`bpgpu.backends.epoch_source`).
4. **Compile** once per source, kept in memory and in a disk cache
   (:mod:`bpgpu.backends.numba_cache`), so a new process loads it instead of compiling.

:class:`CompiledEpoch` (this module) runs it: in slices, so that Ctrl-C reaches a long epoch, and
advancing the model's and optimizer's counters by the steps it ran.

The results are bit-identical to the steps run one by one (same kernels, same BLAS calls, in the
same order; tests/test_compiled_epoch.py). The per-step path stays the reference and the
fallback: the runner returns False, and keeps the reason in :attr:`CompiledEpoch.reason`, where
numpy's CBLAS was not found (kernels/blas.py), a ``gradient_hook`` is given (data-parallel
training calls Python between backward and update), the step issues an op or an argument the
generator does not know (the elastic field of augmentation: its smoothing runs as GEMMs on host
arrays), or numpy's matmul would take its dot path (one row times one column).

When: ``BPGPU_COMPILED_EPOCH=0`` in the environment turns compiled epochs off, ``=1`` compiles
every epoch; by default epochs of at least :data:`MIN_BATCHES` batches are compiled (a new
source costs seconds to compile, once per machine: MNIST-sized work) and smaller ones use a
compiled form only when it is cached already.
"""

from __future__ import annotations

import time

import numpy as np

from .epoch_lowering import lower
from .epoch_source import EpochSource
from .epoch_switch import EpochSwitch
from .numba_cache import epoch_dispatcher
from .recording import Unsupported, generalise, record, rows_to_record
from .threads import PARALLEL_MIN, SERIAL_MAX_CORES, cores

__all__ = ["CompiledEpoch", "ENV", "MIN_BATCHES", "SLICE_SECONDS", "mode", "override",
           "enabled", "STATS", "Unsupported"]

#: Environment variable: "0" turns compiled epochs off (every epoch runs step by step).
ENV = "BPGPU_COMPILED_EPOCH"
#: What the compiled epochs of this process did (for benchmarks and tests): epochs run compiled,
#: epochs left to the per-step path, sources compiled now, sources loaded from Numba's disk cache,
#: and the seconds those took.
STATS = {"compiled_epochs": 0, "fallback_epochs": 0, "abandoned_epochs": 0, "compiled": 0,
         "cache_loads": 0, "compile_seconds": 0.0}
#: Seconds of training per compiled call when the caller asks between calls whether to stop
#: (Ctrl-C): the first slice runs this many batches, later ones are sized from its time.
SLICE_SECONDS = 0.1
_FIRST_SLICE = 4

#: In the default mode an epoch of fewer batches runs step by step unless its compiled form is
#: at hand already (in memory or in the disk cache): compiling a new one costs seconds, more
#: than such a fit's steps cost in Python.
MIN_BATCHES = 50

_READY: set = set()           # (dispatcher, argument types) compiled or loaded

#: ``BPGPU_COMPILED_EPOCH``: "0" never compile epochs, "1" always (any epoch size), unset or
#: "auto" compile epochs of at least :data:`MIN_BATCHES` batches, and use compiled forms of
#: smaller ones that are cached already; ``mode()``, ``override(value)`` (a block that ignores
#: the environment: ``bpgpu warmup`` compiles the textbook epochs with it) and ``enabled()``.
SWITCH = EpochSwitch(ENV)
mode, override, enabled = SWITCH.mode, SWITCH.override, SWITCH.enabled


# ------------------------------------------------------------------------------ the runner
class CompiledEpoch:
    """Runs every training step of an epoch -- what ``model.train_step(ws.view(rows), X_dev,
    T_dev, order[start:start + rows], optimizer, **step_options)`` does for each batch -- in one
    call into Numba-compiled code.

    Built by :meth:`NumbaBackend.compiled_epoch`; call it with the epoch's order (device int64
    array, shape (N,)). Returns True when the epoch ran, False when it cannot be compiled (the
    caller then runs the steps itself; :attr:`reason` says why, and later calls return False at
    once).
    """

    def __init__(self, backend, model, ws, X_dev, T_dev, optimizer, step_options):
        self.backend, self.model, self.ws = backend, model, ws
        self.X_dev, self.T_dev, self.optimizer = X_dev, T_dev, optimizer
        self.options = dict(step_options)
        self.n, self.batch = X_dev.shape[0], ws.rows
        self.reason = None
        self._scratch = None

    def __call__(self, order, should_stop=None, progress=None):
        """Run the epoch in the order ``order``; True when it ran, False when it cannot.

        With ``should_stop`` (a callable), the epoch runs in slices of about
        :data:`SLICE_SECONDS` each and ``should_stop()`` is asked after every slice: compiled
        code does not see signals, so this is how Ctrl-C reaches a long epoch. When it answers
        True before the last slice, the epoch is abandoned part way and None is returned: the
        parameters and optimizer state are then mid-epoch and the model's step counters are not
        advanced (the caller goes back to its last completed epoch). ``progress(k)`` is called
        with the number of batches each slice ran.
        """
        if self.reason is None:
            try:
                plan = self._plan()
                args = self._arguments(plan, order)
                small = mode() == "auto" and args[2] < MIN_BATCHES
                fn = epoch_dispatcher(plan["source"], existing_only=small)
                if fn is None:
                    raise Unsupported(f"epochs of fewer than {MIN_BATCHES} batches run step by "
                                      f"step unless compiled already ({ENV}=1 compiles them)")
                self._compile(fn, args)
            except Unsupported as exc:
                self.reason = str(exc)
        if self.reason is not None:
            STATS["fallback_epochs"] += 1
            return False
        n_batches = args[2]
        done, per_call = 0, n_batches if should_stop is None else _FIRST_SLICE
        while done < n_batches:
            upto = min(n_batches, done + per_call)
            t0 = time.perf_counter()
            fn(done, upto, *args)
            took = time.perf_counter() - t0
            if progress is not None:
                progress(upto - done)
            if upto < n_batches and should_stop is not None:
                if should_stop():
                    STATS["abandoned_epochs"] += 1
                    return None
                per_call = max(1, min(n_batches, int((upto - done) * SLICE_SECONDS
                                                     / max(took, 1e-6))))
            done = upto
        for obj, slopes in plan["advance"]:
            obj.set_counters({name: start + slope * n_batches
                              for name, (start, slope) in slopes.items()})
        STATS["compiled_epochs"] += 1
        return True

    # -------------------------------------------------------------------- record ... generate
    def _plan(self):
        recording = record(self.model, self.optimizer, self.ws, self.X_dev, self.T_dev,
                           self.options, rows_to_record(self.batch, self.n))
        src = EpochSource(recording.buffers, cores() > SERIAL_MAX_CORES)
        lower(src, generalise(recording))
        return {"source": src.text(), "buffers": recording.buffers, "fixed": src.fixed,
                "F": src.F, "I": src.I, "U": src.U, "max_cols": src.max_cols,
                "advance": recording.advance}

    # -------------------------------------------------------------------- arguments, compile
    def _arguments(self, plan, order):
        be, dtype = self.backend, self.model.dtype
        blas = be._fused_blas(dtype)
        if blas is None:
            raise Unsupported("numpy's CBLAS was not found or failed its check (kernels/blas.py)")
        if not (isinstance(order, np.ndarray) and order.dtype == np.int64
                and order.shape == (self.n,) and order.flags.c_contiguous):
            raise Unsupported("the epoch's order is not a contiguous int64 array of N rows")
        if self._scratch is None or self._scratch[0].shape[0] < plan["max_cols"]:
            self._scratch = (np.empty(max(plan["max_cols"], max(self.model.sizes)), dtype),
                             np.ones(self.batch, dtype), np.zeros(6, np.uint64),
                             np.zeros(1, np.float64))
        buffers = plan["buffers"]
        actual = {"order": order, "weights": self.options.get("weights")}
        roots = [actual.get(name, arr) if name in actual else arr
                 for name, arr in zip(buffers.names, buffers.arrays)]
        fixed = [roots[b].reshape(-1)[off:off + int(np.prod(shape))].reshape(shape)
                 for b, off, shape in plan["fixed"]]
        n_batches = -(-self.n // self.batch)
        return (self.n, self.batch, n_batches, *roots, *fixed,
                np.array(plan["F"], np.float64), np.array(plan["I"], np.int64),
                np.array(plan["U"], np.uint64), *self._scratch,
                blas[0], blas[1], bool(blas[2]), bool(be._parallel_ok), PARALLEL_MIN)

    @staticmethod
    def _compile(fn, args):
        """Compile ``fn`` for these arguments now (or load it from Numba's cache), timed."""
        import numba
        signature = tuple(numba.typeof(a) for a in (0, 1) + tuple(args))   # j0, j1 first
        if (fn, signature) in _READY:
            return
        hits = sum(fn.stats.cache_hits.values())
        t0 = time.perf_counter()
        fn.compile(signature)
        STATS["compile_seconds"] += time.perf_counter() - t0
        if sum(fn.stats.cache_hits.values()) > hits:
            STATS["cache_loads"] += 1
        else:
            STATS["compiled"] += 1
        _READY.add((fn, signature))
