"""The NumPy backend: the reference ops of :class:`Backend` on the CPU, with BLAS threads chosen
deliberately.

On a small machine the GEMMs of an MLP step are small (784x100 at batch 64 is ~10 MFLOP), and a
multi-threaded BLAS spends more on waking threads than it gains; :meth:`compute_threads` picks one
BLAS thread for small batches and all cores for large ones (measured in bench/NOTES.md).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from .._compat import optional_import
from .base import Backend

__all__ = ["NumpyBackend", "blas_info"]

#: At or below this batch size one BLAS thread is faster than several (bench/NOTES.md steps 4, 15).
SINGLE_THREAD_MAX_BATCH = 32


def blas_info() -> list[dict]:
    """The BLAS libraries numpy uses, with their thread counts (empty without threadpoolctl)."""
    tpc = optional_import("threadpoolctl")
    if tpc is None:
        return []
    return [{"api": i.get("internal_api"), "version": i.get("version"),
             "threads": i.get("num_threads"), "library": os.path.basename(i.get("filepath", ""))}
            for i in tpc.threadpool_info() if i.get("user_api") == "blas"]


class NumpyBackend(Backend):
    """NumPy on the CPU; ops from :class:`Backend`, BLAS threads set per batch size."""

    name = "numpy"
    xp = np
    #: at or below this batch size BLAS runs one thread (measured per backend, bench/NOTES.md)
    single_thread_max_batch = SINGLE_THREAD_MAX_BATCH

    def __init__(self, blas_threads: int | str | None = "auto"):
        super().__init__()
        self.blas_threads = blas_threads

    def _row_max(self, z, out):
        # ufunc.reduce skips np.max's dispatch layers: ~6 us instead of ~8 us at (64, 10)
        return np.maximum.reduce(z, axis=1, keepdims=True, out=out)

    def _blas_threads_for(self, batch_size: int) -> int | None:
        """BLAS threads to use for a step of ``batch_size`` rows (None: leave as it is)."""
        if self.blas_threads in (None, "none"):
            return None
        if self.blas_threads == "auto":
            return 1 if batch_size <= self.single_thread_max_batch else (os.cpu_count() or 1)
        return int(self.blas_threads)

    def thread_plan(self, batch_size: int) -> dict:
        n = self._blas_threads_for(batch_size)
        return {} if n is None else {"blas_threads": n}

    @contextlib.contextmanager
    def compute_threads(self, batch_size: int):
        """Context in which BLAS uses :meth:`thread_plan` ``(batch_size)`` threads.

        Needs threadpoolctl (in the ``dev``/``cpu`` extras); without it, threads are left alone.
        """
        n = self._blas_threads_for(batch_size)
        tpc = optional_import("threadpoolctl") if n is not None else None
        if tpc is None:
            yield None
            return
        with tpc.threadpool_limits(limits=n, user_api="blas"):
            yield n
