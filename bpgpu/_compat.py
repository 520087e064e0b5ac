"""The one place where optional libraries are imported.

``import bpgpu`` must never import numba or cupy (both are slow to import, and cupy may fail in
interesting ways on machines without a driver). Everything here is evaluated lazily, on first use,
and cached. Each probe returns either the module or a one-line reason why it is not usable.
"""

from __future__ import annotations

import functools
import importlib

__all__ = ["numba_status", "cupy_status", "probe_cupy", "has_numba", "has_cupy_gpu",
           "optional_import"]


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


#: CUDA runtime error codes the probe tells apart (cudaError_t).
_CUDA_INSUFFICIENT_DRIVER = 35
_CUDA_NO_DEVICE = 100
_INSTALL_HINT = "pip install 'bpgpu[cuda12]' or 'bpgpu[cuda13]'"
#: The probe's kernel: compiled by NVRTC exactly as the backend's kernels are.
_PROBE_KERNEL = r"""
extern "C" __global__ void bpgpu_probe(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = 2.0f * x[i] + 1.0f;
}
"""


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cuda_version(v) -> str:
    """CUDA's integer version as text: 12040 -> '12.4'."""
    return f"{int(v) // 1000}.{int(v) % 1000 // 10}"


@functools.lru_cache(maxsize=None)
def cupy_status() -> tuple[object | None, str]:
    """Return ``(cupy_module_or_None, reason)``; a module is returned only when the GPU works:
    a kernel compiled by NVRTC runs on it and cuBLAS multiplies two matrices (see
    :func:`probe_cupy` for the order of the checks and the reasons)."""
    try:
        import cupy
    except ImportError as exc:
        return None, f"CuPy is not installed ({exc}); install with: {_INSTALL_HINT}"
    except Exception as exc:
        return None, f"CuPy failed to import: {type(exc).__name__}: {exc}"
    return probe_cupy(cupy)


def probe_cupy(cupy) -> tuple[object | None, str]:
    """Check an imported CuPy module end to end; return ``(cupy or None, reason)``.

    In order: the driver (version 0 means no NVIDIA driver is installed at all -- checked first,
    because CUDA then reports "insufficient driver", which is not a version mismatch), the device
    count (a driver older than CuPy's CUDA runtime is a mismatch), a small array operation on the
    device, a kernel compiled by NVRTC (fails without the CUDA headers: CuPy's ``[ctk]`` extra or
    a CUDA toolkit), and one cuBLAS GEMM (fails without libcublas), so that a broken install is
    reported here and not at the first training step.
    """
    rt = cupy.cuda.runtime
    try:
        driver = rt.driverGetVersion()
    except Exception as exc:
        return None, f"no usable CUDA driver: {_first_line(exc)}"
    if driver == 0:
        return None, "no NVIDIA driver is installed (the CUDA driver version is 0)"
    try:
        runtime = rt.runtimeGetVersion()
    except Exception:
        runtime = None
    try:
        count = rt.getDeviceCount()
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status == _CUDA_INSUFFICIENT_DRIVER or (runtime and driver < runtime and
                                                     driver // 1000 < runtime // 1000):
            built = f"CUDA {_cuda_version(runtime)}" if runtime else "a newer CUDA"
            return None, (f"CUDA driver/runtime version mismatch: the driver supports CUDA "
                          f"{_cuda_version(driver)} but CuPy was built for {built} "
                          f"({_first_line(exc)}); update the NVIDIA driver or install the CuPy "
                          f"for your CUDA: {_INSTALL_HINT}")
        if status == _CUDA_NO_DEVICE:
            return None, "the NVIDIA driver found no CUDA device"
        return None, f"no usable CUDA device: {_first_line(exc)}"
    if count < 1:
        return None, "CuPy is installed but no CUDA device was found"
    try:  # a device that is listed may still fail to run anything (busy, MIG misconfigured, ...)
        x = cupy.arange(4, dtype=cupy.float32)
        float((x * 2).sum())
    except Exception as exc:
        return None, f"the CUDA device does not work: {type(exc).__name__}: {_first_line(exc)}"
    try:
        import numpy as np
        kernel = cupy.RawKernel(_PROBE_KERNEL, "bpgpu_probe")
        x = cupy.arange(32, dtype=cupy.float32)
        kernel((1,), (32,), (x, np.int32(32)))
        if float(x.sum()) != 1024.0:
            raise RuntimeError(f"the probe kernel computed {float(x.sum())}, not 1024")
    except Exception as exc:
        return None, (f"CuPy cannot compile CUDA kernels (NVRTC): {type(exc).__name__}: "
                      f"{_first_line(exc)}; install CuPy with the CUDA toolkit pieces "
                      f"({_INSTALL_HINT}: CuPy's [ctk] extra) or set CUDA_PATH to a CUDA toolkit")
    try:
        c = cupy.ones((4, 3), dtype=cupy.float32) @ cupy.ones((3, 2), dtype=cupy.float32)
        if float(c.sum()) != 24.0:
            raise RuntimeError(f"a 4x3 by 3x2 product of ones summed to {float(c.sum())}, not 24")
    except Exception as exc:
        return None, (f"cuBLAS does not work: {type(exc).__name__}: {_first_line(exc)}; "
                      f"install CuPy with the CUDA libraries ({_INSTALL_HINT})")
    dev = cupy.cuda.Device()
    name = rt.getDeviceProperties(dev.id)["name"]
    if isinstance(name, bytes):
        name = name.decode()
    cc = int(dev.compute_capability)
    rt_text = f", runtime {_cuda_version(runtime)}" if runtime else ""
    return cupy, (f"CuPy {cupy.__version__} on {name} (compute capability {cc // 10}.{cc % 10}; "
                  f"driver CUDA {_cuda_version(driver)}{rt_text})")


def has_numba() -> bool:
    """True when numba imports."""
    return numba_status()[0] is not None


def has_cupy_gpu() -> bool:
    """True when CuPy imports and a CUDA device actually runs a kernel."""
    return cupy_status()[0] is not None
