"""The Numba backend: numpy's ops, with the fused one-pass kernels of ``kernels/cpu.py``.

GEMMs stay on BLAS (numpy's matmul). Everything between them runs as one Numba kernel per op
instead of several numpy passes. Threading is chosen per batch size (bench/NOTES.md): at small
batches one BLAS thread and serial kernels (on two cores, starting threads costs more than they
save); at large batches all cores for BLAS and parallel kernels for arrays of at least
``PARALLEL_MIN`` elements. Arrays the kernels do not cover (other dtypes, non-contiguous views) go
to the numpy implementation.
"""

from __future__ import annotations

import os

import numpy as np

from .._compat import numba_status
from ..errors import BackendUnavailable
from .numpy_backend import SINGLE_THREAD_MAX_BATCH, NumpyBackend

__all__ = ["NumbaBackend", "PARALLEL_MIN"]

#: Arrays with at least this many elements use the parallel kernels (when threads > 1).
PARALLEL_MIN = 1 << 16
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_EXP_LIMIT = {np.dtype(np.float32): np.float32(88.0), np.dtype(np.float64): np.float64(708.0)}


def _ok(*arrays):
    """True when the kernels can take these arrays (float32/64 and C-contiguous)."""
    return all(a.dtype in _FLOATS and a.flags.c_contiguous for a in arrays)


class NumbaBackend(NumpyBackend):
    """Numpy with fused Numba kernels for every elementwise and reduction op."""

    name = "numba"

    def __init__(self, blas_threads="auto"):
        numba, reason = numba_status()
        if numba is None:
            raise BackendUnavailable(f"backend 'numba' is not available: {reason}")
        super().__init__(blas_threads)
        from bpgpu.kernels import cpu  # compiles lazily, per signature, on first call
        self._numba = numba
        self._k = cpu.KERNELS
        self._act = cpu.ACT_CODES
        self._loss = cpu.LOSS_CODES

    def describe(self) -> str:
        return (f"numba {self._numba.__version__} ({self._numba.threading_layer_name()} "
                f"threading, {self._numba.get_num_threads()} threads)" if hasattr(
                    self._numba, "threading_layer_name") else f"numba {self._numba.__version__}")

    # ------------------------------------------------------------------ threading
    def numba_threads_for(self, batch_size: int) -> int:
        """Numba threads used at this batch size (1: the serial kernels)."""
        if batch_size <= SINGLE_THREAD_MAX_BATCH:
            return 1
        return self._numba.get_num_threads()

    def _kernel(self, name, size):
        serial, parallel = self._k[name]
        if size >= PARALLEL_MIN and self._parallel_ok:
            return parallel
        return serial

    _parallel_ok = (os.cpu_count() or 1) > 1

    # ------------------------------------------------------------------ fused ops
    def bias_activation(self, z, bias, activation: str):
        if not _ok(z, bias) or bias.dtype != z.dtype or activation not in self._act:
            return super().bias_activation(z, bias, activation)
        self._kernel("bias_activation", z.size)(z, bias, self._act[activation], _EXP_LIMIT[z.dtype])
        return z

    def activation_backward(self, delta, a, activation: str):
        if activation == "identity":
            return delta
        if not _ok(delta, a) or activation not in self._act:
            return super().activation_backward(delta, a, activation)
        self._kernel("activation_backward", delta.size)(delta, a, self._act[activation])
        return delta

    def output_delta(self, a, y, delta, output: str, loss: str, loss_acc=None):
        if not _ok(a, y, delta) or loss not in self._loss:
            return super().output_delta(a, y, delta, output, loss, loss_acc)
        info = np.finfo(a.dtype)
        total = self._kernel("output_delta", a.size)(
            a, y, delta, self._act[output], self._loss[loss], a.dtype.type(info.tiny),
            a.dtype.type(1 - info.epsneg), loss_acc is not None)
        if loss_acc is not None:
            loss_acc += total
        return delta

    def column_sums(self, d, out):
        if not _ok(d, out) or d.size >= PARALLEL_MIN:   # large: BLAS GEMV uses every core
            return super().column_sums(d, out)
        self._k["column_sums"][0](d, out)
        return out

    def count_correct(self, a, y, acc):
        if not _ok(a, y):
            return super().count_correct(a, y, acc)
        acc += self._kernel("count_correct", a.size)(a, y)
        return acc

    def gather_rows(self, data, idx, out, scale: float = 1.0, shift: float = 0.0):
        if not (out.dtype in _FLOATS and out.flags.c_contiguous and data.flags.c_contiguous):
            return super().gather_rows(data, idx, out, scale, shift)
        if data.dtype == out.dtype:
            self._kernel("gather", out.size)(data, idx, out)
        elif data.dtype == np.uint8:
            t = out.dtype.type
            self._kernel("gather_scale", out.size)(data, idx, out, t(scale), t(shift))
        else:
            return super().gather_rows(data, idx, out, scale, shift)
        return out

    def dropout_forward(self, a, uniform, rate: float, mask, out):
        if not _ok(a, mask, out) or uniform.dtype != np.float32:
            return super().dropout_forward(a, uniform, rate, mask, out)
        t = a.dtype.type
        self._kernel("dropout_forward", a.size)(a, uniform, np.float32(rate),
                                                t(1.0 / (1.0 - rate)), mask, out)
        return out

    def dropout_backward(self, delta, mask):
        if not _ok(delta, mask):
            return super().dropout_backward(delta, mask)
        self._kernel("multiply_inplace", delta.size)(delta, mask)
        return delta

    def sgd_update(self, params, grads, lr: float, weight_decay: float = 0.0, n_decay: int = 0):
        if not _ok(params, grads):
            return super().sgd_update(params, grads, lr, weight_decay, n_decay)
        t = params.dtype.type
        self._kernel("sgd_update", params.size)(params, grads, t(lr), t(weight_decay), n_decay)
        return params

    def momentum_update(self, params, grads, velocity, lr: float, momentum: float,
                        weight_decay: float = 0.0, n_decay: int = 0, nesterov: bool = False):
        if not _ok(params, grads, velocity):
            return super().momentum_update(params, grads, velocity, lr, momentum, weight_decay,
                                           n_decay, nesterov)
        t = params.dtype.type
        self._kernel("momentum_update", params.size)(params, grads, velocity, t(lr), t(momentum),
                                                     t(weight_decay), n_decay, nesterov)
        return params

    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    step: int, weight_decay: float = 0.0, n_decay: int = 0):
        if not _ok(params, grads, m, v):
            return super().adam_update(params, grads, m, v, lr, beta1, beta2, eps, step,
                                       weight_decay, n_decay)
        t = params.dtype.type
        self._kernel("adam_update", params.size)(
            params, grads, m, v, t(lr / (1 - beta1 ** step)), t(beta1), t(1 - beta1), t(beta2),
            t(1 - beta2), t(eps), t(1.0 / (1 - beta2 ** step)), t(weight_decay), n_decay)
        return params
