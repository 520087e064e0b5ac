"""The CuPy backend: training on an NVIDIA GPU with cuBLAS GEMMs and the fused kernels of
``kernels/fused.cu``.

Data and parameters live on the device; GEMMs go to cuBLAS through ``cupy.matmul`` into
preallocated outputs; every elementwise and per-row op is one launch of a kernel from
``fused.cu``, compiled once per process on first use (never at import) and looked up once. Arrays
the kernels do not take (other dtypes, non-contiguous views) go to the reference ops of
:class:`Backend` on cupy. Constructing the backend without a working device raises
:class:`~bpgpu.errors.BackendUnavailable` naming the cause (no CuPy, no driver, no device, a
driver/runtime mismatch).

Status: the kernels compile for sm_80 and sm_90 with nvcc (tested without a GPU); this module's
launches have not yet run on a GPU (no device was available to the work that wrote them), so the
GPU-marked tests are the first thing to run on one.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from .._compat import cupy_status
from ..errors import BackendUnavailable, ConfigError
from .base import LOG_CLIP, Backend

__all__ = ["CupyBackend", "KERNEL_NAMES", "kernel_source"]

KERNEL_NAMES = ("bias_activation", "bias_softmax", "activation_backward", "softmax_backward",
                "output_delta", "count_correct", "gather_scale", "gather", "dropout_forward",
                "multiply_inplace", "sgd_update", "momentum_update", "adam_update")
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_ACT = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "softmax": 4}
_LOSS = {"mse": 0, "bce": 1, "ce": 2}
_BLOCK = 256


def kernel_source() -> str:
    """The CUDA source of the fused kernels (shipped as package data)."""
    return (resources.files("bpgpu.kernels") / "fused.cu").read_text()


def _ok(*arrays):
    return all(a.dtype in _CTYPE and a.flags.c_contiguous for a in arrays)


class CupyBackend(Backend):
    """CuPy on the current CUDA device.

    Parameters
    ----------
    tf32 : bool
        Let cuBLAS use TF32 tensor cores for float32 GEMMs (faster, ~1e-3 relative error).
        Off by default.
    """

    name = "cupy"

    def __init__(self, tf32: bool = False):
        cupy, reason = cupy_status()
        if cupy is None:
            raise BackendUnavailable(f"backend 'cupy' is not available: {reason}")
        super().__init__()
        self.xp = cupy
        self._module = None
        self._functions: dict = {}
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self._max_blocks = 8 * props["multiProcessorCount"]   # grid-stride loops cover the rest
        self.set_tf32(tf32)

    def describe(self) -> str:
        return f"cupy ({cupy_status()[1]}; tf32 {'on' if self.tf32 else 'off'})"

    def set_tf32(self, enabled: bool) -> None:
        """Allow (or forbid) TF32 tensor-core math in cuBLAS float32 GEMMs."""
        linalg = getattr(getattr(self.xp, "_core", None), "_routines_linalg", None)
        setter = getattr(linalg, "set_compute_type", None)
        if setter is None:
            if enabled:
                raise ConfigError("this CuPy version offers no way to enable TF32 GEMMs")
            self.tf32 = False
            return
        mode = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
        setter(self.xp.float32, mode)
        self.tf32 = bool(enabled)

    # ------------------------------------------------------------------ memory and transfer
    def asarray(self, host, dtype=None):
        return self.xp.ascontiguousarray(self.xp.asarray(host, dtype=dtype))

    def to_host(self, arr) -> np.ndarray:
        return self.xp.asnumpy(arr)

    def upload(self, host, out):
        out.set(np.ascontiguousarray(host, dtype=out.dtype))
        return out

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    # ------------------------------------------------------------------ kernels
    def _kernel(self, name, dtype):
        key = (name, dtype)
        fn = self._functions.get(key)
        if fn is None:
            if self._module is None:          # compiled once per process, on first use
                exprs = [f"{n}<{t}>" for n in KERNEL_NAMES for t in _CTYPE.values()]
                self._module = self.xp.RawModule(code=kernel_source(), options=("-std=c++14",),
                                                 name_expressions=exprs)
            fn = self._functions[key] = self._module.get_function(f"{name}<{_CTYPE[dtype]}>")
        return fn

    def _launch(self, name, dtype, work, args):
        grid = max(1, min(-(-int(work) // _BLOCK), self._max_blocks))
        self._kernel(name, dtype)((grid,), (_BLOCK,), args)

    # ------------------------------------------------------------------ fused ops
    def bias_activation(self, z, bias, activation: str):
        if not _ok(z, bias) or bias.dtype != z.dtype or activation not in _ACT:
            return super().bias_activation(z, bias, activation)
        rows, cols = z.shape
        if activation == "softmax":
            self._launch("bias_softmax", z.dtype, rows, (z, bias, np.int64(rows), np.int32(cols)))
        else:
            self._launch("bias_activation", z.dtype, z.size,
                         (z, bias, np.int64(rows), np.int32(cols), np.int32(_ACT[activation])))
        return z

    def activation_backward(self, delta, a, activation: str):
        if activation == "identity":
            return delta
        if not _ok(delta, a) or activation not in _ACT:
            return super().activation_backward(delta, a, activation)
        rows, cols = delta.shape
        if activation == "softmax":
            self._launch("softmax_backward", delta.dtype, rows,
                         (delta, a, np.int64(rows), np.int32(cols)))
        else:
            self._launch("activation_backward", delta.dtype, delta.size,
                         (delta, a, np.int64(delta.size), np.int32(_ACT[activation])))
        return delta

    def output_delta(self, a, y, delta, output: str, loss: str, loss_acc=None):
        if not _ok(a, y, delta) or loss not in _LOSS:
            return super().output_delta(a, y, delta, output, loss, loss_acc)
        tiny, one_minus_eps = LOG_CLIP[a.dtype]
        acc = loss_acc if loss_acc is not None else self._scratch("no_loss", (1,), np.float64)
        rows, cols = a.shape
        self._launch("output_delta", a.dtype, rows,
                     (a, y, delta, np.int64(rows), np.int32(cols), np.int32(_ACT[output]),
                      np.int32(_LOSS[loss]), tiny, one_minus_eps, acc,
                      np.int32(loss_acc is not None)))
        return delta

    def count_correct(self, a, y, acc):
        if not _ok(a, y) or acc.dtype != np.float64:
            return super().count_correct(a, y, acc)
        rows, cols = a.shape
        self._launch("count_correct", a.dtype, rows, (a, y, np.int64(rows), np.int32(cols), acc))
        return acc

    def gather_rows(self, data, idx, out, scale: float = 1.0, shift: float = 0.0):
        if not (_ok(out) and data.flags.c_contiguous and idx.dtype == np.int64
                and idx.flags.c_contiguous):
            return super().gather_rows(data, idx, out, scale, shift)
        rows, cols = out.shape
        if data.dtype == out.dtype:
            self._launch("gather", out.dtype, out.size,
                         (data, idx, out, np.int64(rows), np.int32(cols)))
        elif data.dtype == np.uint8:
            t = out.dtype.type
            self._launch("gather_scale", out.dtype, out.size,
                         (data, idx, out, np.int64(rows), np.int32(cols), t(scale), t(shift)))
        else:
            return super().gather_rows(data, idx, out, scale, shift)
        return out

    def dropout_forward(self, a, uniform, rate: float, mask, out):
        if not _ok(a, mask, out) or uniform.dtype != np.float32:
            return super().dropout_forward(a, uniform, rate, mask, out)
        t = a.dtype.type
        self._launch("dropout_forward", a.dtype, a.size,
                     (a, uniform, np.float32(rate), t(1.0 / (1.0 - rate)), mask, out,
                      np.int64(a.size)))
        return out

    def dropout_backward(self, delta, mask):
        if not _ok(delta, mask):
            return super().dropout_backward(delta, mask)
        self._launch("multiply_inplace", delta.dtype, delta.size,
                     (delta, mask, np.int64(delta.size)))
        return delta

    def sgd_update(self, params, grads, lr: float, weight_decay: float = 0.0, n_decay: int = 0):
        if not _ok(params, grads):
            return super().sgd_update(params, grads, lr, weight_decay, n_decay)
        t = params.dtype.type
        self._launch("sgd_update", params.dtype, params.size,
                     (params, grads, t(lr), t(weight_decay), np.int64(n_decay),
                      np.int64(params.size)))
        return params

    def momentum_update(self, params, grads, velocity, lr: float, momentum: float,
                        weight_decay: float = 0.0, n_decay: int = 0, nesterov: bool = False):
        if not _ok(params, grads, velocity):
            return super().momentum_update(params, grads, velocity, lr, momentum, weight_decay,
                                           n_decay, nesterov)
        t = params.dtype.type
        self._launch("momentum_update", params.dtype, params.size,
                     (params, grads, velocity, t(lr), t(momentum), t(weight_decay),
                      np.int64(n_decay), np.int64(params.size), np.int32(nesterov)))
        return params

    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    step: int, weight_decay: float = 0.0, n_decay: int = 0):
        if not _ok(params, grads, m, v):
            return super().adam_update(params, grads, m, v, lr, beta1, beta2, eps, step,
                                       weight_decay, n_decay)
        t = params.dtype.type
        self._launch("adam_update", params.dtype, params.size,
                     (params, grads, m, v, t(lr / (1 - beta1 ** step)), t(beta1), t(1 - beta1),
                      t(beta2), t(1 - beta2), t(eps), t(1.0 / (1 - beta2 ** step)),
                      t(weight_decay), np.int64(n_decay), np.int64(params.size)))
        return params
