"""Feeding a training run from data that stays on disk: each batch's rows read while the step
before it runs.

When ``fit`` is given an array-like that is not in memory (:func:`bpgpu.rows.in_memory`), the
data is never uploaded whole: for every step the :class:`BatchFeeder` reads the batch's rows
(:func:`bpgpu.rows.read_rows`: ascending, consecutive rows in one read; uint8 stays uint8) and
their targets into one of two host buffers, copies them into the device's staging buffers, and
the step gathers from those with the rows ``0 .. b-1`` -- the same values, so the same results
as the in-memory path, bit for bit. While a step computes, a worker thread reads the next
batch into the other host buffer (file reads release the GIL). Targets are built per batch from
the labels, so memory stays the parameters, the workspaces, two batches of rows and the
epoch's permutation, whatever the data's size.
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
        stage_dtype = np.uint8 if self.raw else model.dtype
        self.host = [np.empty((batch,) + tuple(X.shape[1:]), np.dtype(X.dtype)) for _ in (0, 1)]
        self.stage_X = be.empty((batch, width), stage_dtype)
        self.stage_T = be.empty((batch, model.sizes[-1]), model.dtype)
        self.rows = be.asarray(np.arange(batch, dtype=np.int64))
        self.targets = [None, None]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpgpu-feeder")
        self._pending = None

    def _read(self, slot, positions):
        """Rows ``positions`` into host buffer ``slot`` (in the worker thread)."""
        b = len(positions)
        rows = read_rows(self.X, positions, self.host[slot][:b])
        if not self.raw and not np.all(np.isfinite(rows)):
            raise DataError(f"inputs contain NaN or inf (in rows {int(positions.min())} to "
                            f"{int(positions.max())} of the data)")
        self.targets[slot] = self.model.targets_from(self.y[positions], b)
        return slot, b

    def batches(self, order_host, spans):
        """For every ``(lo, hi)`` of ``spans`` in turn: ``(X_stage, T_stage, rows)`` -- device
        views of the batch of positions ``order_host[lo:hi]`` and the row indices 0 .. b-1 a
        step gathers them with."""
        spans = list(spans)
        if not spans:
            return
        pending = self._pool.submit(self._read, 0, order_host[spans[0][0]:spans[0][1]])
        for k in range(len(spans)):
            slot, b = pending.result()
            if k + 1 < len(spans):
                lo, hi = spans[k + 1]
                pending = self._pool.submit(self._read, 1 - slot, order_host[lo:hi])
            X_stage, T_stage = self.stage_X[:b], self.stage_T[:b]
            self.be.upload(self.host[slot][:b].reshape(b, -1), X_stage)
            self.be.upload(self.targets[slot], T_stage)
            yield X_stage, T_stage, self.rows[:b]

    def close(self):
        self._pool.shutdown(wait=True)
