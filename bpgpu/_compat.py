"""The one place where optional libraries are imported.

``import bpgpu`` must never import numba or cupy (both are slow to import, and cupy may fail in
interesting ways on machines without a driver). Everything here is evaluated lazily, on first use,
and cached. Each probe returns either the module or a one-line reason why it is not usable.
"""

from __future__ import annotations

import functools
import importlib

__all__ = ["numba_status", "cupy_status", "has_numba", "has_cupy_gpu", "optional_import"]


def optional_import(name: str):
    """Import ``name`` and return the module, or ``None`` if it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


@functools.lru_cache(maxsize=None)
def numba_status() -> tuple[object | None, str]:
    """Return ``(numba_module_or_None, reason)`` where ``reason`` explains a ``None``."""
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return None, f"numba is not installed ({exc}); install with: pip install 'bpgpu[numba]'"
    except Exception as exc:  # a broken install (llvmlite mismatch, ...) is still "unavailable"
        return None, f"numba failed to import: {type(exc).__name__}: {exc}"
    return numba, f"numba {numba.__version__}"


@functools.lru_cache(maxsize=None)
def cupy_status() -> tuple[object | None, str]:
    """Return ``(cupy_module_or_None, reason)``; a module is returned only if a CUDA device works.

    The reason names the cause precisely: CuPy not installed, no CUDA driver, no device, or a
    driver/runtime version mismatch.
    """
    try:
        import cupy
    except ImportError as exc:
        return None, (f"CuPy is not installed ({exc}); install with: pip install 'bpgpu[cuda12]' "
                      "or 'bpgpu[cuda13]'")
    except Exception as exc:
        return None, f"CuPy failed to import: {type(exc).__name__}: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy raises CUDARuntimeError / RuntimeError with the driver's words
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "insufficient" in msg.lower() or "version" in msg.lower():
            return None, f"CUDA driver/runtime version mismatch: {msg}"
        return None, f"no usable CUDA driver or device: {msg}"
    if count < 1:
        return None, "CuPy is installed but no CUDA device was found"
    try:  # a device that is listed may still fail to run anything (busy, MIG misconfigured, ...)
        x = cupy.arange(4, dtype=cupy.float32)
        float((x * 2).sum())
    except Exception as exc:
        return None, f"the CUDA device does not work: {type(exc).__name__}: {exc}"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    if isinstance(name, bytes):
        name = name.decode()
    return cupy, f"CuPy {cupy.__version__} on {name}"


def has_numba() -> bool:
    """True when numba imports."""
    return numba_status()[0] is not None


def has_cupy_gpu() -> bool:
    """True when CuPy imports and a CUDA device actually runs a kernel."""
    return cupy_status()[0] is not None
