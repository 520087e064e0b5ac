"""One entry point for the datasets the CLI and benchmarks name: ``mnist``, ``fashion-mnist``,
``xor``, ``moons``, an IDX directory, a CSV file, or an ``.npy`` array of inputs with an ``.npy``
array of labels (memory-mapped: larger than memory, it trains through the out-of-core feeder)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .mnist import fashion_mnist, load_idx_dir, mnist
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
    classes: list | None = None      # a CSV's label values in index order, for messages

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))


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


def load_dataset(name, target=None, seed=0, labels=None) -> Dataset:
    """Load a dataset by name, IDX directory, or CSV path (``target`` names the CSV's column),
    or the ``.npy`` inputs ``name`` with the ``.npy`` labels ``labels`` (:func:`load_arrays`).

    Raises
    ------
    DataError
        An unknown name, an unreadable file, or data that could be trained on but not
        evaluated (an empty split, test rows of another shape, fewer than 2 classes).
    """
    if labels is not None:
        return _check_consistent(load_arrays(name, labels, seed))
    if str(name).lower().endswith(".npy"):
        raise DataError(f"{name}: an .npy array of inputs needs its labels (--labels FILE.npy)")
    return _check_consistent(_load(name, target, seed))


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
    return Dataset(os.path.basename(os.fspath(inputs)), RowView(X, train), y[train],
                   RowView(X, test), y[test], n_outputs, task)


def _load(name, target, seed) -> Dataset:
    key = _builtin(name)
    if key == "mnist":
        (X, y), (Xt, yt) = mnist()
        return Dataset("mnist", X, y, Xt, yt, 10)
    if key == "fashion-mnist":
        (X, y), (Xt, yt) = fashion_mnist()
        return Dataset("fashion-mnist", X, y, Xt, yt, 10)
    if key == "xor":
        X, y = xor()
        return Dataset("xor", X, y, X, y, 2)
    if key == "moons":
        X, y = moons(200, 0.2, seed)
        Xt, yt = moons(1000, 0.2, seed + 1)
        return Dataset("moons", X, y, Xt, yt, 2)
    path = os.fspath(name)
    if os.path.isdir(path):
        (X, y), (Xt, yt) = load_idx_dir(path)
        return Dataset(os.path.basename(os.path.normpath(path)), X, y, Xt, yt,
                       int(max(y.max(), yt.max())) + 1)
    if os.path.isfile(path):
        data = load_csv(path, target=target, seed=seed)
        n_out = len(data.classes) if data.classes is not None else 1
        return Dataset(os.path.basename(path), data.X_train, data.y_train, data.X_test,
                       data.y_test, n_out, data.task, classes=data.classes)
    raise DataError(f"unknown dataset {name!r}: use {', '.join(NAMES)}, an IDX directory or a "
                    "CSV file")
