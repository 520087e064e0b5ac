"""The host emulation's libcublas for :mod:`bpgpu.backends.cupy_cublas` (the ctypes GEMM path).

cublas_shim.cpp is compiled once into a shared library whose five cuBLAS entry points forward
their arguments to :func:`_forward` here. A handle is made by ``cublasCreate``; it learns its
emulated device from the workspace ``cublasSetWorkspace`` gives it (the device whose memory holds
that buffer) and its stream from ``cublasSetStream``. ``cublasGemmEx`` is checked at once, as
cuBLAS checks it (:meth:`fake_cupy.FakeCublas.prepare`), and then run -- or, when the handle's
stream is capturing, recorded into the capture to run when the graph is replayed. As on a GPU,
``cublasSetStream`` inside a capture of that handle's stream is refused (it would reset the
workspace, which allocates), and so is a GEMM on a handle without a workspace.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import weakref
from pathlib import Path

from .devmem import CaptureError
from .hostcuda import GXX, KernelError, _cache_dir, build_library

SOURCE = Path(__file__).with_name("cublas_shim.cpp")
_FORWARD = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64))
#: live emulated devices (their FakeCublas), found by the workspace pointer of a handle
DEVICES: "weakref.WeakSet" = weakref.WeakSet()
_handles: dict = {}               # handle -> {"stream": ptr, "cublas": FakeCublas or None}
_next_handle = itertools.count(0xB1A5000)
_state: dict = {}


def _signed(word):
    return word - (1 << 64) if word >= 1 << 63 else word


def _forward_impl(call, args):
    try:
        if call == 0:                                   # cublasCreate_v2(void** handle)
            handle = next(_next_handle)
            _handles[handle] = {"stream": 0, "cublas": None}
            ctypes.c_void_p.from_address(args[0]).value = handle
        elif call == 1:                                 # cublasDestroy_v2
            _handles.pop(args[0], None)
        elif call == 2:                                 # cublasSetStream_v2
            h = _handles[args[0]]
            if h["cublas"] is not None and h["cublas"].memory.capture_target(h["stream"]) \
                    is not None:
                raise CaptureError("cublasSetStream while the handle's stream captures")
            h["stream"] = args[1]
        elif call == 3:                                 # cublasSetWorkspace_v2
            owner = [c for c in DEVICES if c.memory.find(args[1], args[2]) is not None]
            if not owner:
                raise KernelError("cublasSetWorkspace: the workspace is not device memory")
            _handles[args[0]]["cublas"] = owner[0]
        elif call == 4:                                 # cublasGemmEx
            return _gemm(args)
        return 0
    except Exception as exc:                           # reported as a status; kept for the test
        _state["error"] = exc
        return 14                                      # CUBLAS_STATUS_INTERNAL_ERROR


def _gemm(args):
    h = _handles[args[0]]
    cublas = h["cublas"]
    if cublas is None:
        raise KernelError("cublasGemmEx on a handle without a workspace")
    a = [_signed(w) for w in args[:19]]
    run = cublas.prepare(a[1], a[2], a[3], a[4], a[5], args[6], args[7], a[8], a[9], args[10],
                         a[11], a[12], args[13], args[14], a[15], a[16], a[17], a[18])
    captured = cublas.memory.capture_target(h["stream"])
    if captured is not None:
        captured.append(run)
    else:
        run()
    return 0


_callback = _FORWARD(lambda call, argv: _forward_impl(call, argv))


def last_error():
    """The exception behind the last failed call (None if none)."""
    return _state.get("error")


def library(cublas) -> str:
    """The path of the emulated libcublas (built on first use), with ``cublas`` (a
    :class:`fake_cupy.FakeCublas`) registered as a device its handles may use."""
    DEVICES.add(cublas)
    if "path" not in _state:
        if GXX is None:
            raise KernelError("g++ is not installed")
        text = SOURCE.read_text()
        key = hashlib.sha256(text.encode()).hexdigest()[:20]
        path = _cache_dir() / f"cublas-{key}.so"
        build_library(path, lambda tmp, out: [GXX, "-O1", "-fPIC", "-shared", str(SOURCE),
                                              "-o", str(out)], "cuBLAS shim compile")
        lib = ctypes.CDLL(str(path))
        lib.emu_cublas_forward.argtypes = (_FORWARD,)
        lib.emu_cublas_forward(_callback)
        _state["path"], _state["lib"] = str(path), lib
    return _state["path"]
