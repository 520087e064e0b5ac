"""The NumPy backend: the reference ops of :class:`Backend` on the CPU, with BLAS threads chosen
deliberately.

On a small machine the GEMMs of an MLP step are small and a multi-threaded BLAS spends more on
waking threads than it gains: :meth:`compute_threads` runs BLAS on one thread up to
:data:`SINGLE_THREAD_MAX_BATCH` rows and on every core above (the policy is
:mod:`bpgpu.backends.threads`, measured in bench/NOTES.md).
"""

from __future__ import annotations

import contextlib

import numpy as np

from .base import Backend
from .threads import blas_threads, blas_threads_for

__all__ = ["NumpyBackend", "SINGLE_THREAD_MAX_BATCH"]

#: At or below this batch size one BLAS thread is faster than several (bench/NOTES.md steps 4, 15).
SINGLE_THREAD_MAX_BATCH = 32


class NumpyBackend(Backend):
    """NumPy on the CPU; ops from :class:`Backend`, BLAS threads set per batch size.

    Parameters
    ----------
    blas_threads : "auto", int or None
        BLAS threads in training: "auto" chooses by batch size, a number fixes it, None leaves
        BLAS as it is.
    """

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
        return blas_threads_for(self.blas_threads, batch_size, self.single_thread_max_batch)

    def thread_plan(self, batch_size: int) -> dict:
        n = self._blas_threads_for(batch_size)
        return {} if n is None else {"blas_threads": n}

    @contextlib.contextmanager
    def compute_threads(self, batch_size: int):
        """Context in which BLAS uses :meth:`thread_plan` ``(batch_size)`` threads.

        Needs threadpoolctl (in the ``dev``/``cli`` extras); without it, threads are left alone.
        """
        with blas_threads(self._blas_threads_for(batch_size)) as n:
            yield n
