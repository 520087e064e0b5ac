"""The CuPy backend: training on an NVIDIA GPU with cuBLAS GEMMs and the fused kernels of
``kernels/fused.cu``.

Data and parameters live on the device. Every GEMM is one ``cublasGemmEx`` call with BLAS's
``alpha`` and ``beta`` (so plain SGD runs inside the gradient GEMMs: :meth:`fuses_sgd`), and every
elementwise or per-row op is one launch of a kernel from ``fused.cu``, compiled once per process
(on first use, or by :meth:`load_kernels` before anything is timed) and looked up once. A launch is
validated as a whole -- one float dtype, the shapes that belong together, every array
C-contiguous -- because a raw kernel ignores strides and checks no bounds; anything else goes to
the reference ops of :class:`Backend` on cupy. Constructing the backend without a working device
raises :class:`~bpgpu.errors.BackendUnavailable` naming the cause (see
:func:`bpgpu._compat.cupy_status`).

TF32 is one process-wide setting, CuPy's compute type for float32 (which ``CUPY_TF32=1`` sets at
start): :func:`set_tf32` changes it, :func:`tf32_state` reads it, and this backend's GEMMs follow
it (column sums never use TF32: they are memory-bound and feed the bias gradient).

GEMMs go through bpgpu's own cuBLAS handle, called through ctypes on the libcublas CuPy loads
(:mod:`bpgpu.backends.cupy_cublas`), because CuPy refuses cuBLAS calls inside a CUDA-graph
capture; where that library cannot be loaded they go through CuPy's cuBLAS wrapper instead, and
epochs are not captured. An epoch of full batches runs as replays of ONE captured training step
(:meth:`CupyBackend.compiled_epoch`, :mod:`bpgpu.backends.cupy_graph`; ``BPGPU_CUDA_GRAPH=0``
turns that off). The fast-path condition of every op is one function of :data:`FAST_PATHS`,
called by the op before it launches and by the graph's lowering before it captures.

The module never imports cupy itself: the backend takes the module from the probe, which lets the
test suite drive this exact code through a host emulation of the kernels (``tests/emulation``).
What ran on the device is counted per kernel name in ``_launches`` (cuBLAS calls as
``"cublas_gemm"``; a graph replay adds each of its nodes), so tests can tell that a step ran the
kernels and not the reference fallbacks; ``_host_calls`` counts what the host submitted (kernel
launches, cuBLAS calls, graph launches).

Status: the kernels compile with nvcc for sm_80 and sm_90 and run correctly in the host emulation;
whether they run on a GPU is for the GPU-marked tests (``bash bench/gpu.sh``) to say.
"""

from __future__ import annotations

import collections
import contextlib
import weakref
from importlib import resources

import numpy as np

from .. import _compat
from ..errors import BackendUnavailable, ConfigError
from ..kernels import launch
from ..kernels.codes import ACT_CODES, LOSS_CODES
from .base import EXP_LIMIT, LOG_CLIP, Backend
from .cupy_rules import (CTYPE, F32, F64, FAST_PATHS, _fits_activation_backward,
                         _fits_adam_update, _fits_bias_activation, _fits_column_sums,
                         _fits_count_correct, _fits_dropout_backward, _fits_dropout_forward,
                         _fits_gather_augmented, _fits_gather_rows, _fits_gemm,
                         _fits_momentum_update, _fits_output_delta, _fits_random_uniform,
                         _fits_sgd_update, adam_constants, adam_rates,
                         adam_scalars, philox_counter)

__all__ = ["CupyBackend", "KERNEL_NAMES", "TEMPLATE_KERNELS", "PLAIN_KERNELS", "STEP_KERNELS",
           "FAST_PATHS", "kernel_source", "compile_options", "name_expressions", "set_tf32",
           "tf32_state", "adam_rates", "adam_scalars", "adam_constants", "philox_counter"]

#: Kernels of fused.cu instantiated for float and double (looked up by name expression); the
#: "_at" forms are the captured step's (their per-batch arguments read from the step state).
TEMPLATE_KERNELS = ("bias_activation", "bias_softmax", "activation_backward", "softmax_backward",
                    "output_delta", "count_correct", "gather_scale", "gather",
                    "gather_augmented_scale", "gather_augmented", "dropout_forward",
                    "multiply_inplace", "sgd_update", "momentum_update", "adam_update",
                    "gather_scale_at", "gather_at", "gather_augmented_scale_at",
                    "gather_augmented_at", "adam_update_at", "output_delta_at")
#: extern "C" kernels of fused.cu: the Philox stream (float32 only) and the step state's.
PLAIN_KERNELS = ("random_uniform", "random_uniform_at", "step_set", "step_advance")
#: The kernels that exist for the captured step only (bpgpu.backends.cupy_graph launches them).
STEP_KERNELS = ("gather_scale_at", "gather_at", "gather_augmented_scale_at",
                "gather_augmented_at", "adam_update_at", "output_delta_at", "random_uniform_at",
                "step_set", "step_advance")
KERNEL_NAMES = TEMPLATE_KERNELS + PLAIN_KERNELS
#: The C++ standard every compiler of fused.cu is given (NVRTC, nvcc, the host emulation).
CXX_STD = "-std=c++17"

_CTYPE, _F32, _F64 = CTYPE, F32, F64
_BLOCK = 256              # threads per block: 8 warps
_ROWS_PER_BLOCK = _BLOCK // 32
_BLOCKS_PER_SM = 8        # grid cap: grid-stride loops cover the rest
# cudaDataType_t values (CUDA's library_types.h): CUDA_R_32F, CUDA_R_64F
_CUDA_DATA_TYPE = {_F32: 0, _F64: 1}


def kernel_source() -> str:
    """The CUDA source of the fused kernels (shipped as package data)."""
    return (resources.files("bpgpu.kernels") / "fused.cu").read_text()


def compile_options() -> tuple[str, ...]:
    """Options for compiling ``fused.cu``: the C++ standard and the activation and loss codes of
    :data:`bpgpu.kernels.codes.ACT_CODES` / ``LOSS_CODES`` as ``-D`` defines (the one table of
    them). NVRTC (through CuPy), the nvcc test and the host emulation all use exactly these."""
    defines = [f"-DBPGPU_ACT_{name.upper()}={code}" for name, code in ACT_CODES.items()]
    defines += [f"-DBPGPU_LOSS_{name.upper()}={code}" for name, code in LOSS_CODES.items()]
    return (CXX_STD, *defines)


def name_expressions() -> list[str]:
    """The C++ name of every template instantiation CuPy must look up, e.g. ``gather<float>``."""
    return [f"{name}<{ctype}>" for name in TEMPLATE_KERNELS for ctype in _CTYPE.values()]


# ---------------------------------------------------------------------------------------- TF32
def _require_cupy():
    cupy, reason = _compat.cupy_status()
    if cupy is None:
        raise BackendUnavailable(f"backend 'cupy' is not available: {reason}")
    return cupy


def _tf32_enabled(cupy) -> bool:
    core = cupy._core
    return core.get_compute_type(cupy.float32) == core._routines_linalg.COMPUTE_TYPE_TF32


def _set_tf32(cupy, enabled: bool) -> bool:
    core = cupy._core
    linalg = core._routines_linalg
    if enabled:
        cc = int(cupy.cuda.Device().compute_capability)
        if cc < 80:   # CuPy would fall back to the default with a warning: refuse instead
            raise ConfigError(f"TF32 needs a GPU of compute capability 8.0 or newer; this one "
                              f"is {cc // 10}.{cc % 10}")
        core.set_compute_type(cupy.float32, linalg.COMPUTE_TYPE_TF32)
    else:
        core.set_compute_type(cupy.float32, linalg.COMPUTE_TYPE_DEFAULT)
    return _tf32_enabled(cupy)


def set_tf32(enabled: bool) -> bool:
    """Allow (or forbid) TF32 tensor-core math in every float32 GEMM of this process: CuPy's own
    and the cupy backend's (faster; inputs rounded to a 10-bit mantissa, ~1e-3 relative error).

    Returns
    -------
    bool
        The state now in force, read back from CuPy.

    Raises
    ------
    BackendUnavailable
        Without a working CuPy and GPU.
    ConfigError
        Enabling on a GPU below compute capability 8.0, which has no TF32.
    """
    return _set_tf32(_require_cupy(), bool(enabled))


def tf32_state() -> bool | None:
    """Whether float32 GEMMs may use TF32 right now (CuPy's process-wide compute type, which
    ``CUPY_TF32=1`` sets at start and :func:`set_tf32` changes); None without a working CuPy."""
    cupy, _ = _compat.cupy_status()
    return None if cupy is None else _tf32_enabled(cupy)


class CupyBackend(Backend):
    """CuPy on the current CUDA device.

    TF32 is not a property of a backend: see :func:`set_tf32` (``bpgpu train --tf32``).
    """

    name = "cupy"

    def __init__(self):
        cupy = _require_cupy()
        self._setup(cupy, _compat.cupy_status()[1])

    def _setup(self, cupy, reason, cublas_library=None):
        """Bind to a CuPy module: the real one, or the host emulation's stand-in in the tests
        (which also passes its own ``cublas_library``, else :func:`cupy_cublas.find_library`
        finds it)."""
        super().__init__()
        self.xp = cupy
        self._reason = reason
        self._cublas = cupy.cuda.cublas
        self._device = cupy.cuda.device
        self._core = cupy._core
        self._tf32_code = cupy._core._routines_linalg.COMPUTE_TYPE_TF32
        self._module = None
        self._copy_stream = None          # the staging copies' stream (made on first use)
        self._functions: dict = {}
        self._launches: collections.Counter = collections.Counter()
        self._host_calls = 0
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        self._max_blocks = _BLOCKS_PER_SM * int(props["multiProcessorCount"])
        # alpha and beta of each GEMM: host memory whose address is taken once
        self._scalars = {dt: np.zeros(2, dt) for dt in _CTYPE}
        self._scalar_ptr = {dt: arr.ctypes.data for dt, arr in self._scalars.items()}
        self._gemm_checked: dict = {}
        self._index_ranges: dict = {}     # id(index buffer) -> (weakref, min, max)
        self._cublas_library = cublas_library
        self._blas = None                 # the ctypes cuBLAS (cupy_cublas.Cublas), made lazily
        self._blas_reason = None          # why there is none, once that is known

    def describe(self) -> str:
        tf32 = "on" if _tf32_enabled(self.xp) else "off"
        return f"cupy ({self._reason}; TF32 {tf32} for float32 GEMMs)"

    # ------------------------------------------------------------------ memory and transfer
    def to_host(self, arr) -> np.ndarray:
        return self.xp.asnumpy(arr)

    def upload(self, host, out):
        out.set(np.ascontiguousarray(host, dtype=out.dtype))
        return out

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    # staging (bpgpu.feeder): page-locked host buffers, copies on a second stream that overlap
    # the step running on the current one, and events that order the two streams
    def staging_buffer(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        memory = self.xp.cuda.alloc_pinned_memory(max(n * dtype.itemsize, 1))
        return np.frombuffer(memory, dtype, n).reshape(shape)

    def upload_async(self, host, out, after=None):
        cuda = self.xp.cuda
        if self._copy_stream is None:
            self._copy_stream = cuda.Stream(non_blocking=True)
        stream = self._copy_stream
        if after is not None:
            stream.wait_event(after)         # the step that last read ``out`` is done
        out.set(host, stream=stream)
        done = cuda.Event(disable_timing=True)
        done.record(stream)
        cuda.get_current_stream().wait_event(done)      # the next step reads the copy
        return done

    def mark(self):
        event = self.xp.cuda.Event(disable_timing=True)
        event.record(self.xp.cuda.get_current_stream())
        return event

    def wait_host(self, event) -> None:
        if event is not None:
            event.synchronize()

    # ------------------------------------------------------------------ kernels
    def _compile(self):
        """Compile fused.cu once for this backend (CuPy caches the binary on disk and in memory)."""
        if self._module is None:
            self._module = self.xp.RawModule(code=kernel_source(), options=compile_options(),
                                             name_expressions=name_expressions())
        return self._module

    def _function(self, name, dtype):
        key = (name, dtype)
        fn = self._functions.get(key)
        if fn is None:
            expr = name if name in PLAIN_KERNELS else f"{name}<{_CTYPE[dtype]}>"
            fn = self._functions[key] = self._compile().get_function(expr)
        return fn

    def _launch(self, name, dtype, work, args, per_row=False, per_block=False):
        """Launch ``name<dtype>`` over ``work`` elements (or rows, one warp each, with
        ``per_row``; or items, one block each, with ``per_block``): enough blocks for one pass,
        capped at a few per SM."""
        if work <= 0:
            return
        per_block = 1 if per_block else _ROWS_PER_BLOCK if per_row else _BLOCK
        grid = min(-(-int(work) // per_block), self._max_blocks)
        self._function(name, dtype)((grid,), (_BLOCK,), args)
        self._launches[name] += 1
        self._host_calls += 1

    def _launch_one(self, name, args):
        """One block of one thread (the step state's kernels)."""
        self._function(name, _F32)((1,), (1,), args)
        self._launches[name] += 1
        self._host_calls += 1

    def load_kernels(self, dtypes=("float32", "float64")) -> None:
        """Compile fused.cu (or load it from CuPy's cache), look up every kernel and check the
        cuBLAS path for ``dtypes`` now, before anything is timed (:func:`bpgpu.warmup.warmup`
        then runs tiny training steps, so CuPy's own kernels that training uses compile too)."""
        for dt in (np.dtype(d) for d in dtypes):
            for name in TEMPLATE_KERNELS:
                self._function(name, dt)
            self._gemm_works(dt)
        for name in PLAIN_KERNELS:
            self._function(name, _F32)

    def compile_stats(self) -> dict:
        """``kernels``: kernel functions loaded; ``compiled``: the same count (CuPy does not say
        whether NVRTC ran or its disk cache answered: a warm-up's seconds tell); ``cache_hits``:
        0; ``compiled_epochs``: epochs run as CUDA-graph replays so far."""
        from . import cupy_graph
        n = len(self._functions)
        return {"kernels": n, "compiled": n, "cache_hits": 0,
                "compiled_epochs": cupy_graph.STATS["graph_epochs"]}

    # ------------------------------------------------------------------ the captured epoch
    def compiles_epochs(self) -> bool:
        """True unless ``BPGPU_CUDA_GRAPH=0`` (:func:`cupy_graph.enabled`)."""
        from . import cupy_graph
        return cupy_graph.enabled()

    @contextlib.contextmanager
    def compiled_epoch_mode(self, mode: str):
        """Within the block epochs run as CUDA-graph replays never ("0"), always ("1") or by
        size ("auto"), whatever ``BPGPU_CUDA_GRAPH`` says (:func:`cupy_graph.override`)."""
        from . import cupy_graph
        with cupy_graph.override(mode):
            yield

    def compiled_epoch(self, model, ws, X_dev, T_dev, optimizer, **step_options):
        """The epoch's full batches as replays of ONE captured training step (a CUDA graph
        recorded from ``model.train_step``: bpgpu.backends.cupy_graph); None when
        ``BPGPU_CUDA_GRAPH=0``."""
        from . import cupy_graph
        if not cupy_graph.enabled():
            return None
        return cupy_graph.GraphEpoch(self, model, ws, X_dev, T_dev, optimizer, step_options)

    def capture_ready(self, dtype):
        """None when a training step in ``dtype`` can be captured here (GEMMs through the
        ctypes cuBLAS, which has checked out), else why not."""
        if not self._gemm_works(np.dtype(dtype)):
            return "cuBLAS failed its check GEMM"
        if self._blas is None:
            return f"GEMMs cannot be captured: {self._blas_reason}"
        return None

    def stream_ptr(self) -> int:
        """The current CUDA stream (what kernels launch on and GEMMs are bound to)."""
        return self.xp.cuda.get_current_stream().ptr

    # ------------------------------------------------------------------ cuBLAS
    def _ctypes_blas(self):
        """The ctypes cuBLAS (made on first use), or None with :attr:`_blas_reason` saying why."""
        if self._blas is None and self._blas_reason is None:
            from . import cupy_cublas
            try:
                path = self._cublas_library or cupy_cublas.find_library()[0]
                workspace = self.xp.empty(cupy_cublas.WORKSPACE_BYTES, np.uint8)
                self._blas = cupy_cublas.Cublas(path, workspace)
            except cupy_cublas.CublasUnavailable as exc:
                self._blas_reason = f"cuBLAS through ctypes is unavailable ({exc})"
        return self._blas

    def _gemm_ex(self, a_ptr, lda, trans_a, b_ptr, ldb, trans_b, c_ptr, m, n, k, alpha, beta,
                 dtype, tf32):
        """Row-major ``C (m, n) = alpha op(A) op(B) + beta C`` as one cublasGemmEx call.

        cuBLAS is column-major: a row-major (r, c) array is its transpose with leading dimension
        c, so the call computes ``C^T = alpha op(B)^T op(A)^T + beta C^T`` -- B first, m and n
        swapped, each operand transposed exactly when the row-major op transposes it. ``lda`` /
        ``ldb`` are the row lengths of A and B as stored; ``C``'s is n. The call goes to the
        ctypes cuBLAS on the current stream where there is one, else to CuPy's.
        """
        cublas = self._cublas
        scalars = self._scalars[dtype]
        scalars[0] = alpha
        scalars[1] = beta
        ptr = self._scalar_ptr[dtype]
        data = _CUDA_DATA_TYPE[dtype]
        if dtype == _F64:
            compute = cublas.CUBLAS_COMPUTE_64F
        elif tf32 and self._core.get_compute_type(_F32) == self._tf32_code:
            compute = cublas.CUBLAS_COMPUTE_32F_FAST_TF32
        else:
            compute = cublas.CUBLAS_COMPUTE_32F
        args = (cublas.CUBLAS_OP_T if trans_b else cublas.CUBLAS_OP_N,
                cublas.CUBLAS_OP_T if trans_a else cublas.CUBLAS_OP_N,
                n, m, k, ptr, b_ptr, data, max(1, ldb), a_ptr, data, max(1, lda),
                ptr + dtype.itemsize, c_ptr, data, max(1, n), compute, cublas.CUBLAS_GEMM_DEFAULT)
        if self._blas is not None:
            self._blas.gemm_ex(self.stream_ptr(), *args)
        else:
            cublas.gemmEx(self._device.get_cublas_handle(), *args)
        self._launches["cublas_gemm"] += 1
        self._host_calls += 1

    def _gemm_check(self, dtype) -> bool:
        """One small GEMM on integers (exact in any precision, TF32 included) on the route in
        use: True when it gives the exact answer (not counted as the model's work)."""
        xp = self.xp
        a = np.arange(1.0, 7.0).reshape(3, 2)       # used transposed: (2, 3)
        b = np.arange(-6.0, 6.0).reshape(3, 4)
        c = np.arange(8.0).reshape(2, 4)
        want = -0.5 * (a.T @ b) + 2.0 * c
        counted = self._launches["cublas_gemm"], self._host_calls
        try:
            ad, bd, cd = (xp.asarray(v, dtype=dtype) for v in (a, b, c))
            self._gemm_ex(ad.data.ptr, 2, True, bd.data.ptr, 4, False, cd.data.ptr,
                          2, 4, 3, -0.5, 2.0, dtype, True)
            return bool(np.array_equal(xp.asnumpy(cd), want))
        except Exception:            # a broken cuBLAS: matmul reports it at the first GEMM
            return False
        finally:
            self._launches["cublas_gemm"], self._host_calls = counted

    def _gemm_works(self, dtype) -> bool:
        """Check the cuBLAS path once per dtype: the ctypes cuBLAS where it loads, else (or
        where it fails the check) CuPy's; on any failure every GEMM goes to CuPy's matmul."""
        ok = self._gemm_checked.get(dtype)
        if ok is None:
            self._ctypes_blas()
            ok = self._gemm_check(dtype)
            if not ok and self._blas is not None:     # CuPy's route instead, for every dtype
                self._blas, self._blas_reason = None, "the ctypes cuBLAS failed its check GEMM"
                self._gemm_checked.clear()
                ok = self._gemm_check(dtype)
            self._gemm_checked[dtype] = ok
        return ok

    def fuses_sgd(self, dtype) -> bool:
        """True for float32 and float64 once the cublasGemmEx path has checked out: one GEMM
        with ``alpha = -lr`` and ``beta = 1 - lr * wd`` updates the weights in place (where the
        dtype represents that decay: :meth:`bpgpu.optim.SGD.fused_sgd` decides)."""
        dtype = np.dtype(dtype)
        return dtype in _CTYPE and self._gemm_works(dtype)

    def gemm(self, a, b, out, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0):
        if not _fits_gemm(self, a, b, out):
            return super().gemm(a, b, out, trans_a, trans_b, alpha, beta)
        m, n = out.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if ((a.shape[1] if trans_a else a.shape[0]) != m or
                (b.shape[1] if trans_b else b.shape[0]) != k or
                (b.shape[0] if trans_b else b.shape[1]) != n):
            raise ValueError(f"gemm: op(a) of {a.shape} (trans {trans_a}) times op(b) of "
                             f"{b.shape} (trans {trans_b}) does not give {out.shape}")
        if out.size:
            self._gemm_ex(a.data.ptr, a.shape[1], trans_a, b.data.ptr, b.shape[1], trans_b,
                          out.data.ptr, m, n, k, alpha, beta, out.dtype, True)
        return out

    def column_sums(self, d, out, alpha: float = 1.0, beta: float = 0.0):
        """``out = alpha * ones(B) @ d + beta * out``: one GEMM of a row of ones (never TF32)."""
        if not _fits_column_sums(self, d, out):
            return super().column_sums(d, out, alpha, beta)
        rows, cols = d.shape
        if cols:
            ones = self._ones(rows, d.dtype)
            self._gemm_ex(ones.data.ptr, rows, False, d.data.ptr, cols, False, out.data.ptr,
                          1, cols, rows, alpha, beta, d.dtype, False)
        return out

    # ------------------------------------------------------------------ fused ops
    def bias_activation(self, z, bias, activation: str):
        if not _fits_bias_activation(self, z, bias, activation):
            return super().bias_activation(z, bias, activation)
        rows, cols = z.shape
        if activation == "softmax":
            launch.require_columns(z, "bias_activation (softmax)")
            self._launch("bias_softmax", z.dtype, rows, (z, bias, np.int64(rows), np.int32(cols)),
                         per_row=True)
        else:
            self._launch("bias_activation", z.dtype, z.size,
                         (z, bias, np.int64(z.size), np.int32(cols),
                          np.int32(ACT_CODES[activation]), EXP_LIMIT[z.dtype]))
        return z

    def activation_backward(self, delta, a, activation: str):
        if activation == "identity":
            return delta
        if not _fits_activation_backward(self, delta, a, activation):
            return super().activation_backward(delta, a, activation)
        rows, cols = delta.shape
        if activation == "softmax":
            self._launch("softmax_backward", delta.dtype, rows,
                         (delta, a, np.int64(rows), np.int32(cols)), per_row=True)
        else:
            self._launch("activation_backward", delta.dtype, delta.size,
                         (delta, a, np.int64(delta.size), np.int32(ACT_CODES[activation])))
        return delta

    def output_delta(self, a, y, delta, output: str, loss: str, loss_acc=None, weights=None):
        if not _fits_output_delta(self, a, y, delta, output, loss, loss_acc, weights):
            return super().output_delta(a, y, delta, output, loss, loss_acc, weights)
        args = self.output_delta_launch(a, y, delta, output, loss, loss_acc)
        self._launch("output_delta", a.dtype, a.shape[0],
                     args + (a if weights is None else weights, np.int32(weights is not None)),
                     per_row=True)
        return delta

    def output_delta_launch(self, a, y, delta, output, loss, loss_acc):
        """The arguments of the output_delta kernels before the weights (the eager launch and
        the captured step's ``output_delta_at`` share them)."""
        t = a.dtype.type
        tiny, one_minus_eps = LOG_CLIP[a.dtype]
        acc = loss_acc if loss_acc is not None else self._scratch("no_loss", (1,), _F64)
        rows, cols = a.shape
        return (a, y, delta, np.int64(rows), np.int32(cols), np.int32(ACT_CODES[output]),
                np.int32(LOSS_CODES[loss]), t(1.0 / rows), tiny, one_minus_eps, acc,
                np.int32(loss_acc is not None))

    def count_correct(self, a, y, acc):
        if not _fits_count_correct(self, a, y, acc):
            return super().count_correct(a, y, acc)
        launch.require_columns(a, "count_correct")
        rows, cols = a.shape
        self._launch("count_correct", a.dtype, rows, (a, y, np.int64(rows), np.int32(cols), acc),
                     per_row=True)
        return acc

    def _index_range(self, idx):
        """``(min, max)`` of the whole index buffer ``idx`` is a view of, read from the device once
        per buffer: an epoch's permutation is checked once, not at each of its per-step slices
        (a read per step would synchronise every step)."""
        root = idx.base if getattr(idx, "base", None) is not None else idx
        entry = self._index_ranges.get(id(root))
        if entry is None or entry[0]() is not root:
            whole = root.reshape(-1)
            if whole.dtype != idx.dtype:
                whole = whole.view(idx.dtype)
            lo, hi = (int(whole.min()), int(whole.max())) if whole.size else (0, -1)
            if len(self._index_ranges) > 64:          # forget buffers that no longer exist
                self._index_ranges = {k: v for k, v in self._index_ranges.items()
                                      if v[0]() is not None}
            entry = self._index_ranges[id(root)] = (weakref.ref(root), lo, hi)
        return entry[1], entry[2]

    def gather_rows(self, data, idx, out, scale: float = 1.0, shift: float = 0.0):
        """As the reference, in one kernel. A row index out of range raises IndexError, checked
        once per index buffer (see :meth:`_index_range`); should a checked buffer be changed in
        place afterwards, the kernel still never reads out of bounds: such a row comes out NaN,
        which training reports as divergence."""
        if not _fits_gather_rows(self, data, idx, out):
            return super().gather_rows(data, idx, out, scale, shift)
        self._check_indices(idx, data.shape[0])
        name, args = self.gather_launch(data, out, scale, shift)
        self._launch(name, out.dtype, out.size, args[:1] + (idx,) + args[1:])
        return out

    def gather_launch(self, data, out, scale, shift):
        """``(kernel, arguments without the index array)`` of the row gather into ``out``:
        ``gather_scale`` for uint8 data, ``gather`` for float data (the captured step launches
        the same kernel's "_at" form with the same arguments)."""
        rows, cols = out.shape
        common = (out, np.int64(out.size), np.int32(cols), np.int64(data.shape[0]))
        if data.dtype == np.uint8:
            t = out.dtype.type
            return "gather_scale", (data,) + common + (t(scale), t(shift))
        return "gather", (data,) + common

    def _check_indices(self, idx, n_rows):
        """IndexError for a row index outside ``[0, n_rows)``, read once per index buffer."""
        lo, hi = self._index_range(idx)
        if lo < 0 or hi >= n_rows:
            host = self.to_host(idx)
            bad = host[(host < 0) | (host >= n_rows)]
            if bad.size:
                raise IndexError(f"row index {int(bad[0])} is out of bounds for {n_rows} rows")

    def gather_augmented(self, data, idx, out, uniform, field, height: int, width: int,
                         translate: int = 0, rotate: float = 0.0, zoom: float = 0.0,
                         shear: float = 0.0, flip: float = 0.0, scale: float = 1.0,
                         shift: float = 0.0):
        """As the reference, in one kernel (``gather_augmented[_scale]`` in fused.cu: one block
        per image). Row indices are checked as :meth:`gather_rows` checks them; the elastic
        field, when there is one, comes from :meth:`elastic_field` (two cuBLAS GEMMs)."""
        if not _fits_gather_augmented(self, data, idx, out, uniform, field, height, width,
                                      translate):
            return super().gather_augmented(data, idx, out, uniform, field, height, width,
                                            translate, rotate, zoom, shear, flip, scale, shift)
        self._check_indices(idx, data.shape[0])
        name, args = self.gather_augmented_launch(data, out, uniform, field, height, width,
                                                  translate, rotate, zoom, shear, flip, scale,
                                                  shift)
        self._launch(name, out.dtype, out.shape[0], args[:1] + (idx,) + args[1:],
                     per_block=True)
        return out

    def gather_augmented_launch(self, data, out, uniform, field, height, width, translate,
                                rotate, zoom, shear, flip, scale, shift):
        """``(kernel, arguments without the index array)`` of the augmented gather (as
        :meth:`gather_launch`)."""
        has_field = field is not None
        geometry = (np.int32(has_field), np.int64(out.shape[0]), np.int64(data.shape[0]),
                    np.int32(height), np.int32(width), np.int32(translate), np.float64(rotate),
                    np.float64(zoom), np.float64(shear), np.float64(flip))
        arrays = (data, out, uniform, field if has_field else out)   # never read without one
        if data.dtype == np.uint8:
            t = out.dtype.type
            return "gather_augmented_scale", arrays + geometry + (t(scale), t(shift))
        return "gather_augmented", arrays + geometry

    def random_uniform(self, out, key, counter, offset: int = 0):
        """As the reference, drawn on the device: one thread per block of 8 floats of the
        stream (see ``random_uniform`` in fused.cu for how the counter and offset map)."""
        if len(key) != 2 or len(counter) != 4 or int(offset) < 0:
            raise ValueError(f"random_uniform takes 2 key words, 4 counter words and an offset "
                             f">= 0, got {len(key)}, {len(counter)} and {offset}")
        if not _fits_random_uniform(self, out, key, counter, offset):
            return super().random_uniform(out, key, counter, offset)
        mask = (1 << 64) - 1
        first, words = philox_counter(counter, offset)
        n = out.size
        self._launch("random_uniform", _F32, (first + n + 7) // 8,
                     (out, np.int64(n), np.int32(first), np.uint64(int(key[0]) & mask),
                      np.uint64(int(key[1]) & mask), *(np.uint64(w) for w in words)))
        return out

    def dropout_forward(self, a, uniform, rate: float, mask, out):
        if not _fits_dropout_forward(self, a, uniform, rate, mask, out):
            return super().dropout_forward(a, uniform, rate, mask, out)
        t = a.dtype.type
        self._launch("dropout_forward", a.dtype, a.size,
                     (a, uniform, np.float32(rate), t(1.0 / (1.0 - rate)), mask, out,
                      np.int64(a.size)))
        return out

    def dropout_backward(self, delta, mask):
        if not _fits_dropout_backward(self, delta, mask):
            return super().dropout_backward(delta, mask)
        self._launch("multiply_inplace", delta.dtype, delta.size,
                     (delta, mask, np.int64(delta.size)))
        return delta

    def sgd_update(self, params, grads, lr: float, weight_decay: float = 0.0, n_decay: int = 0):
        if not _fits_sgd_update(self, params, grads, lr, weight_decay, n_decay):
            return super().sgd_update(params, grads, lr, weight_decay, n_decay)
        t = params.dtype.type
        self._launch("sgd_update", params.dtype, params.size,
                     (params, grads, t(lr), t(weight_decay), np.int64(n_decay),
                      np.int64(params.size)))
        return params

    def momentum_update(self, params, grads, velocity, lr: float, momentum: float,
                        weight_decay: float = 0.0, n_decay: int = 0, nesterov: bool = False):
        if not _fits_momentum_update(self, params, grads, velocity, lr, momentum,
                                     weight_decay, n_decay, nesterov):
            return super().momentum_update(params, grads, velocity, lr, momentum, weight_decay,
                                           n_decay, nesterov)
        t = params.dtype.type
        self._launch("momentum_update", params.dtype, params.size,
                     (params, grads, velocity, t(lr), t(momentum), t(weight_decay),
                      np.int64(n_decay), np.int64(params.size), np.int32(bool(nesterov))))
        return params

    def adam_update(self, params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    step: int, weight_decay: float = 0.0, n_decay: int = 0):
        if not _fits_adam_update(self, params, grads, m, v, lr, beta1, beta2, eps, step,
                                 weight_decay, n_decay):
            return super().adam_update(params, grads, m, v, lr, beta1, beta2, eps, step,
                                       weight_decay, n_decay)
        t = params.dtype.type
        lr_t, inv_bias2 = adam_scalars(params.dtype, lr, beta1, beta2, step)
        b1, c1, b2, c2, eps_t = adam_constants(params.dtype, beta1, beta2, eps)
        self._launch("adam_update", params.dtype, params.size,
                     (params, grads, m, v, lr_t, b1, c1, b2, c2, eps_t, inv_bias2,
                      t(weight_decay), np.int64(n_decay), np.int64(params.size)))
        return params
