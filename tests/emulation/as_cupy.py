"""Run pytest in this process with the emulated device installed as ``cupy``:

    python -m tests.emulation.as_cupy [pytest arguments]     (e.g. -m gpu tests)

so the GPU-marked tests run -- through the real backend, the probe and ``get_backend("cupy")`` --
against the host emulation. It changes ``sys.modules`` of this process only, which is why it is a
separate process: tests/emulation/test_gpu_suite.py starts it, and nothing else in a test session
ever sees the stand-in. It says nothing about a real GPU; it checks that the GPU tests themselves
are right (their expectations, their arithmetic of grid sizes and launch counts) before one runs.
"""

import os
import sys

import pytest


def main(argv):
    from .fake_cupy import EmulatedCupy
    sys.modules["cupy"] = EmulatedCupy(sm_count=int(os.environ.get("BPGPU_EMULATED_SMS", "2")))
    return pytest.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
