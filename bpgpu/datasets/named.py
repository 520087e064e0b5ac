"""One entry point for the datasets the CLI and benchmarks name: ``mnist``, ``fashion-mnist``,
``xor``, ``moons``, an IDX directory, or a CSV file."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .mnist import fashion_mnist, load_idx_dir, mnist
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

    @property
    def n_inputs(self) -> int:
        return int(np.prod(self.X_train.shape[1:]))


def load_dataset(name, target=None, seed=0) -> Dataset:
    """Load a dataset by name, IDX directory, or CSV path (``target`` names the CSV's column)."""
    key = str(name).lower()
    if key == "mnist":
        (X, y), (Xt, yt) = mnist()
        return Dataset("mnist", X, y, Xt, yt, 10)
    if key in ("fashion-mnist", "fashion_mnist", "fashion"):
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
                       data.y_test, n_out, data.task)
    raise DataError(f"unknown dataset {name!r}: use {', '.join(NAMES)}, an IDX directory or a "
                    "CSV file")
