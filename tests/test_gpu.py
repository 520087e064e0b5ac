"""The CuPy backend: a clear error without a GPU; GPU-marked checks that need a device."""

import numpy as np
import pytest

import bpgpu
from bpgpu._compat import cupy_status

HAVE_GPU = cupy_status()[0] is not None
gpu = pytest.mark.skipif(not HAVE_GPU, reason=f"no usable CUDA device: {cupy_status()[1]}")


@pytest.mark.skipif(HAVE_GPU, reason="a CUDA device works here")
def test_cupy_backend_unavailable_is_a_clear_error():
    with pytest.raises(bpgpu.BackendUnavailable) as err:
        bpgpu.MLP([2, 2], backend="cupy")
    msg = str(err.value)
    assert "cupy" in msg and ("not installed" in msg or "driver" in msg or "device" in msg)


@pytest.mark.skipif(HAVE_GPU, reason="a CUDA device works here")
def test_cupy_backend_class_refuses_without_device():
    from bpgpu.backends.cupy_backend import CupyBackend   # importing the module must not fail
    with pytest.raises(bpgpu.BackendUnavailable, match="not available"):
        CupyBackend()


@pytest.mark.gpu
@gpu
def test_save_on_gpu_load_on_cpu_and_back(tmp_path):
    net = bpgpu.MLP([5, 4, 3], backend="cupy", seed=1)
    net.save(tmp_path / "g.npz")
    cpu = bpgpu.load(tmp_path / "g.npz", backend="numpy")
    X = np.random.default_rng(0).normal(size=(3, 5))
    np.testing.assert_allclose(cpu.predict_proba(X), net.predict_proba(X), rtol=1e-5)
    cpu.save(tmp_path / "c.npz")
    assert bpgpu.load(tmp_path / "c.npz", backend="cupy").backend.name == "cupy"


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_100_momentum_steps_match_numpy(dtype, tol):
    (X, y), _ = bpgpu.datasets.mnist()
    fit = dict(epochs=1, batch_size=64, optimizer="momentum", lr=0.1, weight_decay=1e-4,
               dropout=0.1)
    ref = bpgpu.MLP([784, 64, 10], dtype=dtype, backend="numpy", seed=11)
    net = bpgpu.MLP([784, 64, 10], dtype=dtype, backend="cupy", seed=11)
    ref.fit(X[:6400], y[:6400], **fit)
    net.fit(X[:6400], y[:6400], **fit)
    a = np.concatenate([w.ravel() for w in net.get_params()[0]])
    b = np.concatenate([w.ravel() for w in ref.get_params()[0]])
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < tol


@pytest.mark.gpu
@gpu
def test_tf32_parity_within_1e3():
    from bpgpu.backends.cupy_backend import CupyBackend
    (X, y), _ = bpgpu.datasets.mnist()
    be = CupyBackend(tf32=True)
    try:
        net = bpgpu.MLP([784, 64, 10], backend=be, seed=11)
        ref = bpgpu.MLP([784, 64, 10], backend="numpy", seed=11)
        for m in (net, ref):
            m.fit(X[:6400], y[:6400], epochs=1, batch_size=64, optimizer="momentum", lr=0.1)
        a = np.concatenate([w.ravel() for w in net.get_params()[0]])
        b = np.concatenate([w.ravel() for w in ref.get_params()[0]])
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-3
    finally:
        be.set_tf32(False)
