"""Checkpoints, resume and interruption: a run stopped after k of N epochs and resumed ends exactly
where an uninterrupted run ends; Ctrl-C/SIGTERM keep the last completed epoch; bad checkpoints are
clear errors; a writer killed with SIGKILL never corrupts a file."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpgpu
from bpgpu.checkpoint import read_checkpoint
from bpgpu.errors import ConfigError, DataError, ModelFileError

from .conftest import rel_norm

PARITY = {"float32": 1e-5, "float64": 1e-10}


@pytest.fixture(scope="module")
def small(mnist_data):
    (X, y), _ = mnist_data
    return X[:1210], y[:1210]          # 1210 = 24 batches of 50 and a remainder of 10


def _net(backend, dtype, seed=3):
    return bpgpu.MLP([784, 16, 12, 10], activation="tanh", dtype=dtype, backend=backend, seed=seed)


def _flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


FIT = dict(batch_size=50, lr=0.05, weight_decay=1e-3, dropout=0.2)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam"])
def test_resume_is_bit_identical_to_never_stopping(backend_name, dtype, optimizer, small, tmp_path):
    X, y = small
    fit = dict(FIT, optimizer=optimizer, lr=1e-3 if optimizer == "adam" else 0.05)
    whole = _net(backend_name, dtype)
    h_whole = whole.fit(X, y, epochs=3, **fit)
    path = tmp_path / "c.npz"
    first = _net(backend_name, dtype)
    first.fit(X, y, epochs=1, checkpoint=path, **fit)
    second = _net(backend_name, dtype, seed=99)           # a fresh process would build this
    h = second.fit(X, y, epochs=3, resume=path, checkpoint=path, **fit)
    # same backend, same calls in the same order on the same data: exact
    assert np.array_equal(_flat(second), _flat(whole))
    assert h.loss == h_whole.loss and h.epoch == [1, 2, 3]
    assert read_checkpoint(path).epoch == 3             # the resumed run kept checkpointing


def test_resume_on_another_backend_within_parity(small, tmp_path):
    from .conftest import _INFOS
    if not next(i for i in _INFOS if i.name == "numba").available:
        pytest.skip("numba is not available")
    X, y = small
    fit = dict(FIT, optimizer="momentum")
    whole = _net("numpy", "float64")
    whole.fit(X, y, epochs=3, **fit)
    path = tmp_path / "c.npz"
    _net("numba", "float64").fit(X, y, epochs=2, checkpoint=path, **fit)
    resumed = _net("numpy", "float64")
    resumed.fit(X, y, epochs=3, resume=path, **fit)
    assert rel_norm(_flat(resumed), _flat(whole)) < PARITY["float64"]


def test_resume_with_early_stopping_and_a_validation_split(small, tmp_path):
    X, y = small
    fit = dict(FIT, optimizer="adam", lr=3e-3, early_stopping=2, validation_split=0.2)
    whole = _net("numpy", "float64")
    h_whole = whole.fit(X, y, epochs=8, **fit)
    path = tmp_path / "c.npz"
    _net("numpy", "float64").fit(X, y, epochs=2, checkpoint=path, **fit)
    resumed = _net("numpy", "float64")
    h = resumed.fit(X, y, epochs=8, resume=path, **fit)
    assert np.array_equal(_flat(resumed), _flat(whole))     # same calls, same data: exact
    assert h.val_loss == h_whole.val_loss and h.best_epoch == h_whole.best_epoch
    assert h.stop_reason == h_whole.stop_reason


def test_checkpoint_every_and_the_last_epoch(small, tmp_path):
    X, y = small
    path = tmp_path / "c.npz"
    seen = []

    def spy(history):
        seen.append(read_checkpoint(path).epoch if path.exists() else None)

    _net("numpy", "float32").fit(X, y, epochs=5, checkpoint=path, checkpoint_every=2,
                                 on_epoch=spy, **FIT)
    # written after epochs 2 and 4 (before the callback of the epoch after) and after the last
    assert seen == [None, None, 2, 2, 4]
    assert read_checkpoint(path).epoch == 5


def test_a_checkpoint_is_also_a_model_file(small, tmp_path):
    X, y = small
    net = _net("numpy", "float32")
    net.fit(X, y, epochs=1, checkpoint=tmp_path / "c.npz", **FIT)
    loaded = bpgpu.load(tmp_path / "c.npz")
    assert np.array_equal(_flat(loaded), _flat(net))   # exact: stored and read back, no math


def _write_ckpt(small, tmp_path, **fit):
    X, y = small
    path = tmp_path / "c.npz"
    _net("numpy", "float32").fit(X, y, epochs=1, checkpoint=path, **dict(FIT, **fit))
    return path


def test_bad_resumes_are_clear_errors(small, tmp_path):
    X, y = small
    path = _write_ckpt(small, tmp_path)
    other = bpgpu.MLP([784, 20, 10], backend="numpy")
    with pytest.raises(ConfigError, match="another network.*sizes"):
        other.fit(X, y, epochs=2, resume=path, **FIT)
    with pytest.raises(ConfigError, match="training options.*batch_size 50 \\(now 64\\)"):
        _net("numpy", "float32").fit(X, y, epochs=2, resume=path, **dict(FIT, batch_size=64))
    with pytest.raises(DataError, match="other data"):
        _net("numpy", "float32").fit(X[::-1], y[::-1], epochs=2, resume=path, **FIT)
    model_file = tmp_path / "m.npz"
    _net("numpy", "float32").save(model_file)
    with pytest.raises(ModelFileError, match="not a checkpoint"):
        _net("numpy", "float32").fit(X, y, epochs=2, resume=model_file, **FIT)
    with pytest.raises(ModelFileError, match="no such file"):
        _net("numpy", "float32").fit(X, y, epochs=2, resume=tmp_path / "missing.npz", **FIT)
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        _net("numpy", "float32").fit(X, y, epochs=2, resume=tmp_path / "cut.npz", **FIT)


def test_a_newer_checkpoint_version_is_refused(small, tmp_path):
    path = _write_ckpt(small, tmp_path)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays["metadata.json"].tobytes())
    meta["checkpoint"]["version"] = 99
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "new.npz", **arrays)
    with pytest.raises(ModelFileError, match="version 99 was written by a newer bpgpu"):
        read_checkpoint(tmp_path / "new.npz")


def _interrupting_step(monkeypatch, at_step, signum, times=1):
    """Make the training step send ``signum`` to this process ``times`` times at step
    ``at_step``: deterministic, unlike a timer."""
    original = bpgpu.MLP.train_step
    count = [0]

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        count[0] += 1
        if count[0] == at_step:
            for _ in range(times):
                os.kill(os.getpid(), signum)

    monkeypatch.setattr(bpgpu.MLP, "train_step", step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_keeps_the_last_completed_epoch_and_resumes_exactly(signum, small, tmp_path,
                                                                     monkeypatch):
    X, y = small
    fit = dict(FIT, optimizer="momentum")
    whole = _net("numpy", "float64")
    whole.fit(X, y, epochs=3, **fit)
    after_one = _net("numpy", "float64")
    after_one.fit(X, y, epochs=1, **fit)
    path = tmp_path / "c.npz"
    net = _net("numpy", "float64")
    before = signal.getsignal(signal.SIGINT)
    with monkeypatch.context() as m:
        _interrupting_step(m, 25 + 10, signum)          # in the middle of epoch 2 (25 steps each)
        with pytest.raises(bpgpu.TrainingInterrupted) as info:
            net.fit(X, y, epochs=3, checkpoint=path, checkpoint_every=5, **fit)
    stop = info.value
    assert stop.signum == signum and stop.restored and stop.checkpoint == str(path)
    assert stop.history.epoch == [1] and "interrupted by" in stop.history.stop_reason
    assert np.array_equal(_flat(net), _flat(after_one))   # back to epoch 1: a copy, exact
    assert read_checkpoint(path).epoch == 1
    assert signal.getsignal(signal.SIGINT) is before   # handlers restored (SIG_IGN where the
    # suite was started in the background, default_int_handler in a terminal)
    resumed = _net("numpy", "float64")
    resumed.fit(X, y, epochs=3, resume=path, **fit)
    assert np.array_equal(_flat(resumed), _flat(whole))   # same backend, same calls: exact


def test_a_second_signal_stops_at_once(small, monkeypatch):
    X, y = small
    net = _net("numpy", "float32")
    with monkeypatch.context() as m:
        _interrupting_step(m, 3, signal.SIGINT, times=2)
        with pytest.raises(bpgpu.TrainingInterrupted) as info:
            net.fit(X, y, epochs=2, **FIT)
    assert not info.value.restored and info.value.history is None


_CLI = [sys.executable, "-m", "bpgpu", "train", "--dataset", "moons", "--hidden", "8",
        "--backend", "numpy", "--quiet"]


def test_cli_checkpoint_resume_and_conflicting_options(tmp_path):
    run = lambda *a: subprocess.run(_CLI + list(a), capture_output=True, text=True,  # noqa: E731
                                    cwd=tmp_path, timeout=300)
    res = run("--epochs", "2", "--checkpoint", "c.npz")
    assert res.returncode == 0, res.stderr
    res = run("--resume", "c.npz", "--epochs", "4", "--save", "m.npz")
    assert res.returncode == 0, res.stderr
    assert read_checkpoint(tmp_path / "c.npz").epoch == 4 and (tmp_path / "m.npz").exists()
    res = run("--resume", "c.npz", "--epochs", "5", "--lr", "0.5")
    assert res.returncode == 2 and res.stderr.count("\n") <= 3
    assert "different: lr" in res.stderr and "Traceback" not in res.stderr


def test_cli_sigint_saves_the_last_epoch_and_exits_130(tmp_path):
    """A real Ctrl-C (SIGINT from outside) during a long run: one line saying what was saved,
    exit status 130, and both files complete and loadable."""
    proc = subprocess.Popen(_CLI[:4] + ["--dataset", "mnist", "--hidden", "32", "--backend",
                                        "numpy", "--epochs", "500", "--checkpoint", "c.npz",
                                        "--save", "m.npz"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = []
    for line in proc.stderr:                     # wait for the first completed epoch
        lines.append(line)
        if line.startswith("epoch 1 "):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + err
    last = [l for l in err.splitlines() if l.startswith("bpgpu:")]
    assert len(last) == 1 and "SIGINT: stopped; saved epoch" in last[0]
    assert "Traceback" not in err
    epoch = read_checkpoint(tmp_path / "c.npz").epoch
    assert epoch >= 1 and f"saved epoch {epoch}:" in last[0]
    assert bpgpu.load(tmp_path / "m.npz").sizes == [784, 32, 10]


_WRITER = textwrap.dedent("""
    import sys, numpy as np, bpgpu
    net = bpgpu.MLP([784, 64, 10], backend="numpy", seed=0)
    X = np.random.default_rng(0).integers(0, 256, (256, 784), dtype=np.uint8)
    y = np.arange(256) % 10
    print("ready", flush=True)
    i = 0
    while True:                       # alternate two different contents, forever
        net.fit(X, y, epochs=1, batch_size=64, checkpoint=sys.argv[1])
        net.save(sys.argv[2])
        i += 1
""")


def test_sigkill_at_random_moments_never_corrupts_a_file(tmp_path):
    """kill -9 a process that rewrites a checkpoint and a model in a loop, at random moments:
    each file is always a complete, loadable one, and a temp file left behind never gets in the
    way of the next run."""
    rng = np.random.default_rng(0)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    ckpt, model = tmp_path / "c.npz", tmp_path / "m.npz"
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(model)],
                                cwd=tmp_path, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        try:
            proc.wait(timeout=float(rng.uniform(0.05, 0.6)))
        except subprocess.TimeoutExpired:
            pass
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if ckpt.exists():
            assert read_checkpoint(ckpt).epoch >= 1
        if model.exists():
            assert bpgpu.load(model, backend="numpy").sizes == [784, 64, 10]
    assert ckpt.exists() and model.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".bpgpu-")]
    # whatever temp files a kill left are never read: a last clean write still works
    net = bpgpu.load(model, backend="numpy")
    net.save(model)
    assert bpgpu.load(model).sizes == [784, 64, 10]
    print(f"temp files left by kills: {len(leftovers)}")
