"""Numba-specific behaviour: thread policy, compile cache, fallbacks to numpy's ops."""

import os
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu._compat import has_numba

pytestmark = pytest.mark.skipif(not has_numba(), reason="numba is not installed")


def test_thread_policy_is_deliberate():
    from bpgpu.backends import numba_backend as nb
    be = bpgpu.get_backend("numba")
    assert be.threads_for(16) == 1 and be.numba_threads_for(16) == 1
    assert be.threads_for(64) == be.threads_for(1024) == (os.cpu_count() or 1)
    assert bpgpu.get_backend("numpy").threads_for(64) == 1
    if (os.cpu_count() or 1) <= nb.SERIAL_MAX_CORES:
        assert be.numba_threads_for(8192) == 1
    with be.compute_threads(16):
        assert be._kernel("add_bias", 10 ** 7) is be._k["add_bias"][0]   # serial


def test_warmup_reports_and_describe_mentions_cache():
    be = bpgpu.get_backend("numba")
    res = be.warmup(dtypes=("float32",))
    assert res["kernels"] >= 10 and res["seconds"] > 0
    assert "numba" in be.describe()


def test_falls_back_to_numpy_for_unsupported_arrays():
    be = bpgpu.get_backend("numba")
    z = np.asfortranarray(np.random.default_rng(0).normal(size=(5, 4)))   # not C-contiguous
    want = 1 / (1 + np.exp(-(z + 0.5)))
    be.bias_activation(z, np.full(4, 0.5), "sigmoid")
    np.testing.assert_allclose(z, want, rtol=1e-12)


def test_auto_picks_numba_when_cupy_has_no_device(monkeypatch):
    from bpgpu._compat import has_cupy_gpu
    if has_cupy_gpu():
        pytest.skip("a CUDA device works here")
    monkeypatch.delenv("BPGPU_BACKEND", raising=False)
    assert bpgpu.get_backend("auto").name == "numba"


def test_warmup_command():
    res = subprocess.run([sys.executable, "-m", "bpgpu", "warmup"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "numba kernels ready" in res.stdout
    info = subprocess.run([sys.executable, "-m", "bpgpu", "info"], capture_output=True, text=True)
    assert "numba kernels:" in info.stdout
