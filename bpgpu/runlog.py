"""The per-epoch log of a training run: one row per completed epoch, on disk as it happens.

``fit(log=PATH)`` / ``bpgpu train --log PATH``: after every completed epoch one row -- the epoch,
its wall time in seconds, samples per second, the learning rate, the training loss and accuracy,
the validation loss and accuracy, the backend and a UTC timestamp -- is appended, flushed and
fsynced, so a run killed at any moment (``kill -9`` included) leaves exactly the epochs it
completed, and a long run can be watched while it trains (``tail -f``). CSV for a ``.csv``
path, JSON Lines for ``.jsonl``/``.ndjson``; floats are written exactly (``repr``), missing
figures empty (CSV) or null (JSON).

A new run writes a new file (replacing one that is there, atomically). A resumed run continues
its log: the rows of the checkpoint's epochs must be there and agree with the checkpoint's
history (else a ConfigError: the log belongs to another run), rows of later epochs -- written
after the checkpoint, before the run stopped -- are dropped, and new rows follow. A missing log
is rebuilt from the checkpoint's history. A run that continues the previous fit of its model
(``continue_training``) appends to the log whose last row is that fit's last epoch.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os

from .errors import ConfigError
from .files import atomic_write

__all__ = ["EpochLog", "COLUMNS", "rows_of"]

#: The columns of a row, in order.
COLUMNS = ("epoch", "time", "samples_per_s", "lr", "loss", "accuracy", "val_loss",
           "val_accuracy", "backend", "timestamp")
_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format(path) -> str:
    kind = _FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())
    if kind is None:
        raise ConfigError(f"log {path}: the name must end in .csv, .jsonl or .ndjson (the "
                          "format is chosen by the extension)")
    return kind


def rows_of(history, n_samples, first=0):
    """The log rows of epochs ``first ..`` of a :class:`~bpgpu.history.History`."""
    rows = []
    for i in range(first, len(history.epoch)):
        seconds = history.time[i]
        rows.append({
            "epoch": history.epoch[i], "time": seconds,
            "samples_per_s": n_samples / seconds if seconds > 0 else None,
            "lr": history.lr[i] if i < len(history.lr) else None,
            "loss": history.loss[i], "accuracy": history.accuracy[i],
            "val_loss": history.val_loss[i] if history.val_loss else None,
            "val_accuracy": history.val_accuracy[i] if history.val_accuracy else None,
            "backend": history.backend,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")})
    return rows


def _text(kind, rows, header) -> str:
    if kind == "jsonl":
        return "".join(json.dumps({k: row.get(k) for k in COLUMNS}) + "\n" for row in rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else
                         repr(row[k]) if isinstance(row[k], float) else row[k] for k in COLUMNS])
    return out.getvalue()


def _read(path, kind) -> list[dict]:
    """The rows of an existing log, values as written (numbers parsed)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if kind == "jsonl":
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise ConfigError(f"log {path}: not JSON Lines ({exc})") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and tuple(rows[0]) != COLUMNS:
        raise ConfigError(f"log {path}: its columns are not bpgpu's ({', '.join(rows[0])})")
    for row in rows:
        for key, value in row.items():
            if key not in ("backend", "timestamp"):
                row[key] = None if value in ("", None) else float(value)
        row["epoch"] = int(row["epoch"])
    return rows


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)


class EpochLog:
    """The open log of one run (see the module docstring).

    Parameters
    ----------
    path : path
    n_samples : int
        Training rows per epoch (for samples per second).
    history : History
        The run's history so far (a resumed run's: the rows the log must already hold).
    continues : int or None
        The epoch count of the previous fit this run continues (its rows are in the log).
    """

    def __init__(self, path, n_samples, history, continues=None):
        self.path, self.n = os.fspath(path), n_samples
        self.kind = _format(self.path)
        if continues is not None and os.path.exists(self.path):
            self._check_continues(continues)
            return
        kept = rows_of(history, n_samples)
        if history.epoch and os.path.exists(self.path):
            kept = self._reconcile(history)
        # a new run, a rebuilt or a trimmed log: written whole, atomically
        text = _text(self.kind, kept, header=True)
        atomic_write(self.path, lambda f: f.write(text.encode()))

    def _reconcile(self, history) -> list[dict]:
        """The rows of the checkpoint's epochs, checked against its history."""
        rows = _read(self.path, self.kind)
        done = len(history.epoch)
        if len(rows) < done:
            raise ConfigError(f"log {self.path}: {len(rows)} epochs, but the checkpoint has "
                              f"completed {done}: it belongs to another run")
        for row, epoch, loss in zip(rows, history.epoch, history.loss):
            if int(row["epoch"]) != epoch or not _same(row["loss"], loss):
                raise ConfigError(f"log {self.path}: epoch {int(row['epoch'])} does not match "
                                  f"the checkpoint's epoch {epoch} (loss {row['loss']} vs "
                                  f"{loss}): it belongs to another run")
        return rows[:done]

    def _check_continues(self, epochs):
        rows = _read(self.path, self.kind)
        last = int(rows[-1]["epoch"]) if rows else 0
        if last != epochs:
            raise ConfigError(f"log {self.path}: its last epoch is {last}, but the fit this one "
                              f"continues ended at epoch {epochs}: it belongs to another run")

    def append(self, history):
        """Write the last epoch of ``history``: appended, flushed and fsynced."""
        text = _text(self.kind, rows_of(history, self.n, len(history.epoch) - 1), header=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def close(self):
        """Nothing to close: every row is on disk when :meth:`append` returns."""
