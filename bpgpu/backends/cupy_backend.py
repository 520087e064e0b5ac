"""The CuPy backend: the reference ops of :class:`Backend` on an NVIDIA GPU.

Data and parameters live on the device; GEMMs go to cuBLAS through ``cupy.matmul`` into
preallocated outputs. Importing this module imports cupy; constructing the backend without a working
device raises :class:`~bpgpu.errors.BackendUnavailable` naming the cause (no CuPy, no driver, no
device, a driver/runtime mismatch).
"""

from __future__ import annotations

import numpy as np

from .._compat import cupy_status
from ..errors import BackendUnavailable
from .base import Backend

__all__ = ["CupyBackend"]


class CupyBackend(Backend):
    """CuPy on the first CUDA device."""

    name = "cupy"

    def __init__(self):
        cupy, reason = cupy_status()
        if cupy is None:
            raise BackendUnavailable(f"backend 'cupy' is not available: {reason}")
        super().__init__()
        self.xp = cupy

    def describe(self) -> str:
        return f"cupy ({cupy_status()[1]})"

    def asarray(self, host, dtype=None):
        return self.xp.ascontiguousarray(self.xp.asarray(host, dtype=dtype))

    def to_host(self, arr) -> np.ndarray:
        return self.xp.asnumpy(arr)

    def upload(self, host, out):
        out.set(np.ascontiguousarray(host, dtype=out.dtype))
        return out

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()
