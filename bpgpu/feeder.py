"""Feeding a training run from data that stays on disk: each batch's rows read, and copied to
the device, while the step before it runs.

When ``fit`` is given an array-like that is not in memory (:func:`bpgpu.rows.in_memory`), the
data is never uploaded whole: for every step the :class:`BatchFeeder` reads the batch's rows
(:func:`bpgpu.rows.read_rows`: ascending, consecutive rows in one read; uint8 stays uint8) and
their targets into one of two host staging buffers, queues their upload into one of two device
staging buffers, and the step gathers from those with the rows ``0 .. b-1`` -- the same values,
so the same results as the in-memory path, bit for bit. While a step computes, a worker thread
reads the next batch into the other host buffer (file reads release the GIL).

On cupy the host buffers are page-locked and the uploads run on a second stream
(:meth:`bpgpu.backends.base.Backend.upload_async`), so batch k+1's copy overlaps step k on the
device. Three orderings keep that exact: a copy into a device buffer waits for the step that last
read it (an event marked after that step was queued), the step waits for its copy, and the
reader waits for a host buffer's last copy before writing into it. Memory stays the parameters,
the workspaces, four batches of rows and the epoch's permutation, whatever the data's size.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import DataError
from .rows import read_rows

__all__ = ["BatchFeeder"]


class BatchFeeder:
    """Batches of out-of-core rows, staged on the device, one read ahead.

    Parameters
    ----------
    model : Network
    X : array-like, shape (N, n_0) or (N, H, W)
    y : ndarray, shape (N,) labels or (N, n_out) targets (in memory)
    batch : int
        Most rows a step takes.
    """

    def __init__(self, model, X, y, batch):
        self.model, self.X, self.y = model, X, y
        be = self.be = model.backend
        width = int(np.prod(X.shape[1:]))
        self.raw = np.dtype(X.dtype) == np.uint8
        stage_dtype = np.dtype(np.uint8 if self.raw else model.dtype)
        self.direct = np.dtype(X.dtype) == stage_dtype     # rows read straight into staging
        self.read_buffers = None if self.direct else \
            [np.empty((batch,) + tuple(X.shape[1:]), np.dtype(X.dtype)) for _ in (0, 1)]
        n_out = model.sizes[-1]
        self.host_X = [be.staging_buffer((batch, width), stage_dtype) for _ in (0, 1)]
        self.host_T = [be.staging_buffer((batch, n_out), model.dtype) for _ in (0, 1)]
        self.stage_X = [be.empty((batch, width), stage_dtype) for _ in (0, 1)]
        self.stage_T = [be.empty((batch, n_out), model.dtype) for _ in (0, 1)]
        self.rows = be.asarray(np.arange(batch, dtype=np.int64))
        self.copied = [None, None]         # per host buffer: its last upload's event
        self.released = [None, None]       # per device buffer: the step that last read it
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpgpu-feeder")

    def _read(self, slot, positions):
        """Rows ``positions`` and their targets into host buffer ``slot`` (in the worker
        thread), once that buffer's last upload is done."""
        b = len(positions)
        self.be.wait_host(self.copied[slot])
        X_host = self.host_X[slot][:b]
        if self.direct:
            rows = read_rows(self.X, positions, X_host.reshape((b,) + tuple(self.X.shape[1:])))
        else:
            rows = read_rows(self.X, positions, self.read_buffers[slot][:b])
            np.copyto(X_host, rows.reshape(b, -1), casting="same_kind")
        if not self.raw and not np.all(np.isfinite(rows)):
            raise DataError(f"inputs contain NaN or inf (in rows {int(positions.min())} to "
                            f"{int(positions.max())} of the data)")
        self.host_T[slot][:b] = self.model.targets_from(self.y[positions], b)
        return slot, b

    def batches(self, order_host, spans):
        """For every ``(lo, hi)`` of ``spans`` in turn: ``(X_stage, T_stage, rows)`` -- device
        views of the batch of positions ``order_host[lo:hi]`` and the row indices 0 .. b-1 a
        step gathers them with. The caller queues the batch's step before asking for the
        next."""
        spans = list(spans)
        if not spans:
            return
        be = self.be
        pending = self._pool.submit(self._read, 0, order_host[spans[0][0]:spans[0][1]])
        previous = None
        for k in range(len(spans)):
            slot, b = pending.result()
            if previous is not None:
                self.released[previous] = be.mark()      # the step on that buffer is queued
            X_stage, T_stage = self.stage_X[slot][:b], self.stage_T[slot][:b]
            be.upload_async(self.host_T[slot][:b], T_stage, self.released[slot])
            self.copied[slot] = be.upload_async(self.host_X[slot][:b], X_stage)
            if k + 1 < len(spans):
                lo, hi = spans[k + 1]
                pending = self._pool.submit(self._read, 1 - slot, order_host[lo:hi])
            previous = slot
            yield X_stage, T_stage, self.rows[:b]

    def close(self):
        self._pool.shutdown(wait=True)
