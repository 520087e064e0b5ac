"""Data larger than memory (issue 23): fit, evaluate and predict on array-likes that stay on
disk (bpgpu.rows, bpgpu.feeder).

Fitting on a memory-mapped copy of MNIST gives bit-identical parameters to fitting on the
in-memory array (numpy and numba: the in-memory numba run is a compiled epoch, the memmap one
runs step by step, and the two agree), with a validation split, dropout, augmentation and sample
weights; a generic array-like read only in ascending rows (what h5py requires) trains the same;
row reads are exact for any index order and repeats; a 2 GB memmap trains with a validation
split while the process's peak resident memory (VmHWM, measured in a subprocess) stays under its
parameters and workspaces plus 200 MB.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import bpgpu
from bpgpu._compat import has_numba
from bpgpu.rows import RowView, in_memory, read_rows


@pytest.fixture(scope="module")
def mnist_memmap(tmp_path_factory, mnist_data):
    (X, y), _ = mnist_data
    path = tmp_path_factory.mktemp("memmap") / "mnist.npy"
    np.save(path, X[:4000])
    return X[:4000], y[:4000], np.load(path, mmap_mode="r")


class Ascending:
    """An array-like as h5py's datasets are: shape, dtype, and rows read only by ascending,
    distinct indices or slices (anything else raises)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.reads = 0

    def __getitem__(self, key):
        if not isinstance(key, slice):
            key = np.asarray(key)
            if key.ndim != 1 or np.any(np.diff(key) <= 0):
                raise TypeError("indexing elements must be in increasing order")
        self.reads += 1
        return self.array[key]


def _flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


def test_rows_are_read_exactly_in_any_order(mnist_memmap):
    X, _, m = mnist_memmap
    assert in_memory(X) and not in_memory(m) and not in_memory(m[10:])
    rows = np.array([5, 3, 3, 3999, 0, 4, 5, 6, 7, 1000, -1])
    np.testing.assert_array_equal(read_rows(m, rows), X[rows])
    np.testing.assert_array_equal(read_rows(m[100:], rows[:3]), X[100:][rows[:3]])
    np.testing.assert_array_equal(read_rows(Ascending(X), rows), X[rows])
    view = RowView(m, np.arange(4000)[::-2])
    np.testing.assert_array_equal(view[3:9], X[::-2][3:9])
    np.testing.assert_array_equal(np.asarray(RowView(view, [1, 0])), X[::-2][[1, 0]])
    with pytest.raises(IndexError):
        read_rows(m, [4000])


BACKENDS = ["numpy"] + (["numba"] if has_numba() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fit", [
    dict(optimizer="sgd", lr=0.1),
    dict(optimizer="momentum", lr=0.05, dropout=0.2, validation_split=0.1, early_stopping=5),
    dict(optimizer="adam", lr=0.003, augment="shift=2", weighted=True),
], ids=["sgd", "split-dropout", "augment-weights"])
def test_a_memmap_trains_as_the_array_in_memory(mnist_memmap, backend, fit):
    X, y, m = mnist_memmap
    fit = dict(fit, epochs=2, batch_size=50)
    if fit.pop("weighted", False):
        fit["sample_weight"] = np.arange(len(y)) % 3
    results = []
    for data in (X, m, Ascending(X)):
        net = bpgpu.MLP([784, 24, 10], activation="relu", init="he", backend=backend, seed=4)
        history = net.fit(data, y, **fit)
        results.append((_flat(net), history.loss, history.val_loss,
                        net.evaluate(data, y), net.predict_proba(data[:300])))
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])
        assert other[1:4] == results[0][1:4]
        np.testing.assert_array_equal(other[4], results[0][4])


_BIG = textwrap.dedent("""
    import json, sys
    import numpy as np
    import bpgpu

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    X = np.load(sys.argv[1], mmap_mode="r")
    y = np.load(sys.argv[2])
    start = hwm()
    net = bpgpu.MLP([X.shape[1], 16, 10], backend="numpy", seed=0)
    h = net.fit(X, y, epochs=1, batch_size=256, lr=0.1, validation_split=0.1)
    acc = net.evaluate(X[:20000], y[:20000])["accuracy"]
    print(json.dumps({"start": start, "peak": hwm(), "model": net.resident_bytes(),
                      "rows": int(X.shape[0]), "val_loss": h.val_loss[0], "acc": acc}))
""")


def test_a_2_gb_memmap_trains_in_bounded_memory(tmp_path):
    """2 GiB of uint8 (262,144 rows of 8,192 pixels) written to disk, one epoch with a 10 %
    validation split: the peak resident memory stays under the model's parameters and
    workspaces (its resident_bytes) plus 200 MB -- the interpreter and numpy included."""
    rows, width = 256 * 1024, 8192
    images, labels = tmp_path / "big.npy", tmp_path / "labels.npy"
    try:
        rng = np.random.default_rng(0)
        header = np.lib.format.header_data_from_array_1_0(np.empty((0, width), np.uint8))
        header["shape"] = (rows, width)
        with open(images, "wb") as f:             # written in pieces: never whole in memory
            np.lib.format.write_array_header_1_0(f, header)
            for _ in range(rows // 2048):
                f.write(rng.integers(0, 256, (2048, width), dtype=np.uint8).tobytes())
        np.save(labels, rng.integers(0, 10, rows).astype(np.uint8))
        assert os.path.getsize(images) >= 2 * 1024 ** 3
        res = subprocess.run([sys.executable, "-c", _BIG, str(images), str(labels)],
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr
        import json
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["rows"] == rows and np.isfinite(got["val_loss"])
        assert got["peak"] < got["model"] + 200 * 1024 ** 2, got
    finally:
        for path in (images, labels):
            if path.exists():
                path.unlink()
