"""``import cupy`` answered by the host emulation, for a process started with this folder on
PYTHONPATH: the dry run of bench/gpu.sh (tests/test_gpu.py) runs the script's own Python steps --
the probe, ``get_backend("cupy")``, eager and CUDA-graph epochs -- against the emulated device,
its libcublas standing in for the one :func:`bpgpu.backends.cupy_cublas.find_library` finds.
It says nothing about a GPU's speed: it checks that the script works before a GPU runs it."""

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bpgpu.backends import cupy_cublas  # noqa: E402
from tests.emulation import fake_cublas  # noqa: E402
from tests.emulation.fake_cupy import EmulatedCupy  # noqa: E402

_cupy = EmulatedCupy(sm_count=int(os.environ.get("BPGPU_EMULATED_SMS", "2")))
_blas = fake_cublas.library(_cupy.cuda.cublas)
cupy_cublas.find_library = lambda: (_blas, "host emulation")
sys.modules[__name__] = _cupy
