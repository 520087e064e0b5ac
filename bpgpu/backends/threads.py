"""Who runs how many threads on the CPU: BLAS by batch size, and the numba kernels' serial or
parallel variant.

Measured on 2-core machines (bench/NOTES.md steps 4, 8, 10 and 15): the GEMMs of an MLP step are
small (784x100 at batch 64 is ~10 MFLOP), and a multi-threaded BLAS spends more on waking threads
than it gains, so BLAS runs one thread up to a backend's ``single_thread_max_batch`` and all cores
above it. The numba kernels run serially on machines with at most :data:`SERIAL_MAX_CORES`
cores (a thread pool spinning beside BLAS cost more than it saved: GEMMs 5x slower at batch
1024), and elsewhere in parallel above the same batch size, for arrays of at least
:data:`PARALLEL_MIN` elements.
"""

from __future__ import annotations

import contextlib
import os

from .._compat import optional_import

__all__ = ["PARALLEL_MIN", "SERIAL_MAX_CORES", "blas_info", "blas_threads_for",
           "blas_threads", "kernel_threads_for"]

#: Arrays with at least this many elements use the parallel numba kernels (when threads > 1).
PARALLEL_MIN = 1 << 16
#: On machines with at most this many cores the numba kernels always run serially (measured).
SERIAL_MAX_CORES = 2


def cores() -> int:
    """Logical CPUs of this machine (os.cpu_count)."""
    return os.cpu_count() or 1


def blas_info() -> list[dict]:
    """The BLAS libraries numpy uses, with their thread counts (empty without threadpoolctl)."""
    tpc = optional_import("threadpoolctl")
    if tpc is None:
        return []
    return [{"api": i.get("internal_api"), "version": i.get("version"),
             "threads": i.get("num_threads"), "library": os.path.basename(i.get("filepath", ""))}
            for i in tpc.threadpool_info() if i.get("user_api") == "blas"]


def blas_threads_for(setting, batch_size: int, single_thread_max_batch: int) -> int | None:
    """BLAS threads for a step of ``batch_size`` rows under a backend's ``setting`` ("auto", a
    count, or None/"none": leave BLAS as it is, returning None)."""
    if setting in (None, "none"):
        return None
    if setting == "auto":
        return 1 if batch_size <= single_thread_max_batch else cores()
    return int(setting)


@contextlib.contextmanager
def blas_threads(n):
    """Within the block BLAS uses ``n`` threads (None: as it is). Needs threadpoolctl (in the
    ``dev``/``cli`` extras); without it threads are left alone. Yields the count in force."""
    tpc = optional_import("threadpoolctl") if n is not None else None
    if tpc is None:
        yield None
        return
    with tpc.threadpool_limits(limits=n, user_api="blas"):
        yield n


def kernel_threads_for(batch_size: int, single_thread_max_batch: int, numba) -> int:
    """Numba threads the kernels use at this batch size (1: the serial variants) -- serial at
    small batches and on machines with at most :data:`SERIAL_MAX_CORES` cores."""
    if batch_size <= single_thread_max_batch or cores() <= SERIAL_MAX_CORES:
        return 1
    return numba.get_num_threads()
