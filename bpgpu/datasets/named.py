"""One entry point for the datasets the CLI and benchmarks name: ``mnist``, ``fashion-mnist``,
``xor``, ``moons``, an IDX directory, a CSV file, or an ``.npy`` array of inputs with an ``.npy``
array of labels (memory-mapped: larger than memory, it trains through the out-of-core feeder).

Each :class:`Dataset` reports, besides its arrays, the input pipeline a model trained on it needs
(:class:`~bpgpu.datasets.pipeline.Pipeline`: labels, image shape, a CSV's columns) and where it
came from (:func:`~bpgpu.datasets.pipeline.source_record`: name, fingerprint, split), which the
model file keeps so that ``bpgpu evaluate`` can use the same split and refuse other data.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .mnist import _find, fashion_mnist, load_idx_dir, mnist
from .pipeline import Pipeline, source_record
from .tabular import load_csv
from .toy import moons, xor

__all__ = ["Dataset", "load_dataset", "load_arrays", "dataset_reference", "find_dataset",
           "NAMES"]

NAMES = ("mnist", "fashion-mnist", "xor", "moons")
#: other spellings of the built-in names
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashion": "fashion-mnist"}


@dataclass
class Dataset:
    """Train and test splits plus what a model needs to know about them."""
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_outputs: int
    task: str = "classification"
    pipeline: Pipeline | None = None
    source: dict | None = None

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))

    @property
    def classes(self) -> list | None:
        """The class labels in output order, as the data wrote them (for messages), or None."""
        return None if self.pipeline is None else self.pipeline.classes

def _builtin(name) -> str | None:
    """The built-in dataset ``name`` means, or None."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    return key if key in NAMES else None


def dataset_reference(name) -> str:
    """How a run records the dataset ``name`` so that it can be found again from any directory:
    a built-in name as it is, an IDX directory or CSV file as its absolute path."""
    if _builtin(name) or not os.path.exists(os.fspath(name)):
        return str(name)
    return os.path.abspath(os.fspath(name))


def find_dataset(name, beside=None) -> str:
    """The dataset a run recorded as ``name``: a built-in name, or a path that exists, as it
    is; else (a relative path recorded by an older bpgpu, read from another directory) the path
    relative to the directory of the file ``beside`` (the checkpoint), when it exists there."""
    if _builtin(name) or beside is None or os.path.isabs(name) or os.path.exists(name):
        return name
    there = os.path.join(os.path.dirname(os.path.abspath(os.fspath(beside))), name)
    return there if os.path.exists(there) else name


def _check_consistent(data: Dataset) -> Dataset:
    """DataError unless ``data`` can be trained on and then evaluated: rows in both splits, the
    same features in both, and -- to classify -- at least 2 classes among the training labels
    and test labels the network's outputs can give."""
    name = data.name
    if len(data.X_train) == 0 or len(data.X_test) == 0:
        raise DataError(f"{name}: too few rows to train and then test: {len(data.X_train)} "
                        f"training and {len(data.X_test)} test rows")
    if data.X_train.shape[1:] != data.X_test.shape[1:]:
        raise DataError(f"{name}: training rows have shape {data.X_train.shape[1:]} but test "
                        f"rows {data.X_test.shape[1:]}")
    if data.task != "classification":
        return data
    found = np.unique(data.y_train)
    if len(found) < 2 or data.n_outputs < 2:
        shown = ", ".join(repr(c) for c in (data.classes or found.tolist())[:3])
        raise DataError(f"{name}: a classifier needs at least 2 classes; the training labels "
                        f"have {len(found)} ({shown})")
    if data.y_test.size and (data.y_test.min() < 0 or data.y_test.max() >= data.n_outputs):
        raise DataError(f"{name}: test labels outside the {data.n_outputs} classes of the "
                        "training labels")
    return data


def load_dataset(name, target=None, seed=0, labels=None, test_fraction=0.2) -> Dataset:
    """Load a dataset by name, IDX directory, or CSV path (``target`` names the CSV's column,
    or several for a multi-label one), or the ``.npy`` inputs ``name`` with the ``.npy`` labels
    ``labels`` (:func:`load_arrays`); ``seed`` draws the moons and a CSV's or the arrays' split,
    ``test_fraction`` is their test share.

    Raises
    ------
    DataError
        An unknown name, an unreadable file, or data that could be trained on but not
        evaluated (an empty split, test rows of another shape, fewer than 2 classes).
    """
    if labels is not None:
        return _check_consistent(load_arrays(name, labels, seed, test_fraction))
    if str(name).lower().endswith(".npy"):
        raise DataError(f"{name}: an .npy array of inputs needs its labels (--labels FILE.npy)")
    return _check_consistent(_load(name, target, seed, test_fraction))


def _open_npy(path, what, mmap_mode):
    try:
        return np.load(os.fspath(path), mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{what} {path}: no such file") from None
    except (ValueError, OSError, EOFError) as exc:      # not .npy, pickled objects, truncated
        raise DataError(f"{what} {path}: not a readable .npy array ({exc})") from None


def load_arrays(inputs, labels, seed=0, test_fraction=0.2) -> Dataset:
    """The dataset of the ``.npy`` arrays ``inputs`` (N, ...) -- memory-mapped read-only, never
    read whole -- and ``labels`` (N,) (integer class labels: classification; floating-point
    targets (N,) or (N, k): regression), split into training and ``test_fraction`` test rows by
    a permutation drawn from ``seed`` (the rows are :class:`~bpgpu.rows.RowView` s).

    Raises
    ------
    DataError
        A file that is not an .npy array; inputs that are not numbers or have no features;
        labels of another length than the inputs, not numbers, or negative class labels.
    """
    from ..rows import RowView
    X = _open_npy(inputs, "--dataset", "r")
    y = np.asarray(_open_npy(labels, "--labels", None))
    if X.ndim < 2 or X.dtype.kind not in "uif" or 0 in X.shape[1:]:
        raise DataError(f"{inputs}: inputs must be a numeric array (N, features...), got "
                        f"{X.shape} {X.dtype}")
    if y.ndim not in (1, 2) or len(y) != len(X):
        raise DataError(f"{labels}: {len(y) if y.ndim else 0} labels of shape {y.shape} for "
                        f"the {len(X)} rows of {inputs}: one label per row")
    if y.dtype.kind in "ui" and y.ndim == 1:
        if y.size and y.min() < 0:
            raise DataError(f"{labels}: class labels must be integers >= 0, found {y.min()}")
        task, n_outputs, y = "classification", int(y.max()) + 1 if y.size else 0, y.astype(
            np.int64)
    elif y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise DataError(f"{labels}: targets must be finite numbers")
        task, n_outputs = "regression", 1 if y.ndim == 1 else y.shape[1]
    else:
        raise DataError(f"{labels}: labels must be integer classes (N,) or floating-point "
                        f"targets, got {y.shape} {y.dtype}")
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = int(round(len(X) * test_fraction))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    from ..checkpoint import fingerprint
    pipeline = Pipeline("features", task, classes=list(range(n_outputs))
                        if task == "classification" else None)
    source = source_record(os.path.abspath(os.fspath(inputs)), "npy",
                           fingerprint(X) + fingerprint(y),
                           {"seed": int(seed), "test_fraction": float(test_fraction)})
    return Dataset(os.path.basename(os.fspath(inputs)), RowView(X, train), y[train],
                   RowView(X, test), y[test], n_outputs, task, pipeline, source)


def _test_fingerprint(X, y) -> str:
    from ..checkpoint import fingerprint
    return fingerprint(np.asarray(X)) + fingerprint(np.asarray(y))


def _images(name, key, kind, X, y, Xt, yt, shape, n_classes=10) -> Dataset:
    pipeline = Pipeline("image", "classification", classes=list(range(n_classes)),
                        image_shape=tuple(shape))
    return Dataset(name, X, y, Xt, yt, n_classes, pipeline=pipeline,
                   source=source_record(key, kind, _test_fingerprint(Xt, yt)))


def _idx_image_shape(directory, n_inputs) -> tuple:
    """(height, width) from the test images' IDX header (``(1, n)`` for 2-D IDX data)."""
    path = _find(directory, "t10k-images-idx3-ubyte")
    with open(path, "rb") as f:
        head = f.read(2)
    with (gzip.open if head == b"\x1f\x8b" else open)(path, "rb") as f:
        header = f.read(16)
    if len(header) == 16 and header[3] == 3:
        return int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
    return 1, n_inputs


def _load(name, target, seed, test_fraction) -> Dataset:
    key = _builtin(name)
    if key == "mnist":
        return _images("mnist", "mnist", "builtin", *_flat(mnist()), (28, 28))
    if key == "fashion-mnist":
        return _images("fashion-mnist", "fashion-mnist", "builtin", *_flat(fashion_mnist()),
                       (28, 28))
    if key in ("xor", "moons"):
        if key == "xor":
            (X, y), (Xt, yt), split = xor(), xor(), None
        else:
            (X, y), (Xt, yt), split = moons(200, 0.2, seed), moons(1000, 0.2, seed + 1), \
                {"seed": int(seed)}
        return Dataset(key, X, y, Xt, yt, 2, pipeline=Pipeline("features", classes=[0, 1]),
                       source=source_record(key, "builtin", _test_fingerprint(Xt, yt), split))
    path = os.fspath(name)
    if os.path.isdir(path):
        (X, y), (Xt, yt) = load_idx_dir(path)
        n_classes = int(max(y.max(), yt.max())) + 1
        return _images(os.path.basename(os.path.normpath(path)), os.path.abspath(path), "idx",
                       X, y, Xt, yt, _idx_image_shape(path, X.shape[1]), n_classes)
    if os.path.isfile(path):
        data = load_csv(path, target=target, seed=seed, test_fraction=test_fraction)
        n_out = len(data.classes) if data.classes is not None else 1
        return Dataset(os.path.basename(path), data.X_train, data.y_train, data.X_test,
                       data.y_test, n_out, data.task, data.pipeline, data.source)
    raise DataError(f"unknown dataset {name!r}: use {', '.join(NAMES)}, an IDX directory or a "
                    "CSV file")


def _flat(splits):
    (X, y), (Xt, yt) = splits
    return X, y, Xt, yt
