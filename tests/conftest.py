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


#: ``BPGPU_REQUIRE_GPU=1`` (bench/gpu.sh sets it): a GPU test that would be skipped fails instead,
#: so a GPU machine whose CuPy is broken cannot pass by skipping everything.
REQUIRE_GPU = os.environ.get("BPGPU_REQUIRE_GPU", "") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (REQUIRE_GPU and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("gpu") is not None):
        why = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"BPGPU_REQUIRE_GPU=1, but this GPU test was skipped: {why}"


def rel_norm(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))
