"""Rows of data that need not be in memory: memory-mapped files, HDF5/zarr datasets, row views.

``fit``, ``evaluate`` and ``predict`` take any array-like with ``shape``, ``dtype`` and row
indexing -- an ``np.memmap``, an ``.npy`` opened with ``mmap_mode="r"``, an h5py or zarr dataset
-- without reading it whole: the rows a step needs are read when it needs them
(:func:`read_rows`), and a validation split is a :class:`RowView` (a list of row numbers), not a
copy. A file-backed ``np.memmap`` is read with ``os.preadv`` into the caller's buffer, consecutive
rows in one call and the batch's rows in ascending order (so a file is read forwards): the pages
go through the page cache but are never mapped into the process, so its resident memory stays
that of its buffers however large the file is. Other array-likes are indexed with the rows in
ascending order (what h5py requires) and the result reordered.

:func:`in_memory` tells the two kinds apart: a plain ``np.ndarray`` (not a memmap) keeps the
in-memory path -- uploaded to the device once, an epoch compiled into one call where the backend
can -- and everything else streams.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

__all__ = ["in_memory", "RowView", "read_rows", "row_count", "as_rows"]


def in_memory(X) -> bool:
    """True for a plain numpy array in memory (not a memmap, not a view of one)."""
    if not isinstance(X, np.ndarray) or isinstance(X, np.memmap):
        return False
    base = X.base
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return False
        base = getattr(base, "base", None)
    return True


def row_count(X) -> int:
    return int(X.shape[0])


class RowView:
    """Rows ``rows`` of ``source`` (an array-like), seen as an array-like of their own: shape,
    dtype, ``len``, and ``view[i]``, ``view[a:b]``, ``view[index_array]`` read from the source.

    Parameters
    ----------
    source : array-like, shape (N, ...)
    rows : int array, shape (M,)
        Row numbers of ``source``, in the view's order.
    """

    def __init__(self, source, rows):
        if isinstance(source, RowView):            # a view of a view: one level of rows
            rows, source = source.rows[np.asarray(rows)], source.source
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows),) + tuple(source.shape[1:])
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None),) + key[1:]]
        if isinstance(key, (int, np.integer)):
            return read_rows(self.source, self.rows[[key]])[0]
        return read_rows(self.source, self.rows[key])

    def __array__(self, dtype=None, copy=None):
        out = read_rows(self.source, self.rows)
        return out if dtype is None else out.astype(dtype)


def as_rows(X):
    """``X`` as something :func:`read_rows` reads: an in-memory array as it is (made an
    ndarray), anything with ``shape`` and ``dtype`` as it is (a memmap, h5py, zarr, RowView)."""
    if hasattr(X, "shape") and hasattr(X, "dtype") and not in_memory(X) \
            and not isinstance(X, np.ndarray):
        return X
    if isinstance(X, np.memmap):
        return X
    return np.asarray(X)


def _file_spans(X):
    """``(path, byte position of row 0, bytes per row)`` of a C-contiguous file-backed
    memmap whose rows lie one after another in its file, else None."""
    if not isinstance(X, np.memmap) or X.filename is None or not X.flags.c_contiguous:
        return None
    root = X
    while isinstance(root.base, np.memmap):
        root = root.base
    if not isinstance(root.base, mmap.mmap) or root.offset is None:
        return None
    start = X.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    row_bytes = int(np.prod(X.shape[1:], dtype=np.int64)) * X.itemsize
    return X.filename, int(root.offset) + start, row_bytes


def read_rows(X, rows, out=None):
    """``X[rows]`` for an array-like ``X`` and an int array ``rows`` (any order, repeats
    allowed), read without loading ``X`` whole; into ``out`` (shape (len(rows), ...), X's dtype)
    when given.

    Returns
    -------
    ndarray, shape (len(rows),) + X.shape[1:], X's dtype
    """
    rows = np.asarray(rows, dtype=np.int64)
    shape = (len(rows),) + tuple(X.shape[1:])
    if out is None:
        out = np.empty(shape, np.dtype(X.dtype))
    if isinstance(X, RowView):
        return read_rows(X.source, X.rows[rows], out)
    if in_memory(X):
        np.take(X, rows, axis=0, out=out)
        return out
    n = X.shape[0]
    if rows.size and (rows.min() < -n or rows.max() >= n):
        bad = rows[(rows < -n) | (rows >= n)][0]
        raise IndexError(f"row index {int(bad)} is out of bounds for {n} rows")
    rows = np.where(rows < 0, rows + n, rows)
    spans = _file_spans(X)
    if spans is not None:
        _pread_rows(*spans, rows, out)
    else:                                   # ascending, distinct indices: what h5py requires
        unique, inverse = np.unique(rows, return_inverse=True)
        out[...] = np.asarray(X[unique])[inverse]
    return out


def _pread_rows(path, origin, row_bytes, rows, out):
    """``out[k] = row rows[k]`` of the file: the distinct rows read in ascending order into one
    block, each run of consecutive rows with one ``preadv``, then put in ``out``'s order."""
    unique, inverse = np.unique(rows, return_inverse=True)
    block = np.empty((len(unique), row_bytes), np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        i = 0
        while i < len(unique):
            j = i + 1
            while j < len(unique) and unique[j] == unique[j - 1] + 1:
                j += 1
            _read_exactly(fd, path, block[i:j], origin + int(unique[i]) * row_bytes)
            i = j
    finally:
        os.close(fd)
    flat = out.reshape(len(out), -1).view(np.uint8).reshape(len(out), row_bytes)
    np.take(block, inverse, axis=0, out=flat)


def _read_exactly(fd, path, buffer, position):
    """Fill ``buffer`` from the file at ``position`` (reading again after a short read)."""
    view = memoryview(buffer.reshape(-1))
    while len(view):
        n = os.preadv(fd, [view], position)
        if n == 0:
            raise OSError(f"{path}: the file ends at byte {position}, before the rows it should "
                          "hold: is it truncated?")
        view, position = view[n:], position + n
