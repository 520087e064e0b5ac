"""Whole training runs on the emulated GPU backend against the numpy backend: parity of weights
and biases, the launches of one step (bench/NOTES.md quotes them), prediction, TF32."""

import numpy as np
import pytest

import bpgpu
from bpgpu.backends.cupy_backend import _set_tf32, _tf32_enabled

from .conftest import emulated, needs_gxx

pytestmark = [pytest.mark.emulated, needs_gxx]


@pytest.fixture(scope="module")
def mnist_slice():
    (X, y), _ = bpgpu.datasets.mnist()
    return X[:640], y[:640]


def _params(net):
    w, b = net.get_params()
    return np.concatenate([x.ravel() for x in w]), np.concatenate([x.ravel() for x in b])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("fit", [
    dict(optimizer="sgd", lr=0.1),                                          # fused into cuBLAS
    dict(optimizer="sgd", lr=0.1, weight_decay=1e-3),
    dict(optimizer="momentum", lr=0.1, weight_decay=1e-4, dropout=0.1),
    dict(optimizer="nesterov", lr=0.05, momentum=0.9),
    dict(optimizer="adam", lr=0.003, dropout=0.2),
], ids=["sgd", "sgd-wd", "momentum-wd-dropout", "nesterov", "adam-dropout"])
def test_training_matches_numpy(mnist_slice, dtype, tol, fit):
    """20 steps of 784-32-10 (sigmoid, softmax, ce): weights and biases within the tolerance."""
    X, y = mnist_slice
    be = emulated()
    nets = [bpgpu.MLP([784, 32, 10], dtype=dtype, backend=b, seed=3) for b in (be, "numpy")]
    hist = [n.fit(X, y, epochs=2, batch_size=64, **fit) for n in nets]
    (wg, bg), (wr, br) = _params(nets[0]), _params(nets[1])
    assert _rel(wg, wr) < tol and _rel(bg, br) < tol
    np.testing.assert_allclose(hist[0].loss, hist[1].loss, rtol=tol * 10)
    assert hist[0].accuracy == hist[1].accuracy
    assert be._launches["output_delta"] == 20       # the kernels ran, not the fallbacks
    assert be.fuses_sgd(dtype)


@pytest.mark.parametrize("output,loss,act", [("sigmoid", "bce", "tanh"),
                                              ("identity", "mse", "relu"),
                                              ("softmax", "mse", "sigmoid")])
def test_other_losses_match_numpy(dtype, output, loss, act):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 6))
    Y = rng.uniform(0.05, 0.95, (150, 3)) if loss != "mse" or output != "softmax" else \
        np.eye(3)[rng.integers(0, 3, 150)]
    be = emulated(sm_count=2)
    nets = [bpgpu.MLP([6, 9, 7, 3], activation=act, output=output, loss=loss, dtype=dtype,
                      backend=b, seed=5) for b in (be, "numpy")]
    for n in nets:
        n.fit(X, Y, epochs=3, batch_size=32, optimizer="momentum", lr=0.05, dropout=0.1)
    tol = 1e-11 if dtype == "float64" else 3e-5
    for got, want in zip(_params(nets[0]), _params(nets[1])):
        assert _rel(got, want) < tol


def test_launches_per_step_784_100_10(mnist_slice):
    """The launch count of one step of the textbook network (bench/NOTES.md): batch 64, sigmoid,
    softmax + ce, plain SGD fused into the gradient GEMMs, training metrics on."""
    X, y = mnist_slice
    be = emulated()
    net = bpgpu.MLP([784, 100, 10], backend=be, seed=0)
    net.fit(X[:64], y[:64], epochs=1, batch_size=64, lr=0.1)          # workspaces, compile
    be._launches.clear()
    net.fit(X, y, epochs=1, batch_size=64, lr=0.1)                     # 10 steps
    per_step = {k: v / 10 for k, v in be._launches.items()}
    assert per_step == {"gather_scale": 1, "gather": 1, "cublas_gemm": 7, "bias_activation": 1,
                        "bias_softmax": 1, "count_correct": 1, "output_delta": 1,
                        "activation_backward": 1}
    assert sum(per_step.values()) == 14
    be._launches.clear()
    net.fit(X, y, epochs=1, batch_size=64, optimizer="momentum", lr=0.1, train_metrics=False)
    per_step = {k: v / 10 for k, v in be._launches.items()}
    assert per_step == {"gather_scale": 1, "gather": 1, "cublas_gemm": 7, "bias_activation": 1,
                        "bias_softmax": 1, "output_delta": 1, "activation_backward": 1,
                        "momentum_update": 1}


def test_predict_and_evaluate_match_numpy(mnist_slice, tmp_path):
    X, y = mnist_slice
    ref = bpgpu.MLP([784, 20, 10], backend="numpy", seed=2)
    ref.fit(X, y, epochs=1, batch_size=32, lr=0.1)
    ref.save(tmp_path / "m.npz")
    net = bpgpu.load(tmp_path / "m.npz", backend=emulated())
    np.testing.assert_allclose(net.predict_proba(X), ref.predict_proba(X), rtol=2e-5, atol=1e-7)
    assert (net.predict(X) == ref.predict(X)).mean() > 0.99
    got, want = net.evaluate(X, y), ref.evaluate(X, y)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=2 / len(y))
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_tf32_is_one_process_wide_setting(mnist_slice, monkeypatch):
    """TF32 is CuPy's compute type (one per process): reported by describe, used by every float32
    GEMM (not by column sums), refused below compute capability 8.0, CUPY_TF32 honoured."""
    X, y = mnist_slice
    be = emulated()
    cp = be.xp
    assert not _tf32_enabled(cp) and "TF32 off" in be.describe()
    assert _set_tf32(cp, True) is True and "TF32 on" in be.describe()
    nets = [bpgpu.MLP([784, 32, 10], backend=b, seed=3) for b in (be, "numpy")]
    for n in nets:
        n.fit(X, y, epochs=1, batch_size=64, optimizer="momentum", lr=0.1)
    calls = list(cp.cuda.cublas.calls)     # (compute type, m, n, k) as cuBLAS got them: the
    sums = [c[0] for c in calls if c[2] == 1]     # column sums are the calls with one column
    assert {c[0] for c in calls if c[2] > 1} == {cp.cuda.cublas.CUBLAS_COMPUTE_32F_FAST_TF32}
    assert sums and set(sums) == {cp.cuda.cublas.CUBLAS_COMPUTE_32F}
    rel = _rel(_params(nets[0])[0], _params(nets[1])[0])
    assert 1e-6 < rel < 1e-3          # TF32 rounding shows, and stays within TF32's tolerance
    assert _set_tf32(cp, False) is False and "TF32 off" in be.describe()

    old = emulated(compute_capability=75)
    with pytest.raises(bpgpu.ConfigError, match="compute capability 8.0"):
        _set_tf32(old.xp, True)
    assert not _tf32_enabled(old.xp)

    monkeypatch.setenv("CUPY_TF32", "1")
    assert _tf32_enabled(emulated().xp)


@pytest.mark.parametrize("lr,wd", [(1e-3, 1e-5), (1e-2, 1e-4), (0.1, 1e-4)])
def test_float32_weight_decay_is_applied_as_float64_applies_it(mnist_slice, lr, wd):
    """Fused SGD takes beta = 1 - lr wd in the model's dtype; float32 cannot represent a small
    lr wd there (none at all below 2^-25), so float32 does not fuse with decay
    (bpgpu.optim.SGD.fused_sgd) and the decay applied equals float64's: float32 training with
    weight decay stays as close to numpy float32 as it does without decay."""
    from bpgpu.optim import make_optimizer
    X, y = mnist_slice
    be = emulated()
    for dtype, fused in (("float32", False), ("float64", True)):
        opt = make_optimizer("sgd", be, 10, dtype, lr=lr, weight_decay=wd)
        assert (opt.fused_sgd() is not None) == fused, dtype
    assert make_optimizer("sgd", be, 10, "float32", lr=lr).fused_sgd() == (lr, 0.0)
    rel = {}
    for decay in (0.0, wd):
        nets = [bpgpu.MLP([784, 32, 10], dtype="float32", backend=b, seed=3)
                for b in (emulated(), "numpy")]
        for n in nets:
            n.fit(X, y, epochs=1, batch_size=64, optimizer="sgd", lr=lr, weight_decay=decay)
        rel[decay] = _rel(_params(nets[0])[0], _params(nets[1])[0])
    assert rel[wd] < max(4 * rel[0.0], 2e-7)
    # one step with g = 0 against float64: w (1 - lr wd), rounded once to float32 (a float32
    # weight moves by whole ulps: the decay applied over many steps is then float64's)
    w = np.linspace(-1, 1, 1001).astype(np.float32)
    opt = make_optimizer("sgd", be, w.size, "float32", lr=lr, weight_decay=wd, n_decay=w.size)
    p = be.asarray(w)
    opt.update(p, be.zeros(w.size, np.float32))
    want = (w.astype(np.float64) * (1 - lr * wd)).astype(np.float32)
    np.testing.assert_array_max_ulp(be.to_host(p), want, maxulp=1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("stored", ["uint8", "float64"])
def test_out_of_core_batches_stream_through_pinned_buffers(mnist_slice, tmp_path, dtype, stored):
    """A memory-mapped dataset on cupy: every batch (rows and targets) uploaded asynchronously
    from page-locked host memory on the copy stream (the emulated ``set`` refuses anything else),
    and training equal bit for bit to the same data uploaded whole, with a validation split,
    dropout and sample weights."""
    from .devmem import DeviceArray
    X, y = mnist_slice
    data = X if stored == "uint8" else X / 255.0
    np.save(tmp_path / "x.npy", data)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    w = np.random.default_rng(2).uniform(0.5, 2, len(y))
    kw = dict(epochs=2, batch_size=48, optimizer="momentum", lr=0.05, dropout=0.1,
              validation_split=0.1, sample_weight=w)
    nets = []
    for source in (data, mapped):
        be = emulated()
        net = bpgpu.MLP([784, 16, 10], dtype=dtype, backend=be, seed=3)
        before = DeviceArray.async_sets
        history = net.fit(source, y, **kw)
        nets.append((net, history, DeviceArray.async_sets - before, be))
    (a, ha, sets_a, _), (b, hb, sets_b, be_b) = nets
    steps = 2 * -(-576 // 48)
    assert sets_a == 0 and sets_b == 2 * steps            # rows and targets, every step
    assert be_b._copy_stream is not None and be_b._copy_stream.non_blocking
    for pa, pb in zip(_params(a), _params(b)):
        assert np.array_equal(pa, pb)
    assert ha.loss == hb.loss and ha.val_loss == hb.val_loss
