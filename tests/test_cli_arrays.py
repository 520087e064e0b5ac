"""``bpgpu train --dataset FILE.npy --labels FILE.npy`` (issue 23): the inputs memory-mapped, never
read whole (training streams them through the out-of-core feeder), a seeded test split, a clear
one-line error for every bad pair of arrays, and ``--resume`` from another directory."""

import os
import subprocess
import sys

import numpy as np
import pytest

from bpgpu.checkpoint import read_checkpoint
from bpgpu.datasets import load_dataset
from bpgpu.errors import DataError
from bpgpu.rows import RowView, in_memory


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bpgpu"] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.random((600, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 1).astype(np.int64)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return tmp_path, X, y


def test_the_arrays_are_memory_mapped_and_split_by_the_seed(arrays):
    d, X, y = arrays
    data = load_dataset(d / "X.npy", labels=d / "y.npy", seed=4)
    assert isinstance(data.X_train, RowView) and not in_memory(data.X_train.source)
    assert isinstance(data.X_train.source, np.memmap)
    assert (len(data.X_train), len(data.X_test), data.n_outputs) == (480, 120, 2)
    rows = np.concatenate([data.X_train.rows, data.X_test.rows])
    assert sorted(rows) == list(range(600))                         # a partition of the rows
    np.testing.assert_array_equal(np.asarray(data.X_test), X[data.X_test.rows])
    np.testing.assert_array_equal(data.y_test, y[data.X_test.rows])
    again = load_dataset(d / "X.npy", labels=d / "y.npy", seed=4)
    np.testing.assert_array_equal(again.X_test.rows, data.X_test.rows)
    other = load_dataset(d / "X.npy", labels=d / "y.npy", seed=5)
    assert not np.array_equal(other.X_test.rows, data.X_test.rows)


def test_float_labels_are_a_regression(arrays):
    d, X, _ = arrays
    np.save(d / "t.npy", X[:, 0] * 2.0)
    data = load_dataset(d / "X.npy", labels=d / "t.npy")
    assert (data.task, data.n_outputs) == ("regression", 1)


def test_train_and_resume_from_another_directory(arrays):
    d, _, _ = arrays
    res = run("train", "--dataset", "X.npy", "--labels", "y.npy", "--hidden", "8", "--epochs",
              "2", "--backend", "numpy", "--quiet", "--checkpoint", "c.npz", cwd=d)
    assert res.returncode == 0, res.stderr
    assert "X.npy: 480 train, 120 test" in res.stderr and "accuracy" in res.stdout
    options = read_checkpoint(d / "c.npz").state["info"]["train_options"]
    assert options["labels"] == str(d / "y.npy") and options["dataset"] == str(d / "X.npy")
    (d / "elsewhere").mkdir()
    res = run("train", "--resume", "../c.npz", "--epochs", "3", "--quiet", cwd=d / "elsewhere")
    assert res.returncode == 0, res.stderr
    assert read_checkpoint(d / "c.npz").epoch == 3


@pytest.mark.parametrize("labels,fragment", [
    (np.zeros(5, np.int64), "5 labels of shape (5,) for the 600 rows"),
    (np.full(600, -1, np.int64), "class labels must be integers >= 0, found -1"),
    (np.array(["a"] * 600), "labels must be integer classes"),
    (np.full(600, np.nan), "targets must be finite"),
    (np.zeros(600, np.int64), "at least 2 classes"),
])
def test_bad_labels_are_one_line_errors(arrays, labels, fragment):
    d, _, _ = arrays
    np.save(d / "bad.npy", labels)
    res = run("train", "--dataset", d / "X.npy", "--labels", d / "bad.npy", "--save",
              d / "m.npz")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert fragment in res.stderr and "model: MLP" not in res.stderr, res.stderr
    assert not (d / "m.npz").exists()


def test_bad_inputs_are_data_errors(arrays):
    d, X, y = arrays
    with pytest.raises(DataError, match="needs its labels"):
        load_dataset(d / "X.npy")
    np.save(d / "s.npy", np.array(["x"] * 600))
    with pytest.raises(DataError, match="must be a numeric array"):
        load_dataset(d / "s.npy", labels=d / "y.npy")
    (d / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="not a readable .npy array"):
        load_dataset(d / "junk.npy", labels=d / "y.npy")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(d / "X.npy", labels=d / "nosuch.npy")
    res = run("train", "--dataset", d / "X.npy", "--labels", d / "y.npy", "--json",
              d / "y.npy")
    assert res.returncode == 2 and "would overwrite --labels" in res.stderr, res.stderr
    np.testing.assert_array_equal(np.load(d / "y.npy"), y)


# ------------------------------------------------------------------ uncompressed IDX directories
def _idx_dir(d, gz):
    from bpgpu.datasets import write_idx
    d.mkdir()
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    arrays = {}
    for split, n in (("train", 60), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 5, 5), dtype=np.uint8)
        labels = np.arange(n) % 3
        write_idx(d / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(d / f"{split}-labels-idx1-ubyte{ext}", labels.astype(np.uint8))
        arrays[split] = images.reshape(n, -1), labels
    return arrays


def test_an_uncompressed_idx_directory_is_memory_mapped(tmp_path):
    from bpgpu.datasets import load_idx_dir
    want = _idx_dir(tmp_path / "raw", gz=False)
    (X, y), (Xt, yt) = load_idx_dir(tmp_path / "raw")
    assert isinstance(X, np.memmap) and isinstance(Xt, np.memmap) and not in_memory(X)
    np.testing.assert_array_equal(X, want["train"][0])
    np.testing.assert_array_equal(Xt, want["t10k"][0])
    np.testing.assert_array_equal(y, want["train"][1])
    _idx_dir(tmp_path / "gz", gz=True)
    (X, _), _ = load_idx_dir(tmp_path / "gz")
    assert in_memory(X)                                   # gzip: decompressed into memory
    res = run("train", "--dataset", tmp_path / "raw", "--hidden", "4", "--epochs", "1",
              "--backend", "numpy", "--quiet")
    assert res.returncode == 0 and "60 train, 20 test" in res.stderr, res.stderr


def test_a_mapped_idx_file_is_checked_like_a_read_one(tmp_path):
    from bpgpu.datasets import load_idx_dir
    _idx_dir(tmp_path / "raw", gz=False)
    images = tmp_path / "raw" / "train-images-idx3-ubyte"
    (tmp_path / "raw" / "SHA256SUMS").write_text("0" * 64 + "  train-images-idx3-ubyte\n")
    with pytest.raises(DataError, match="checksum mismatch"):
        load_idx_dir(tmp_path / "raw")
    (tmp_path / "raw" / "SHA256SUMS").unlink()
    with open(images, "ab") as f:
        f.write(b"\0")
    with pytest.raises(DataError, match="unexpected bytes"):
        load_idx_dir(tmp_path / "raw")
    images.write_bytes(images.read_bytes()[:-30])
    with pytest.raises(DataError, match="truncated"):
        load_idx_dir(tmp_path / "raw")
