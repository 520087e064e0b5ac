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
    from bpgpu.backends import threads
    be = bpgpu.get_backend("numba")
    assert be.thread_plan(16) == {"blas_threads": 1, "kernel_threads": 1}
    cores = os.cpu_count() or 1
    assert be.thread_plan(64)["blas_threads"] == be.thread_plan(1024)["blas_threads"] == cores
    assert bpgpu.get_backend("numpy").thread_plan(32) == {"blas_threads": 1}
    if cores <= threads.SERIAL_MAX_CORES:
        assert be.thread_plan(8192)["kernel_threads"] == 1
    with be.compute_threads(16):
        assert be._kernel("add_bias", 10 ** 7) is be._k["add_bias"][0]   # serial


def test_warmup_reports_and_describe_mentions_cache():
    from bpgpu.warmup import warmup
    be = bpgpu.get_backend("numba")
    res = warmup(be, dtypes=("float32",))
    assert res["kernels"] >= 10 and res["seconds"] > 0 and res["epochs"] >= 0
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


def _numpy_uses_openblas():
    tpc = pytest.importorskip("threadpoolctl")
    return any(i.get("internal_api") == "openblas" for i in tpc.threadpool_info())


def test_finds_numpys_own_blas_and_fuses_sgd():
    """numpy's OpenBLAS wheel exports CBLAS: the fused SGD path must be on, for both dtypes."""
    if not _numpy_uses_openblas():
        pytest.skip("numpy's BLAS here is not OpenBLAS; the fused path may legitimately be off")
    from bpgpu.kernels import blas
    found = blas.find_blas()
    assert found is not None and "blas" in os.path.basename(found.path).lower()
    be = bpgpu.get_backend("numba")
    assert be.fuses_sgd("float32") and be.fuses_sgd("float64")
    assert not bpgpu.get_backend("numpy").fuses_sgd("float32")


def test_blas_call_checks_shapes_before_calling():
    from bpgpu.kernels import blas
    found = blas.blas_for(np.dtype(np.float64))
    if found is None:
        pytest.skip("no CBLAS found in numpy's BLAS")
    a, b = np.ones((3, 4)), np.ones((5, 2))
    c = np.full((3, 2), 5.0)
    with pytest.raises(ValueError, match="shapes"):
        blas.gemm(found.gemm[np.dtype(np.float64)], found.ilp64, a, b, c, False, False, 1.0, 0.0)
    with pytest.raises(ValueError, match="shapes"):
        blas.gemv(found.gemv[np.dtype(np.float64)], found.ilp64, a, np.ones(4), np.ones(3), True,
                  1.0, 0.0)
    assert (c == 5.0).all()   # exact: the output must not be written


def test_fit_with_plain_sgd_updates_inside_the_gemms(mnist_data):
    """With the fused path the gradient buffer is never written; results match the two-pass path
    (``BPGPU_FUSED_BLAS=0`` turns the lookup off, in a fresh process)."""
    (X, y), _ = mnist_data
    net = bpgpu.MLP([784, 16, 10], backend="numba", dtype="float64", seed=1)
    if not net.backend.fuses_sgd(net.dtype):
        pytest.skip("no CBLAS found in numpy's BLAS")
    net.fit(X[:640], y[:640], epochs=1, batch_size=64, optimizer="sgd", lr=0.1,
            weight_decay=1e-3)
    assert not net.backend.to_host(net.grads).any()
    code = ("import bpgpu, numpy as np; from bpgpu.kernels import blas; "
            "assert blas.find_blas() is None; d = bpgpu.datasets.mnist()[0]; "
            "net = bpgpu.MLP([784, 16, 10], backend='numba', dtype='float64', seed=1); "
            "assert not net.backend.fuses_sgd(net.dtype); "
            "net.fit(d[0][:640], d[1][:640], epochs=1, batch_size=64, optimizer='sgd', lr=0.1, "
            "weight_decay=1e-3); W, b = net.get_params(); "
            "np.save(__import__('sys').argv[1], np.concatenate([w.ravel() for w in W + b]))")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "two_pass.npy")
        env = dict(os.environ, BPGPU_FUSED_BLAS="0")
        res = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        two_pass = np.load(path)
    W, b = net.get_params()
    fused = np.concatenate([w.ravel() for w in W + b])
    np.testing.assert_allclose(fused, two_pass, rtol=1e-11, atol=1e-13)
