"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a model file (:mod:`bpgpu.io`'s ``.npz`` + ``metadata.json``, so ``bpgpu.load``
and ``bpgpu evaluate`` read it as the model it holds) with one more metadata section,
``"checkpoint"``, and a few more arrays: the optimizer's state buffers and, with early stopping,
the best epoch's parameters. The section holds the completed epoch, the History, the early-stopping
state, the learning-rate schedule's state, the host generator's state (it draws the permutations), the training-step count and stream
key (they name the dropout streams), the optimizer's step count, the training options, and
fingerprints of the data. Everything is host data, so a checkpoint written on one backend resumes
on any other; resuming on the same backend is bit-identical to never having stopped.

Files are written atomically (:func:`bpgpu.io.atomic_write`): a crash, ``kill -9`` or a full disk
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .errors import ConfigError, DataError, ModelFileError
from .io import read_archive, save

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "write_checkpoint", "read_checkpoint",
           "fingerprint", "OPTION_KEYS"]

#: Version of the ``"checkpoint"`` section this bpgpu writes and reads.
CHECKPOINT_VERSION = 1

#: The training options that shape the trajectory: a resumed run must use the same ones
#: (``epochs`` may grow; progress, callbacks and file paths may change).
OPTION_KEYS = ("batch_size", "optimizer", "dropout", "shuffle", "train_metrics", "patience",
               "validation", "augment", "schedule")


def fingerprint(array) -> str:
    """A short digest of an array's shape, dtype and bytes (checks a resume uses the same data)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.shape}{array.dtype.str}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


class Checkpoint:
    """What :func:`read_checkpoint` returns.

    Attributes
    ----------
    path : str
    meta : dict
        The whole metadata record (``meta["config"]`` is the model's, ``meta["checkpoint"]`` the
        training state).
    state : dict
        ``meta["checkpoint"]``.
    arrays : dict of str -> ndarray
        Every array in the file (the model's ``W*``/``b*`` and the state's).
    """

    def __init__(self, path, meta, arrays):
        self.path, self.meta, self.arrays = path, meta, arrays
        self.state = meta["checkpoint"]

    @property
    def epoch(self) -> int:
        """The number of completed epochs the checkpoint holds."""
        return int(self.state["epoch"])

    def check_model(self, model) -> None:
        """Raise ConfigError unless ``model`` has the checkpoint's architecture and dtype."""
        saved, mine = self.meta["config"], model.config()
        keys = ("sizes", "activation", "output", "loss", "dtype", "input_scale", "input_shift")
        diff = [f"{k} {saved.get(k)!r} (this model: {mine[k]!r})" for k in keys
                if saved.get(k) != mine[k]]
        if diff:
            raise ConfigError(f"{self.path}: checkpoint is for another network: "
                              + "; ".join(diff))

    def check_options(self, options: dict) -> None:
        """Raise ConfigError unless the training ``options`` match the checkpoint's."""
        saved = self.state["options"]
        diff = [f"{k} {saved.get(k)!r} (now {options.get(k)!r})" for k in OPTION_KEYS
                if saved.get(k) != options.get(k)]
        if diff:
            raise ConfigError(f"{self.path}: resuming needs the checkpoint's training options; "
                              "different: " + "; ".join(diff))

    def check_data(self, prints: dict) -> None:
        """Raise DataError unless the data fingerprints match the checkpoint's."""
        saved = self.state["data"]
        for name in ("train_X", "train_y", "validation_X", "validation_y"):
            if saved.get(name) != prints.get(name):
                raise DataError(f"{self.path}: the checkpoint was written for other data "
                                f"({name.replace('_', ' ')} differs)")


def write_checkpoint(path, model, state: dict, arrays: dict) -> str:
    """Write ``model`` with the training ``state`` section and state ``arrays`` to ``path``,
    atomically; return the path."""
    section = dict(state, version=CHECKPOINT_VERSION)
    return save(model, path, sections={"checkpoint": section}, arrays=arrays)


def read_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    ModelFileError
        Missing, truncated or corrupt file; a model file that is not a checkpoint; a checkpoint
        of a newer version.
    """
    path = os.fspath(path)
    meta, arrays = read_archive(path)
    section = meta.get("checkpoint")
    if section is None:
        raise ModelFileError(f"{path}: a model file, not a checkpoint (it has no training state "
                             "to resume from)")
    if not isinstance(section, dict) or not isinstance(section.get("version"), int):
        raise ModelFileError(f"{path}: the checkpoint section is corrupt")
    if section["version"] > CHECKPOINT_VERSION:
        raise ModelFileError(f"{path}: checkpoint version {section['version']} was written by a "
                             f"newer bpgpu (this one reads version {CHECKPOINT_VERSION})")
    if section["version"] < 1:
        raise ModelFileError(f"{path}: unknown checkpoint version {section['version']}")
    needed = ("epoch", "options", "history", "rng_state", "steps", "stream_key", "optimizer",
              "early_stopping", "data")
    missing = [k for k in needed if k not in section]
    if missing:
        raise ModelFileError(f"{path}: the checkpoint section lacks {', '.join(missing)}")
    return Checkpoint(path, meta, arrays)
