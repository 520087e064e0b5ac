"""Where compiled Numba code lives: the kernels' on-disk cache, and the compiled epochs' modules.

Numba keeps each kernel's machine code next to its source (``kernels/__pycache__``, or under
``$NUMBA_CACHE_DIR``); :func:`cache_status` says whether it is there without importing numba.
A compiled epoch (:mod:`bpgpu.backends.numba_epoch`) is generated Python source: :func:`epoch_dispatcher`
writes it into :func:`cache_dir` under a name hashing it with the sources it calls and the library
versions, imports it, and Numba caches its machine code beside it, so a new process loads it
instead of compiling.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import sys
import tempfile
from importlib import resources

import numpy as np

__all__ = ["cache_status", "cache_dir", "epoch_dispatcher", "KERNEL_SOURCES"]

#: The kernel sources a compiled epoch calls into (kernels/): part of its cache key, because
#: Numba's cache notices a change of the epoch's own source only.
KERNEL_SOURCES = ("epoch.py", "cpu.py", "augment.py", "blas.py", "intrinsics.py", "codes.py")
#: The generator's own modules: a change in how epochs are generated changes the key too.
GENERATOR_MODULES = ("numba_epoch.py", "recording.py", "epoch_source.py", "epoch_lowering.py",
                     "numba_cache.py")
_COMPILED: dict = {}          # cache key -> dispatcher
_FINGERPRINT = None


def cache_status() -> str:
    """Whether compiled kernels are on disk (Numba's cache next to kernels/cpu.py, or
    $NUMBA_CACHE_DIR), without importing numba."""
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


def _fingerprint() -> str:
    """What a compiled epoch depends on besides its own source: the kernels' sources, the
    generator, and the library versions."""
    import numba
    h = hashlib.sha256(f"{numba.__version__} {np.__version__} {sys.version}".encode())
    kernels = resources.files("bpgpu.kernels")
    for name in KERNEL_SOURCES:
        h.update(kernels.joinpath(name).read_bytes())
    here = os.path.dirname(os.path.abspath(__file__))
    for name in GENERATOR_MODULES:
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def cache_dir() -> str:
    """Where generated epoch modules (and, beside them, Numba's cache of them) are kept:
    ``$NUMBA_CACHE_DIR/bpgpu-epoch``, else next to the kernels' own Numba cache, else the user's
    cache directory, else a temporary directory (compiled once per process then)."""
    candidates = []
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "bpgpu-epoch"))
    try:
        candidates.append(os.path.join(str(resources.files("bpgpu.kernels")), "__pycache__",
                                       "bpgpu-epoch"))
    except (ModuleNotFoundError, TypeError):
        pass
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    candidates.append(os.path.join(xdg, "bpgpu", "epoch"))
    for path in candidates:
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return tempfile.mkdtemp(prefix="bpgpu-epoch-")


def epoch_dispatcher(source: str, existing_only=False):
    """The compiled-epoch dispatcher of ``source`` (its generated module imported once); with
    ``existing_only``, None unless it is in memory or its module is in the cache directory."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = _fingerprint()
    key = hashlib.sha256((_FINGERPRINT + source).encode()).hexdigest()[:24]
    fn = _COMPILED.get(key)
    if fn is not None:
        return fn
    name = f"bpgpu_epoch_{key}"
    path = os.path.join(cache_dir(), name + ".py")
    if existing_only and not os.path.exists(path):
        return None
    if not os.path.exists(path):                   # same name, same text: keep its mtime, which
        tmp = f"{path}.{os.getpid()}.tmp"          # Numba's cache index checks
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    fn = _COMPILED[key] = module.epoch
    return fn
