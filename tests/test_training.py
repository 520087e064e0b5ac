"""fit(): accuracy on MNIST, validation, early stopping, dropout, divergence, history, errors."""

import warnings

import numpy as np
import pytest

import bpgpu
from bpgpu.train import TrainingDiverged

from .conftest import TOL


def test_textbook_mnist_reaches_94_percent(backend_name, mnist_data):
    """784-100-10 sigmoid/softmax/ce, SGD lr 0.1, batch 64, 10 epochs, float32 (PyTorch: 94.5 %)."""
    (X, y), (Xt, yt) = mnist_data
    net = bpgpu.MLP([784, 100, 10], backend=backend_name, seed=0)
    history = net.fit(X, y, epochs=10, batch_size=64, optimizer="sgd", lr=0.1)
    assert len(history.epoch) == 10 and history.stop_reason == "completed"
    assert net.evaluate(Xt, yt)["accuracy"] >= 0.94
    assert history.loss[-1] < history.loss[0]


def test_history_validation_and_flags(mnist_data):
    (X, y), (Xt, yt) = mnist_data
    net = bpgpu.MLP([784, 20, 10], seed=1)
    h = net.fit(X[:2000], y[:2000], epochs=3, batch_size=50, validation_data=(Xt[:500], yt[:500]))
    assert h.epoch == [1, 2, 3]
    assert len(h.val_loss) == len(h.val_accuracy) == len(h.time) == 3
    assert all(0 <= a <= 1 for a in h.accuracy + h.val_accuracy)
    assert h.loss_increased == [False] + [h.loss[i] > h.loss[i - 1] for i in (1, 2)]
    assert h.backend == net.backend.name
    assert "epoch 3" in h.epoch_line()


def test_loss_increasing_is_flagged():
    X, y = bpgpu.datasets.moons(200, 0.2, seed=0)
    net = bpgpu.MLP([2, 8, 2], activation="tanh", seed=0)
    h = net.fit(X, y, epochs=15, batch_size=200, lr=9.0, optimizer="sgd")
    assert any(h.loss_increased)
    assert "WARNING - Loss Increasing" in h.epoch_line(h.loss_increased.index(True))


def test_early_stopping_restores_best_weights(mnist_data):
    (X, y), _ = mnist_data
    net = bpgpu.MLP([784, 30, 10], seed=2)
    Xv, yv = X[50000:51000], y[50000:51000]
    snapshots = {}
    h = net.fit(X[:300], y[:300], epochs=60, batch_size=10, lr=0.5, validation_data=(Xv, yv),
                early_stopping=3, on_epoch=lambda hist: snapshots.__setitem__(
                    hist.epoch[-1], net.get_params()))
    assert h.stop_reason.startswith("early stopping")
    assert h.best_epoch == int(np.argmin(h.val_loss)) + 1 < h.epoch[-1]
    best_W = snapshots[h.best_epoch][0]
    for got, want in zip(net.get_params()[0], best_W):
        np.testing.assert_array_equal(got, want)   # exact: restoring copies the snapshot's values
    assert net.evaluate(Xv, yv)["loss"] == pytest.approx(min(h.val_loss), rel=1e-5)


def test_validation_split_holds_out_data():
    X, y = bpgpu.datasets.moons(200, 0.2, seed=3)
    h = bpgpu.MLP([2, 8, 2], activation="tanh", seed=3).fit(X, y, epochs=2, validation_split=0.25)
    assert len(h.val_loss) == 2


def test_divergence_stops_and_keeps_last_good_weights(backend_name):
    X, y = bpgpu.datasets.moons(200, 0.2, seed=0)
    net = bpgpu.MLP([2, 16, 2], activation="relu", init="large", seed=0, backend=backend_name)
    kept = {}
    with pytest.warns(TrainingDiverged, match="diverged"):
        h = net.fit(X, y, epochs=50, batch_size=20, lr=1e4, optimizer="sgd",
                    on_epoch=lambda hist: kept.__setitem__("p", net.get_params()))
    assert h.diverged and "diverged" in h.stop_reason
    W, b = net.get_params()
    assert all(np.all(np.isfinite(w)) for w in W + b)
    if "p" in kept:   # weights are those of the last completed epoch
        for got, want in zip(W, kept["p"][0]):
            np.testing.assert_array_equal(got, want)   # exact: a copy of those values, no math


def test_dropout_trains_and_is_reproducible():
    X, y = bpgpu.datasets.moons(400, 0.2, seed=4)
    runs = []
    for _ in range(2):
        net = bpgpu.MLP([2, 32, 2], activation="relu", init="he", seed=4)
        net.fit(X, y, epochs=30, batch_size=32, optimizer="adam", lr=0.01, dropout=0.2)
        runs.append(net.get_params()[0][0])
        assert net.evaluate(X, y)["accuracy"] > 0.9
    # exact: same process, same calls on the same shapes, same thread counts -> same bits
    np.testing.assert_array_equal(runs[0], runs[1])


def test_weight_decay_shrinks_weights_not_biases():
    X, y = bpgpu.datasets.moons(200, 0.2, seed=5)
    base = bpgpu.MLP([2, 8, 2], activation="tanh", seed=5)
    decayed = bpgpu.MLP([2, 8, 2], activation="tanh", seed=5)
    base.fit(X, y, epochs=20, batch_size=20, lr=0.1)
    decayed.fit(X, y, epochs=20, batch_size=20, lr=0.1, weight_decay=0.05)
    norm = lambda net: sum(float((w ** 2).sum()) for w in net.get_params()[0])
    assert norm(decayed) < norm(base)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_every_optimizer_learns_xor(optimizer):
    X, y = bpgpu.datasets.xor()
    net = bpgpu.MLP([2, 4, 1], activation="sigmoid", output="sigmoid", loss="bce",
                    dtype="float64", seed=1)
    lr = {"sgd": 2.0, "momentum": 0.5, "nesterov": 0.5, "adam": 0.05}[optimizer]
    net.fit(X, y, epochs=2000, batch_size=4, optimizer=optimizer, lr=lr)
    np.testing.assert_array_equal(net.predict(X), y)   # integer labels, not floats


def test_regression_with_identity_output():
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, (256, 1))
    Y = np.sin(X)
    net = bpgpu.MLP([1, 32, 1], activation="tanh", output="identity", loss="mse",
                    init="xavier", dtype="float64", seed=0)
    h = net.fit(X, Y, epochs=300, batch_size=32, optimizer="adam", lr=0.01)
    assert h.accuracy[-1] is None
    assert net.loss(X, Y) < 0.005


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(lr=-1), "learning rate"),
    (dict(optimizer="rmsprop"), "optimizer"), (dict(dropout=1.0), "dropout"),
    (dict(validation_split=1.5), "validation_split"), (dict(early_stopping=0), "patience"),
])
def test_bad_fit_options(kwargs, match):
    X, y = bpgpu.datasets.xor()
    with pytest.raises(bpgpu.ConfigError, match=match):
        bpgpu.MLP([2, 2, 2]).fit(X, y, **kwargs)


@pytest.mark.parametrize("X,y,match", [
    (np.zeros((4, 3)), np.zeros(4, int), r"shape \(N, 2\)"),
    (np.zeros((4, 2)), np.zeros(5, int), "same number of samples"),
    (np.full((4, 2), np.nan), np.zeros(4, int), "NaN"),
    (np.zeros((4, 2)), np.array([0, 1, 2, 1]), "labels"),
    (np.zeros((4, 2)), np.array([0, -1, 1, 1]), "labels"),
    (np.zeros((4, 2)), np.zeros((4, 3)), "targets"),
    (np.zeros((4, 2)), np.array([0.0, np.nan, 1, 0]).reshape(4, 1).repeat(2, 1), "NaN"),
    (np.zeros((0, 2)), np.zeros(0, int), "empty"),
])
def test_bad_data_is_a_clear_error(X, y, match):
    net = bpgpu.MLP([2, 3, 2])
    before = net.get_params()
    with pytest.raises(bpgpu.DataError, match=match):
        net.fit(X, y, epochs=1)
    for a, b in zip(net.get_params()[0], before[0]):
        np.testing.assert_array_equal(a, b)   # exact: nothing may have been written


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss="ce", output="sigmoid"), "softmax"), (dict(loss="bce", output="softmax"), "sigmoid"),
    (dict(activation="softmax"), "hidden activation"), (dict(loss="hinge"), "loss"),
    (dict(init="orthogonal"), "init"), (dict(dtype="float16"), "dtype"),
    (dict(activation=["relu", "tanh"]), "hidden layers"),
])
def test_bad_model_config(kwargs, match):
    with pytest.raises(bpgpu.ConfigError, match=match):
        bpgpu.MLP([2, 3, 2], **kwargs)


def test_unknown_or_unavailable_backend():
    with pytest.raises(bpgpu.BackendUnavailable, match="unknown backend"):
        bpgpu.MLP([2, 2], backend="tpu")


def test_float32_and_float64_start_identically():
    a = bpgpu.MLP([5, 4, 3], dtype="float32", seed=9).get_params()[0][0]
    b = bpgpu.MLP([5, 4, 3], dtype="float64", seed=9).get_params()[0][0]
    assert a.dtype == np.float32 and b.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-7)


@pytest.mark.parametrize("init,std", [("normal", 1 / np.sqrt(400)), ("large", 1.0),
                                      ("he", np.sqrt(2 / 400)), ("xavier", np.sqrt(2 / 500))])
def test_init_scales(init, std):
    W = bpgpu.MLP([400, 100], output="identity", loss="mse", init=init, seed=0).get_params()[0][0]
    assert W.std() == pytest.approx(std, rel=0.05)


def test_predict_in_chunks_matches_single_pass(mnist_data):
    (X, y), _ = mnist_data
    net = bpgpu.MLP([784, 16, 10], seed=0)
    p_all = net.predict_proba(X[:20000])
    p_part = net.predict_proba(X[:100])
    # not bitwise: an 8192-row GEMM and a 100-row GEMM may take different BLAS kernels and thread
    # counts (OpenBLAS's Haswell kernels differ in the last bit here, its SkylakeX ones do not)
    np.testing.assert_allclose(p_all[:100], p_part, **TOL[str(net.dtype)])
    assert net.predict(X[:20000]).shape == (20000,)


def test_no_warnings_in_normal_training():
    X, y = bpgpu.datasets.moons(100, 0.1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bpgpu.MLP([2, 4, 2], init="large", seed=0).fit(X, y, epochs=3)


def test_without_train_metrics_history_has_none_and_divergence_is_still_caught(backend_name):
    X, y = bpgpu.datasets.moons(200, 0.2, seed=0)
    net = bpgpu.MLP([2, 8, 2], activation="tanh", seed=0, backend=backend_name)
    h = net.fit(X, y, epochs=3, train_metrics=False, validation_data=(X, y))
    assert h.loss == [None] * 3 and h.accuracy == [None] * 3 and len(h.val_loss) == 3
    assert "loss" not in h.epoch_line().replace("val_loss", "")
    net = bpgpu.MLP([2, 16, 2], activation="relu", init="large", seed=0, backend=backend_name)
    with pytest.warns(TrainingDiverged, match="parameters"):
        h = net.fit(X, y, epochs=50, batch_size=20, lr=1e4, train_metrics=False)
    assert h.diverged


def test_all_finite_op(backend_name):
    be = bpgpu.get_backend(backend_name)
    assert be.all_finite(be.asarray(np.ones(5)))
    assert not be.all_finite(be.asarray(np.array([1.0, np.inf])))
    assert not be.all_finite(be.asarray(np.array([np.nan, 1.0])))


def test_fit_step_and_gradients_all_run_the_one_train_step(monkeypatch):
    """The training step is written once: fit, step and gradients all go through train_step."""
    calls = []
    original = bpgpu.MLP.train_step

    def spy(self, *args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("optimizer"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(bpgpu.MLP, "train_step", spy)
    X, y = bpgpu.datasets.xor()
    net = bpgpu.MLP([2, 4, 1], output="sigmoid", loss="bce", backend="numpy")
    net.fit(X, y, epochs=2, batch_size=2)
    assert len(calls) == 4 and all(c is not None for c in calls)
    net.gradients(X, y.reshape(-1, 1))
    assert calls[-1] is None
    net.step(X, y.reshape(-1, 1), lr=0.5)
    assert len(calls) == 6 and calls[-1] is not None
    assert net.steps == 5          # gradients() takes no step


def test_inference_on_a_dropout_workspace_reads_the_undropped_outputs():
    """forward(ws) outside training ignores the workspace's dropout buffers entirely."""
    X, y = bpgpu.datasets.moons(64, seed=1)
    net = bpgpu.MLP([2, 16, 2], activation="tanh", backend="numpy", dtype="float64")
    plain, dropped = net.workspace(64), net.workspace(64, dropout=0.5)
    for ws in (plain, dropped):
        net.backend.upload(X, ws.a[0])
        net.forward(ws)
    # the same GEMMs on the same inputs: identical by construction
    assert np.array_equal(plain.a[-1], dropped.a[-1])
    net.forward(dropped, training=True)
    assert not np.array_equal(plain.a[-1], dropped.a[-1])


def test_use_backend_applies_to_the_default_and_keeps_an_instance():
    from bpgpu.backends.numpy_backend import NumpyBackend
    mine = NumpyBackend(blas_threads=1)
    with bpgpu.use_backend(mine) as be:
        assert be is mine
        assert bpgpu.MLP([2, 2]).backend is mine          # the default "auto" follows it
        assert bpgpu.MLP([2, 2], backend=None).backend is mine
        assert bpgpu.MLP([2, 2], backend="numpy").backend is not mine   # an explicit name wins
    assert bpgpu.MLP([2, 2], backend="auto").backend is not mine


def test_dropout_masks_depend_on_seed_step_and_layer_only():
    """The masks come from counter-based streams (seed, step, layer): two models with the same
    seed train identically; another seed draws other masks."""
    X, y = bpgpu.datasets.moons(200, seed=2)
    kw = dict(epochs=3, batch_size=32, dropout=0.3, lr=0.5)
    a = bpgpu.MLP([2, 8, 8, 2], backend="numpy", dtype="float64", seed=4)
    b = bpgpu.MLP([2, 8, 8, 2], backend="numpy", dtype="float64", seed=4)
    a.fit(X, y, **kw)
    b.fit(X, y, **kw)
    assert np.array_equal(a.params, b.params)               # same code, same inputs: exact
    c = bpgpu.MLP([2, 8, 8, 2], backend="numpy", dtype="float64", seed=5)
    c.fit(X, y, **kw)
    assert not np.array_equal(a.params, c.params)
