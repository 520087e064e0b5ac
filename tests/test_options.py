"""The training options are declared once (bpgpu.options.FitOptions) and everything else is
derived: fit's signature and docs, the ``bpgpu train`` flags, what a checkpoint records and
``--resume`` restores, what the ranks of a data-parallel run compare, the ``--json`` record and
the scikit-learn estimators' parameters. Also: a checkpoint written before the options had one
declaration (version 1) still resumes."""

import inspect
import os

import numpy as np
import pytest

import bpgpu
from bpgpu.cli import RESUMED_OPTIONS, build_parser
from bpgpu.options import FREE, MATCH, FitOptions, declarations, sklearn_parameters
from bpgpu.train import fit

HERE = os.path.dirname(os.path.abspath(__file__))


def test_fit_signature_and_docstring_list_every_option():
    params = inspect.signature(fit).parameters
    doc = fit.__doc__
    for d in declarations():
        assert params[d.name].default == d.default, d.name
        assert f"    {d.name} : " in doc, d.name


def test_every_flag_is_a_train_option_with_the_declared_default():
    train = {a.dest: a for a in build_parser().train_parser._actions}
    for d in declarations():
        if d.flag is None:
            assert d.name not in train, d.name
            continue
        action = train[d.name]
        assert d.flag in action.option_strings
        if d.kind != "flag":
            assert action.default == d.command_line_default, d.name


def test_resume_restores_every_option_but_this_runs_paths():
    flagged = {d.name for d in declarations() if d.flag}
    free = {d.name for d in declarations() if d.resume == FREE}
    assert flagged - free <= set(RESUMED_OPTIONS)
    assert not free & set(RESUMED_OPTIONS)


def test_unknown_and_bad_options_are_refused():
    with pytest.raises(TypeError, match="unexpected keyword argument 'epoch'"):
        FitOptions.of({"epoch": 3})
    for bad in (dict(epochs=0), dict(batch_size=-1), dict(dropout=1.0), dict(lr=float("nan")),
                dict(weight_decay=float("inf")), dict(validation_split=1.5),
                dict(early_stopping=0)):
        with pytest.raises(bpgpu.ConfigError):
            FitOptions(**bad)
    assert FitOptions(early_stopping=False).early_stopping is None


def test_trajectory_holds_exactly_the_options_a_resume_must_match():
    opts = FitOptions(optimizer="adam", checkpoint="c.npz")
    record = opts.trajectory({})
    assert set(record) == {d.name for d in declarations() if d.resume == MATCH}
    assert "checkpoint" not in record and "epochs" not in record


def test_ranks_compare_values_or_presence():
    a = FitOptions(checkpoint="rank0.npz").agreement()
    b = FitOptions(checkpoint="elsewhere.npz").agreement()
    assert a == b and a["checkpoint"] is True
    assert FitOptions(lr=0.2).agreement() != FitOptions(lr=0.1).agreement()


def test_estimators_take_their_options_from_the_declaration():
    from bpgpu.sklearn import BPClassifier
    params = BPClassifier().get_params()
    for sk, option, default in sklearn_parameters():
        assert params[sk] == default, sk
    args = BPClassifier(learning_rate=0.5, alpha=0.01, max_iter=7)._fit_args(3)
    assert args["lr"] == 0.5 and args["weight_decay"] == 0.01 and args["epochs"] == 3
    FitOptions.of(args)                     # every key is a fit option


def _data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (200, 12), dtype=np.uint8), rng.integers(0, 3, 200)


def test_a_version_1_checkpoint_still_resumes(tmp_path):
    """tests/data/checkpoint-v1.npz was written by bpgpu before the options were declared once
    (2 of 2 epochs, Adam, dropout, early stopping): it resumes for 2 more epochs, and matches a
    run of 4 epochs within float64 rounding (BLAS differs between CPUs, so not bit for bit)."""
    from bpgpu.checkpoint import read_checkpoint
    X, y = _data()
    kw = dict(batch_size=16, optimizer="adam", lr=0.01, dropout=0.1, early_stopping=3)
    old = read_checkpoint(os.path.join(HERE, "data", "checkpoint-v1.npz"))
    assert old.state["version"] == 1 and old.options["early_stopping"] == 3
    resumed = bpgpu.MLP([12, 5, 3], activation="tanh", dtype="float64", backend="numpy", seed=4)
    resumed.fit(X, y, epochs=4, resume=old.path, checkpoint=str(tmp_path / "c.npz"), **kw)
    whole = bpgpu.MLP([12, 5, 3], activation="tanh", dtype="float64", backend="numpy", seed=4)
    whole.fit(X, y, epochs=4, **kw)
    for a, b in zip(resumed.get_params()[0], whole.get_params()[0]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    from bpgpu.checkpoint import CHECKPOINT_VERSION
    assert read_checkpoint(tmp_path / "c.npz").state["version"] == CHECKPOINT_VERSION
    with pytest.raises(bpgpu.ConfigError, match="different: lr"):
        bpgpu.MLP([12, 5, 3], activation="tanh", dtype="float64", backend="numpy",
                  seed=4).fit(X, y, epochs=4, resume=old.path, **dict(kw, lr=0.02))
