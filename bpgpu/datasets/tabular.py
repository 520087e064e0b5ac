"""CSV loader for tabular data: numeric columns standardised, categorical columns one-hot.

The tutorials' graduate-admissions example (admit ~ gre + gpa + rank) is the model: the target is one
named column; a column whose every value parses as a number is numeric and is standardised with the
*training* split's mean and standard deviation; any other column is categorical and becomes one-hot
columns (categories seen in training). A numeric column can be forced categorical (``rank``).
Missing values are an error that names the row and column, never a silent NaN; so are numbers that
are not finite (``nan``, ``inf``, ``1e999``).

Encoding: a file is read as UTF-8 when it is valid UTF-8 (with or without a byte-order mark), as
UTF-16 when it starts with a UTF-16 byte-order mark, and otherwise as Windows-1252 — the encoding of
spreadsheet exports on Western-language Windows, and Latin-1 with printable characters in place of
Latin-1's unused control codes (the five bytes Windows-1252 leaves undefined are read as Latin-1).
Text that is not UTF-8 is almost never valid UTF-8 by accident, so the first rule is reliable; the
fallback always decodes. ``encoding=`` names one explicitly instead.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

__all__ = ["TabularData", "load_csv", "split_rows", "iter_csv", "csv_fingerprint"]


@dataclass
class TabularData:
    """A CSV split into train/test arrays, with what was done to each column.

    ``columns`` says, per input column in order, how it became features: ``{"name", "kind":
    "numeric", "mean", "std", "scale"}`` (standardised: ``(x / scale - mean) / std``) or
    ``{"name", "kind": "categorical", "categories"}`` (one-hot, in that order). ``pipeline``
    is all of that as the :class:`~bpgpu.datasets.pipeline.Pipeline` a model saves, and
    ``source`` says which file and which split the arrays came from.
    """
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list = field(default_factory=list)
    classes: list | None = None          # label values in index order, for classification
    task: str = "classification"
    columns: list = field(default_factory=list)
    target: str | None = None
    path: str | None = None               # the file, absolute
    fingerprint: str | None = None        # of the file's bytes
    split: dict | None = None             # {"seed", "test_fraction"}: split_rows' arguments

    @property
    def pipeline(self):
        """The input pipeline a model trained on these arrays needs for raw rows."""
        from .pipeline import Pipeline
        return Pipeline("tabular", self.task, [dict(c) for c in self.columns], self.target,
                        list(self.classes) if self.classes is not None else None)

    @property
    def source(self) -> dict:
        """Where the arrays came from (:func:`bpgpu.datasets.pipeline.source_record`)."""
        from .pipeline import source_record
        return source_record(self.path, "csv", self.fingerprint, self.split)


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _decode(raw: bytes, path, encoding=None) -> tuple[str, str]:
    """Decode a CSV file's bytes by the rule in the module docstring; return (text, encoding)."""
    if encoding is not None:
        try:
            return raw.decode(encoding), encoding
        except LookupError:
            raise DataError(f"unknown encoding {encoding!r}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid {encoding} (byte {exc.start}: "
                            f"{raw[exc.start:exc.start + 1].hex()})") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: starts with a UTF-16 byte-order mark but is not valid "
                            f"UTF-16 ({exc.reason} at byte {exc.start})") from None
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("latin-1").translate(_CP1252), "cp1252"


#: Latin-1 text -> Windows-1252 text: the bytes 0x80-0x9f that Windows-1252 defines (quotes, dashes,
#: the euro sign ...) instead of Latin-1's control codes; the five it leaves undefined stay as they are.
_CP1252 = {b: bytes([b]).decode("cp1252") for b in range(0x80, 0xA0)
           if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}


def _read_rows(path, encoding):
    """``(rows, raw bytes)``: the CSV's rows as (line number, fields), blank lines skipped."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text, _ = _decode(raw, path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if row:
                rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: not readable as CSV ({exc})") from None
    return rows, raw


def _stream_encoding(path, encoding):
    """The encoding :func:`_decode` would choose for the file, found reading it in blocks (the
    UTF-8 check needs the whole file; memory stays one block)."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"unknown encoding {encoding!r}") from None
        return encoding
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"
        check = codecs.getincrementaldecoder("utf-8")()
        block = head
        try:
            while block:
                check.decode(block)
                block = f.read(1 << 20)
            check.decode(b"", final=True)
        except UnicodeDecodeError:
            return "cp1252"
    return "utf-8-sig"


def _text_lines(f, encoding):
    """The file's lines as text (Windows-1252 by the module's rule: Latin-1, translated)."""
    if encoding == "cp1252":
        return (line.translate(_CP1252) for line in f)
    return f


def iter_csv(path, encoding=None, chunk_rows=4096):
    """Read a CSV with a header row in blocks of at most ``chunk_rows`` rows (memory stays
    bounded whatever the file's size), decoded by the module's rule.

    Yields
    ------
    header : list of str
        The column names (stripped), the same for every block.
    rows : list of (int, list of str)
        ``(line number, fields)`` per row; blank lines skipped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    chosen = _stream_encoding(path, encoding)
    opened = "latin-1" if chosen == "cp1252" and encoding is None else chosen
    header, block = None, []
    try:
        with open(path, encoding=opened, newline="") as f:
            reader = csv.reader(_text_lines(f, chosen if encoding is None else None))
            for row in reader:
                if not row:
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                    continue
                block.append((reader.line_num, row))
                if len(block) >= chunk_rows:
                    yield header, block
                    block = []
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: not readable as CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {chosen} ({exc.reason})") from None
    if header is None:
        raise DataError(f"{path}: empty file (no header row)")
    if block:
        yield header, block


def _number(value, path, line, column):
    x = float(value)
    if not math.isfinite(x):
        raise DataError(f"{path}, line {line}: column {column!r} holds {value!r}, not a finite "
                        "number")
    return x


#: Most distinct values a categorical column may have (each becomes one input column): more is
#: almost always an identifier or free text, and one-hot would need rows x values memory.
MAX_CATEGORIES = 1000


def load_csv(path, target=None, categorical=(), task="auto", test_fraction=0.2, seed=0,
             encoding=None):
    """Load a CSV with a header row.

    Parameters
    ----------
    path : path
    target : str or list of str, optional
        The target column (default: the last one). Several -- a list, or names separated by
        commas (``"a,b,c"``) -- make a multi-label dataset: each column 0/1, ``y`` their (N, k)
        float64 indicators, ``classes`` the column names, task ``"multilabel"``.
    categorical : sequence of str
        Columns to one-hot even though they are numeric (e.g. ``rank``).
    task : {"auto", "classification", "regression", "multilabel"}
        ``auto``: classification when the target is non-numeric or integer with at most 20
        distinct values.
    test_fraction : float
        Share of rows (shuffled with ``seed``) held out as the test split; 0 keeps all for training.
    encoding : str, optional
        The file's text encoding; by default UTF-8, UTF-16 with a byte-order mark, or Windows-1252,
        chosen by the rule in this module's docstring.

    Returns
    -------
    TabularData
        ``X`` float64 (N, n_features), finite; ``y`` int64 labels or float64 targets.

    Raises
    ------
    DataError
        Unreadable file, malformed CSV, missing or non-finite values, an unknown column, ... with
        the file, line and column.
    """

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    if not 0 <= test_fraction < 1:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    targets = _target_names(target)
    header, lines, cols, raw = _table(path, encoding, targets, categorical)
    targets = targets or [header[-1]]
    train_idx, test_idx = split_rows(len(lines), test_fraction, seed)
    if train_idx.size == 0:
        raise DataError(f"{path}: test_fraction={test_fraction} leaves no training rows")
    if len(targets) > 1:
        y, classes, task = _indicators(path, cols, lines, targets, task)
        target = targets
    else:
        target = targets[0]
        y, classes, task = _target(path, cols, lines, target, task)
    features, names, columns = [], [], []
    for name, values in cols.items():
        block, spec = _encode(path, name, values, lines, train_idx, name in categorical)
        features.append(block)
        columns.append(spec)
        names += ([name] if spec["kind"] == "numeric"
                  else [f"{name}={c}" for c in spec["categories"]])
    X = np.hstack(features)
    return TabularData(X[train_idx], y[train_idx], X[test_idx], y[test_idx], names,
                       [str(c) for c in classes] if classes is not None else None, task,
                       columns, target, os.path.abspath(path), csv_fingerprint(raw),
                       {"seed": int(seed), "test_fraction": float(test_fraction)})


def split_rows(n, test_fraction, seed):
    """The train/test split of ``n`` rows that :func:`load_csv` makes: ``(train indices, test
    indices)``, the test rows the first ``round(n * test_fraction)`` of a permutation drawn from
    ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return order[n_test:], order[:n_test]


def csv_fingerprint(raw: bytes) -> str:
    """A digest of a file's bytes: the same file under another name is the same dataset."""
    from ..checkpoint import fingerprint
    return fingerprint(np.frombuffer(raw, np.uint8))


def _target_names(target) -> list:
    """``load_csv``'s ``target`` as a list of column names (empty: the last column)."""
    if target is None:
        return []
    names = target.split(",") if isinstance(target, str) else list(target)
    names = [str(n).strip() for n in names]
    if not names or any(n == "" for n in names) or len(set(names)) != len(names):
        raise DataError(f"target {target!r}: give one column name, or several distinct ones "
                        "separated by commas")
    return names


def _table(path, encoding, targets, categorical):
    """The CSV checked: ``(header, line numbers, {column: stripped values}, the file's
    bytes)``."""
    rows, raw = _read_rows(path, encoding)
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0][1]], rows[1:]
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)
    targets = targets or [header[-1]]
    for target in targets:
        if target not in header:
            raise DataError(f"{path}: no column {target!r} (columns: {', '.join(header)})")
    if len(header) <= len(targets):
        raise DataError(f"{path}: no feature columns besides the target "
                        f"{', '.join(map(repr, targets))}")
    for name in categorical:
        if name not in header:
            raise DataError(f"{path}: no column {name!r} to treat as categorical")
    for line, row in body:
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: {len(row)} fields, header has {len(header)}")
        for name, value in zip(header, row):
            if value.strip() == "":
                raise DataError(f"{path}, line {line}: missing value in column {name!r}")
    cols = {name: [r[j].strip() for _, r in body] for j, name in enumerate(header)}
    return header, [line for line, _ in body], cols, raw


def _numbers(path, values, lines, name):
    """The column as finite floats, or None when some value is not a number (categorical)."""
    if not all(_is_number(v) for v in values):
        return None
    return np.array([_number(v, path, line, name) for v, line in zip(values, lines)])


def _target(path, cols, lines, target, task):
    """``(y, classes or None, task)`` of the target column (removed from ``cols``)."""
    y_num = _numbers(path, cols[target], lines, target)
    y_raw = cols.pop(target)
    if task == "auto":
        integer_like = y_num is not None and all(float(v).is_integer() for v in y_num)
        task = "classification" if (y_num is None or (integer_like and
                                                      len(set(y_raw)) <= 20)) else "regression"
    if task == "classification":
        classes = sorted(set(y_raw), key=lambda v: (float(v) if y_num is not None else 0, v))
        index = {c: i for i, c in enumerate(classes)}
        return np.array([index[v] for v in y_raw], np.int64), classes, task
    if task == "regression":
        if y_num is None:
            raise DataError(f"{path}: regression target {target!r} has non-numeric values")
        return y_num, None, task
    raise DataError(f"task must be auto, classification or regression, got {task!r}")


def _indicators(path, cols, lines, targets, task):
    """``(y (N, k) float64, the target names, "multilabel")`` of several 0/1 target columns
    (removed from ``cols``)."""
    if task not in ("auto", "multilabel", "classification"):
        raise DataError(f"{path}: several target columns ({', '.join(targets)}) are a "
                        f"multi-label classification, not task {task!r}")
    y = np.empty((len(lines), len(targets)))
    for j, name in enumerate(targets):
        for i, v in enumerate(cols.pop(name)):
            if v not in ("0", "1", "0.0", "1.0"):
                raise DataError(f"{path}, line {lines[i]}: target column {name!r} holds {v!r}; "
                                "each of several target columns is 0 or 1")
            y[i, j] = float(v)
    return y, list(targets), "multilabel"


def _encode(path, name, values, lines, train_idx, categorical):
    """One input column as features: ``(block (N, k), spec)`` -- standardised with the training
    rows' statistics, or one-hot of the categories the training rows hold."""
    x = None if categorical else _numbers(path, values, lines, name)
    if x is None:
        cats = sorted(set(values[i] for i in train_idx))
        if len(cats) > MAX_CATEGORIES:
            raise DataError(f"{path}: column {name!r} has {len(cats)} distinct values in the "
                            f"training rows (at most {MAX_CATEGORIES} as categories): an "
                            "identifier or free text? drop it")
        index = {c: i for i, c in enumerate(cats)}
        codes = np.array([index.get(v, -1) for v in values])
        block = (codes[:, None] == np.arange(len(cats))).astype(np.float64)
        return block, {"name": name, "kind": "categorical", "categories": cats}
    scale = 1.0
    with np.errstate(all="ignore"):
        mu, sd = x[train_idx].mean(), x[train_idx].std()
        if not (np.isfinite(mu) and np.isfinite(sd)):   # near the float limit: scale first
            scale = float(np.abs(x).max())
            x = x / scale
            mu, sd = x[train_idx].mean(), x[train_idx].std()
        sd = sd if sd > 0 else 1.0
        z = (x - mu) / sd
    if not np.all(np.isfinite(z)):   # test rows far outside the training rows' range
        raise DataError(f"{path}: column {name!r} cannot be standardised with the "
                        "training rows' mean and deviation (some values overflow; "
                        "rescale the column)")
    return z[:, None], {"name": name, "kind": "numeric", "mean": float(mu), "std": float(sd),
                        "scale": scale}
