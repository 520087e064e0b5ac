"""CSV loader for tabular data: numeric columns standardised, categorical columns one-hot.

The tutorials' graduate-admissions example (admit ~ gre + gpa + rank) is the model: the target is one
named column; a column whose every value parses as a number is numeric and is standardised with the
*training* split's mean and standard deviation; any other column is categorical and becomes one-hot
columns (categories seen in training). A numeric column can be forced categorical (``rank``).
Missing values are an error that names the row and column, never a silent NaN.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

__all__ = ["TabularData", "load_csv"]


@dataclass
class TabularData:
    """A CSV split into train/test arrays, with what was done to each column."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list = field(default_factory=list)
    classes: list | None = None          # label values in index order, for classification
    task: str = "classification"


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_csv(path, target=None, categorical=(), task="auto", test_fraction=0.2, seed=0):
    """Load a CSV with a header row.

    Parameters
    ----------
    path : path
    target : str, optional
        The target column (default: the last one).
    categorical : sequence of str
        Columns to one-hot even though they are numeric (e.g. ``rank``).
    task : {"auto", "classification", "regression"}
        ``auto``: classification when the target is non-numeric or integer with at most 20
        distinct values.
    test_fraction : float
        Share of rows (shuffled with ``seed``) held out as the test split; 0 keeps all for training.

    Returns
    -------
    TabularData
        ``X`` float64 (N, n_features); ``y`` int64 labels or float64 targets.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    target = target or header[-1]
    if target not in header:
        raise DataError(f"{path}: no column {target!r} (columns: {', '.join(header)})")
    for name in categorical:
        if name not in header:
            raise DataError(f"{path}: no column {name!r} to treat as categorical")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {i}: {len(row)} fields, header has {len(header)}")
        for name, value in zip(header, row):
            if value.strip() == "":
                raise DataError(f"{path}, line {i}: missing value in column {name!r}")
    cols = {name: [r[j].strip() for r in body] for j, name in enumerate(header)}

    n = len(body)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    test_idx, train_idx = order[:n_test], order[n_test:]
    if train_idx.size == 0:
        raise DataError(f"{path}: test_fraction={test_fraction} leaves no training rows")

    y_raw = cols.pop(target)
    numeric_y = all(_is_number(v) for v in y_raw)
    if task == "auto":
        integer_like = numeric_y and all(float(v).is_integer() for v in y_raw)
        task = "classification" if (not numeric_y or (integer_like and
                                                      len(set(y_raw)) <= 20)) else "regression"
    if task == "classification":
        classes = sorted(set(y_raw), key=lambda v: (float(v) if numeric_y else 0, v))
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[v] for v in y_raw], np.int64)
    elif task == "regression":
        if not numeric_y:
            raise DataError(f"{path}: regression target {target!r} has non-numeric values")
        classes, y = None, np.array([float(v) for v in y_raw])
    else:
        raise DataError(f"task must be auto, classification or regression, got {task!r}")

    features, names = [], []
    for name, values in cols.items():
        if name not in categorical and all(_is_number(v) for v in values):
            x = np.array([float(v) for v in values])
            mu, sd = x[train_idx].mean(), x[train_idx].std()
            features.append(((x - mu) / (sd if sd > 0 else 1.0))[:, None])
            names.append(name)
        else:
            cats = sorted(set(values[i] for i in train_idx))
            onehot = np.array([[v == c for c in cats] for v in values], np.float64)
            features.append(onehot)
            names += [f"{name}={c}" for c in cats]
    X = np.hstack(features) if features else np.empty((n, 0))
    return TabularData(X[train_idx], y[train_idx], X[test_idx], y[test_idx], names,
                       [str(c) for c in classes] if classes is not None else None, task)
