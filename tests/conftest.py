"""Shared fixtures: the backend × dtype matrix, tolerances per dtype, MNIST once per session."""

import os

import numpy as np
import pytest

import bpgpu
from bpgpu.backends import available_backends

os.environ.setdefault("MPLBACKEND", "Agg")

#: one tolerance table per dtype (relative), used by every parity comparison
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-11, atol=1e-13)}

_INFOS = available_backends()


def backend_params():
    """Every registered backend; a missing one is skipped with its reason, never silently."""
    params = []
    for info in _INFOS:
        marks = [pytest.mark.gpu] if info.name == "cupy" else []
        if not info.available:
            marks.append(pytest.mark.skip(reason=f"backend {info.name} unavailable: {info.reason}"))
        params.append(pytest.param(info.name, marks=marks, id=info.name))
    return params


@pytest.fixture(params=backend_params())
def backend_name(request):
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(scope="session")
def mnist_data():
    return bpgpu.datasets.mnist()


def rel_norm(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
