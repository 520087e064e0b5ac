"""Sample and class weights in fit (issue 22), and training that continues where it stopped.

Weights: the op contract (output_delta/loss_sum with per-row factors) on every backend against
the numpy reference, the numba compiled epoch bit for bit against its steps with weights (and
with no reason to fall back), class weights equal to the same sample weights, validation loss
weighted, resume refusing other weights. Continuing: fit(epochs=2) then fit(epochs=3,
continue_training=True) equals fit(epochs=5) bit for bit -- every optimizer, dropout on, numpy
and numba (per step and compiled), and the emulated cupy backend -- also with a validation split
and a schedule; after Ctrl-C; a changed optimizer is refused.
"""

import numpy as np
import pytest

import bpgpu
from bpgpu._compat import has_numba
from bpgpu.backends import get_backend

from .conftest import TOL

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (203, 12), dtype=np.uint8)
Y = RNG.integers(0, 3, 203)
S = RNG.integers(0, 4, 203).astype(np.float64)


def _flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


@pytest.mark.parametrize("loss,output", [("ce", "softmax"), ("bce", "sigmoid"), ("mse", "tanh")])
def test_weighted_output_delta_and_loss_match_the_reference(backend_name, dtype, loss, output):
    dtype_name = dtype
    be, ref = get_backend(backend_name), get_backend("numpy")
    rng = np.random.default_rng(1)
    a = rng.uniform(0.05, 0.95, (37, 5)).astype(dtype_name)
    y = rng.uniform(0, 1, (37, 5)).astype(dtype_name)
    w = rng.uniform(0, 3, 37).astype(dtype_name)
    got_d, want_d = be.empty((37, 5), a.dtype), np.empty((37, 5), a.dtype)
    got_l, want_l = be.zeros((1,), np.float64), np.zeros(1)
    be.output_delta(be.asarray(a), be.asarray(y), got_d, output, loss, got_l, be.asarray(w))
    ref.output_delta(a, y, want_d, output, loss, want_l, w)
    np.testing.assert_allclose(be.to_host(got_d), want_d, **TOL[dtype_name])
    np.testing.assert_allclose(be.to_host(got_l), want_l, rtol=TOL[dtype_name]["rtol"])
    plain = np.empty_like(want_d)
    ref.output_delta(a, y, plain, output, loss)
    np.testing.assert_allclose(want_d, plain * w[:, None], rtol=1e-6)
    per_row = np.zeros(1)
    ref.loss_sum(a, y, loss, per_row)
    assert want_l[0] != pytest.approx(per_row[0])        # the weights did something


@pytest.mark.skipif(not has_numba(), reason="numba is not installed")
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_weighted_compiled_epoch_equals_its_steps(monkeypatch, optimizer):
    from bpgpu.backends import numba_epoch as ne
    results = []
    for compiled in ("1", "0"):
        monkeypatch.setenv(ne.ENV, compiled)
        net = bpgpu.MLP([12, 9, 3], dtype="float64", backend="numba", seed=5)
        before = ne.STATS["compiled_epochs"]
        h = net.fit(X, Y, epochs=2, batch_size=16, optimizer=optimizer, lr=0.05, dropout=0.1,
                    sample_weight=S, class_weight={1: 2.0})
        assert ne.STATS["compiled_epochs"] - before == (2 if compiled == "1" else 0)
        results.append((_flat(net), h.loss))
    assert np.array_equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


def test_class_weight_equals_the_same_sample_weights(backend_name):
    nets = []
    for kw in (dict(class_weight={0: 1.0, 1: 3.0, 2: 0.5}),
               dict(sample_weight=np.array([1.0, 3.0, 0.5])[Y])):
        net = bpgpu.MLP([12, 6, 3], dtype="float64", backend=backend_name, seed=2)
        net.fit(X, Y, epochs=2, batch_size=32, **kw)
        nets.append(_flat(net))
    np.testing.assert_array_equal(nets[0], nets[1])


def test_weights_change_training_and_validation_loss_is_weighted():
    plain = bpgpu.MLP([12, 6, 3], dtype="float64", backend="numpy", seed=2)
    h0 = plain.fit(X, Y, epochs=1, batch_size=32, validation_data=(X, Y))
    heavy = bpgpu.MLP([12, 6, 3], dtype="float64", backend="numpy", seed=2)
    h1 = heavy.fit(X, Y, epochs=1, batch_size=32, sample_weight=S, validation_data=(X, Y, S))
    assert not np.array_equal(_flat(plain), _flat(heavy))
    want = heavy.evaluate(X, Y, sample_weight=S)["loss"]
    assert h1.val_loss[0] == pytest.approx(want, rel=1e-12) and h0.val_loss[0] != h1.val_loss[0]
    per_row = [heavy.evaluate(X[i:i + 1], Y[i:i + 1])["loss"] for i in range(len(X))]
    assert want == pytest.approx(np.average(per_row, weights=S), rel=1e-10)


def test_resume_refuses_other_weights(tmp_path):
    path = str(tmp_path / "c.npz")
    kw = dict(batch_size=32, checkpoint=path)
    bpgpu.MLP([12, 6, 3], backend="numpy", seed=2).fit(X, Y, epochs=1, sample_weight=S, **kw)
    with pytest.raises(bpgpu.DataError, match="train w"):
        bpgpu.MLP([12, 6, 3], backend="numpy", seed=2).fit(X, Y, epochs=2, resume=path,
                                                          sample_weight=S + 1, **kw)
    net = bpgpu.MLP([12, 6, 3], backend="numpy", seed=2)
    net.fit(X, Y, epochs=2, resume=path, sample_weight=S, **kw)        # the same: continues


# ------------------------------------------------------------------------------ continuing
def _continued(backend, calls, **kw):
    net = bpgpu.MLP([12, 9, 3], dtype="float64", backend=backend, seed=5)
    histories = [net.fit(X, Y, epochs=calls[0], **kw)]
    for epochs in calls[1:]:
        histories.append(net.fit(X, Y, epochs=epochs, continue_training=True, **kw))
    return net, histories


#: (backend, BPGPU_COMPILED_EPOCH): numpy, numba step by step, numba's compiled epoch
PATHS = [("numpy", "0")] + ([("numba", "0"), ("numba", "1")] if has_numba() else [])


@pytest.mark.parametrize("backend,compiled", PATHS)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_two_then_three_epochs_equal_five(monkeypatch, backend, optimizer, compiled):
    monkeypatch.setenv("BPGPU_COMPILED_EPOCH", compiled)
    kw = dict(batch_size=16, optimizer=optimizer, lr=0.05, dropout=0.2, weight_decay=1e-4,
              sample_weight=S)
    whole, [h] = _continued(backend, [5], **kw)
    parts, hs = _continued(backend, [2, 3], **kw)
    assert np.array_equal(_flat(whole), _flat(parts)) and whole.steps == parts.steps
    assert hs[0].epoch + hs[1].epoch == h.epoch == [1, 2, 3, 4, 5]
    assert hs[0].loss + hs[1].loss == h.loss
    assert hs[0].loss_increased + hs[1].loss_increased == h.loss_increased


def test_continuing_keeps_the_split_and_the_schedule():
    kw = dict(batch_size=16, optimizer="momentum", lr=0.2, validation_split=0.2,
              schedule="nielsen:patience=1,halvings=20")
    whole, [h] = _continued("numpy", [6], **kw)
    parts, hs = _continued("numpy", [3, 3], **kw)
    assert np.array_equal(_flat(whole), _flat(parts))
    assert hs[0].val_loss + hs[1].val_loss == h.val_loss and hs[0].lr + hs[1].lr == h.lr


def test_continuing_after_ctrl_c_and_refusals(monkeypatch):
    net = bpgpu.MLP([12, 9, 3], backend="numpy", seed=5)
    calls = []

    def stop_in_epoch_3(history):
        calls.append(1)
        if len(calls) == 2:
            import os
            import signal
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(bpgpu.TrainingInterrupted):
        net.fit(X, Y, epochs=5, batch_size=16, on_epoch=stop_in_epoch_3)
    assert net.training_state.epoch == 2
    net.fit(X, Y, epochs=3, batch_size=16, continue_training=True)
    whole = bpgpu.MLP([12, 9, 3], backend="numpy", seed=5)
    whole.fit(X, Y, epochs=5, batch_size=16)
    assert np.array_equal(_flat(net), _flat(whole))
    with pytest.raises(bpgpu.ConfigError, match="optimizer"):
        net.fit(X, Y, epochs=1, optimizer="adam", continue_training=True)
    with pytest.raises(bpgpu.ConfigError, match="not both"):
        net.fit(X, Y, epochs=1, continue_training=True, resume="x.npz")
    fresh = bpgpu.MLP([12, 9, 3], backend="numpy", seed=5)
    fresh.fit(X, Y, epochs=5, batch_size=16, continue_training=True)   # a first fit: trains
    assert np.array_equal(_flat(fresh), _flat(whole))


@pytest.mark.emulated
def test_continuing_on_the_emulated_gpu():
    from .emulation.conftest import emulated, needs_gxx
    if needs_gxx.args[0]:
        pytest.skip(needs_gxx.kwargs["reason"])
    be = emulated()
    kw = dict(batch_size=16, optimizer="adam", lr=0.01, dropout=0.1, sample_weight=S)
    nets = []
    for calls in ([5], [2, 3]):
        net = bpgpu.MLP([12, 9, 3], dtype="float64", backend=be, seed=5)
        net.fit(X, Y, epochs=calls[0], **kw)
        for epochs in calls[1:]:
            net.fit(X, Y, epochs=epochs, continue_training=True, **kw)
        nets.append(_flat(net))
    assert np.array_equal(nets[0], nets[1])
