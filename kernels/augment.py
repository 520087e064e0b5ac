"""Numba kernel of the augmented batch gather: uint8 rows straight into the float batch, each image
warped by its own random transform on the way (:meth:`bpgpu.backends.base.Backend.gather_augmented`
is the contract, formula by formula; this kernel follows it operation for operation, in float64).

Imported only by the numba backend. One image per iteration of the outer (``prange``) loop; each
image's row is prefetched a few images ahead, as in the plain gather (kernels/cpu.py). Two paths
per image:

- translation and mirror only (no rotation, zoom, shear or field): a whole-pixel shifted (and
  perhaps mirrored) copy, exactly the plain gather's arithmetic (``x * scale + shift``), so its
  values are bit-identical to it;
- otherwise: the sampling map per output pixel and bilinear interpolation with zero fill. Where
  all four neighbours lie inside the image (most pixels) they are read without bounds checks.

The elastic fields are smoothed by the backends' shared reference (two GEMMs), not here: as
products with banded Gaussian matrices they run at BLAS speed, faster than any loop here.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from .intrinsics import prefetch_row

__all__ = ["KERNELS", "PREFETCH_AHEAD"]

_OPTIONS = {"cache": True, "error_model": "numpy"}

#: Rows prefetched ahead of the image being warped (the plain gather's measured choice).
PREFETCH_AHEAD = 16


def _variants(fn):
    """(serial, parallel) dispatchers of one kernel; distinct names keep their caches apart."""
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                fn.__defaults__, fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    return njit(**_OPTIONS)(serial), njit(parallel=True, **_OPTIONS)(fn)


def gather_augmented(data, idx, out, uniform, field, has_field, height, width, translate, rotate,
                     zoom, shear, flip, scale, shift, scaled):
    """out[b] = warp_b(data[idx[b]]) (* scale + shift when ``scaled``); see the module docstring.

    ``field`` is read only when ``has_field`` (pass any array of out's dtype otherwise).
    Returns -1, or the position in ``idx`` of an index outside ``data``'s rows (nothing is read
    for it; the caller raises).
    """
    rows = out.shape[0]
    n_data = data.shape[0]
    for i in range(rows):                        # validate first: never read out of bounds
        if idx[i] < 0 or idx[i] >= n_data:
            return i
    affine = rotate != 0.0 or zoom != 0.0 or shear != 0.0 or has_field
    span = np.float64(2 * translate + 1)
    cx = (width - 1) / 2.0
    cy = (height - 1) / 2.0
    lo_x, hi_x = -2.0, width + 1.0
    lo_y, hi_y = -2.0, height + 1.0
    zero = out.dtype.type(0)
    fill = zero * scale + shift if scaled else zero   # a raw 0 pixel, as the gather maps it
    for i in range(min(PREFETCH_AHEAD, rows)):
        prefetch_row(data, idx[i])
    for b in prange(rows):
        if b + PREFETCH_AHEAD < rows:
            prefetch_row(data, idx[b + PREFETCH_AHEAD])
        src = data[idx[b]]
        dst = out[b]
        tx = np.floor(np.float64(uniform[b, 0]) * span) - translate
        ty = np.floor(np.float64(uniform[b, 1]) * span) - translate
        mirror = np.float64(uniform[b, 5]) < flip
        if not affine:                           # whole-pixel shift: a copy with zero fill
            itx = int(tx)
            ity = int(ty)
            for r in range(height):
                base = r * width
                sr = r - ity
                if sr < 0 or sr >= height:
                    for q in range(width):
                        dst[base + q] = fill
                    continue
                # columns [q_lo, q_hi) come from the image, the others are fill: three
                # branch-free loops (the copy vectorises). Column q reads q - tx, or
                # (width - 1) - q - tx mirrored.
                if mirror:
                    q_lo = min(max(-itx, 0), width)
                    q_hi = max(min(width - itx, width), q_lo)
                else:
                    q_lo = min(max(itx, 0), width)
                    q_hi = max(min(width + itx, width), q_lo)
                for q in range(q_lo):
                    dst[base + q] = fill
                d = dst[base + q_lo:base + q_hi]
                if mirror:
                    row = src[sr * width:(sr + 1) * width]
                    last = width - 1 - q_lo - itx      # the source column of d[0]
                    if scaled:
                        for q in range(d.shape[0]):
                            d[q] = row[last - q] * scale + shift
                    else:
                        for q in range(d.shape[0]):
                            d[q] = row[last - q]
                else:
                    row = src[sr * width + q_lo - itx:sr * width + q_hi - itx]
                    if scaled:
                        for q in range(d.shape[0]):
                            d[q] = row[q] * scale + shift
                    else:
                        for q in range(d.shape[0]):
                            d[q] = row[q]
                for q in range(q_hi, width):
                    dst[base + q] = fill
            continue
        theta = (2.0 * np.float64(uniform[b, 2]) - 1.0) * rotate
        s = 1.0 + (2.0 * np.float64(uniform[b, 3]) - 1.0) * zoom
        h = (2.0 * np.float64(uniform[b, 4]) - 1.0) * shear
        c = np.cos(theta)
        n = np.sin(theta)
        a00 = (c + h * n) / s
        a01 = (n - h * c) / s
        a10 = -n / s
        a11 = c / s
        m = -1.0 if mirror else 1.0
        for r in range(height):
            Y = (r - cy) - ty
            base = r * width
            for q in range(width):
                X = m * (q - cx) - tx
                sx = (a00 * X + a01 * Y) + cx
                sy = (a10 * X + a11 * Y) + cy
                if has_field:
                    sx = sx + field[b, 0, r, q]
                    sy = sy + field[b, 1, r, q]
                lost = sx != sx or sy != sy      # a NaN field: a NaN pixel (the op contract)
                if not sx >= lo_x:               # out-of-range coordinates read nothing
                    sx = lo_x
                elif sx > hi_x:
                    sx = hi_x
                if not sy >= lo_y:
                    sy = lo_y
                elif sy > hi_y:
                    sy = hi_y
                fx0 = np.floor(sx)
                fy0 = np.floor(sy)
                fx = sx - fx0
                fy = sy - fy0
                x0 = int(fx0)
                y0 = int(fy0)
                k = y0 * width + x0
                if x0 >= 0 and x0 + 1 < width and y0 >= 0 and y0 + 1 < height:
                    p00 = np.float64(src[k])
                    p01 = np.float64(src[k + 1])
                    p10 = np.float64(src[k + width])
                    p11 = np.float64(src[k + width + 1])
                else:
                    in_x0 = 0 <= x0 < width
                    in_x1 = 0 <= x0 + 1 < width
                    in_y0 = 0 <= y0 < height
                    in_y1 = 0 <= y0 + 1 < height
                    p00 = np.float64(src[k]) if in_y0 and in_x0 else 0.0
                    p01 = np.float64(src[k + 1]) if in_y0 and in_x1 else 0.0
                    p10 = np.float64(src[k + width]) if in_y1 and in_x0 else 0.0
                    p11 = np.float64(src[k + width + 1]) if in_y1 and in_x1 else 0.0
                v = ((1.0 - fy) * ((1.0 - fx) * p00 + fx * p01)
                     + fy * ((1.0 - fx) * p10 + fx * p11))
                if lost:
                    v = np.nan
                if scaled:
                    dst[base + q] = out.dtype.type(v) * scale + shift
                else:
                    dst[base + q] = v
    return -1


#: name -> (serial, parallel) dispatchers
KERNELS = {"gather_augmented": _variants(gather_augmented)}
