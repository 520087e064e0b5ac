"""What machine this is: CPU, BLAS and its threads, library versions, GPUs, backends.

Used by ``bpgpu info`` and written next to every benchmark result, so a figure is never separated
from the machine that produced it. Probing never imports cupy, numba or jax unless asked to describe
them, and never fails: a missing piece is reported as missing.

It also says which OpenBLAS kernel set runs and whether this CPU could run a faster one
(:func:`openblas_kernels`): OpenBLAS picks its GEMM kernels by CPU at load time unless
``OPENBLAS_CORETYPE`` names a set, and a set made for narrower vectors (Haswell's AVX2 kernels on
an AVX-512 CPU) runs the large GEMMs of a training step ~40 % slower (bench/NOTES.md).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
import shutil
import subprocess

import numpy as np

from . import _compat
from .backends import auto_reason, available_backends
from .backends.threads import blas_info

__all__ = ["cpu_model", "cpu_flags", "cpu_vector_isa", "openblas_kernels", "xla_cpu_threads",
           "library_versions", "gpu_info", "machine_record"]

#: OpenBLAS's x86 kernel sets (its core names, lower case) by the widest vectors their GEMMs use.
#: Zen runs Haswell-class AVX2 kernels; Zen 4/5 with AVX-512 get SkylakeX or Cooperlake.
KERNEL_ISA = {"sapphirerapids": "AVX-512", "cooperlake": "AVX-512", "skylakex": "AVX-512",
              "haswell": "AVX2", "zen": "AVX2", "sandybridge": "AVX", "bulldozer": "AVX",
              "piledriver": "AVX", "steamroller": "AVX", "excavator": "AVX"}
#: What a CPU's flags allow, widest first: (vector ISA, flags it needs, OpenBLAS's set for it).
#: The AVX-512 row lists the flags OpenBLAS checks before it picks SkylakeX.
CPU_ISA = (("AVX-512", ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"), "SkylakeX"),
           ("AVX2", ("avx2", "fma"), "Haswell"),
           ("AVX", ("avx",), "Sandybridge"))
_ISA_RANK = {"SSE": 0, "AVX": 1, "AVX2": 2, "AVX-512": 3}
#: Spellings of OpenBLAS's ``openblas_get_corename``: plain, ILP64 suffix, and the scipy-openblas
#: wheels' (numpy 2 ships the ILP64 one, scipy the LP64 one).
_CORENAME_SYMBOLS = ("openblas_get_corename", "openblas_get_corename64_",
                     "scipy_openblas_get_corename64_", "scipy_openblas_get_corename")


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


def cpu_flags(path="/proc/cpuinfo") -> set:
    """The CPU's feature flags (the ``flags`` line of /proc/cpuinfo; empty where there is none)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_vector_isa(flags) -> tuple:
    """``(isa, openblas_set)``: the widest x86 vector ISA ``flags`` allow and the OpenBLAS kernel
    set made for it, e.g. ``("AVX-512", "SkylakeX")``; ``("SSE", None)`` below AVX, and
    ``(None, None)`` for a CPU that lists none of these (not x86, or flags unknown)."""
    for isa, needs, kernels in CPU_ISA:
        if all(f in flags for f in needs):
            return isa, kernels
    return ("SSE", None) if "sse2" in flags else (None, None)


def _openblas_libraries() -> list:
    """``[(path, kernel set)]`` of the OpenBLAS libraries loaded in this process: threadpoolctl's
    ``architecture`` where it is installed, else OpenBLAS's own ``openblas_get_corename`` on every
    OpenBLAS in /proc/self/maps."""
    tpc = _compat.optional_import("threadpoolctl")
    if tpc is not None:
        return [(i.get("filepath", ""), i.get("architecture"))
                for i in tpc.threadpool_info() if i.get("internal_api") == "openblas"]
    found = []
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.rsplit(None, 1)[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return []
    for path in sorted(p for p in paths if p.startswith("/") and ".so" in p):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _CORENAME_SYMBOLS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                found.append((path, fn().decode().strip()))
                break
    return found


def openblas_kernels(flags=None, coretype=None) -> list[dict]:
    """Which OpenBLAS kernel set numpy's BLAS runs, and whether this CPU could run a faster one.

    Parameters
    ----------
    flags : set of str, optional
        The CPU's flags (default: :func:`cpu_flags`).
    coretype : str, optional
        ``OPENBLAS_CORETYPE`` as the libraries saw it at load time (default: the environment's).

    Returns
    -------
    list of dict
        One per loaded OpenBLAS: ``library``, ``kernels`` (its core name, e.g. "Haswell"),
        ``kernel_isa`` and ``cpu_isa`` (widest vectors of the kernels and of the CPU),
        ``cpu_kernels`` (OpenBLAS's set for that CPU ISA), ``coretype_env``, ``faster_available``
        and a one-line ``summary``, e.g. "Haswell kernels on an AVX-512 CPU: OPENBLAS_CORETYPE is
        set (Haswell); unset it for the SkylakeX kernels".
    """
    flags = cpu_flags() if flags is None else flags
    coretype = os.environ.get("OPENBLAS_CORETYPE") if coretype is None else coretype
    cpu_isa, cpu_kernels = cpu_vector_isa(flags)
    out = []
    for path, kernels in _openblas_libraries():
        kernel_isa = KERNEL_ISA.get(str(kernels).lower())
        faster = (kernel_isa is not None and cpu_isa is not None
                  and _ISA_RANK[cpu_isa] > _ISA_RANK[kernel_isa])
        if kernel_isa is None or cpu_isa is None:
            summary = f"{kernels} kernels (vector width of this kernel set or CPU not classified)"
        elif faster and coretype:
            summary = (f"{kernels} kernels on an {cpu_isa} CPU: OPENBLAS_CORETYPE is set "
                       f"({coretype}); unset it for the {cpu_kernels} kernels")
        elif faster:
            summary = (f"{kernels} kernels on an {cpu_isa} CPU: this OpenBLAS does not pick its "
                       f"{cpu_kernels} kernels here (OPENBLAS_CORETYPE={cpu_kernels} may)")
        elif _ISA_RANK[kernel_isa] > _ISA_RANK[cpu_isa]:
            summary = f"{kernels} kernels ({kernel_isa}) on a CPU whose flags list only {cpu_isa}"
        else:
            summary = f"{kernels} kernels: the widest this {cpu_isa} CPU runs"
            if cpu_isa != "AVX-512":
                summary += " (no AVX-512)"
            if coretype:
                summary += f"; OPENBLAS_CORETYPE={coretype} is set and selects the same width"
        out.append({"library": os.path.basename(path), "kernels": kernels,
                    "kernel_isa": kernel_isa, "cpu_isa": cpu_isa, "cpu_kernels": cpu_kernels,
                    "coretype_env": coretype, "faster_available": faster, "summary": summary})
    return out


def xla_cpu_threads(flags=None) -> dict:
    """XLA's CPU thread settings, read from ``XLA_FLAGS`` (importing nothing).

    XLA runs its CPU work on one intra-op thread pool of one thread per schedulable core unless
    ``XLA_FLAGS`` says ``intra_op_parallelism_threads=N`` or turns off
    ``--xla_cpu_multi_thread_eigen``. ``OPENBLAS_CORETYPE`` and the BLAS thread variables do not
    apply: XLA brings its own GEMMs.

    Returns
    -------
    dict
        ``xla_flags`` (the variable, or None), ``intra_op_threads`` (int), ``multi_thread_eigen``
        (bool) and ``source`` ("XLA_FLAGS" or "default: one per schedulable core").
    """
    flags = os.environ.get("XLA_FLAGS") if flags is None else flags
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    threads, eigen, source = cores, True, "default: one per schedulable core"
    for item in (flags or "").split():
        key, _, value = item.lstrip("-").partition("=")
        if key == "intra_op_parallelism_threads" and value.isdigit():
            threads, source = int(value), "XLA_FLAGS"
        elif key == "xla_cpu_multi_thread_eigen" and value.lower() in ("false", "0"):
            eigen, source = False, "XLA_FLAGS"
    return {"xla_flags": flags, "intra_op_threads": threads if eigen else 1,
            "multi_thread_eigen": eigen, "source": source}


def library_versions(include_gpu: bool = True) -> dict:
    """Versions of python, numpy and the optional libraries (None when not installed)."""
    from importlib import metadata

    out = {"python": platform.python_version(), "numpy": np.__version__}
    names = ["numba", "threadpoolctl", "torch", "jax", "jaxlib", "blis", "matplotlib",
             "scikit-learn"]
    if include_gpu:
        names += ["cupy-cuda12x", "cupy-cuda13x", "cupy"]
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_info() -> list[dict]:
    """One dict per CUDA device (name, memory, driver, runtime), via CuPy or nvidia-smi; with CuPy
    also ``tf32``: whether float32 GEMMs may use TF32 now (CuPy's process-wide compute type)."""
    cupy, _ = _compat.cupy_status()
    if cupy is not None:
        from .backends.cupy_backend import tf32_state
        rt = cupy.cuda.runtime
        devices = []
        for i in range(rt.getDeviceCount()):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            devices.append({"index": i, "name": name,
                            "memory_gib": round(p["totalGlobalMem"] / 2**30, 1),
                            "compute_capability": f"{p['major']}.{p['minor']}",
                            "driver": rt.driverGetVersion(), "cuda_runtime": rt.runtimeGetVersion(),
                            "cupy": cupy.__version__, "tf32": tf32_state()})
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
        "blas_kernels": openblas_kernels(),
        "xla_cpu": xla_cpu_threads(),
        "env_threads": {k: os.environ.get(k) for k in
                        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                         "NUMBA_NUM_THREADS", "OPENBLAS_CORETYPE", "XLA_FLAGS")
                        if os.environ.get(k)},
        "versions": library_versions(),
        "gpus": gpu_info(),
        "backends": [{"name": b.name, "available": b.available, "reason": b.reason}
                     for b in available_backends()],
        "auto_backend": auto,
        "auto_reason": why,
    }
