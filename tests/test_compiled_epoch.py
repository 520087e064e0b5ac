"""The numba backend's compiled epoch (bpgpu.backends.numba_epoch) against its per-step path.

The compiled epoch calls the same kernels and makes the same BLAS calls in the same order as the
steps run one by one, so on the same machine (same BLAS, same threads) float64 results are
bit-identical: parameters, History and the model's step counter after every epoch. float32 is
held to the parity tolerances (tests/conftest.py TOL). Every comparison also checks that the
compiled path really ran (numba_epoch.STATS), so a silent fallback cannot pass as a match. The
fallbacks themselves (switch off, gradient hook, no CBLAS, an op the compiler does not know, small
epochs in the default mode) must train exactly as the per-step path does.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu._compat import has_numba
from bpgpu.optim import make_optimizer

from .conftest import TOL

pytestmark = pytest.mark.skipif(not has_numba(), reason="numba is not installed")

if has_numba():
    from bpgpu.backends import numba_epoch as ne


def _data(n=203, features=12, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, features), dtype=np.uint8), rng.integers(0, classes, n)


def _flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


def _train(monkeypatch, compiled, sizes, X, y, *, dtype="float64", epochs=2, net_kw=None,
           **fit):
    """Train a fresh model with compiled epochs forced on (or off); check which path ran."""
    monkeypatch.setenv(ne.ENV, "1" if compiled else "0")
    net = bpgpu.MLP(sizes, dtype=dtype, backend="numba", seed=5, **(net_kw or {}))
    before = dict(ne.STATS)
    history = net.fit(X, y, epochs=epochs, **fit)
    ran = ne.STATS["compiled_epochs"] - before["compiled_epochs"]
    assert ran == (epochs if compiled else 0), "the compiled path did not run every epoch"
    return net, history


def _same_history(h1, h0):
    for field in ("epoch", "loss", "accuracy", "loss_increased", "val_loss", "val_accuracy"):
        assert getattr(h1, field) == getattr(h0, field), field


# (sizes, activation, output, loss, targets) -- each optimizer also covers other activations
CASES = {
    "sgd": ([12, 9, 3], "sigmoid", "softmax", "ce"),
    "momentum": ([12, 9, 7, 3], ["tanh", "relu"], "softmax", "ce"),
    "nesterov": ([12, 8, 3], "relu", "sigmoid", "bce"),
    "adam": ([12, 8, 6, 3], ["identity", "tanh"], "identity", "mse"),
}


def _targets(loss, y):
    if loss == "mse":
        return np.random.default_rng(1).uniform(-1, 1, (y.shape[0], 3))
    return y


@pytest.mark.parametrize("train_metrics", [True, False], ids=["metrics", "no-metrics"])
@pytest.mark.parametrize("optimizer", list(CASES))
def test_float64_bit_identical_to_per_step(monkeypatch, optimizer, train_metrics):
    """Dropout, weight decay, a remainder batch (203 = 12 x 16 + 11), 2 epochs."""
    sizes, act, out, loss = CASES[optimizer]
    X, y = _data()
    y = _targets(loss, y)
    fit = dict(batch_size=16, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.1,
               dropout=0.2, weight_decay=1e-3, train_metrics=train_metrics)
    kw = dict(activation=act, output=out, loss=loss)
    net1, h1 = _train(monkeypatch, True, sizes, X, y, net_kw=kw, **fit)
    net0, h0 = _train(monkeypatch, False, sizes, X, y, net_kw=kw, **fit)
    assert np.array_equal(_flat(net1), _flat(net0))
    _same_history(h1, h0)
    assert net1.steps == net0.steps == 2 * 13


def test_plain_sgd_fused_path_and_validation_bit_identical(monkeypatch):
    """The benchmark's configuration: plain SGD inside the GEMMs, no dropout, validation data."""
    X, y = _data(320)
    fit = dict(batch_size=32, validation_data=_data(40, seed=3))
    net1, h1 = _train(monkeypatch, True, [12, 10, 3], X, y, epochs=3, **fit)
    net0, h0 = _train(monkeypatch, False, [12, 10, 3], X, y, epochs=3, **fit)
    assert np.array_equal(_flat(net1), _flat(net0))
    _same_history(h1, h0)


@pytest.mark.parametrize("optimizer", list(CASES))
def test_float32_within_parity_tolerance(monkeypatch, optimizer):
    sizes, act, out, loss = CASES[optimizer]
    X, y = _data()
    y = _targets(loss, y)
    fit = dict(batch_size=16, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.1,
               dropout=0.1, weight_decay=1e-4)
    kw = dict(activation=act, output=out, loss=loss)
    net1, h1 = _train(monkeypatch, True, sizes, X, y, dtype="float32", net_kw=kw, **fit)
    net0, h0 = _train(monkeypatch, False, sizes, X, y, dtype="float32", net_kw=kw, **fit)
    np.testing.assert_allclose(_flat(net1), _flat(net0), **TOL["float32"])
    np.testing.assert_allclose(h1.loss, h0.loss, **TOL["float32"])


@pytest.mark.parametrize("sizes, n, batch_size", [([1, 5, 3, 2], 22, 1), ([1, 5, 3, 2], 22, 7),
                                                  ([1, 5, 1, 2], 21, 7)],
                         ids=["batch1", "remainder1", "one-unit-layer"])
def test_one_row_one_unit_and_one_feature_shapes(monkeypatch, sizes, n, batch_size):
    """numpy's matmul takes GEMV or its plain loop when a dimension is 1 (a one-row batch or
    remainder, a one-unit layer, one input feature): the compiled epoch makes the same choice.
    (22 samples in batches of 7 leave a remainder of 1.)"""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, 1))
    y = (X[:, 0] > 0).astype(np.int64)
    kw = dict(activation="tanh", output="softmax", loss="ce")
    for optimizer in ("sgd", "momentum"):
        fit = dict(batch_size=batch_size, optimizer=optimizer, lr=0.3)
        net1, h1 = _train(monkeypatch, True, sizes, X, y, net_kw=kw, **fit)
        net0, h0 = _train(monkeypatch, False, sizes, X, y, net_kw=kw, **fit)
        assert np.array_equal(_flat(net1), _flat(net0)), optimizer
        _same_history(h1, h0)


def test_numpys_dot_case_falls_back(monkeypatch):
    """One row times one output unit is numpy's dot, which the compiler leaves to the steps."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(22, 1))
    y = (X[:, 0] > 0).astype(np.int64)
    kw = dict(activation="tanh", output="sigmoid", loss="bce")
    monkeypatch.setenv(ne.ENV, "1")
    net1 = bpgpu.MLP([1, 5, 1], dtype="float64", backend="numba", seed=5, **kw)
    before = dict(ne.STATS)
    h1 = net1.fit(X, y, epochs=2, batch_size=7)
    assert ne.STATS["compiled_epochs"] == before["compiled_epochs"]
    net0, h0 = _train(monkeypatch, False, [1, 5, 1], X, y, net_kw=kw, batch_size=7)
    assert np.array_equal(_flat(net1), _flat(net0))
    _same_history(h1, h0)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_large_column_sums_take_the_blas_path_identically(monkeypatch, optimizer):
    """Deltas of >= PARALLEL_MIN elements: column sums by GEMV (fused SGD's alpha/beta) or by
    numpy's matmul with a ones vector (plain gradients), and a remainder below the threshold."""
    from bpgpu.backends.threads import PARALLEL_MIN
    X, y = _data(600, features=20)
    assert 256 * 300 >= PARALLEL_MIN > (600 - 2 * 256) * 300
    fit = dict(batch_size=256, optimizer=optimizer)
    net1, _ = _train(monkeypatch, True, [20, 300, 3], X, y, epochs=1, **fit)
    net0, _ = _train(monkeypatch, False, [20, 300, 3], X, y, epochs=1, **fit)
    assert np.array_equal(_flat(net1), _flat(net0))


def test_learning_rate_schedule_between_epochs(monkeypatch):
    """The rate changes between epochs without recompiling (it is read from a table)."""
    X, y = _data()
    fit = dict(batch_size=16, optimizer="adam", lr=0.01, schedule="step:every=1,factor=0.5")
    compiled_before = ne.STATS["compiled"] + ne.STATS["cache_loads"]
    net1, h1 = _train(monkeypatch, True, [12, 9, 3], X, y, epochs=3, **fit)
    assert ne.STATS["compiled"] + ne.STATS["cache_loads"] - compiled_before <= 1
    net0, h0 = _train(monkeypatch, False, [12, 9, 3], X, y, epochs=3, **fit)
    assert np.array_equal(_flat(net1), _flat(net0))
    assert h1.lr == h0.lr == [0.01, 0.005, 0.0025]


def test_matmul_is_numpys_call_for_every_shape():
    """kernels/epoch.py's matmul against np.matmul, bit for bit, for the shapes where numpy
    switches between GEMM, GEMV and its own loop."""
    from bpgpu.kernels import blas
    from bpgpu.kernels.epoch import SERIAL
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        found = blas.blas_for(np.dtype(dtype))
        if found is None:
            pytest.skip("numpy's CBLAS was not found: the compiled epoch is off")
        gemm, gemv = found.gemm[np.dtype(dtype)], found.gemv[np.dtype(dtype)]
        for m, k, n in [(5, 4, 3), (1, 4, 3), (5, 4, 1), (5, 1, 3), (1, 1, 3), (5, 1, 1),
                        (1, 1, 1), (64, 100, 10)]:
            for ta in (False, True):
                for tb in (False, True):
                    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                    a.ravel()[0] = -0.0 if a.size == 1 else a.ravel()[0]
                    want = np.matmul(a.T if ta else a, b.T if tb else b)
                    got = np.full((m, n), np.nan, dtype)
                    SERIAL.matmul(gemm, gemv, found.ilp64, a, b, got, ta, tb)
                    assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), \
                        (dtype, m, k, n, ta, tb)


# ------------------------------------------------------------------------------ fallbacks
def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ne.ENV, "0")
    be = bpgpu.get_backend("numba")
    net = bpgpu.MLP([4, 3, 2], backend="numba")
    ws = net.workspace(2)
    assert be.compiled_epoch(net, ws, None, None, None) is None
    assert bpgpu.get_backend("numpy").compiled_epoch(net, ws, None, None, None) is None


def _runner(net, X, y, opt, **options):
    be = net.backend
    X_dev = net.prepare_inputs(X)
    T_dev = be.asarray(net.targets_from(y, X.shape[0]))
    return be.compiled_epoch(net, net.workspace(16), X_dev, T_dev, opt, **options)


def test_gradient_hook_falls_back(monkeypatch):
    monkeypatch.setenv(ne.ENV, "1")
    X, y = _data()
    net = bpgpu.MLP([12, 5, 3], backend="numba")
    opt = make_optimizer("sgd", net.backend, net.n_params, net.dtype, lr=0.1)
    runner = _runner(net, X, y, opt, gradient_hook=lambda grads: None)
    params, steps = _flat(net), net.steps
    assert runner(np.arange(203)) is False
    assert "gradient_hook" in runner.reason
    assert np.array_equal(_flat(net), params) and net.steps == steps   # nothing ran


def test_a_gemm_timer_sees_every_call_and_the_shared_backend_is_untouched(monkeypatch):
    """The benchmark times GEMMs through a wrapper backend (bpgpu.bench.timing.GemmTimer): it has
    no compiled epoch, so every GEMM call reaches it, and the shared backend is never modified."""
    from bpgpu.bench.timing import GemmTimer
    monkeypatch.setenv(ne.ENV, "1")
    be = bpgpu.get_backend("numba")
    X, y = _data(64)
    net = bpgpu.MLP([12, 5, 3], backend="numba")
    timer = GemmTimer(be)
    calls = []
    inner_gemm = timer.inner.gemm
    monkeypatch.setattr(timer, "inner", type("Spy", (), {
        "gemm": lambda self, *a: calls.append(1) or inner_gemm(*a),
        "__getattr__": lambda self, name: getattr(be, name)})())
    before = dict(ne.STATS)
    with net.redirected(timer):
        net.fit(X, y, epochs=1, batch_size=16)
    assert ne.STATS["compiled_epochs"] == before["compiled_epochs"]
    assert len(calls) == 4 * 5         # 4 steps x (2 forward, 1 delta, 2 fused gradient GEMMs)
    assert timer.seconds > 0 and "gemm" not in vars(be)
    assert net.backend is be and net.steps == 0          # redirected restores both


def test_no_cblas_falls_back_and_trains_as_per_step(monkeypatch):
    be = bpgpu.get_backend("numba")
    monkeypatch.setattr(type(be), "_fused_blas", lambda self, dtype: None)
    monkeypatch.setenv(ne.ENV, "1")
    X, y = _data()
    net = bpgpu.MLP([12, 9, 3], dtype="float64", backend="numba", seed=5)
    before = dict(ne.STATS)
    h = net.fit(X, y, epochs=2, batch_size=16)
    assert ne.STATS["compiled_epochs"] == before["compiled_epochs"]
    assert ne.STATS["fallback_epochs"] - before["fallback_epochs"] == 2
    net0, h0 = _train(monkeypatch, False, [12, 9, 3], X, y, batch_size=16)
    assert np.array_equal(_flat(net), _flat(net0))
    _same_history(h, h0)
    monkeypatch.setenv(ne.ENV, "1")
    runner = _runner(net, X, y, make_optimizer("sgd", be, net.n_params, net.dtype, lr=0.1))
    assert runner(np.arange(203)) is False and "CBLAS" in runner.reason


@pytest.mark.parametrize("augment", ["shift=1", "shift=1,flip=0.5,rotate=20,scale=0.2,shear=0.2"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_augmented_epochs_compiled_bit_identical(monkeypatch, augment, dtype):
    """The augmented gather (and its Philox draws) inside the compiled epoch: the same images,
    so the same parameters bit for bit as the steps run one by one -- a remainder batch too."""
    X, y = _data(203, features=16)
    fit = dict(batch_size=16, augment=augment, dropout=0.1, optimizer="momentum")
    net1, h1 = _train(monkeypatch, True, [16, 6, 3], X, y, dtype=dtype, **fit)
    net0, h0 = _train(monkeypatch, False, [16, 6, 3], X, y, dtype=dtype, **fit)
    assert np.array_equal(_flat(net1), _flat(net0))
    _same_history(h1, h0)


def test_unknown_op_falls_back_augmentation(monkeypatch):
    """The elastic field of augmentation (smoothed by GEMMs on host arrays) is an op the compiler
    does not lower: per-step, same results."""
    X, y = _data(120, features=16)
    fit = dict(batch_size=16, augment="shift=1,elastic=8:2")
    monkeypatch.setenv(ne.ENV, "1")
    net1 = bpgpu.MLP([16, 6, 3], dtype="float64", backend="numba", seed=5)
    before = dict(ne.STATS)
    net1.fit(X, y, epochs=2, **fit)
    assert ne.STATS["compiled_epochs"] == before["compiled_epochs"]
    assert ne.STATS["fallback_epochs"] > before["fallback_epochs"]
    net0, _ = _train(monkeypatch, False, [16, 6, 3], X, y, **fit)
    assert np.array_equal(_flat(net1), _flat(net0))


def test_default_mode_leaves_small_uncompiled_epochs_to_the_steps(monkeypatch):
    monkeypatch.delenv(ne.ENV, raising=False)
    from bpgpu.backends import numba_cache
    monkeypatch.setattr(numba_cache, "cache_dir", lambda: str(_empty_dir()))
    monkeypatch.setattr(numba_cache, "_COMPILED", {})
    X, y = _data(40)
    net = bpgpu.MLP([12, 4, 3], backend="numba")
    opt = make_optimizer("sgd", net.backend, net.n_params, net.dtype, lr=0.1)
    runner = _runner(net, X, y, opt)
    assert runner(np.arange(40)) is False and str(ne.MIN_BATCHES) in runner.reason


def _empty_dir():
    import tempfile
    return tempfile.mkdtemp(prefix="bpgpu-test-epoch-")


# ------------------------------------------------------------------------------ the disk cache
def test_a_new_process_loads_the_compiled_epoch_from_disk():
    """A second process finds the compiled epoch in the disk cache instead of compiling it."""
    code = ("import numpy as np, bpgpu\n"
            "from bpgpu.backends import numba_epoch as ne\n"
            "rng = np.random.default_rng(0)\n"
            "X = rng.integers(0, 256, (64, 12), dtype=np.uint8); y = rng.integers(0, 3, 64)\n"
            "net = bpgpu.MLP([12, 6, 5, 4, 3], activation=['relu', 'tanh', 'relu'],"
            " backend='numba')\n"
            "net.fit(X, y, epochs=1, batch_size=16, optimizer='nesterov')\n"
            "print(ne.STATS['compiled'], ne.STATS['cache_loads'], ne.STATS['compiled_epochs'])\n")
    env = dict(os.environ, BPGPU_COMPILED_EPOCH="1")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, second = ([int(v) for v in r.stdout.split()] for r in runs)
    assert first[0] + first[1] == 1 and first[2] == 1       # compiled, or loaded from an earlier run
    assert second == [0, 1, 1]


def test_epoch_in_slices_bit_identical_and_progress(monkeypatch):
    """Asked between slices whether to stop (how Ctrl-C reaches compiled code), an epoch cut into
    one-batch calls gives exactly what one call gives, and reports every batch to ``progress``."""
    monkeypatch.setattr(ne, "SLICE_SECONDS", 0.0)             # every later slice: one batch
    X, y = _data()
    fit = dict(batch_size=16, optimizer="adam", lr=0.01, dropout=0.2)
    net1, h1 = _train(monkeypatch, True, [12, 8, 3], X, y, **fit)
    net0, h0 = _train(monkeypatch, False, [12, 8, 3], X, y, **fit)
    assert np.array_equal(_flat(net1), _flat(net0)) and net1.steps == net0.steps
    _same_history(h1, h0)
    monkeypatch.setenv(ne.ENV, "1")
    net = bpgpu.MLP([12, 8, 3], dtype="float64", backend="numba", seed=5)
    opt = make_optimizer("sgd", net.backend, net.n_params, net.dtype, lr=0.1)
    runner, seen, asked = _runner(net, X, y, opt), [], []
    assert runner(np.arange(203), should_stop=lambda: asked.append(1) and False,
                  progress=seen.append) is True
    assert seen == [4] + [1] * 9 and len(asked) == 9 and net.steps == 13


def test_stop_part_way_abandons_the_epoch(monkeypatch):
    """should_stop() True after the first slice: None, the first slice's steps done (exactly the
    per-step path's first 4 steps), the step counter not advanced."""
    monkeypatch.setenv(ne.ENV, "1")
    X, y = _data()
    net = bpgpu.MLP([12, 8, 3], dtype="float64", backend="numba", seed=5)
    twin = bpgpu.MLP([12, 8, 3], dtype="float64", backend="numba", seed=5)
    opt = make_optimizer("momentum", net.backend, net.n_params, net.dtype, lr=0.1)
    twin_opt = make_optimizer("momentum", twin.backend, twin.n_params, twin.dtype, lr=0.1)
    before = ne.STATS["abandoned_epochs"]
    order = np.random.default_rng(2).permutation(203)
    assert _runner(net, X, y, opt)(order, should_stop=lambda: True) is None
    assert ne.STATS["abandoned_epochs"] == before + 1 and net.steps == 0
    ws, X_dev = twin.workspace(16), twin.prepare_inputs(X)
    T_dev = twin.backend.asarray(twin.targets_from(y, 203))
    for start in range(0, 64, 16):
        twin.train_step(ws.view(16), X_dev, T_dev, order[start:start + 16], twin_opt)
    assert np.array_equal(_flat(net), _flat(twin))


def test_ctrl_c_during_a_compiled_epoch_stops_within_a_slice(monkeypatch):
    """SIGINT part way through a compiled epoch: fit stops at the next slice boundary (not at
    the end of the epoch) and puts back the last completed epoch's parameters."""
    import signal
    monkeypatch.setenv(ne.ENV, "1")
    monkeypatch.setattr(ne, "SLICE_SECONDS", 0.0)             # slices of one batch
    X, y = _data(2000)
    fit = dict(batch_size=16, optimizer="momentum", lr=0.1, dropout=0.1)
    done = bpgpu.MLP([12, 8, 3], dtype="float64", backend="numba", seed=5)
    done.fit(X, y, epochs=1, **fit)
    original = ne.CompiledEpoch.__call__
    calls = {"epochs": 0, "asked": 0}

    def interrupted_in_epoch_2(self, order, should_stop=None, progress=None):
        calls["epochs"] += 1
        if calls["epochs"] < 2:
            return original(self, order, should_stop, progress)

        def ask():
            calls["asked"] += 1
            if calls["asked"] == 2:
                signal.raise_signal(signal.SIGINT)         # Ctrl-C, seen by fit's guard
            return should_stop()
        return original(self, order, ask, progress)

    monkeypatch.setattr(ne.CompiledEpoch, "__call__", interrupted_in_epoch_2)
    net = bpgpu.MLP([12, 8, 3], dtype="float64", backend="numba", seed=5)
    with pytest.raises(bpgpu.TrainingInterrupted) as info:
        net.fit(X, y, epochs=3, **fit)
    assert info.value.restored and info.value.history.epoch == [1]
    assert calls["asked"] == 2                              # stopped at the slice boundary
    assert np.array_equal(_flat(net), _flat(done)) and net.steps == done.steps
