"""What machine this is: CPU, BLAS and its threads, library versions, GPUs, backends.

Used by ``bpgpu info`` and written next to every benchmark result, so a figure is never separated
from the machine that produced it. Probing never imports cupy or numba unless asked to describe
them, and never fails: a missing piece is reported as missing.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess

import numpy as np

from . import _compat
from .backends import auto_reason, available_backends
from .backends.numpy_backend import blas_info

__all__ = ["cpu_model", "library_versions", "gpu_info", "machine_record"]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions(include_gpu: bool = True) -> dict:
    """Versions of python, numpy and the optional libraries (None when not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "numpy": np.__version__}
    names = ["numba", "threadpoolctl", "torch", "matplotlib", "scikit-learn"]
    if include_gpu:
        names += ["cupy-cuda12x", "cupy-cuda13x", "cupy"]
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> list[dict]:
    """One dict per CUDA device (name, memory, driver, runtime), via CuPy or nvidia-smi."""
    cupy, _ = _compat.cupy_status()
    if cupy is not None:
        rt = cupy.cuda.runtime
        devices = []
        for i in range(rt.getDeviceCount()):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            devices.append({"index": i, "name": name,
                            "memory_gib": round(p["totalGlobalMem"] / 2**30, 1),
                            "compute_capability": f"{p['major']}.{p['minor']}",
                            "driver": rt.driverGetVersion(), "cuda_runtime": rt.runtimeGetVersion(),
                            "cupy": cupy.__version__})
        return devices
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        text = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [dict(zip(("name", "memory", "driver"), (x.strip() for x in line.split(","))))
            for line in text.splitlines() if line.strip()]


def machine_record() -> dict:
    """Everything above in one JSON-ready dict, with the date."""
    auto, why = auto_reason()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "blas": blas_info(),
        "env_threads": {k: os.environ.get(k) for k in
                        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                         "NUMBA_NUM_THREADS") if os.environ.get(k)},
        "versions": library_versions(),
        "gpus": gpu_info(),
        "backends": [{"name": b.name, "available": b.available, "reason": b.reason}
                     for b in available_backends()],
        "auto_backend": auto,
        "auto_reason": why,
    }
