"""The GPU-marked tests of tests/test_gpu.py, run against the emulated device in a separate process
(tests/emulation/as_cupy.py installs the stand-in as ``cupy`` there, and only there), with
BPGPU_REQUIRE_GPU=1 so none may skip. This checks the GPU tests themselves -- their launch counts,
grid arithmetic, tolerances and fixtures -- before a GPU runs them; it says nothing about a GPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import needs_gxx

pytestmark = [pytest.mark.emulated, needs_gxx]
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_tests_pass_on_the_emulated_device():
    env = dict(os.environ, BPGPU_EMULATED_SMS="1", BPGPU_REQUIRE_GPU="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")   # the emulation is serial
    res = subprocess.run([sys.executable, "-m", "tests.emulation.as_cupy", "-q", "-m", "gpu",
                          "-p", "no:cacheprovider", "tests/test_gpu.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    passed = re.search(r"(\d+) passed", res.stdout)
    assert passed and int(passed.group(1)) >= 10, res.stdout[-2000:]
    assert "skipped" not in res.stdout and "failed" not in res.stdout
