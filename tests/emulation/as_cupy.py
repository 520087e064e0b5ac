"""Run pytest in this process with the emulated device installed as ``cupy``:

    python -m tests.emulation.as_cupy [pytest arguments]     (e.g. -m gpu tests)

so the GPU-marked tests run -- through the real backend, the probe and ``get_backend("cupy")`` --
against the host emulation (its libcublas, tests/emulation/fake_cublas.py, standing in for the
one :func:`bpgpu.backends.cupy_cublas.find_library` finds, so CUDA-graph epochs run). It
changes ``sys.modules`` of this process only, which is why it is a separate process: tests/emulation/test_gpu_suite.py starts it, and nothing else in a test session
ever sees the stand-in. It says nothing about a real GPU; it checks that the GPU tests themselves
are right (their expectations, their arithmetic of grid sizes and launch counts) before one runs.
"""

import os
import sys

import pytest


def main(argv):
    from bpgpu.backends import cupy_cublas

    from . import fake_cublas
    from .fake_cupy import EmulatedCupy
    cupy = EmulatedCupy(sm_count=int(os.environ.get("BPGPU_EMULATED_SMS", "2")))
    sys.modules["cupy"] = cupy
    emulated_blas = fake_cublas.library(cupy.cuda.cublas)      # the ctypes GEMMs, as on a GPU
    cupy_cublas.find_library = lambda: (emulated_blas, "host emulation")
    return pytest.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
