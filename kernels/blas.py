"""GEMM and GEMV with ``alpha`` and ``beta``, called from Numba on the BLAS numpy already loaded.

numpy's ``matmul`` has no ``beta``: ``W -= lr * (A.T @ D)`` costs a GEMM into a gradient buffer and
then a second pass over both. BLAS itself computes ``C = alpha * op(A) @ op(B) + beta * C`` in one
call, so the SGD update can happen inside the gradient GEMM (bench/NOTES.md step 13). This module
finds the CBLAS entry points of *numpy's own* BLAS -- a second BLAS library would bring a second
thread pool, and two pools spinning on two cores cost more than the fusion saves (step 11) -- and
calls them from Numba through an intrinsic that takes the function's address as an integer
(kernels/intrinsics.py), so the callers are cached on disk like every other kernel and cost ~3 us
per call (a ctypes call from Python costs ~7 us; numpy's matmul ~1.5 us, so plain products stay
with matmul).

:func:`blas_for` returns ``None`` when no usable CBLAS is found (a BLAS without CBLAS symbols, an
unknown integer width, a self-test that disagrees with numpy); callers then keep numpy's matmul.
Arrays must be C-contiguous and of one float dtype; the Numba functions check shapes before the
call (BLAS would read out of bounds on a mismatch) and raise ValueError.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
from numba import njit

from .intrinsics import call_address

__all__ = ["Blas", "find_blas", "blas_for", "gemm", "gemv"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112

#: Symbol spellings to look for, with the width of their integer arguments. numpy >= 2 wheels
#: ship scipy-openblas64 (ILP64, "scipy_" prefix and "64_" suffix); ILP64 builds elsewhere use the
#: "64_" suffix; plain names are LP64 (32-bit integers) unless the library file says 64 (below).
_SPELLINGS = (("scipy_cblas_{}64_", True), ("cblas_{}64_", True), ("cblas_{}", False))


class Blas:
    """CBLAS entry points of one loaded library.

    Attributes
    ----------
    path : str
        The library file.
    ilp64 : bool
        True when BLAS's integer arguments are 64-bit (ILP64), False for 32-bit (LP64).
    gemm, gemv : dict
        ``{np.dtype: int}``, the addresses of ``cblas_?gemm`` / ``cblas_?gemv`` per float dtype.
    """

    def __init__(self, path, ilp64, gemm_addr, gemv_addr):
        self.path, self.ilp64 = path, bool(ilp64)
        self.gemm, self.gemv = gemm_addr, gemv_addr

    def __repr__(self):
        width = "ILP64" if self.ilp64 else "LP64"
        return f"<Blas {os.path.basename(self.path)} {width}>"


def _blas_candidates() -> list[str]:
    """Files of the BLAS libraries loaded in this process: threadpoolctl's view first (it reads the
    loader's list), then /proc/self/maps (Linux) for a library named like a BLAS."""
    paths = []
    try:
        import threadpoolctl
        paths += [i["filepath"] for i in threadpoolctl.threadpool_info()
                  if i.get("user_api") == "blas" and i.get("filepath")]
    except Exception:      # threadpoolctl missing or unable to inspect: fall back to the maps
        pass
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                name = os.path.basename(path).lower()
                if path.startswith("/") and ".so" in name and ("blas" in name or "mkl_rt" in name):
                    paths.append(path)
    except OSError:
        pass
    return list(dict.fromkeys(paths))


def _bind(path):
    """A :class:`Blas` for the library at ``path``, or None when it lacks the symbols."""
    try:
        lib = ctypes.CDLL(path)       # already loaded by numpy: this only returns its handle
    except OSError:
        return None
    for spelling, ilp64 in _SPELLINGS:
        if not ilp64 and "64" in os.path.basename(path).replace("x86_64", ""):
            continue                  # plain names in a "64" library: width unknown, do not guess
        try:
            gemm = {np.dtype(t): ctypes.cast(getattr(lib, spelling.format(p + "gemm")),
                                             ctypes.c_void_p).value
                    for p, t in (("s", np.float32), ("d", np.float64))}
            gemv = {np.dtype(t): ctypes.cast(getattr(lib, spelling.format(p + "gemv")),
                                             ctypes.c_void_p).value
                    for p, t in (("s", np.float32), ("d", np.float64))}
        except AttributeError:
            continue
        return Blas(path, ilp64, gemm, gemv)
    return None


def _self_test(blas, dtype) -> bool:
    """Every transpose combination of gemm, and a transposed gemv, against numpy on odd shapes."""
    rng = np.random.default_rng(0)
    t = np.dtype(dtype).type
    for ta in (False, True):
        for tb in (False, True):
            a = rng.standard_normal((5, 3) if ta else (3, 5)).astype(t)
            b = rng.standard_normal((7, 5) if tb else (5, 7)).astype(t)
            c = rng.standard_normal((3, 7)).astype(t)
            want = 0.5 * c - 2.0 * ((a.T if ta else a) @ (b.T if tb else b))
            gemm(blas.gemm[np.dtype(t)], blas.ilp64, a, b, c, ta, tb, t(-2.0), t(0.5))
            if not np.allclose(c, want, rtol=1e-4, atol=1e-4):
                return False
    d = rng.standard_normal((4, 6)).astype(t)
    y = rng.standard_normal(6).astype(t)
    want = 0.25 * y + 3.0 * d.sum(axis=0)
    gemv(blas.gemv[np.dtype(t)], blas.ilp64, d, np.ones(4, t), y, True, t(3.0), t(0.25))
    return bool(np.allclose(y, want, rtol=1e-4, atol=1e-4))


@functools.lru_cache(maxsize=None)
def find_blas():
    """The CBLAS entry points of numpy's BLAS; None when there are none to use.

    ``BPGPU_FUSED_BLAS=0`` turns the lookup off (numpy's matmul is used throughout). The calls are
    checked against numpy per dtype, on first use, by :func:`blas_for`.
    """
    if os.environ.get("BPGPU_FUSED_BLAS", "1") == "0":
        return None
    np.ones((2, 2)) @ np.ones((2, 2))        # make sure numpy's BLAS is loaded
    for path in _blas_candidates():
        blas = _bind(path)
        if blas is not None:
            return blas
    return None


@functools.lru_cache(maxsize=None)
def blas_for(dtype):
    """:func:`find_blas`'s result once its calls in ``dtype`` agreed with numpy, else None.

    Loading the two compiled callers of one dtype from Numba's cache takes ~0.2 s, so each dtype
    is checked only when a model of that dtype first trains.
    """
    blas = find_blas()
    if blas is None or np.dtype(dtype) not in blas.gemm:
        return None
    return blas if _self_test(blas, dtype) else None


@njit(cache=True, error_model="numpy")
def gemm(address, ilp64, a, b, c, trans_a, trans_b, alpha, beta):
    """``c = alpha * op(a) @ op(b) + beta * c`` through ``cblas_?gemm`` at ``address``.

    Parameters
    ----------
    address : int
        Address of ``cblas_sgemm`` (float32) or ``cblas_dgemm`` (float64).
    ilp64 : bool
        True when the BLAS takes 64-bit integers (:attr:`Blas.ilp64`).
    a : array, shape (m, k), or (k, m) with ``trans_a``; C-contiguous
    b : array, shape (k, n), or (n, k) with ``trans_b``; C-contiguous
    c : array, shape (m, n); C-contiguous, updated in place
    alpha, beta : scalars of the arrays' dtype
        ``beta == 0`` ignores c's old contents (NaN included), as BLAS specifies.
    """
    m, n = c.shape
    am, ak = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    bk, bn = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if am != m or bn != n or ak != bk:
        raise ValueError("gemm: shapes of a, b and c do not match")
    if m == 0 or n == 0:
        return
    order = np.int32(_ROW_MAJOR)
    op_a = np.int32(_TRANS if trans_a else _NO_TRANS)
    op_b = np.int32(_TRANS if trans_b else _NO_TRANS)
    lda, ldb = max(a.shape[1], 1), max(b.shape[1], 1)
    if ilp64:
        call_address(address, order, op_a, op_b, np.int64(m), np.int64(n), np.int64(ak), alpha,
                     a, np.int64(lda), b, np.int64(ldb), beta, c, np.int64(n))
    else:
        call_address(address, order, op_a, op_b, np.int32(m), np.int32(n), np.int32(ak), alpha,
                     a, np.int32(lda), b, np.int32(ldb), beta, c, np.int32(n))


@njit(cache=True, error_model="numpy")
def gemv(address, ilp64, a, x, y, trans, alpha, beta):
    """``y = alpha * op(a) @ x + beta * y`` through ``cblas_?gemv`` at ``address``.

    Parameters
    ----------
    a : array, shape (m, n); C-contiguous
    x : array, shape (n,), or (m,) with ``trans``; contiguous
    y : array, shape (m,), or (n,) with ``trans``; contiguous, updated in place
    """
    m, n = a.shape
    if x.shape[0] != (m if trans else n) or y.shape[0] != (n if trans else m):
        raise ValueError("gemv: shapes of a, x and y do not match")
    if y.shape[0] == 0:
        return
    order = np.int32(_ROW_MAJOR)
    op = np.int32(_TRANS if trans else _NO_TRANS)
    lda = max(n, 1)
    if ilp64:
        call_address(address, order, op, np.int64(m), np.int64(n), alpha, a, np.int64(lda), x,
                     np.int64(1), beta, y, np.int64(1))
    else:
        call_address(address, order, op, np.int32(m), np.int32(n), alpha, a, np.int32(lda), x,
                     np.int32(1), beta, y, np.int32(1))
