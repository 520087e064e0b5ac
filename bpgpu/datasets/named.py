"""One entry point for the datasets the CLI and benchmarks name: ``mnist``, ``fashion-mnist``,
``xor``, ``moons``, an IDX directory, or a CSV file.

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

__all__ = ["Dataset", "load_dataset", "NAMES"]

NAMES = ("mnist", "fashion-mnist", "xor", "moons")


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


def load_dataset(name, target=None, seed=0, test_fraction=0.2) -> Dataset:
    """Load a dataset by name, IDX directory, or CSV path (``target`` names the CSV's column;
    ``seed`` draws the moons and a CSV's split, ``test_fraction`` is the CSV's test share)."""
    key = str(name).lower()
    if key == "mnist":
        return _images("mnist", "mnist", "builtin", *_flat(mnist()), (28, 28))
    if key in ("fashion-mnist", "fashion_mnist", "fashion"):
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
