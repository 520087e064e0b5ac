"""What each CPU kernel's launch requires: the fast-path conditions, written once.

A Numba kernel indexes without bounds checks and ignores strides, so a launch is validated as a
whole before it is made. Each function here is the condition of one fast path: the numba
backend calls it before launching the kernel (and otherwise falls back to numpy's reference
op), and the compiled epoch's lowering (:mod:`bpgpu.backends.epoch_lowering`) calls the same
function on every recorded step before it compiles a call to the same kernel -- so a fast path
and its lowering cannot drift apart. :func:`fits_augmented_gather` also serves the cupy backend
(its CUDA kernel takes the same arrays; CuPy reads contiguity and index types its own way).

Plain numpy, no numba: the cupy backend imports this module too.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLOATS", "same_floats", "rows_and_vector", "fits_gather", "fits_augmented_gather",
           "fits_row_weights",
           "fits_dropout_forward", "fits_flat_update", "fits_random_uniform", "fits_rows",
           "fits_blas_call", "numpy_contiguous"]

#: The dtypes every kernel is compiled for.
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def numpy_contiguous(a) -> bool:
    """C-contiguity as numpy reports it."""
    return a.flags.c_contiguous


def same_floats(*arrays) -> bool:
    """One kernel launch can take all these arrays together: one float dtype (float32 or
    float64) for all of them, every one C-contiguous, and all of the first one's shape. A plain
    loop: this runs a dozen times per training step, and a generator costs ~1 us more per call."""
    first = arrays[0]
    dtype, shape = first.dtype, first.shape
    if dtype not in FLOATS:
        return False
    for a in arrays:
        if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
            return False
    return True


def fits_rows(*arrays) -> bool:
    """:func:`same_floats` for a per-row kernel: the arrays are also 2-D."""
    return arrays[0].ndim == 2 and same_floats(*arrays)


def rows_and_vector(z, vector) -> bool:
    """``z`` (B, n) and ``vector`` (n,): one float dtype, both C-contiguous (bias_activation,
    column_sums)."""
    return (z.ndim == 2 and z.dtype in FLOATS and vector.dtype == z.dtype
            and vector.shape == (z.shape[1],) and z.flags.c_contiguous
            and vector.flags.c_contiguous)


def fits_row_weights(weights, a) -> bool:
    """Per-row weights a kernel can take beside ``a`` (B, n): None, or (B,) of a's dtype,
    C-contiguous."""
    return weights is None or (weights.dtype == a.dtype and weights.shape == a.shape[:1]
                               and weights.flags.c_contiguous)


def fits_gather(data, idx, out) -> bool:
    """The row gather (+ scale for uint8 data): ``out`` (B, n) float, ``data`` (N, n) uint8 or
    out's dtype, ``idx`` (B,) of an integer type, ``out`` and ``data`` C-contiguous."""
    scaled = data.dtype == np.uint8
    return (out.dtype in FLOATS and out.ndim == data.ndim == 2 and idx.ndim == 1
            and idx.dtype.kind in "iu" and out.shape == (idx.shape[0], data.shape[1])
            and (scaled or data.dtype == out.dtype) and out.flags.c_contiguous
            and data.flags.c_contiguous)


def _integer_index(idx) -> bool:
    return idx.dtype.kind in "iu"


def fits_augmented_gather(data, idx, out, uniform, field, height, width, translate, *,
                          contiguous=numpy_contiguous, index=_integer_index) -> bool:
    """The augmented gather's arrays fit its kernel (kernels/augment.py, and fused.cu's
    ``gather_augmented``) together: ``out`` (B, height*width) float, ``data`` rows of as many
    pixels (uint8 or out's dtype), ``idx`` (B,) that ``index(idx)`` accepts (any integer type
    by default; the CUDA kernel reads contiguous int64), float32 ``uniform`` (B, 8), ``field``
    None or (B, 2, height, width) of out's dtype, the other arrays ``contiguous``,
    ``translate >= 0``, and images of at least one pixel (the kernels divide by the width)."""
    scaled = data.dtype == np.uint8
    rows = out.shape[0] if out.ndim == 2 else -1
    return (out.dtype in FLOATS and out.ndim == data.ndim == 2 and idx.ndim == 1
            and index(idx) and height >= 1 and width >= 1
            and out.shape == (idx.shape[0], height * width)
            and data.shape[1] == height * width and (scaled or data.dtype == out.dtype)
            and uniform.dtype == np.float32 and uniform.shape == (rows, 8)
            and (field is None or (field.dtype == out.dtype
                                   and field.shape == (rows, 2, height, width)
                                   and contiguous(field)))
            and translate >= 0 and contiguous(out) and contiguous(data) and contiguous(uniform))


def fits_dropout_forward(a, uniform, mask, out) -> bool:
    """Inverted dropout: ``a``, ``mask``, ``out`` one float dtype and shape (2-D), ``uniform``
    float32 of the same shape, all C-contiguous."""
    return (same_floats(a, mask, out) and uniform.dtype == np.float32
            and uniform.shape == a.shape and uniform.flags.c_contiguous and a.ndim == 2)


def fits_flat_update(n_decay, *arrays) -> bool:
    """An optimizer's one pass over the flat buffers: one float dtype and shape (1-D), all
    C-contiguous, and ``0 <= n_decay <= size`` (weight decay covers a prefix)."""
    return same_floats(*arrays) and arrays[0].ndim == 1 and 0 <= n_decay <= arrays[0].size


def fits_random_uniform(out) -> bool:
    """Philox uniforms are drawn into a C-contiguous float32 array of any shape."""
    return out.dtype == np.float32 and out.flags.c_contiguous


def fits_blas_call(a, b, out) -> bool:
    """A CBLAS call with alpha and beta on numpy's own BLAS (kernels/blas.py): one dtype, every
    operand C-contiguous (BLAS checks the shapes itself)."""
    return (a.dtype == b.dtype == out.dtype and a.flags.c_contiguous and b.flags.c_contiguous
            and out.flags.c_contiguous)
