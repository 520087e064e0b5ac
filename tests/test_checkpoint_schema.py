"""Checkpoints edited by hand (issue 20, item 15) and the model a checkpoint holds after early
stopping (item 17).

Item 15: a checkpoint whose archive is sound but whose ``"checkpoint"`` section or state arrays
were changed (a field removed, of another type, out of range; an optimizer buffer deleted or
reshaped) is a :class:`~bpgpu.errors.ModelFileError` naming the field, from ``read_checkpoint``,
``fit(resume=...)`` and ``bpgpu train --resume`` alike. The hypothesis test mutates the JSON
fields and the arrays structurally (not bytes: tests/test_fuzz.py does that) and requires that a
resume either works or raises a BpgpuError, never anything else.

Item 17: after early stopping, the checkpoint's model (what ``bpgpu.load`` and ``bpgpu
evaluate`` read) is the best epoch's, the same as ``--save``; the last epoch's parameters, where
a resumed run continues, are kept beside it (``train_params``).
"""

import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpgpu
from bpgpu.checkpoint import read_checkpoint
from bpgpu.errors import BpgpuError, ModelFileError
from bpgpu.io import read_archive

#: the options of the ``bpgpu train`` run in :func:`base` (the others its defaults)
FIT = dict(epochs=3, batch_size=20, optimizer="adam", early_stopping=2, validation_split=0.25,
           lr=0.05)


def moons():
    from bpgpu.datasets import load_dataset
    data = load_dataset("moons", seed=0)
    return data.X_train, data.y_train


def net():
    """The network ``bpgpu train --dataset moons --hidden 8`` builds."""
    return bpgpu.MLP([2, 8, 2], activation="relu", backend="numpy", seed=0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A checkpoint written by ``bpgpu train`` (so it has train_options), adam, early stopping,
    a validation split, 3 epochs."""
    d = tmp_path_factory.mktemp("schema")
    path = d / "c.npz"
    res = subprocess.run([sys.executable, "-m", "bpgpu", "train", "--dataset", "moons",
                          "--hidden", "8", "--epochs", "3", "--batch-size", "20", "--optimizer",
                          "adam", "--early-stopping", "2", "--validation-split", "0.25",
                          "--backend", "numpy", "--quiet", "--checkpoint", path],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return str(path)


def rewrite(src, dst, edit):
    """Copy the checkpoint ``src`` to ``dst`` with ``edit(section, arrays)`` applied: the archive
    stays sound (valid JSON, every array a proper .npy member)."""
    meta, arrays = read_archive(src)
    meta = copy.deepcopy(meta)
    edit(meta["checkpoint"], arrays)
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **arrays, **{"metadata.json": blob})
    return str(dst)


def resume_api(path):
    X, y = moons()
    return net().fit(X, y, **dict(FIT, epochs=4, resume=path))


# ------------------------------------------------------------------ item 15: named defects
def _set(key, value):
    def edit(section, arrays):
        target = section
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return edit


def _drop_array(name):
    return lambda section, arrays: arrays.pop(name)


def _del(key):
    def edit(section, arrays):
        target = section
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        del target[last]
    return edit


EDITS = [
    ("a removed optimizer array", _drop_array("optimizer_m"), "optimizer_m"),
    ("a reshaped optimizer array",
     lambda s, a: a.__setitem__("optimizer_v", a["optimizer_v"][:-1]), "optimizer_v"),
    ("an integer optimizer array",
     lambda s, a: a.__setitem__("optimizer_v", a["optimizer_v"].astype(np.int64)), "optimizer_v"),
    ("a changed rng_state", _set("rng_state", {"bit_generator": "PCG64"}), "rng_state"),
    ("rng_state not an object", _set("rng_state", [1, 2]), "rng_state"),
    ("history a list", _set("history", [1, 2, 3]), "history"),
    ("a history list too short", lambda s, a: s["history"]["loss"].pop(), "history.loss"),
    ("a history entry a string", lambda s, a: s["history"]["loss"].__setitem__(0, "low"),
     "history.loss[0]"),
    ("steps a string", _set("steps", "many"), "steps"),
    ("steps negative", _set("steps", -3), "steps"),
    ("epoch 'two'", _set("epoch", "two"), "epoch"),
    ("early_stopping a number", _set("early_stopping", 7), "early_stopping"),
    ("early_stopping without since_best", _del("early_stopping.since_best"), "since_best"),
    ("best_val a string", _set("early_stopping.best_val", "x"), "early_stopping.best_val"),
    ("stream_key of one word", _set("stream_key", [5]), "stream_key"),
    ("stream_key beyond 64 bits", _set("stream_key", [0, 2 ** 64]), "stream_key[1]"),
    ("an unknown optimizer", _set("options.optimizer", "lion"), "options.optimizer"),
    ("optimizer.t a float", _set("optimizer.t", 1.5), "optimizer.t"),
    ("best_epoch beyond the epochs", _set("history.best_epoch", 9), "history.best_epoch"),
    ("best parameters removed", _drop_array("train_params"), "best_params"),
]


@pytest.mark.parametrize("what,edit,field", EDITS, ids=[e[0] for e in EDITS])
def test_an_edited_checkpoint_is_a_model_file_error_naming_the_field(base, tmp_path, what, edit,
                                                                     field):
    path = rewrite(base, tmp_path / "edited.npz", edit)
    with pytest.raises(ModelFileError, match="corrupt checkpoint") as raised:
        read_checkpoint(path)
    assert field in str(raised.value) and path in str(raised.value), str(raised.value)
    with pytest.raises(ModelFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        resume_api(path)


def test_an_edited_checkpoint_on_the_command_line(base, tmp_path):
    path = rewrite(base, tmp_path / "e.npz", _set("epoch", "two"))
    res = subprocess.run([sys.executable, "-m", "bpgpu", "train", "--resume", path, "--epochs",
                          "4"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "corrupt checkpoint: epoch" in res.stderr
    path = rewrite(base, tmp_path / "o.npz", _set("info.train_options.hidden", "wide"))
    res = subprocess.run([sys.executable, "-m", "bpgpu", "train", "--resume", path, "--epochs",
                          "4"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "train_options.hidden" in res.stderr, res.stderr


def test_the_unedited_checkpoint_reads_and_resumes(base, tmp_path):
    path = rewrite(base, tmp_path / "same.npz", lambda s, a: None)
    assert read_checkpoint(path).epoch == 3
    history = resume_api(path)
    assert history.epoch[0] == 1 and len(history.epoch) in (3, 4)


# ------------------------------------------------------------------ item 15: structured fuzz
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.lists(st.integers(-5, 5), max_size=4),
                   st.dictionaries(st.text(max_size=4), st.integers(-5, 5), max_size=3))


def _paths(node, prefix=()):
    """Every key path into the JSON tree ``node`` (lists indexed)."""
    items = (node.items() if isinstance(node, dict)
             else enumerate(node) if isinstance(node, list) else ())
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _at(node, path):
    for key in path:
        node = node[key]
    return node


@st.composite
def mutation(draw, section, array_names):
    """An edit: 1 to 3 of (replace a field's value, delete a field, add an unknown field,
    delete/reshape/retype/poison an array)."""
    paths = sorted(_paths(section), key=repr)
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add", "array"]))
        if kind == "array":
            steps.append(("array", draw(st.sampled_from(array_names)),
                          draw(st.sampled_from(["drop", "shorten", "int", "nan", "2d", "f2"]))))
        else:
            steps.append((kind, draw(st.sampled_from(paths)), draw(VALUES)))
    return steps


def _apply(steps, section, arrays):
    for kind, where, how in steps:
        if kind == "array":
            if where not in arrays:
                continue
            a = arrays[where]
            arrays[where] = {"drop": None, "shorten": a[:-1], "int": a.astype(np.int32),
                             "nan": np.full_like(a, np.nan) if a.dtype.kind == "f" else a,
                             "2d": a.reshape(1, -1), "f2": a.astype(np.float16)}[how]
            if arrays[where] is None:
                del arrays[where]
            continue
        try:
            parent, key = _at(section, where[:-1]), where[-1]
        except (KeyError, IndexError, TypeError):
            continue                        # an earlier step removed or replaced the parent
        if not isinstance(parent, (dict, list)) or (isinstance(parent, list)
                                                   and not isinstance(key, int)):
            continue
        if (key >= len(parent)) if isinstance(parent, list) else (key not in parent):
            continue                        # already deleted
        if kind == "replace":
            parent[key] = how
        elif kind == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[f"{key}_extra"] = how


@pytest.fixture(scope="module")
def base_tree(base):
    meta, arrays = read_archive(base)
    return meta["checkpoint"], sorted(arrays)


@contextlib.contextmanager
def quiet():
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        yield


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_structured_mutations_of_a_checkpoint_give_only_bpgpu_errors(base, base_tree, tmp_path,
                                                                      data):
    section, names = base_tree
    steps = data.draw(mutation(section, names))
    path = rewrite(base, tmp_path / "fuzzed.npz", lambda s, a: _apply(steps, s, a))
    try:
        read_checkpoint(path)
    except BpgpuError:
        return
    try:
        with quiet():
            history = resume_api(path)
    except BpgpuError:
        return
    assert all(math.isfinite(t) for t in history.time)
    from bpgpu.cli import main
    with quiet():                          # the CLI's resume (train_options) as well
        rc = main(["train", "--resume", path, "--epochs", "4", "--quiet", "--checkpoint",
                   str(tmp_path / "again.npz")])
    assert rc in (0, 1, 2)


# ------------------------------------------------------------------ item 17: early stopping
def test_after_early_stopping_the_checkpoint_model_is_the_saved_best(tmp_path):
    X, y = moons()
    ck, saved = tmp_path / "c.npz", tmp_path / "m.npz"
    model = net()
    history = model.fit(X, y, **dict(FIT, epochs=12, early_stopping=1, lr=0.3,
                                     checkpoint=str(ck)))
    model.save(saved)
    assert history.best_epoch is not None
    from_checkpoint, from_save = bpgpu.load(str(ck), backend="numpy"), bpgpu.load(str(saved))
    for a, b in zip(from_checkpoint.get_params()[0], from_save.get_params()[0]):
        np.testing.assert_array_equal(a, b)       # one model: the best epoch's
    state = read_checkpoint(ck)
    last = state.parameters()[0]
    assert history.best_epoch < history.epoch[-1]     # stopped early: best and last differ
    # the last epoch's parameters, where a resume goes on, are another model's
    assert any(not np.array_equal(a, b) for a, b in zip(last, from_save.get_params()[0]))
    np.testing.assert_array_equal(np.concatenate([np.ravel(w) for w in from_save.get_params()[0]]
                                                 + [np.ravel(b) for b in
                                                    from_save.get_params()[1]]),
                                  state.best_parameters())


def test_resuming_after_early_stopping_is_the_run_that_never_stopped(tmp_path):
    X, y = moons()
    whole = net()
    h_whole = whole.fit(X, y, **dict(FIT, epochs=6))
    part = net()
    part.fit(X, y, **dict(FIT, epochs=3, checkpoint=str(tmp_path / "c.npz")))
    resumed = net()
    h_resumed = resumed.fit(X, y, **dict(FIT, epochs=6, resume=str(tmp_path / "c.npz")))
    assert h_resumed.loss == h_whole.loss and h_resumed.best_epoch == h_whole.best_epoch
    for a, b in zip(whole.get_params()[0], resumed.get_params()[0]):
        np.testing.assert_array_equal(a, b)
    assert os.path.exists(tmp_path / "c.npz")


def test_on_the_command_line_checkpoint_and_save_evaluate_alike_after_early_stopping(tmp_path):
    def bpgpu_cli(*args):
        res = subprocess.run([sys.executable, "-m", "bpgpu", *map(str, args)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return res
    bpgpu_cli("train", "--dataset", "moons", "--hidden", "8", "--early-stopping", "1",
              "--validation-split", "0.25", "--epochs", "12", "--lr", "0.3", "--batch-size",
              "20", "--backend", "numpy", "--quiet", "--checkpoint", "c.npz", "--save", "m.npz")
    state = read_checkpoint(tmp_path / "c.npz")
    assert state.state["history"]["best_epoch"] < state.epoch      # it stopped after the best
    lines = [bpgpu_cli("evaluate", name, "--dataset", "moons", "--backend", "numpy").stdout
             for name in ("c.npz", "m.npz")]
    assert lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1], lines
