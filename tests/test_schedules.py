"""Learning-rate schedules: their rates worked by hand, Nielsen's rule on scripted scores, spec
strings, and fit: History.lr, stopping, checkpoints (a resume continues bit for bit)."""

import math

import numpy as np
import pytest

import bpgpu
from bpgpu.checkpoint import read_checkpoint
from bpgpu.errors import ConfigError
from bpgpu.schedules import SCHEDULES, Cosine, Nielsen, StepDecay, make_schedule


def rates(schedule, epochs):
    return [schedule.rate(e) for e in range(1, epochs + 1)]


def test_step_decay_by_hand():
    s = make_schedule("step:every=3,factor=0.1", 1.0, 10)
    assert isinstance(s, StepDecay)
    np.testing.assert_allclose(rates(s, 7), [1, 1, 1, 0.1, 0.1, 0.1, 0.01], rtol=1e-15)


def test_cosine_with_warm_up_by_hand():
    s = make_schedule("cosine:warmup=2,min=0.1", 0.2, 6)
    assert isinstance(s, Cosine)
    # warm-up 0.1, 0.2; then k = 0..3 of K = 4: 0.02 + 0.18 (1 + cos(pi k / 4)) / 2
    want = [0.1, 0.2] + [0.02 + 0.18 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    np.testing.assert_allclose(rates(s, 6), want, rtol=1e-15)
    assert want[-1] > 0.02                        # no epoch is spent at the floor
    plain = make_schedule("cosine", 1.0, 4)
    np.testing.assert_allclose(rates(plain, 4), [1, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                 (1 + math.cos(3 * math.pi / 4)) / 2])


def test_nielsens_rule_on_scripted_scores():
    s = make_schedule("nielsen:patience=2,halvings=3", 0.8, 100)
    assert isinstance(s, Nielsen) and s.needs_validation
    scores = [0.5, 0.6, 0.6, 0.59, 0.7, 0.7, 0.7, 0.71, 0.6, 0.6]
    seen = []
    for epoch, score in enumerate(scores, 1):
        seen.append(s.rate(epoch))
        stop = s.end_epoch(epoch, score)
        if stop:
            break
    # best 0.6 at epoch 2; epochs 3, 4 stall -> halve; 0.7 at 5; 6, 7 stall -> halve;
    # 0.71 at 8; 9, 10 stall -> the third cut stops training
    assert seen == [0.8] * 4 + [0.4] * 3 + [0.2] * 3
    assert epoch == 10 and stop.startswith("schedule nielsen")
    state = s.state()
    again = make_schedule("nielsen:patience=2,halvings=3", 0.8, 100)
    again.load_state(state)
    assert again.state() == state and again.rate(11) == s.rate(11)


@pytest.mark.parametrize("spec,match", [
    ("linear", "unknown schedule"), ("step:every=0", "every"), ("step:factor=2", "factor"),
    ("step:every=x", "every"), ("cosine:warmup=10", "shorter than the run"),
    ("nielsen:patience", "key=value"), ("nielsen:speed=2", "unknown setting"),
    ("step:every=2,every=3", "twice"), ("cosine:min=2", "min"),
])
def test_bad_specs_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_schedule(spec, 0.1, 10)


def test_specs_dicts_and_settings():
    s = make_schedule({"name": "step", "every": 4}, 0.5, 10)
    assert s.settings() == {"name": "step", "every": 4, "factor": 0.5}
    assert make_schedule(s.settings(), 0.5, 10).settings() == s.settings()
    assert make_schedule(None, 0.5, 10).rate(7) == 0.5
    assert set(SCHEDULES) == {"constant", "step", "cosine", "nielsen"}
    assert make_schedule("cosine:warmup=1", 0.1, 10).settings()["epochs"] == 10


# ------------------------------------------------------------------------------ in fit
@pytest.fixture(scope="module")
def digits(mnist_data):
    (X, y), (Xt, yt) = mnist_data
    return X[:500], y[:500], Xt[:300], yt[:300]


def _flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


def test_fit_records_the_rate_of_every_epoch(digits):
    X, y, _, _ = digits
    net = bpgpu.MLP([784, 16, 10], backend="numpy", seed=1)
    h = net.fit(X, y, epochs=5, batch_size=50, lr=0.4, schedule="step:every=2,factor=0.5")
    np.testing.assert_allclose(h.lr, [0.4, 0.4, 0.2, 0.2, 0.1], rtol=1e-15)
    assert "lr 0.1" in h.epoch_line()
    plain = net.fit(X, y, epochs=2, batch_size=50, lr=0.4)
    assert plain.lr == [0.4, 0.4] and "lr" not in plain.epoch_line().replace("loss", "")


def test_the_rate_changes_the_updates_exactly_as_a_fresh_run_with_that_rate(digits):
    """Epoch 2 of a step schedule runs exactly as a constant-rate run at the second rate would
    (the optimizer reads opt.lr every step; exact: the same ops with the same numbers)."""
    X, y, _, _ = digits
    a = bpgpu.MLP([784, 12, 10], backend="numpy", seed=2)
    a.fit(X, y, epochs=2, batch_size=100, optimizer="sgd", lr=0.2,
          schedule="step:every=1,factor=0.25", shuffle=False)
    b = bpgpu.MLP([784, 12, 10], backend="numpy", seed=2)
    b.fit(X, y, epochs=1, batch_size=100, optimizer="sgd", lr=0.2, shuffle=False)
    b.fit(X, y, epochs=1, batch_size=100, optimizer="sgd", lr=0.05, shuffle=False)
    assert np.array_equal(_flat(a), _flat(b))


def test_nielsen_stops_training_and_holds_out_validation_data(digits):
    X, y, _, _ = digits
    net = bpgpu.MLP([784, 12, 10], backend="numpy", seed=3)
    # a rate so small that the validation accuracy never changes: every epoch after the first
    # stalls; patience 1 -> a cut per epoch; the second cut stops
    h = net.fit(X, y, epochs=50, batch_size=50, lr=1e-12, schedule="nielsen:patience=1,halvings=2")
    assert h.epoch == [1, 2, 3] and h.stop_reason.startswith("schedule nielsen")
    assert h.lr == [1e-12, 1e-12, 0.5e-12]
    assert len(h.val_accuracy) == 3                # 10 % held out, as early stopping does


def test_resume_with_nielsen_is_bit_identical(backend_name, digits, tmp_path):
    X, y, Xt, yt = digits
    fit = dict(batch_size=50, lr=0.3, optimizer="momentum", validation_data=(Xt, yt),
               schedule="nielsen:patience=1,halvings=6")
    whole = bpgpu.MLP([784, 16, 10], backend=backend_name, seed=4)
    h_whole = whole.fit(X, y, epochs=20, **fit)
    assert h_whole.stop_reason.startswith("schedule nielsen") and len(h_whole.epoch) < 20
    path = tmp_path / "c.npz"
    bpgpu.MLP([784, 16, 10], backend=backend_name, seed=4).fit(X, y, epochs=10, checkpoint=path,
                                                               **fit)
    state = read_checkpoint(path).state["schedule"]
    assert set(state) == {"cuts", "best", "since_best"} and state["cuts"] >= 1
    second = bpgpu.MLP([784, 16, 10], backend=backend_name, seed=5)
    h = second.fit(X, y, epochs=20, resume=path, **fit)
    assert np.array_equal(_flat(second), _flat(whole))
    assert h.lr == h_whole.lr and h.val_accuracy == h_whole.val_accuracy
    assert h.stop_reason == h_whole.stop_reason
    with pytest.raises(ConfigError, match="schedule"):
        bpgpu.MLP([784, 16, 10], backend=backend_name, seed=4).fit(
            X, y, epochs=20, resume=path, **dict(fit, schedule="nielsen:patience=2,halvings=6"))
