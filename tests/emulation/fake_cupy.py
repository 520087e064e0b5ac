"""A stand-in for the ``cupy`` module: exactly the calls the cupy backend (and the reference ops it
falls back to) makes, with kernels run by the host emulation and device memory in guarded buffers.

It is an object, not an entry in ``sys.modules``: a test hands it to one backend instance
(:func:`emulated_backend`), and nothing else in the process sees it. What it emulates:

- arrays: :class:`~devmem.DeviceArray` in guarded buffers (``empty``, ``zeros``, ``ones``,
  ``asarray``, ``ascontiguousarray``, ``arange``, ``asnumpy``); every other attribute is numpy's,
  so the reference ops of ``Backend`` run on the host as they would run on cupy.
- ``RawModule`` / ``RawKernel``: the source compiled for the host (hostcuda.py), every launch
  checked and counted per name expression in :attr:`EmulatedCupy.launches`.
- ``cuda.cublas.gemmEx``: cuBLAS's column-major GEMM on raw pointers (each operand resolved to
  the device buffer it lies in, bounds and leading dimensions checked as cuBLAS checks them;
  ``beta == 0`` ignores C; the FAST_TF32 compute type rounds float32 inputs to TF32).
- ``_core.get_compute_type`` / ``set_compute_type``: CuPy's process-global compute types,
  ``CUPY_TF32`` and the fallback below compute capability 8.0 included.
- ``cuda.runtime``, ``cuda.Device``, ``cuda.device.get_cublas_handle``, streams: one device with
  a chosen number of SMs (few, so the backend's capped grids make grid-stride loops iterate).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import os
import types
import warnings

import numpy as np

from bpgpu.backends.cupy_backend import CupyBackend

from .devmem import CAPTURING, CaptureError, DeviceArray, DeviceMemory, PinnedBuffer, no_capture
from . import fake_cublas
from .hostcuda import HostModule, KernelError, build

_HANDLE = 0x5EED
_DATA_TYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float64)}   # CUDA_R_32F, CUDA_R_64F


class FakeCublas:
    """``cupy_backends.cuda.libs.cublas``: the constants and the one call the backend uses."""

    CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C = 0, 1, 2
    CUBLAS_GEMM_DEFAULT = -1
    CUBLAS_COMPUTE_32F = 68
    CUBLAS_COMPUTE_32F_PEDANTIC = 69
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77
    CUBLAS_COMPUTE_64F = 70
    _COMPUTE = {0: (68, 69, 77), 1: (70, 71)}

    def __init__(self, memory):
        self.memory = memory
        self.calls = collections.deque(maxlen=64)   # (compute type, m, n, k) of recent calls
        try:   # one BLAS thread: the emulation is serial, and spinning threads on a busy machine
            from threadpoolctl import ThreadpoolController     # slow small GEMMs 100-fold
            self._one_thread = lambda: ThreadpoolController.limit(self._tpc, limits=1,
                                                                  user_api="blas")
            self._tpc = ThreadpoolController()
        except ImportError:
            self._one_thread = contextlib.nullcontext

    @staticmethod
    def _host_scalar(address, dtype):
        return np.frombuffer(ctypes.string_at(address, dtype.itemsize), dtype)[0]

    def gemmEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb,
               beta, C, Ctype, ldc, computeType, algo):
        """CuPy's ``cublas.gemmEx``: on CuPy's handle, and refused inside a capture as CuPy
        refuses it (its ``setStream`` raises; cupy issue 6290)."""
        if handle != _HANDLE:
            raise KernelError(f"gemmEx: unknown cuBLAS handle {handle!r}")
        if self.memory.capture_target() is not None:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently "
                                      "unsupported")
        self.prepare(transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
                     Ctype, ldc, computeType, algo)()

    def prepare(self, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
                Ctype, ldc, computeType, algo):
        """Check a ``cublasGemmEx`` call as cuBLAS does when it is made, read ``alpha`` and
        ``beta`` (host pointer mode: their values now), and return the GEMM to run (now, or
        when a captured graph is replayed)."""
        if not (Atype == Btype == Ctype) or Atype not in _DATA_TYPES:
            raise KernelError(f"gemmEx: data types {Atype}, {Btype}, {Ctype} (CUBLAS_STATUS_"
                              "NOT_SUPPORTED for this emulation)")
        if computeType not in self._COMPUTE[Atype]:
            raise KernelError(f"gemmEx: compute type {computeType} for data type {Atype}")
        if algo != self.CUBLAS_GEMM_DEFAULT:
            raise KernelError(f"gemmEx: algorithm {algo}")
        if min(m, n, k) < 0 or transa not in (0, 1) or transb not in (0, 1):
            raise KernelError("gemmEx: CUBLAS_STATUS_INVALID_VALUE (sizes or ops)")
        ra, ca = (m, k) if transa == 0 else (k, m)        # A as stored, column-major
        rb, cb = (k, n) if transb == 0 else (n, k)
        for ld, rows, what in ((lda, ra, "lda"), (ldb, rb, "ldb"), (ldc, m, "ldc")):
            if ld < max(1, rows):
                raise KernelError(f"gemmEx: {what} = {ld} < max(1, {rows}) "
                                  "(CUBLAS_STATUS_INVALID_VALUE)")
        dtype = _DATA_TYPES[Atype]
        a_s, b_s = self._host_scalar(alpha, dtype), self._host_scalar(beta, dtype)
        call = (computeType, m, n, k)

        def run():
            self.calls.append(call)
            if m == 0 or n == 0:
                return
            size = dtype.itemsize
            c = self.memory.view(C, (m, n), (size, ldc * size), dtype)
            result = np.zeros((m, n), dtype)
            if k > 0 and a_s != 0:
                a = self.memory.view(A, (ra, ca), (size, lda * size), dtype)
                b = self.memory.view(B, (rb, cb), (size, ldb * size), dtype)
                op_a = a if transa == 0 else a.T
                op_b = b if transb == 0 else b.T
                if computeType == self.CUBLAS_COMPUTE_32F_FAST_TF32:
                    op_a, op_b = _tf32(op_a), _tf32(op_b)
                with self._one_thread():
                    result = a_s * np.matmul(op_a, op_b)
            if b_s != 0:
                result = result + b_s * c
            c[...] = result
        return run


def _tf32(x):
    """float32 values rounded to TF32's 10-bit mantissa (as the tensor cores read them)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


class FakeCore:
    """``cupy._core``'s compute types: process-global in CuPy, global to one EmulatedCupy here."""

    def __init__(self, compute_capability):
        self.cc = compute_capability
        self._routines_linalg = types.SimpleNamespace(
            COMPUTE_TYPE_TBD=0, COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_PEDANTIC=2,
            COMPUTE_TYPE_FP16=3, COMPUTE_TYPE_FP32=4, COMPUTE_TYPE_FP64=5, COMPUTE_TYPE_BF16=6,
            COMPUTE_TYPE_TF32=7)
        self._types: dict = {}

    def set_compute_type(self, dtype, compute_type):
        if compute_type in (6, 7) and self.cc < 80:
            warnings.warn("COMPUTE_TYPE_BF16 and COMPUTE_TYPE_TF32 are only available on GPUs "
                          "with compute capability 8.0 or higher. COMPUTE_TYPE_DEFAULT will be "
                          "used instead.")
            compute_type = 1
        self._types[np.dtype(dtype)] = compute_type

    def get_compute_type(self, dtype):
        dtype = np.dtype(dtype)
        if dtype not in self._types:
            default = 1
            if dtype.char in "fF" and int(os.environ.get("CUPY_TF32", "0")) > 0:
                default = 7
            self.set_compute_type(dtype, default)
        return self._types[dtype]


class _Device:
    def __init__(self, owner, device=None):
        self.id = 0
        self.compute_capability = str(owner.compute_capability)

    def synchronize(self):
        pass


class _Stream:
    """``cupy.cuda.Stream``: work is issued to the current stream (``with stream:``); a stream
    capturing a graph records that work instead of running it (:class:`_Graph` replays it).
    Streams are ordered by events as CUDA orders them; the emulation runs everything in issue
    order, which is one order CUDA allows."""

    _ptrs = itertools.count(0x57E000)

    def __init__(self, owner, ptr=None, non_blocking=False):
        self.owner, self.ptr = owner, next(self._ptrs) if ptr is None else ptr
        self.non_blocking = non_blocking
        self._outer: list = []

    def synchronize(self):
        if self.owner.memory.capture_target(self.ptr) is not None:
            raise CaptureError("a stream synchronize while the stream captures a CUDA graph")

    def __enter__(self):
        memory = self.owner.memory
        self._outer.append(memory.current_stream)
        memory.current_stream = self.ptr
        return self

    def __exit__(self, *exc):
        self.owner.memory.current_stream = self._outer.pop()

    def wait_event(self, event):
        event.check()

    def begin_capture(self, mode=None):
        memory = self.owner.memory
        if self.ptr == 0:
            raise KernelError("cudaStreamBeginCapture on the legacy default stream")
        if self.ptr in memory.captures:
            raise KernelError("cudaStreamBeginCapture: the stream is capturing already")
        memory.captures[self.ptr] = []
        CAPTURING.append(self.ptr)

    def end_capture(self):
        memory = self.owner.memory
        if self.ptr not in memory.captures:
            raise KernelError("cudaStreamEndCapture: the stream is not capturing")
        CAPTURING.remove(self.ptr)
        return _Graph(self.owner, memory.captures.pop(self.ptr))

    def is_capturing(self):
        return self.ptr in self.owner.memory.captures


class _Event:
    """``cupy.cuda.Event``: recording one on a capturing stream other than the one captured
    would join the capture; the emulation refuses it instead (bpgpu never does it)."""

    def __init__(self, owner):
        self.owner = owner

    def record(self, stream=None):
        self.check()

    def check(self):
        if CAPTURING and self.owner.memory.capture_target() is None:
            raise CaptureError("an event across streams while a stream captures a CUDA graph")

    def synchronize(self):
        self.check()


class _Graph:
    """``cupy.cuda.Graph``: the captured launches and GEMMs, replayed in order against the same
    buffers (arguments by value as they were captured, as CUDA's kernel nodes hold them)."""

    def __init__(self, owner, nodes):
        self.owner, self.nodes = owner, list(nodes)
        self.uploaded = False
        self.replays = 0

    def upload(self, stream=None):
        self.uploaded = True

    def launch(self, stream=None):
        if CAPTURING:
            raise CaptureError("a graph launch while a stream captures a CUDA graph")
        for node in self.nodes:
            node()
        self.replays += 1


class EmulatedCupy:
    """The stand-in module (see the module docstring)."""

    __name__ = "cupy"
    __version__ = "14.2.0 (host emulation)"
    ndarray = DeviceArray

    def __init__(self, sm_count=1, compute_capability=90, driver=13000, runtime=13000):
        self.memory = DeviceMemory()
        self.sm_count = sm_count
        self.compute_capability = compute_capability
        #: launches per kernel name expression, e.g. ``launches["gather<float>"]``
        self.launches: collections.Counter = collections.Counter()
        self._core = FakeCore(compute_capability)
        cublas = FakeCublas(self.memory)
        props = {"name": b"host emulation", "multiProcessorCount": sm_count,
                 "major": compute_capability // 10, "minor": compute_capability % 10,
                 "totalGlobalMem": 1 << 34}
        runtime_ns = types.SimpleNamespace(
            getDeviceProperties=lambda i: dict(props), getDeviceCount=lambda: 1,
            driverGetVersion=lambda: driver, runtimeGetVersion=lambda: runtime,
            getDevice=lambda: 0)
        self.cuda = types.SimpleNamespace(
            runtime=runtime_ns, cublas=cublas,
            Device=lambda device=None: _Device(self, device),
            device=types.SimpleNamespace(get_cublas_handle=lambda: _HANDLE),
            get_current_stream=self._current_stream,
            Stream=lambda null=False, non_blocking=False, ptds=False:
                _Stream(self, non_blocking=non_blocking),
            Event=lambda *args, **kwargs: _Event(self),
            alloc_pinned_memory=lambda nbytes: PinnedBuffer(int(nbytes)))
        self._streams = {0: _Stream(self, 0)}

    def _current_stream(self):
        ptr = self.memory.current_stream
        return self._streams.get(ptr) or _Stream(self, ptr)

    def __getattr__(self, name):      # ufuncs, reductions, dtypes: numpy's, on device arrays
        return getattr(np, name)

    # ------------------------------------------------------------------ arrays
    def empty(self, shape, dtype=float, order="C"):
        if order != "C":
            raise ValueError("only C order is emulated")
        return self.memory.empty(shape, dtype)

    def zeros(self, shape, dtype=float):
        out = self.empty(shape, dtype)
        out[...] = 0
        return out

    def ones(self, shape, dtype=float):
        out = self.empty(shape, dtype)
        out[...] = 1
        return out

    def _on_device(self, x):
        return isinstance(x, DeviceArray) and self.memory.owner(x) is not None

    def asarray(self, x, dtype=None):
        if self._on_device(x) and (dtype is None or np.dtype(dtype) == x.dtype):
            return x
        host = np.asarray(x, dtype=dtype)
        out = self.empty(host.shape, host.dtype)
        out[...] = host
        return out

    def array(self, x, dtype=None, copy=True):
        host = np.array(x, dtype=dtype, copy=True)
        out = self.empty(host.shape, host.dtype)
        out[...] = host
        return out

    def ascontiguousarray(self, x, dtype=None):
        if self._on_device(x) and x.flags.c_contiguous and (dtype is None or
                                                            np.dtype(dtype) == x.dtype):
            return x
        return self.array(np.ascontiguousarray(x), dtype)

    def arange(self, *args, dtype=None):
        return self.asarray(np.arange(*args, dtype=dtype))

    def asnumpy(self, x):
        no_capture("a device-to-host copy (cupy.asnumpy)")
        return np.array(x, copy=True)

    # ------------------------------------------------------------------ kernels
    def _count(self, expr, grid, block):
        self.launches[expr] += 1

    def RawModule(self, *, code=None, path=None, options=(), name_expressions=None, **kwargs):
        if path is not None or kwargs:
            raise KernelError(f"RawModule: only code=, options=, name_expressions= are emulated")
        return HostModule(self.memory, code, options, name_expressions, self._count)

    def RawKernel(self, code, name, options=(), **kwargs):
        if kwargs:
            raise KernelError(f"RawKernel: {sorted(kwargs)} not emulated")
        return HostModule(self.memory, code, options, None, self._count).get_function(name)


def emulated_backend(sm_count=1, compute_capability=90):
    """A :class:`CupyBackend` bound to a fresh :class:`EmulatedCupy` (the real backend code;
    only the module it calls is the stand-in)."""
    be = CupyBackend.__new__(CupyBackend)
    cupy = EmulatedCupy(sm_count, compute_capability)
    be._setup(cupy, "host emulation of kernels/fused.cu",
              cublas_library=fake_cublas.library(cupy.cuda.cublas))
    return be


__all__ = ["EmulatedCupy", "FakeCublas", "FakeCore", "emulated_backend", "build", "KernelError"]
