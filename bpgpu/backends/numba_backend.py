"""The Numba backend: numpy's ops, with the fused one-pass kernels of ``kernels/cpu.py``.

GEMMs stay on BLAS (numpy's matmul). Everything between them runs as one Numba kernel per op
instead of several numpy passes. Threading, as measured (bench/NOTES.md steps 8 and 10): BLAS uses
one thread up to batch 16 and all cores above; the kernels run serially on machines with at most
``SERIAL_MAX_CORES`` cores (a thread pool spinning beside BLAS cost more than it saved), and in
parallel for arrays of at least ``PARALLEL_MIN`` elements above batch 16 on bigger machines. Arrays
the kernels do not cover (other dtypes, non-contiguous views) go to the numpy implementation.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from .._compat import numba_status
from ..errors import BackendUnavailable
from .base import EXP_LIMIT, LOG_CLIP
from .numpy_backend import NumpyBackend

__all__ = ["NumbaBackend", "PARALLEL_MIN"]

#: Arrays with at least this many elements use the parallel kernels (when threads > 1).
PARALLEL_MIN = 1 << 16
#: On machines with at most this many cores the kernels always run serially (measured).
SERIAL_MAX_CORES = 2
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _ok(*arrays):
    """True when one kernel launch can take all these arrays together: one float dtype (float32
    or float64) for all of them, every one C-contiguous, and all of the first one's shape. A
    kernel indexes without bounds checks, so a launch is validated as a whole, never array by
    array; anything else goes to the numpy reference (which casts, broadcasts or raises). A plain
    loop: this runs a dozen times per training step, and a generator costs ~1 us more per call."""
    first = arrays[0]
    dtype, shape = first.dtype, first.shape
    if dtype not in _FLOATS:
        return False
    for a in arrays:
        if a.dtype != dtype or a.shape != shape or not a.flags.c_contiguous:
            return False
    return True


def _ok_rows(z, vector):
    """``z`` (B, n) and ``vector`` (n,): one float dtype, both C-contiguous."""
    return (z.ndim == 2 and z.dtype in _FLOATS and vector.dtype == z.dtype
            and vector.shape == (z.shape[1],) and z.flags.c_contiguous
            and vector.flags.c_contiguous)


def _ok_augment(data, idx, out, uniform, field, height, width, translate):
    """The augmented gather's arrays fit its kernel (kernels/augment.py) together: ``out``
    (B, height*width) float, ``data`` rows of as many pixels (uint8 or out's dtype), integer
    ``idx`` (B,), float32 ``uniform`` (B, 8), ``field`` None or (B, 2, height, width) of out's
    dtype, everything C-contiguous, ``translate >= 0``."""
    scaled = data.dtype == np.uint8
    return (out.dtype in _FLOATS and out.ndim == data.ndim == 2 and idx.ndim == 1
            and idx.dtype.kind in "iu" and out.shape == (idx.shape[0], height * width)
            and data.shape[1] == height * width and (scaled or data.dtype == out.dtype)
            and uniform.dtype == np.float32 and uniform.shape == (out.shape[0], 8)
            and (field is None or (field.dtype == out.dtype
                                   and field.shape == (out.shape[0], 2, height, width)
                                   and field.flags.c_contiguous))
            and translate >= 0 and out.flags.c_contiguous and data.flags.c_contiguous
            and uniform.flags.c_contiguous)


def cache_status() -> str:
    """Whether compiled kernels are on disk (Numba's cache next to kernels/cpu.py, or
    $NUMBA_CACHE_DIR), without importing numba."""
    import glob
    from importlib import resources
    roots = [os.environ.get("NUMBA_CACHE_DIR", "")]
    try:
        roots.append(os.path.join(str(resources.files("bpgpu.kernels")), "__pycache__"))
    except (ModuleNotFoundError, TypeError):
        pass
    found = [f for r in roots if r for pattern in ("cpu.*.nbi", "blas.*.nbi")
             for f in glob.glob(os.path.join(r, "**", pattern), recursive=True)]
    if not found:
        return "kernels not compiled yet: the first run compiles them (~8 s), or run bpgpu warmup"
    return f"{len(found)} compiled kernels cached on disk"


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
        self._act = cpu.ACT_CODES
        self._loss = cpu.LOSS_CODES

    def describe(self) -> str:
        cores = os.cpu_count() or 1
        mode = ("serial kernels" if cores <= SERIAL_MAX_CORES
                else f"parallel kernels above batch {self.single_thread_max_batch}")
        return f"numba {self._numba.__version__} ({mode} on {cores} cores; {cache_status()})"

    # ------------------------------------------------------------------ compilation
    def warmup(self, dtypes=("float32", "float64")) -> dict:
        """Compile (or load from Numba's on-disk cache) every kernel the model uses, and the
        compiled epochs of the textbook network (sigmoid hidden, softmax, cross-entropy, plain
        SGD, with and without training metrics).

        Returns
        -------
        dict
            ``seconds`` (wall time), ``kernels`` (how many dispatchers), ``cache_hits`` and
            ``compiled`` (signatures loaded from the cache vs compiled now), ``epochs`` (compiled
            epochs ready: compiled now or loaded).
        """
        import time

        from . import numba_epoch
        t0 = time.perf_counter()
        model_mod = __import__("bpgpu.mlp", fromlist=["MLP"])
        rng = np.random.default_rng(0)
        X = rng.integers(0, 256, (8, 6), dtype=np.uint8)
        y = rng.integers(0, 3, 8)
        with numba_epoch.override("0"):            # every kernel, through the per-step path
            for dtype in dtypes:
                for act, out, loss in (("sigmoid", "softmax", "ce"), ("tanh", "sigmoid", "bce"),
                                       ("relu", "identity", "mse")):
                    net = model_mod.MLP([6, 5, 3], activation=act, output=out, loss=loss,
                                        dtype=dtype, backend=self, seed=0)
                    targets = y if loss == "ce" else rng.uniform(0.1, 0.9, (8, 3))
                    for opt in ("sgd", "momentum", "nesterov", "adam"):
                        net.fit(X, targets, epochs=1, batch_size=4, optimizer=opt, lr=0.01,
                                dropout=0.1)
                    net.evaluate(X, targets)
        before = numba_epoch.STATS["compiled_epochs"]
        with numba_epoch.override("1" if numba_epoch.enabled() else "0"):
            for dtype in dtypes:
                net = model_mod.MLP([6, 5, 3], dtype=dtype, backend=self, seed=0)
                for metrics in (True, False):
                    net.fit(X, y, epochs=1, batch_size=4, train_metrics=metrics)
        hits = compiled = 0
        dispatchers = [d for pair in self._k.values() for d in set(pair)]
        for dispatcher in dispatchers + [self._blas.gemm, self._blas.gemv]:
            hits += sum(dispatcher.stats.cache_hits.values())
            compiled += sum(dispatcher.stats.cache_misses.values())
        return {"seconds": time.perf_counter() - t0, "kernels": len(self._k),
                "cache_hits": hits, "compiled": compiled,
                "epochs": numba_epoch.STATS["compiled_epochs"] - before}

    # ------------------------------------------------------------------ threading
    def _kernel_threads_for(self, batch_size: int) -> int:
        """Numba threads used at this batch size (1: the serial kernels).

        Measured on 2 cores (bench/NOTES.md): serial kernels were as fast as parallel ones at
        every batch size, and a thread pool spinning beside BLAS slowed GEMMs 5x at batch 1024,
        so with <= SERIAL_MAX_CORES cores every kernel runs serially.
        """
        if batch_size <= self.single_thread_max_batch or (os.cpu_count() or 1) <= SERIAL_MAX_CORES:
            return 1
        return self._numba.get_num_threads()

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

    _parallel_ok = (os.cpu_count() or 1) > SERIAL_MAX_CORES

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
        if (blas is None or not a.dtype == b.dtype == out.dtype or not a.flags.c_contiguous
                or not b.flags.c_contiguous or not out.flags.c_contiguous):   # BLAS checks shapes
            return super().gemm(a, b, out, trans_a, trans_b, alpha, beta)
        t = out.dtype.type
        self._blas.gemm(blas[0], blas[2], a, b, out, trans_a, trans_b, t(alpha), t(beta))
        return out

    # ------------------------------------------------------------------ fused ops
    def bias_activation(self, z, bias, activation: str):
        """One fused pass per activation (kernels/cpu.py; exp and tanh vectorised in the loop)."""
        if not _ok_rows(z, bias):
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
        if not _ok(delta, a) or delta.ndim != 2 or activation not in self._act:
            return super().activation_backward(delta, a, activation)
        self._kernel("activation_backward", delta.size)(delta, a, self._act[activation])
        return delta

    def output_delta(self, a, y, delta, output: str, loss: str, loss_acc=None):
        if not _ok(a, y, delta) or a.ndim != 2 or loss not in self._loss:
            return super().output_delta(a, y, delta, output, loss, loss_acc)
        tiny, one_minus_eps = LOG_CLIP[a.dtype]
        total = self._kernel("output_delta", a.size)(
            a, y, delta, self._act[output], self._loss[loss], tiny, one_minus_eps,
            loss_acc is not None)
        if loss_acc is not None:
            loss_acc += total
        return delta

    def column_sums(self, d, out, alpha: float = 1.0, beta: float = 0.0):
        """Small: one Numba pass with alpha and beta; large: one BLAS GEMV on every core (with
        alpha and beta when numpy's CBLAS was found)."""
        if not _ok_rows(d, out):
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
        if not _ok(a, y) or a.ndim != 2:
            return super().count_correct(a, y, acc)
        acc += self._kernel("count_correct", a.size)(a, y)
        return acc

    def gather_rows(self, data, idx, out, scale: float = 1.0, shift: float = 0.0):
        scaled = data.dtype == np.uint8
        if not (out.dtype in _FLOATS and out.ndim == data.ndim == 2 and idx.ndim == 1
                and idx.dtype.kind in "iu" and out.shape == (idx.shape[0], data.shape[1])
                and (scaled or data.dtype == out.dtype) and out.flags.c_contiguous
                and data.flags.c_contiguous):
            return super().gather_rows(data, idx, out, scale, shift)
        t = out.dtype.type
        bad = self._kernel("gather", out.size)(data, idx, out, t(scale), t(shift), scaled)
        if bad >= 0:
            raise IndexError(f"row index {int(idx[bad])} is out of bounds for {data.shape[0]} "
                             f"rows")
        return out

    def random_uniform(self, out, key, counter, offset: int = 0):
        if not (out.dtype == np.float32 and out.flags.c_contiguous):
            return super().random_uniform(out, key, counter, offset)
        words = np.array([int(k) % (1 << 64) for k in key] + [int(c) % (1 << 64) for c in counter],
                         np.uint64)
        self._kernel("random_uniform", out.size)(out.reshape(-1), words[:2], words[2:],
                                                 int(offset))
        return out

    def dropout_forward(self, a, uniform, rate: float, mask, out):
        if not (_ok(a, mask, out) and uniform.dtype == np.float32 and uniform.shape == a.shape
                and uniform.flags.c_contiguous and a.ndim == 2):
            return super().dropout_forward(a, uniform, rate, mask, out)
        t = a.dtype.type
        self._kernel("dropout_forward", a.size)(a, uniform, np.float32(rate),
                                                t(1.0 / (1.0 - rate)), mask, out)
        return out

    def dropout_backward(self, delta, mask):
        if not _ok(delta, mask) or delta.ndim != 2:
            return super().dropout_backward(delta, mask)
        self._kernel("multiply_inplace", delta.size)(delta, mask)
        return delta

    def sgd_update(self, params, grads, lr: float, weight_decay: float = 0.0, n_decay: int = 0):
        if not _ok(params, grads) or params.ndim != 1 or not 0 <= n_decay <= params.size:
            return super().sgd_update(params, grads, lr, weight_decay, n_decay)
        t = params.dtype.type
        self._kernel("sgd_update", params.size)(params, grads, t(lr), t(weight_decay), n_decay)
        return params

    def momentum_update(self, params, grads, velocity, lr: float, momentum: float,
                        weight_decay: float = 0.0, n_decay: int = 0, nesterov: bool = False):
        if not _ok(params, grads, velocity) or params.ndim != 1 or not 0 <= n_decay <= params.size:
            return super().momentum_update(params, grads, velocity, lr, momentum, weight_decay,
                                           n_decay, nesterov)
        t = params.dtype.type
        self._kernel("momentum_update", params.size)(params, grads, velocity, t(lr), t(momentum),
                                                     t(weight_decay), n_decay, nesterov)
        return params

    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    step: int, weight_decay: float = 0.0, n_decay: int = 0):
        if not _ok(params, grads, m, v) or params.ndim != 1 or not 0 <= n_decay <= params.size:
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
        if not _ok_augment(data, idx, out, uniform, field, height, width, translate):
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
