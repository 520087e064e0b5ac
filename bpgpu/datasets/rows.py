"""Raw rows for a tabular model, from what users hold: a CSV file, a list of dicts, a pandas
DataFrame or a 2-D array of values in the model's column order.

:func:`row_blocks` turns any of them into blocks of encoded features (through the model's
:class:`~bpgpu.datasets.pipeline.Pipeline`), each with the rows' ids and, when the rows hold the
target column, its values; a CSV file is read block by block, so memory stays bounded whatever
its size. :func:`is_rows` says whether an input is raw rows at all or already the network's
features (a numeric array of the network's input width).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .pipeline import ExtraColumnsWarning
from .tabular import iter_csv

__all__ = ["RowBlock", "row_blocks", "is_rows", "is_dataframe"]


@dataclass
class RowBlock:
    """Consecutive rows of an input, encoded.

    Attributes
    ----------
    features : ndarray, shape (n, n_features), float64
    ids : list
        Each row's id: its line in a file, else its index in the input.
    target : list or None
        The rows' target values as written, when the input has the target column.
    """
    features: np.ndarray
    ids: list
    target: list | None = None


def is_dataframe(X) -> bool:
    """A pandas DataFrame, told without importing pandas."""
    return type(X).__module__.split(".")[0] == "pandas" and hasattr(X, "columns") and \
        hasattr(X, "itertuples")


def is_rows(X, pipeline, n_inputs) -> bool:
    """Whether ``X`` is raw rows for ``pipeline`` (a path, dicts, a DataFrame, or an array of
    raw values in column order) rather than the network's features.

    A numeric array of ``n_inputs`` columns is features (what :func:`load_csv` returns); a
    tabular model's other 2-D arrays (one value per raw column) are raw rows.
    """
    if isinstance(X, (str, os.PathLike)) or is_dataframe(X):
        return True
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], Mapping):
        return True
    if pipeline is None or pipeline.kind != "tabular":
        return False
    A = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=object) \
        if _ragged_or_mixed(X) else np.asarray(X)
    if A.ndim != 2:
        return False
    return A.dtype.kind not in "fiub" or A.shape[1] != n_inputs


def _ragged_or_mixed(X) -> bool:
    """A list of rows numpy would not make a plain array of (strings beside numbers)."""
    if not isinstance(X, (list, tuple)) or not X or not isinstance(X[0], (list, tuple)):
        return False
    kinds = {isinstance(v, str) for row in X for v in row}
    return len(kinds) > 1 or len({len(row) for row in X}) > 1


def row_blocks(pipeline, X, chunk_rows=65536, encoding=None):
    """Yield :class:`RowBlock` s of raw rows ``X`` encoded by ``pipeline`` (see the module
    docstring for the forms ``X`` takes)."""
    if isinstance(X, (str, os.PathLike)):
        yield from _csv_blocks(pipeline, os.fspath(X), chunk_rows, encoding)
        return
    if is_dataframe(X):
        names = [str(c) for c in X.columns]
        rows = [list(r) for r in X.itertuples(index=False, name=None)]
        yield from _sequence_blocks(pipeline, names, rows, chunk_rows)
        return
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], Mapping):
        names, rows = _dict_rows(pipeline, X)
        yield from _sequence_blocks(pipeline, names, rows, chunk_rows)
        return
    A = np.asarray(X, dtype=object) if _ragged_or_mixed(X) else np.asarray(X)
    if A.ndim != 2:
        raise DataError(f"rows must be a 2-D array of values, got shape {A.shape}")
    if A.shape[1] != len(pipeline.columns):
        raise DataError(f"rows have {A.shape[1]} values, the model reads "
                        f"{len(pipeline.columns)} columns ({', '.join(pipeline.column_names)})"
                        f" or {pipeline.n_features} standardised features")
    yield from _sequence_blocks(pipeline, None, A.tolist(), chunk_rows)


def _csv_blocks(pipeline, path, chunk_rows, encoding):
    where = f"{path}, "
    for header, block in iter_csv(path, encoding=encoding, chunk_rows=chunk_rows):
        lines = [line for line, _ in block]
        rows = [row for _, row in block]
        features = pipeline.encode(header, rows, [f"line {n}" for n in lines], where)
        yield RowBlock(features, lines, _target(pipeline, header, rows))


def _sequence_blocks(pipeline, names, rows, chunk_rows):
    for start in range(0, max(len(rows), 1), chunk_rows):
        part = rows[start:start + chunk_rows]
        ids = list(range(start, start + len(part)))
        features = pipeline.encode(names, part, [f"row {i}" for i in ids])
        yield RowBlock(features, ids, _target(pipeline, names, part) if names else None)


def _target(pipeline, names, rows):
    """The rows' target values, when they have the target column (a multi-label model's: a
    list of each row's values, when they have every target column)."""
    names = [str(n).strip() for n in names]
    targets = pipeline.targets
    if not targets or any(t not in names for t in targets):
        return None
    at = [names.index(t) for t in targets]

    def value(v):
        return v.strip() if isinstance(v, str) else v
    if pipeline.task == "multilabel":
        return [[value(row[j]) for j in at] for row in rows]
    return [value(row[at[0]]) for row in rows]


def _dict_rows(pipeline, dicts):
    """``(names, rows)`` of a list of dicts: the model's columns (and the target, when every
    dict has it) in order; a dict without one of the model's columns is a DataError."""
    names = list(pipeline.column_names)
    targets = pipeline.targets
    with_target = bool(targets) and all(t in d for d in dicts for t in targets)
    if with_target:
        names += targets
    extra = []
    rows = []
    for i, d in enumerate(dicts):
        if not isinstance(d, Mapping):
            raise DataError(f"row {i}: a {type(d).__name__}, not a dict like the rows before it")
        for c in pipeline.column_names:
            if c not in d:
                raise DataError(f"row {i}: no column {c!r} (the model reads "
                                f"{', '.join(pipeline.column_names)})")
        extra += [str(k) for k in d if k not in names and k not in targets
                  and str(k) not in extra]
        rows.append([d[c] for c in names])
    if extra:
        import warnings
        warnings.warn(f"ignoring column{'s' if len(extra) > 1 else ''} the model does not know: "
                      f"{', '.join(extra)}", ExtraColumnsWarning, stacklevel=4)
    return names, rows


def csv_split(pipeline, path, seed, test_fraction, encoding=None):
    """The test split of a CSV (:func:`bpgpu.datasets.tabular.split_rows` with ``seed`` and
    ``test_fraction``, as :func:`load_csv` makes it) encoded by the model's ``pipeline``, not
    by the file's own statistics: ``(X_test, y_test)``, ``y_test`` class indices or values."""
    from .tabular import split_rows
    blocks = list(row_blocks(pipeline, path, encoding=encoding))
    features = np.vstack([b.features for b in blocks])
    if any(b.target is None for b in blocks):
        raise DataError(f"{path}: no target column {pipeline.target!r}")
    target = [v for b in blocks for v in b.target]
    lines = [f"{path}, line {n}" for b in blocks for n in b.ids]
    _, test = split_rows(len(target), test_fraction, seed)
    if pipeline.task == "multilabel":
        y = indicators(pipeline, [target[i] for i in test], [lines[i] for i in test])
    elif pipeline.task == "regression":
        y = np.array([float(target[i]) for i in test])
    else:
        y = pipeline.indices([target[i] for i in test], [lines[i] for i in test])
    return features[test], y


def indicators(pipeline, values, names=None) -> np.ndarray:
    """A multi-label model's target rows (lists of 0/1 values, numbers or text) as a float64
    (N, k) indicator array; DataError naming the row and column of a value that is not 0 or 1."""
    out = np.empty((len(values), len(pipeline.targets)))
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = math.nan
            if x not in (0.0, 1.0):
                where = names[i] if names is not None else f"row {i}"
                raise DataError(f"{where}: target column {pipeline.targets[j]!r} holds {v!r}; "
                                "a multi-label target is 0 or 1")
            out[i, j] = x
    return out
