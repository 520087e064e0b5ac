"""Watching a run (issue 23): the per-epoch log (CSV and JSON Lines) and TensorBoard files.

The log's rows equal the History; after ``kill -9`` it holds exactly the completed epochs; a
resumed run continues it without duplicating epochs (rows written after the checkpoint are
dropped); a log of another run is refused; a continued fit appends. TensorBoard's event files
are read back and equal the History (tensorboardX is an optional extra: these skip without it,
and fail instead under BPGPU_REQUIRE_TENSORBOARD=1, which .ci/run sets).
"""

import csv
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu.checkpoint import read_checkpoint

RNG = np.random.default_rng(0)
X = RNG.integers(0, 256, (240, 12), dtype=np.uint8)
Y = RNG.integers(0, 3, 240)
FIT = dict(batch_size=16, optimizer="momentum", lr=0.05, validation_split=0.2)


def _rows(path):
    if str(path).endswith(".csv"):
        with open(path, newline="") as f:
            return [{k: (v if k in ("backend", "timestamp") else float(v) if v else None)
                     for k, v in row.items()} for row in csv.DictReader(f)]
    with open(path) as f:
        return [json.loads(line) for line in f]


def _same_as_history(rows, history):
    assert [int(r["epoch"]) for r in rows] == history.epoch
    for field in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"):
        assert [r[field] for r in rows] == getattr(history, field), field
    assert all(r["backend"] == history.backend for r in rows)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_log_rows_equal_the_history(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    net = bpgpu.MLP([12, 8, 3], backend="numpy", seed=1)
    history = net.fit(X, Y, epochs=4, log=str(path), **FIT)
    _same_as_history(_rows(path), history)
    again = bpgpu.MLP([12, 8, 3], backend="numpy", seed=1).fit(X, Y, epochs=2, log=str(path),
                                                               **FIT)
    _same_as_history(_rows(path), again)          # a new run: a new log


def test_a_log_name_must_say_its_format(tmp_path):
    with pytest.raises(bpgpu.ConfigError, match=".csv, .jsonl"):
        bpgpu.MLP([12, 8, 3], backend="numpy").fit(X, Y, epochs=1, log=str(tmp_path / "x.txt"))


_KILLED = """
import os, signal, sys
import numpy as np
import bpgpu
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (240, 12), dtype=np.uint8); Y = rng.integers(0, 3, 240)
def kill_after_3(history):
    if history.epoch[-1] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
bpgpu.MLP([12, 8, 3], backend="numpy", seed=1).fit(
    X, Y, epochs=8, log=sys.argv[1], checkpoint=sys.argv[2], checkpoint_every=2,
    on_epoch=kill_after_3, batch_size=16, optimizer="momentum", lr=0.05, validation_split=0.2)
"""


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_kill_9_leaves_the_completed_epochs_and_resume_continues_the_log(tmp_path, suffix):
    log, ckpt = tmp_path / f"run{suffix}", tmp_path / "c.npz"
    res = subprocess.run([sys.executable, "-c", _KILLED, str(log), str(ckpt)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr
    assert [int(r["epoch"]) for r in _rows(log)] == [1, 2, 3]     # exactly the completed ones
    assert read_checkpoint(ckpt).epoch == 2                      # epoch 3's was not due
    first = _rows(log)
    net = bpgpu.MLP([12, 8, 3], backend="numpy", seed=1)
    history = net.fit(X, Y, epochs=5, log=str(log), checkpoint=str(ckpt), resume=str(ckpt),
                      **FIT)
    rows = _rows(log)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]     # epoch 3 once: trimmed, rerun
    assert rows[:2] == first[:2]
    _same_as_history(rows, history)
    whole = bpgpu.MLP([12, 8, 3], backend="numpy", seed=1).fit(X, Y, epochs=5, **FIT)
    assert whole.loss == history.loss


def test_a_log_of_another_run_is_refused_and_a_missing_one_rebuilt(tmp_path):
    ckpt, log = tmp_path / "c.npz", tmp_path / "run.csv"
    bpgpu.MLP([12, 8, 3], backend="numpy", seed=1).fit(X, Y, epochs=2, checkpoint=str(ckpt),
                                                       **FIT)
    bpgpu.MLP([12, 8, 3], backend="numpy", seed=9).fit(X, Y, epochs=3, log=str(log), **FIT)
    with pytest.raises(bpgpu.ConfigError, match="another run"):
        bpgpu.MLP([12, 8, 3], backend="numpy", seed=1).fit(
            X, Y, epochs=3, resume=str(ckpt), log=str(log), **FIT)
    os.remove(log)
    h = bpgpu.MLP([12, 8, 3], backend="numpy", seed=1).fit(X, Y, epochs=3, resume=str(ckpt),
                                                           log=str(log), **FIT)
    _same_as_history(_rows(log), h)


def test_a_continued_fit_appends_to_its_log(tmp_path):
    log = tmp_path / "run.jsonl"
    net = bpgpu.MLP([12, 8, 3], backend="numpy", seed=1)
    h1 = net.fit(X, Y, epochs=2, log=str(log), **FIT)
    h2 = net.fit(X, Y, epochs=2, log=str(log), continue_training=True, **FIT)
    assert [r["epoch"] for r in _rows(log)] == [1, 2, 3, 4]
    assert [r["loss"] for r in _rows(log)] == h1.loss + h2.loss


def test_the_cli_writes_the_log(tmp_path):
    log = tmp_path / "run.csv"
    res = subprocess.run([sys.executable, "-m", "bpgpu", "train", "--dataset", "moons",
                          "--hidden", "8", "--epochs", "3", "--quiet", "--log", str(log)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert [int(r["epoch"]) for r in _rows(log)] == [1, 2, 3]


# ------------------------------------------------------------------------------ TensorBoard
def _tensorboardx():
    try:
        import tensorboardX
        return tensorboardX
    except ImportError as exc:
        if os.environ.get("BPGPU_REQUIRE_TENSORBOARD") == "1":
            pytest.fail(f"BPGPU_REQUIRE_TENSORBOARD=1, but tensorboardX does not import: {exc}")
        pytest.skip(f"tensorboardX is not installed ({exc}): pip install 'bpgpu[tensorboard]'")


def _events(directory):
    """Every Event of the event files in ``directory`` (TFRecord framing read by hand)."""
    from tensorboardX.proto import event_pb2
    events = []
    for name in sorted(os.listdir(directory)):
        if not name.startswith("events.out.tfevents"):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            record = data[pos + 12:pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(record)
            events.append(event)
    return events


def test_tensorboard_files_read_back_equal_the_history(tmp_path):
    _tensorboardx()
    tb = tmp_path / "tb"
    net = bpgpu.MLP([12, 8, 3], backend="numpy", seed=1)
    history = net.fit(X, Y, epochs=4, tensorboard=str(tb), tensorboard_histograms=2, **FIT)
    scalars, histograms, plugins = {}, set(), set()
    for event in _events(tb):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
            elif value.HasField("histo"):
                histograms.add((value.tag, event.step))
            if value.metadata.plugin_data.plugin_name:
                plugins.add(value.metadata.plugin_data.plugin_name)
    for field, tag in (("loss", "train/loss"), ("accuracy", "train/accuracy"),
                       ("val_loss", "val/loss"), ("val_accuracy", "val/accuracy"), ("lr", "lr")):
        got = [scalars[tag][e] for e in history.epoch]
        np.testing.assert_allclose(got, getattr(history, field), rtol=1e-6)   # float32 in files
    assert {("layer0/weights", 2), ("layer1/biases", 4)} <= histograms
    assert ("layer0/weights", 1) not in histograms and "hparams" in plugins
