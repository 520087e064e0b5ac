"""Backend registry: names mapped to ``"module:Class"`` and imported only when asked for.

``get_backend("auto")`` picks cupy when a CUDA device works, else numba when it imports, else numpy,
and :func:`auto_reason` says which and why in one line. ``BPGPU_BACKEND`` in the environment
overrides ``"auto"``, and inside :func:`use_backend` ``"auto"`` means that block's backend. :func:`available_backends` reports, for every registered backend, whether it
is usable here and, if not, exactly why. A new backend joins the parity tests by being registered.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass

from .. import _compat
from ..errors import BackendUnavailable
from .base import OPS, Backend

__all__ = ["Backend", "OPS", "REGISTRY", "BackendInfo", "available_backends", "get_backend",
           "use_backend", "auto_reason", "backend_names", "set_tf32", "tf32_state"]


def _numpy_probe():
    import numpy
    return True, f"numpy {numpy.__version__} (always available)"


def _module_probe(status):
    def probe():
        module, reason = status()
        return module is not None, reason
    return probe


#: name -> ("module:Class" relative to this package, probe). A probe answers (usable, reason)
#: without importing the backend's module, so listing backends never imports numba or cupy.
REGISTRY = {
    "numpy": (".numpy_backend:NumpyBackend", _numpy_probe),
    "numba": (".numba_backend:NumbaBackend", _module_probe(_compat.numba_status)),
    "cupy": (".cupy_backend:CupyBackend", _module_probe(_compat.cupy_status)),
}
_AUTO_ORDER = ("cupy", "numba", "numpy")
_instances: dict[str, Backend] = {}
_default: list[Backend] = []       # use_backend's stack: the backend "auto" means there


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here, and why (or why not)."""
    name: str
    available: bool
    reason: str


def backend_names() -> tuple[str, ...]:
    """All registered backend names."""
    return tuple(REGISTRY)


def _load_class(name: str):
    module_name, cls_name = REGISTRY[name][0].split(":")
    module = importlib.import_module(module_name, __name__)
    return getattr(module, cls_name)


def _probe(name: str) -> BackendInfo:
    ok, reason = REGISTRY[name][1]()
    return BackendInfo(name, ok, reason)


def available_backends() -> list[BackendInfo]:
    """Every registered backend with its availability and the reason for it."""
    return [_probe(n) for n in REGISTRY]


def auto_reason() -> tuple[str, str]:
    """The backend ``"auto"`` resolves to and a one-line reason.

    ``BPGPU_BACKEND`` unset, empty or ``auto`` leaves the choice to the machine; a name there is
    the answer, and when that backend is unknown or cannot run here the reason says so (and
    :func:`get_backend` refuses it with the same words)."""
    env = os.environ.get("BPGPU_BACKEND", "").strip().lower()
    if env and env != "auto":
        if env not in REGISTRY:
            return env, (f"{env} (from BPGPU_BACKEND), which is not a backend: unusable (choose "
                         f"one of auto, {', '.join(REGISTRY)})")
        info = _probe(env)
        if not info.available:
            return env, f"{env} (from BPGPU_BACKEND), which is not available: {info.reason}"
        return env, f"{env} (from BPGPU_BACKEND)"
    skipped = []
    for name in (n for n in _AUTO_ORDER if n in REGISTRY):
        info = _probe(name)
        if info.available:
            why = f"{name}: {info.reason}"
            if skipped:
                why += " — " + "; ".join(skipped)
            return name, why
        skipped.append(f"not {name}: {info.reason}")
    raise BackendUnavailable("no backend is available: " + "; ".join(skipped))  # numpy always is


def get_backend(name: str | Backend | None = "auto") -> Backend:
    """Return the backend instance for ``name`` (``"auto"``, ``None``, a name, or an instance).

    Raises
    ------
    BackendUnavailable
        If the name is unknown or the backend cannot run here; the message says why.
    """
    if isinstance(name, Backend):
        return name
    if name is None or str(name).strip().lower() == "auto":
        if _default:                      # inside use_backend(...): its backend, as given
            return get_backend(_default[-1])
        name = "auto"
    name = str(name).strip().lower()
    if name == "auto":
        name, _ = auto_reason()
    if name not in REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of auto, {', '.join(REGISTRY)}")
    inst = _instances.get(name)
    if inst is None:
        info = _probe(name)
        if not info.available:
            raise BackendUnavailable(f"backend {name!r} is not available: {info.reason}")
        inst = _instances[name] = _load_class(name)()
    return inst


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """Within the ``with`` block, ``"auto"`` (the models' default) and ``None`` mean ``name``.

    ``name`` is a registry name or a backend instance; an instance is used as it is (not a fresh
    one of its class), so its settings hold. The backend is resolved on entry: an unavailable one
    raises :class:`~bpgpu.errors.BackendUnavailable` there.
    """
    backend = get_backend(name)
    _default.append(backend)
    try:
        yield backend
    finally:
        _default.pop()


def set_tf32(enabled: bool) -> bool:
    """Allow (or forbid) TF32 tensor cores in every float32 GEMM of this process on the GPU: one
    process-wide setting (CuPy's compute type), not a per-backend one. Returns the state in
    force. See :func:`bpgpu.backends.cupy_backend.set_tf32`."""
    from .cupy_backend import set_tf32 as _set
    return _set(enabled)


def tf32_state() -> bool | None:
    """Whether float32 GEMMs on the GPU may use TF32 now; None without a working CuPy."""
    from .cupy_backend import tf32_state as _state
    return _state()
