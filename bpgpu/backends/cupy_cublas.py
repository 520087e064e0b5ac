"""cuBLAS through ctypes, on the libcublas CuPy itself loads: GEMMs a CUDA graph can capture.

CuPy refuses every cuBLAS call while a stream is capturing (its ``cublas.setStream`` raises
``NotImplementedError``, cupy issue 6290, still so in 14.2), although cuBLAS itself supports
capture. So the cupy backend calls ``cublasGemmEx`` itself, through :mod:`ctypes`, on bpgpu's own
cuBLAS handle -- eagerly and inside a capture alike, so that a step replayed from a graph runs
exactly the GEMMs of an eager step (same library, handle settings and workspace: the same
algorithms, bit for bit). The rules cuBLAS sets for capture (its documentation, "CUDA graphs
support"), all kept here:

- the stream is set on the handle before every call that runs on another stream than the last
  one (``cublasSetStream``), and the workspace right after it: ``cublasSetStream`` resets the
  handle's workspace to its default pool, which allocates -- not allowed in a capture;
- the workspace is one preallocated device buffer of :data:`WORKSPACE_BYTES` (32 MiB, cuBLAS's
  recommendation for Hopper; 4 MiB is enough before it), alive as long as the handle;
- the pointer mode stays "host": ``alpha`` and ``beta`` are read when the call is made, so a
  captured GEMM keeps the values it was captured with (a learning rate that changes between
  epochs means a new capture, which :mod:`bpgpu.backends.cupy_graph` makes).

Why ctypes and not nvmath-python's bindings: ctypes needs nothing that is not already loaded
(the library comes from ``cuda.pathfinder``, a CuPy 14 dependency, or by its soname, which finds
the copy CuPy loaded), and the five entry points used are stable C API; nvmath-python would be a
new dependency (5.5 MB plus cuda-core) for the same five calls (bench/NOTES.md).

The library is found by :func:`find_library`; the host emulation of the tests passes its own
(a shared library that forwards every entry point to the emulated device).
"""

from __future__ import annotations

import ctypes
import weakref

__all__ = ["Cublas", "CublasUnavailable", "find_library", "WORKSPACE_BYTES", "SONAMES"]

#: Bytes of the workspace given to the handle (cuBLAS's recommendation for Hopper, 32 MiB).
WORKSPACE_BYTES = 32 << 20
#: The sonames tried when ``cuda.pathfinder`` is not there (CUDA 13's and CUDA 12's cuBLAS).
SONAMES = ("libcublas.so.13", "libcublas.so.12")
_VOID_P, _INT, _SIZE_T = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t


class CublasUnavailable(RuntimeError):
    """libcublas could not be loaded through ctypes, or a handle could not be made."""


def find_library():
    """``(path, how)`` of the libcublas to load: where ``cuda.pathfinder`` (CuPy 14's own
    finder) finds it, else the first soname of :data:`SONAMES` that loads.

    Raises
    ------
    CublasUnavailable
        Neither finds it.
    """
    reasons = []
    try:
        from cuda import pathfinder
        loaded = pathfinder.load_nvidia_dynamic_lib("cublas")
        return loaded.abs_path, "cuda.pathfinder"
    except ImportError:
        reasons.append("cuda.pathfinder is not installed")
    except Exception as exc:          # DynamicLibNotFoundError, OSError, ...
        reasons.append(f"cuda.pathfinder: {type(exc).__name__}: {exc}")
    for soname in SONAMES:
        try:
            ctypes.CDLL(soname)
            return soname, "soname"
        except OSError as exc:
            reasons.append(str(exc))
    raise CublasUnavailable("libcublas not found: " + "; ".join(reasons))


def _declare(lib):
    """The five entry points, with cublas_api.h's argument types (enums are C ints)."""
    spec = {
        "cublasCreate_v2": (ctypes.POINTER(_VOID_P),),
        "cublasDestroy_v2": (_VOID_P,),
        "cublasSetStream_v2": (_VOID_P, _VOID_P),
        "cublasSetWorkspace_v2": (_VOID_P, _VOID_P, _SIZE_T),
        "cublasGemmEx": (_VOID_P, _INT, _INT, _INT, _INT, _INT, _VOID_P, _VOID_P, _INT, _INT,
                         _VOID_P, _INT, _INT, _VOID_P, _VOID_P, _INT, _INT, _INT, _INT),
    }
    fns = {}
    for name, argtypes in spec.items():
        fn = getattr(lib, name)          # AttributeError: not a cuBLAS of CUDA 11.4 or later
        fn.argtypes = argtypes
        fn.restype = _INT
        fns[name] = fn
    return fns


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"{what} failed: cuBLAS status {status}")


class Cublas:
    """bpgpu's own cuBLAS handle on a libcublas loaded through ctypes.

    Parameters
    ----------
    path : str
        The library to load (:func:`find_library`).
    workspace : device array
        :data:`WORKSPACE_BYTES` bytes of device memory (uint8, C-contiguous), kept alive here.

    Raises
    ------
    CublasUnavailable
        The library does not load, lacks an entry point, or makes no handle.
    """

    def __init__(self, path, workspace):
        try:
            self._lib = ctypes.CDLL(path)
            self._fn = _declare(self._lib)
        except (OSError, AttributeError) as exc:
            raise CublasUnavailable(f"{path}: {exc}") from None
        handle = _VOID_P()
        status = self._fn["cublasCreate_v2"](ctypes.byref(handle))
        if status != 0:
            raise CublasUnavailable(f"cublasCreate failed: cuBLAS status {status}")
        self.handle = handle.value
        self.path = path
        self._workspace = workspace
        self._workspace_ptr = workspace.data.ptr
        self._stream = None
        self._gemm = self._fn["cublasGemmEx"]
        weakref.finalize(self, self._fn["cublasDestroy_v2"], self.handle)

    def bind(self, stream_ptr: int) -> None:
        """Run the next calls on the stream ``stream_ptr``: set it on the handle, then the
        workspace (which setting the stream resets), once per change of stream."""
        if stream_ptr != self._stream:
            _check(self._fn["cublasSetStream_v2"](self.handle, stream_ptr), "cublasSetStream")
            _check(self._fn["cublasSetWorkspace_v2"](self.handle, self._workspace_ptr,
                                                     WORKSPACE_BYTES), "cublasSetWorkspace")
            self._stream = stream_ptr

    def gemm_ex(self, stream_ptr, transa, transb, m, n, k, alpha, a, a_type, lda, b, b_type,
                ldb, beta, c, c_type, ldc, compute, algo) -> None:
        """``cublasGemmEx`` on ``stream_ptr`` (column-major, as cuBLAS: the arguments are
        cuBLAS's own; ``alpha`` and ``beta`` host addresses)."""
        self.bind(stream_ptr)
        _check(self._gemm(self.handle, transa, transb, m, n, k, alpha, a, a_type, lda, b, b_type,
                          ldb, beta, c, c_type, ldc, compute, algo), "cublasGemmEx")
