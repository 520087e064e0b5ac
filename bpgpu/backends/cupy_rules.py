"""The cupy backend's fast-path conditions and launch scalars: for each op, whether it launches
its fused.cu kernel (or cuBLAS call) or falls back to the reference op of
:class:`bpgpu.backends.base.Backend` (:data:`FAST_PATHS`), and the scalars the Adam and Philox
kernels take (:func:`adam_rates`, :func:`adam_constants`, :func:`philox_counter`).

Declared once, here, and read by the eager ops (:mod:`bpgpu.backends.cupy_backend`) and by the
captured step's lowering (:mod:`bpgpu.backends.cupy_step`), which must decide exactly as the ops
do; a module of its own so that neither imports the other.
"""

from __future__ import annotations

import numpy as np

from ..kernels import launch
from ..kernels.codes import ACT_CODES, LOSS_CODES

__all__ = ["FAST_PATHS", "adam_rates", "adam_scalars", "adam_constants", "philox_counter",
           "CTYPE", "F32", "F64"]

#: the float dtypes fused.cu is instantiated for, with their C++ names
CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
_CTYPE, _F32, _F64 = CTYPE, F32, F64


# ---------------------------------------------------------------------------------------- checks
def _ok(first, *others):
    """One kernel launch can take these arrays together: one float dtype, the first one's shape
    for all of them, every one C-contiguous (``_c_contiguous``: CuPy's flag, read without
    building a flags object -- this runs a dozen times per step)."""
    dtype, shape = first.dtype, first.shape
    if dtype not in _CTYPE or not first._c_contiguous:
        return False
    for a in others:
        if a.dtype != dtype or a.shape != shape or not a._c_contiguous:
            return False
    return True


def _ok_rows(z, vector):
    """``z`` (B, n) and ``vector`` (n,): one float dtype, both C-contiguous."""
    return (z.ndim == 2 and z.dtype in _CTYPE and vector.dtype == z.dtype
            and vector.shape == (z.shape[1],) and z._c_contiguous and vector._c_contiguous)


def _ok_acc(acc):
    """A float64 accumulator a kernel adds to at ``acc[0]``."""
    return acc.dtype == _F64 and acc.ndim == 1 and acc.size >= 1 and acc._c_contiguous


def _contiguous(a) -> bool:
    """C-contiguity as CuPy reports it (its flag, read without building a flags object)."""
    return a._c_contiguous


def _index(idx) -> bool:
    """An index array the CUDA kernels read: contiguous int64."""
    return idx.dtype == np.int64 and idx._c_contiguous


def _overlap(x, y):
    lo, hi = x.data.ptr, x.data.ptr + x.nbytes
    return lo < y.data.ptr + y.nbytes and y.data.ptr < hi


# The fast path of each op: ``fits(backend, *the op's arguments)``, True when the op launches its
# kernel (or cuBLAS call) and False when it falls back to the reference. The op calls it, and so
# does the captured step's lowering (bpgpu.backends.cupy_graph) for every recorded step.
def _fits_gemm(be, a, b, out, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    dtype = out.dtype
    return (dtype in _CTYPE and a.dtype == dtype and b.dtype == dtype and a.ndim == 2
            and b.ndim == 2 and out.ndim == 2 and a._c_contiguous and b._c_contiguous
            and out._c_contiguous and be._gemm_works(dtype) and not _overlap(out, a)
            and not _overlap(out, b))


def _fits_column_sums(be, d, out, alpha=1.0, beta=0.0):
    return _ok_rows(d, out) and be._gemm_works(d.dtype)


def _fits_bias_activation(be, z, bias, activation):
    return activation in ACT_CODES and _ok_rows(z, bias)


def _fits_activation_backward(be, delta, a, activation):
    return activation in ACT_CODES and _ok(delta, a) and delta.ndim == 2


def _fits_output_delta(be, a, y, delta, output, loss, loss_acc=None, weights=None):
    return (loss in LOSS_CODES and output in ACT_CODES and _ok(a, y, delta)
            and a.ndim == 2 and a.shape[0] > 0 and (loss_acc is None or _ok_acc(loss_acc))
            and (weights is None or (weights.dtype == a.dtype and weights.shape == a.shape[:1]
                                     # a host array (the recorder's stand-in) is not a
                                     # device buffer: no CuPy flag, no fast path
                                     and getattr(weights, "_c_contiguous", False))))


def _fits_count_correct(be, a, y, acc):
    return _ok(a, y) and a.ndim == 2 and _ok_acc(acc)


def _fits_gather_rows(be, data, idx, out, scale=1.0, shift=0.0):
    return (out.dtype in _CTYPE and out.ndim == 2 and data.ndim == 2 and idx.ndim == 1
            and idx.dtype == np.int64 and out.shape == (idx.shape[0], data.shape[1])
            and (data.dtype == np.uint8 or data.dtype == out.dtype) and out._c_contiguous
            and data._c_contiguous and idx._c_contiguous)


def _fits_gather_augmented(be, data, idx, out, uniform, field, height, width, translate=0,
                           *ignored):
    return launch.fits_augmented_gather(data, idx, out, uniform, field, int(height), int(width),
                                        int(translate), contiguous=_contiguous, index=_index)


def _fits_random_uniform(be, out, key, counter, offset=0):
    return out.dtype == _F32 and out._c_contiguous


def _fits_dropout_forward(be, a, uniform, rate, mask, out):
    return (_ok(a, mask, out) and a.ndim == 2 and uniform.dtype == _F32
            and uniform.shape == a.shape and uniform._c_contiguous and 0.0 <= rate < 1.0)


def _fits_dropout_backward(be, delta, mask):
    return _ok(delta, mask)


def _fits_flat(arrays, n_decay):
    return _ok(*arrays) and arrays[0].ndim == 1 and 0 <= n_decay <= arrays[0].size


def _fits_sgd_update(be, params, grads, lr, weight_decay=0.0, n_decay=0):
    return _fits_flat((params, grads), n_decay)


def _fits_momentum_update(be, params, grads, velocity, lr, momentum, weight_decay=0.0,
                          n_decay=0, nesterov=False):
    return _fits_flat((params, grads, velocity), n_decay)


def _fits_adam_update(be, params, grads, m, v, lr, beta1, beta2, eps, step, weight_decay=0.0,
                      n_decay=0):
    return _fits_flat((params, grads, m, v), n_decay)


#: op name -> its fast-path condition (see above).
FAST_PATHS = {
    "gemm": _fits_gemm, "column_sums": _fits_column_sums,
    "bias_activation": _fits_bias_activation, "activation_backward": _fits_activation_backward,
    "output_delta": _fits_output_delta, "count_correct": _fits_count_correct,
    "gather_rows": _fits_gather_rows, "gather_augmented": _fits_gather_augmented,
    "random_uniform": _fits_random_uniform, "dropout_forward": _fits_dropout_forward,
    "dropout_backward": _fits_dropout_backward, "sgd_update": _fits_sgd_update,
    "momentum_update": _fits_momentum_update, "adam_update": _fits_adam_update,
}


def adam_rates(lr, beta1, beta2, step):
    """Adam's two per-step scalars, as Python floats: the bias-corrected rate
    ``lr / (1 - beta1^step)`` and ``1 / (1 - beta2^step)`` -- written once, here, for the eager
    launch and for the captured step's table alike."""
    return lr / (1 - beta1 ** step), 1.0 / (1 - beta2 ** step)


def adam_scalars(dtype, lr, beta1, beta2, step):
    """:func:`adam_rates` in ``dtype``, as the kernel takes them."""
    t = np.dtype(dtype).type
    lr_t, inv_bias2 = adam_rates(lr, beta1, beta2, step)
    return t(lr_t), t(inv_bias2)


def adam_constants(dtype, beta1, beta2, eps):
    """Adam's per-run scalars as its kernels take them: ``(b1, 1 - b1, b2, 1 - b2, eps)``."""
    t = np.dtype(dtype).type
    return t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps)


def philox_counter(counter, offset):
    """``(first, words)``: the launch form of a Philox stream position -- the element of its
    first block and the four 64-bit words of the 256-bit ``counter + 1 + offset // 8`` (numpy
    increments before it draws)."""
    mask = (1 << 64) - 1
    total = sum((int(c) & mask) << (64 * i) for i, c in enumerate(counter))
    total = (total + int(offset) // 8 + 1) & ((1 << 256) - 1)
    return int(offset) % 8, tuple((total >> (64 * i)) & mask for i in range(4))
