"""The Numba backend: numpy's ops, with the fused one-pass kernels of ``kernels/cpu.py``.

GEMMs stay on BLAS (numpy's matmul; with alpha and beta, one CBLAS call of numpy's own BLAS).
Everything between them runs as one Numba kernel per op instead of several numpy passes. Each
fast path's condition is a function of ``kernels/launch.py`` (the compiled epoch's lowering calls
the same one); arrays it does not cover (other dtypes, non-contiguous views) go to the numpy
implementation. Which threads run what is :mod:`bpgpu.backends.threads`; an epoch of steps runs
as one compiled call through :meth:`NumbaBackend.compiled_epoch` (:mod:`bpgpu.backends.numba_epoch`).
"""

from __future__ import annotations

import contextlib

import numpy as np

from .._compat import numba_status
from ..errors import BackendUnavailable
from ..kernels import launch
from ..kernels.codes import ACT_CODES, LOSS_CODES
from .base import EXP_LIMIT, LOG_CLIP
from .numba_cache import cache_status
from .numpy_backend import NumpyBackend
from .threads import PARALLEL_MIN, SERIAL_MAX_CORES, cores, kernel_threads_for

__all__ = ["NumbaBackend"]


class NumbaBackend(NumpyBackend):
    """Numpy with fused Numba kernels for every elementwise and reduction op."""

    name = "numba"
    # With the elementwise work fused, a second BLAS thread pays from batch 32 on (interleaved,
    # 784-100-10: b64 171k vs 143k samples/s; b10 72k vs 76k), unlike numpy's heavier step.
    single_thread_max_batch = 16

    def __init__(self, blas_threads="auto"):
        numba, reason = numba_status()
        if numba is None:
            raise BackendUnavailable(f"backend 'numba' is not available: {reason}")
        super().__init__(blas_threads)
        from bpgpu.kernels import blas, cpu  # compile lazily, per signature, on first call
        self._blas = blas
        self._fused: dict = {}
        self._numba = numba
        self._k = cpu.KERNELS

    def describe(self) -> str:
        n = cores()
        mode = ("serial kernels" if n <= SERIAL_MAX_CORES
                else f"parallel kernels above batch {self.single_thread_max_batch}")
        return f"numba {self._numba.__version__} ({mode} on {n} cores; {cache_status()})"

    # ------------------------------------------------------------------ compilation
    def compile_stats(self) -> dict:
        """``kernels`` (dispatchers), ``cache_hits`` and ``compiled`` (signatures loaded from
        Numba's disk cache vs compiled in this process), ``compiled_epochs`` (epochs run as one
        compiled call so far)."""
        from . import numba_epoch
        hits = compiled = 0
        dispatchers = [d for pair in self._k.values() for d in set(pair)]
        for dispatcher in dispatchers + [self._blas.gemm, self._blas.gemv]:
            hits += sum(dispatcher.stats.cache_hits.values())
            compiled += sum(dispatcher.stats.cache_misses.values())
        return {"kernels": len(self._k), "cache_hits": hits, "compiled": compiled,
                "compiled_epochs": numba_epoch.STATS["compiled_epochs"]}

    def compiles_epochs(self) -> bool:
        """True unless ``BPGPU_COMPILED_EPOCH=0`` (:func:`numba_epoch.enabled`)."""
        from . import numba_epoch
        return numba_epoch.enabled()

    @contextlib.contextmanager
    def compiled_epoch_mode(self, mode: str):
        """Within the block compiled epochs are off ("0"), always used ("1") or chosen by size
        ("auto"), whatever ``BPGPU_COMPILED_EPOCH`` says (:func:`numba_epoch.override`)."""
        from . import numba_epoch
        with numba_epoch.override(mode):
            yield

    # ------------------------------------------------------------------ threading
    def _kernel_threads_for(self, batch_size: int) -> int:
        """Numba threads used at this batch size (1: the serial kernels; see
        :func:`bpgpu.backends.threads.kernel_threads_for`)."""
        return kernel_threads_for(batch_size, self.single_thread_max_batch, self._numba)

    def thread_plan(self, batch_size: int) -> dict:
        return dict(super().thread_plan(batch_size),
                    kernel_threads=self._kernel_threads_for(batch_size))

    @contextlib.contextmanager
    def compute_threads(self, batch_size: int):
        """BLAS threads as numpy's backend, and the kernels' threading for this batch size: at
        small batches every kernel runs serially (no thread pool is woken at all: on two cores
        a spinning pool slows the main thread and BLAS more than it helps)."""
        previous = self._parallel_ok
        self._parallel_ok = self._kernel_threads_for(batch_size) > 1
        try:
            with super().compute_threads(batch_size) as n:
                yield n
        finally:
            self._parallel_ok = previous

    def _kernel(self, name, size):
        serial, parallel = self._k[name]
        if size >= PARALLEL_MIN and self._parallel_ok:
            return parallel
        return serial

    _parallel_ok = cores() > SERIAL_MAX_CORES

    # ------------------------------------------------------------------ the compiled epoch
    def compiled_epoch(self, model, ws, X_dev, T_dev, optimizer, **step_options):
        """The epoch as one call into Numba-compiled code (bpgpu.backends.numba_epoch), derived
        from the ops ``model.train_step`` issues; None when ``BPGPU_COMPILED_EPOCH=0``."""
        from . import numba_epoch
        if not numba_epoch.enabled():
            return None
        return numba_epoch.CompiledEpoch(self, model, ws, X_dev, T_dev, optimizer, step_options)

    # ------------------------------------------------------------------ BLAS with alpha and beta
    def fuses_sgd(self, dtype) -> bool:
        """True where numpy's BLAS was found and checked for ``dtype`` (kernels/blas.py): the SGD
        step then runs inside the gradient GEMMs (``beta``), saving a pass over every parameter
        and gradient (bench/NOTES.md step 13)."""
        return self._fused_blas(np.dtype(dtype)) is not None

    def _fused_blas(self, dtype):
        """``(gemm address, gemv address, ilp64)`` of numpy's CBLAS for ``dtype``, or None."""
        try:
            return self._fused[dtype]
        except KeyError:
            blas = self._blas.blas_for(dtype)
            entry = None if blas is None else (blas.gemm[dtype], blas.gemv[dtype], blas.ilp64)
            self._fused[dtype] = entry
            return entry

    def gemm(self, a, b, out, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0):
        """Plain products go to numpy's matmul (cheapest to call); with ``alpha``/``beta`` one
        ``cblas_?gemm`` call of the same BLAS does the scaling and the update."""
        if alpha == 1.0 and beta == 0.0:
            return np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)
        blas = self._fused_blas(out.dtype)
        if blas is None or not launch.fits_blas_call(a, b, out):   # BLAS checks the shapes
            return super().gemm(a, b, out, trans_a, trans_b, alpha, beta)
        t = out.dtype.type
        self._blas.gemm(blas[0], blas[2], a, b, out, trans_a, trans_b, t(alpha), t(beta))
        return out

    # ------------------------------------------------------------------ fused ops
    def bias_activation(self, z, bias, activation: str):
        """One fused pass per activation (kernels/cpu.py; exp and tanh vectorised in the loop)."""
        if not launch.rows_and_vector(z, bias):
            return super().bias_activation(z, bias, activation)
        k = self._kernel
        n = z.size
        if activation == "sigmoid":
            k("bias_sigmoid", n)(z, bias, EXP_LIMIT[z.dtype])
        elif activation == "softmax":
            k("bias_softmax", n)(z, bias)
        elif activation == "tanh":
            k("bias_tanh", n)(z, bias)
        elif activation == "relu":
            k("add_bias_relu", n)(z, bias)
        elif activation == "identity":
            k("add_bias", n)(z, bias)
        else:
            return super().bias_activation(z, bias, activation)
        return z

    def activation_backward(self, delta, a, activation: str):
        if activation == "identity":
            return delta
        if not launch.fits_rows(delta, a) or activation not in ACT_CODES:
            return super().activation_backward(delta, a, activation)
        self._kernel("activation_backward", delta.size)(delta, a, ACT_CODES[activation])
        return delta

    def output_delta(self, a, y, delta, output: str, loss: str, loss_acc=None, weights=None):
        if (not launch.fits_rows(a, y, delta) or loss not in LOSS_CODES
                or not launch.fits_row_weights(weights, a)):
            return super().output_delta(a, y, delta, output, loss, loss_acc, weights)
        tiny, one_minus_eps = LOG_CLIP[a.dtype]
        weighted = weights is not None
        w = weights if weighted else self._scratch("no_weights", (1,), a.dtype)
        total = self._kernel("output_delta", a.size)(
            a, y, delta, ACT_CODES[output], LOSS_CODES[loss], tiny, one_minus_eps,
            loss_acc is not None, w, weighted)
        if loss_acc is not None:
            loss_acc += total
        return delta

    def column_sums(self, d, out, alpha: float = 1.0, beta: float = 0.0):
        """Small: one Numba pass with alpha and beta; large: one BLAS GEMV on every core (with
        alpha and beta when numpy's CBLAS was found)."""
        if not launch.rows_and_vector(d, out):
            return super().column_sums(d, out, alpha, beta)
        t = out.dtype.type
        if d.size < PARALLEL_MIN:
            acc = self._scratch("column_sums", out.shape, out.dtype)
            self._k["column_sums"][0](d, out, t(alpha), t(beta), acc)
            return out
        blas = self._fused_blas(out.dtype) if alpha != 1.0 or beta != 0.0 else None
        if blas is None:
            return super().column_sums(d, out, alpha, beta)
        self._blas.gemv(blas[1], blas[2], d, self._ones(d.shape[0], d.dtype), out, True, t(alpha),
                        t(beta))
        return out

    def count_correct(self, a, y, acc):
        if not launch.fits_rows(a, y):
            return super().count_correct(a, y, acc)
        acc += self._kernel("count_correct", a.size)(a, y)
        return acc

    def gather_rows(self, data, idx, out, scale: float = 1.0, shift: float = 0.0):
        scaled = data.dtype == np.uint8
        if not launch.fits_gather(data, idx, out):
            return super().gather_rows(data, idx, out, scale, shift)
        t = out.dtype.type
        bad = self._kernel("gather", out.size)(data, idx, out, t(scale), t(shift), scaled)
        if bad >= 0:
            raise IndexError(f"row index {int(idx[bad])} is out of bounds for {data.shape[0]} "
                             f"rows")
        return out

    def random_uniform(self, out, key, counter, offset: int = 0):
        if not launch.fits_random_uniform(out):
            return super().random_uniform(out, key, counter, offset)
        words = np.array([int(k) % (1 << 64) for k in key] + [int(c) % (1 << 64) for c in counter],
                         np.uint64)
        self._kernel("random_uniform", out.size)(out.reshape(-1), words[:2], words[2:],
                                                 int(offset))
        return out

    def dropout_forward(self, a, uniform, rate: float, mask, out):
        if not launch.fits_dropout_forward(a, uniform, mask, out):
            return super().dropout_forward(a, uniform, rate, mask, out)
        t = a.dtype.type
        self._kernel("dropout_forward", a.size)(a, uniform, np.float32(rate),
                                                t(1.0 / (1.0 - rate)), mask, out)
        return out

    def dropout_backward(self, delta, mask):
        if not launch.fits_rows(delta, mask):
            return super().dropout_backward(delta, mask)
        self._kernel("multiply_inplace", delta.size)(delta, mask)
        return delta

    def sgd_update(self, params, grads, lr: float, weight_decay: float = 0.0, n_decay: int = 0):
        if not launch.fits_flat_update(n_decay, params, grads):
            return super().sgd_update(params, grads, lr, weight_decay, n_decay)
        t = params.dtype.type
        self._kernel("sgd_update", params.size)(params, grads, t(lr), t(weight_decay), n_decay)
        return params

    def momentum_update(self, params, grads, velocity, lr: float, momentum: float,
                        weight_decay: float = 0.0, n_decay: int = 0, nesterov: bool = False):
        if not launch.fits_flat_update(n_decay, params, grads, velocity):
            return super().momentum_update(params, grads, velocity, lr, momentum, weight_decay,
                                           n_decay, nesterov)
        t = params.dtype.type
        self._kernel("momentum_update", params.size)(params, grads, velocity, t(lr), t(momentum),
                                                     t(weight_decay), n_decay, nesterov)
        return params

    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    step: int, weight_decay: float = 0.0, n_decay: int = 0):
        if not launch.fits_flat_update(n_decay, params, grads, m, v):
            return super().adam_update(params, grads, m, v, lr, beta1, beta2, eps, step,
                                       weight_decay, n_decay)
        t = params.dtype.type
        self._kernel("adam_update", params.size)(
            params, grads, m, v, t(lr / (1 - beta1 ** step)), t(beta1), t(1 - beta1), t(beta2),
            t(1 - beta2), t(eps), t(1.0 / (1 - beta2 ** step)), t(weight_decay), n_decay)
        return params

    # ------------------------------------------------------------------ augmentation
    # The warped gather is one kernel of kernels/augment.py (imported on first use); the elastic
    # fields stay numpy's (two GEMMs with banded Gaussian matrices: BLAS speed).
    def gather_augmented(self, data, idx, out, uniform, field, height: int, width: int,
                         translate: int = 0, rotate: float = 0.0, zoom: float = 0.0,
                         shear: float = 0.0, flip: float = 0.0, scale: float = 1.0,
                         shift: float = 0.0):
        scaled = data.dtype == np.uint8
        height, width, translate = int(height), int(width), int(translate)
        if not launch.fits_augmented_gather(data, idx, out, uniform, field, height, width,
                                            translate):
            return super().gather_augmented(data, idx, out, uniform, field, height, width,
                                            translate, rotate, zoom, shear, flip, scale, shift)
        from bpgpu.kernels import augment
        serial, parallel = augment.KERNELS["gather_augmented"]
        kernel = parallel if out.size >= PARALLEL_MIN and self._parallel_ok else serial
        t = out.dtype.type
        has_field = field is not None
        if not has_field:
            field = self._scratch("no_field", (1, 2, 1, 1), out.dtype)
        bad = kernel(data, idx, out, uniform, field, has_field, height, width, translate,
                     float(rotate), float(zoom), float(shear), float(flip), t(scale), t(shift),
                     scaled)
        if bad >= 0:
            raise IndexError(f"row index {int(idx[bad])} is out of bounds for {data.shape[0]} "
                             f"rows")
        return out
