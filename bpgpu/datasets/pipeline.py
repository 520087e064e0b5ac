"""The input pipeline a model carries in its file: what its inputs and outputs mean.

A model trained on a CSV needs, to be used on new rows, the column names in order, each numeric
column's standardisation, each categorical column's categories, the target's name, the class
labels as the file wrote them and the task; an image model needs its image shape (its
``input_scale``/``input_shift`` are the network's own configuration). :class:`Pipeline` holds
exactly that: :func:`bpgpu.datasets.load_csv` and :func:`bpgpu.datasets.load_dataset` fill it,
:mod:`bpgpu.io` saves and reads it (``metadata.json``'s ``"pipeline"`` section), and
:class:`bpgpu.MLP` applies it to raw rows in ``predict``.

Encoding raw rows (:meth:`Pipeline.encode`) is the training encoding, value for value: a numeric
column becomes ``(x / scale - mean) / std`` in float64, a categorical one the one-hot columns of
its categories in their saved order. The rows' columns are matched by name, in any order; columns
the model does not know are reported by :class:`ExtraColumnsWarning` and ignored (the target
silently); a missing column, a missing or non-numeric value, a non-finite number and a category
training never saw are a :class:`~bpgpu.errors.DataError` naming the column, the row and the value.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

__all__ = ["Pipeline", "ExtraColumnsWarning", "KINDS", "TASKS", "source_record",
           "same_source"]

#: What a model's inputs are: CSV columns, images (uint8 pixels of ``image_shape``), or plain
#: feature vectors (the toy sets, arrays given to ``fit``).
KINDS = ("tabular", "image", "features")
TASKS = ("classification", "regression", "multilabel")


class ExtraColumnsWarning(UserWarning):
    """Rows given to a model hold columns it was not trained on (they are ignored)."""


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return isinstance(value, float) and math.isnan(value)


def _as_text(value) -> str:
    return value.strip() if isinstance(value, str) else str(value)


@dataclass
class Pipeline:
    """What a model's inputs and outputs mean (see the module docstring).

    Attributes
    ----------
    kind : {"tabular", "image", "features"}
    task : {"classification", "regression", "multilabel"}
        ``multilabel``: several 0/1 target columns, one sigmoid output each.
    columns : list of dict
        Tabular models: per input column, in feature order, ``{"name", "kind": "numeric",
        "mean", "std", "scale"}`` or ``{"name", "kind": "categorical", "categories"}`` (the
        format of :attr:`bpgpu.datasets.TabularData.columns`).
    target : str, list of str, or None
        The target column's name (a multi-label model: its target columns, in output order).
    classes : list or None
        The class labels in output order, as the data wrote them (strings stay strings; image
        and toy datasets have integer labels).
    image_shape : tuple of int or None
        ``(height, width)`` of an image model's inputs.
    """
    kind: str = "features"
    task: str = "classification"
    columns: list = field(default_factory=list)
    target: str | list | None = None
    classes: list | None = None
    image_shape: tuple | None = None

    @property
    def targets(self) -> list:
        """The target columns' names: none, one, or a multi-label model's several."""
        if self.target is None:
            return []
        return list(self.target) if isinstance(self.target, (list, tuple)) else [self.target]

    # ------------------------------------------------------------------ what it describes
    @property
    def column_names(self) -> list:
        """The raw input columns in order (tabular models), e.g. ``["gre", "gpa", "rank"]``."""
        return [c["name"] for c in self.columns]

    @property
    def feature_names(self) -> list:
        """The network's inputs in order: a numeric column's name, ``name=category`` per
        category of a categorical one."""
        names = []
        for c in self.columns:
            names += ([c["name"]] if c["kind"] == "numeric"
                      else [f"{c['name']}={v}" for v in c["categories"]])
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def describe_inputs(self) -> str:
        """One line naming the raw inputs a tabular model expects."""
        parts = [f"{c['name']} (number)" if c["kind"] == "numeric" else
                 f"{c['name']} (one of {', '.join(map(str, c['categories']))})"
                 for c in self.columns]
        return ", ".join(parts)

    # ------------------------------------------------------------------ the file's record
    def record(self) -> dict:
        """The JSON record saved in the model file."""
        rec = {"kind": self.kind, "task": self.task}
        if self.columns:
            rec["columns"] = [dict(c) for c in self.columns]
        if self.target is not None:
            rec["target"] = self.target
        if self.classes is not None:
            rec["classes"] = list(self.classes)
        if self.image_shape is not None:
            rec["image_shape"] = list(self.image_shape)
        return rec

    @classmethod
    def from_record(cls, rec) -> "Pipeline":
        """The pipeline a :meth:`record` describes; ``ValueError`` naming the field that is
        wrong (:mod:`bpgpu.io` reports it as a ModelFileError)."""
        if not isinstance(rec, dict):
            raise ValueError(f"pipeline is {type(rec).__name__}, not a record")
        kind, task = rec.get("kind"), rec.get("task")
        if kind not in KINDS:
            raise ValueError(f"pipeline kind {kind!r} is not one of {', '.join(KINDS)}")
        if task not in TASKS:
            raise ValueError(f"pipeline task {task!r} is not one of {', '.join(TASKS)}")
        columns = [_checked_column(c) for c in _list(rec, "columns", [])]
        target = rec.get("target")
        names = target if isinstance(target, list) else [target]
        if target is not None and not (names and all(isinstance(t, str) for t in names)):
            raise ValueError(f"pipeline target {target!r} is not a column name (or a list of "
                             "them)")
        classes = rec.get("classes")
        if classes is not None:
            classes = _list(rec, "classes", [])
            if not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
                raise ValueError("pipeline classes must be strings or integers")
        shape = rec.get("image_shape")
        if shape is not None:
            shape = _list(rec, "image_shape", [])
            if len(shape) != 2 or not all(type(s) is int and s > 0 for s in shape):
                raise ValueError(f"pipeline image_shape {shape!r} is not (height, width)")
            shape = tuple(shape)
        return cls(kind, task, columns, target, classes, shape)

    def check_against(self, sizes) -> None:
        """ValueError unless the pipeline fits a network of layer ``sizes``."""
        n_in, n_out = sizes[0], sizes[-1]
        if self.kind == "tabular" and self.n_features != n_in:
            raise ValueError(f"pipeline has {self.n_features} features, the network {n_in} "
                             "inputs")
        if self.image_shape is not None and math.prod(self.image_shape) != n_in:
            raise ValueError(f"pipeline image shape {self.image_shape} does not give the "
                             f"network's {n_in} inputs")
        if self.classes is not None and len(self.classes) != n_out and \
                not (n_out == 1 and len(self.classes) == 2):
            raise ValueError(f"pipeline has {len(self.classes)} classes for {n_out} outputs")

    # ------------------------------------------------------------------ labels
    def labels(self, indices) -> np.ndarray:
        """The class labels of class ``indices`` (an int array), as the data wrote them."""
        indices = np.asarray(indices, np.int64)
        if self.classes is None:
            return indices
        return np.asarray(self.classes)[indices]

    def indices(self, labels, row_names=None, unknown=None) -> np.ndarray:
        """Class indices of ``labels`` given in the model's own labels; DataError naming the
        row (``row_names[i]``, default ``row i``) and the label for one it does not know, or
        ``unknown`` in its place when that is given."""
        if self.classes is None:
            return np.asarray(labels, np.int64)
        find = _finder(self.classes)
        out = np.empty(len(labels), np.int64)
        for i, label in enumerate(labels):
            found = find(label)
            if found is None and unknown is not None:
                found = unknown
            if found is None:
                where = row_names[i] if row_names is not None else f"row {i}"
                raise DataError(f"{where}: target {self.target or 'label'} {label!r} is not one "
                                f"of the model's classes ({', '.join(map(str, self.classes))})")
            out[i] = found
        return out

    # ------------------------------------------------------------------ raw rows
    def encode(self, names, rows, row_names=None, where="") -> np.ndarray:
        """Raw tabular rows as the network's features.

        Parameters
        ----------
        names : sequence of str, or None
            The rows' column names (any order; the target and unknown columns are ignored,
            unknown ones with an :class:`ExtraColumnsWarning`); None: the rows hold exactly the
            model's columns in :attr:`column_names` order.
        rows : sequence of sequences
            One sequence of values per row (strings as a CSV holds them, or numbers).
        row_names : sequence of str, optional
            How errors name each row (``line 7`` of a file); default ``row i``.
        where : str
            Prefix of error messages (a file name).

        Returns
        -------
        ndarray, shape (len(rows), n_features), float64
        """
        if self.kind != "tabular":
            raise DataError("this model was not trained on tabular data: give it an array")
        positions = self.positions(names)
        row_names = row_names if row_names is not None else [f"row {i}" for i in range(len(rows))]
        width = len(names) if names is not None else len(self.columns)
        for r, row in enumerate(rows):
            if len(row) != width:
                raise DataError(f"{where}{row_names[r]}: {len(row)} values, expected {width}"
                                + ("" if names is not None else
                                   f" ({', '.join(self.column_names)})"))
        blocks = [_encode_column(spec, [row[j] for row in rows], row_names, where)
                  for spec, j in zip(self.columns, positions)]
        if not blocks or not rows:
            return np.empty((len(rows), self.n_features))
        return np.hstack(blocks)

    def positions(self, names) -> list:
        """Index in ``names`` of each model column (None: the model's own order); DataError for
        a missing one, ExtraColumnsWarning for names the model does not know."""
        if names is None:
            return list(range(len(self.columns)))
        names = [str(n).strip() for n in names]
        at = {}
        for i, n in enumerate(names):
            if n in at:
                raise DataError(f"column {n!r} appears twice")
            at[n] = i
        missing = [c for c in self.column_names if c not in at]
        if missing:
            raise DataError(f"missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(repr, missing))} (the model reads "
                            f"{', '.join(self.column_names)})")
        extra = [n for n in names if n not in self.column_names and n not in self.targets]
        if extra:
            warnings.warn(f"ignoring column{'s' if len(extra) > 1 else ''} the model does not "
                          f"know: {', '.join(extra)}", ExtraColumnsWarning, stacklevel=3)
        return [at[c] for c in self.column_names]


def _finder(known):
    """A function: a value -> its index in ``known`` (labels or categories as the data wrote
    them), matched as text, or as a number when it is one (``3`` finds ``"3.0"``), else None."""
    index = {_as_text(c): i for i, c in enumerate(known)}
    numeric = {float(k): i for k, i in index.items() if _is_number(k)}

    def find(value):
        found = index.get(_as_text(value))
        if found is None and not isinstance(value, str) and _is_number(value):
            found = numeric.get(float(value))
        return found
    return find


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _encode_column(spec, values, row_names, where) -> np.ndarray:
    """One column's raw values as its feature block, shape (N, 1) or (N, n_categories)."""
    name = spec["name"]
    for r, v in enumerate(values):
        if _missing(v):
            raise DataError(f"{where}{row_names[r]}: missing value in column {name!r}")
    if spec["kind"] == "numeric":
        x = np.empty(len(values))
        for r, v in enumerate(values):
            if not _is_number(v):
                raise DataError(f"{where}{row_names[r]}: column {name!r} holds {v!r}, not a "
                                "number")
            x[r] = float(v)
            if not math.isfinite(x[r]):
                raise DataError(f"{where}{row_names[r]}: column {name!r} holds {v!r}, not a "
                                "finite number")
        with np.errstate(all="ignore"):
            z = (x / spec["scale"] - spec["mean"]) / spec["std"]
        bad = np.flatnonzero(~np.isfinite(z))
        if bad.size:
            r = int(bad[0])
            raise DataError(f"{where}{row_names[r]}: column {name!r} holds {values[r]!r}, too "
                            "far outside the training values to standardise")
        return z[:, None]
    cats = spec["categories"]
    find = _finder(cats)
    codes = np.empty(len(values), np.int64)
    for r, v in enumerate(values):
        found = find(v)
        if found is None:
            shown = ", ".join(map(str, cats[:20])) + (", ..." if len(cats) > 20 else "")
            raise DataError(f"{where}{row_names[r]}: column {name!r} holds {v!r}, a category "
                            f"training never saw ({shown})")
        codes[r] = found
    return (codes[:, None] == np.arange(len(cats))).astype(np.float64)


def _list(rec, key, default):
    value = rec.get(key, default)
    if not isinstance(value, list):
        raise ValueError(f"pipeline {key} is {type(value).__name__}, not a list")
    return value


def _checked_column(c) -> dict:
    """A column spec of a record, its fields checked."""
    if not isinstance(c, dict) or not isinstance(c.get("name"), str):
        raise ValueError(f"pipeline column {c!r} has no name")
    if c.get("kind") == "numeric":
        for key in ("mean", "std", "scale"):
            v = c.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"pipeline column {c['name']!r}: {key} {v!r} is not a finite "
                                 "number")
        if c["std"] <= 0 or c["scale"] == 0:
            raise ValueError(f"pipeline column {c['name']!r}: std {c['std']} / scale "
                             f"{c['scale']} cannot standardise")
        return {"name": c["name"], "kind": "numeric", "mean": float(c["mean"]),
                "std": float(c["std"]), "scale": float(c["scale"])}
    if c.get("kind") == "categorical":
        cats = c.get("categories")
        if not isinstance(cats, list) or not cats or not all(isinstance(v, str) for v in cats):
            raise ValueError(f"pipeline column {c['name']!r}: categories must be a non-empty "
                             "list of strings")
        return {"name": c["name"], "kind": "categorical", "categories": list(cats)}
    raise ValueError(f"pipeline column {c['name']!r}: kind {c.get('kind')!r} is not numeric or "
                     "categorical")


# ---------------------------------------------------------------------------- the data's source
def source_record(name, kind, fingerprint, split=None) -> dict:
    """Where a model's training data came from, as its file records it (``"dataset"``).

    Parameters
    ----------
    name : str
        ``mnist``, ``fashion-mnist``, ``xor``, ``moons``, or the absolute path of an IDX
        directory or a CSV file (what ``--dataset`` takes).
    kind : {"builtin", "idx", "csv", "npy"}
    fingerprint : str
        A digest of the data (the test split's arrays; a CSV file's bytes): another dataset
        under the same name, or the same under another, is told by it.
    split : dict, optional
        How the loader split it: ``{"seed", "test_fraction"}`` for a CSV, ``{"seed"}`` for
        the moons (the seed draws the points).
    """
    rec = {"name": str(name), "kind": kind, "fingerprint": fingerprint}
    if split is not None:
        rec["split"] = dict(split)
    return rec


def same_source(recorded: dict, other: dict) -> bool:
    """Whether two :func:`source_record` records name the same data (the fingerprints agree)."""
    return recorded.get("fingerprint") == other.get("fingerprint")
