"""The cupy probe end to end on the emulated device: its NVRTC kernel runs and its cuBLAS GEMM
multiplies, so a working install is reported as working (the failures: tests/test_gpu.py)."""

import pytest

from bpgpu._compat import probe_cupy

from .conftest import needs_gxx
from .fake_cupy import EmulatedCupy

pytestmark = [pytest.mark.emulated, needs_gxx]


def test_probe_accepts_a_working_device():
    cp = EmulatedCupy(compute_capability=90, driver=13000, runtime=12090)
    module, reason = probe_cupy(cp)
    assert module is cp
    assert reason == ("CuPy 14.2.0 (host emulation) on host emulation (compute capability 9.0; "
                      "driver CUDA 13.0, runtime 12.9)")
    assert cp.launches["bpgpu_probe"] == 1
