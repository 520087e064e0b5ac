"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a model file (:mod:`bpgpu.io`'s ``.npz`` + ``metadata.json``, so ``bpgpu.load``
and ``bpgpu evaluate`` read it as the model it holds) with one more metadata section,
``"checkpoint"``, and a few more arrays: the optimizer's state buffers and, with early stopping,
the best epoch's parameters. The section holds the completed epoch, the History, the early-stopping
state, the learning-rate schedule's state, the network's state (the host generator's state, which
draws the permutations, the training-step count and stream key, which name the random streams),
the optimizer's step count, the options a resume must match (:meth:`bpgpu.options.FitOptions.trajectory`),
and fingerprints of the data. Everything is host data, so a checkpoint written on one backend
resumes on any other; resuming on the same backend is bit-identical to never having stopped.

Files are written atomically (:func:`bpgpu.files.atomic_write`): a crash, ``kill -9`` or a full disk
leaves the previous checkpoint intact.

Versions: 2 records the options as :class:`~bpgpu.options.FitOptions` names them; version 1 (its
``optimizer`` a dict of hyperparameters, ``patience`` and ``validation``) is read and translated.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .errors import ConfigError, DataError, ModelFileError
from .io import read_archive, save
from .rows import in_memory, read_rows

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "write_checkpoint", "read_checkpoint",
           "fingerprint", "data_fingerprints"]

#: Version of the ``"checkpoint"`` section this bpgpu writes (it reads this one and older).
CHECKPOINT_VERSION = 2
_OPTIMIZER_PREFIX = "optimizer_"
_DATA_KEYS = ("train_X", "train_y", "train_w", "validation_X", "validation_y", "validation_w")


#: Rows hashed at a time when an array is not in memory.
_FINGERPRINT_ROWS = 65536


def fingerprint(array) -> str:
    """A short digest of an array's shape, dtype and bytes (checks a resume uses the same data).
    An array-like that is not in memory (bpgpu.rows) is read in chunks of rows, with the same
    digest as the array in memory."""
    digest = hashlib.blake2b(digest_size=16)
    if in_memory(array) or not hasattr(array, "dtype"):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype.str}".encode())
        digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()
    shape, dtype = tuple(int(d) for d in array.shape), np.dtype(array.dtype)
    digest.update(f"{shape}{dtype.str}".encode())
    for start in range(0, shape[0], _FINGERPRINT_ROWS):
        rows = read_rows(array, np.arange(start, min(start + _FINGERPRINT_ROWS, shape[0])))
        digest.update(memoryview(np.ascontiguousarray(rows)).cast("B"))
    return digest.hexdigest()


def data_fingerprints(X, y, validation_data=None, sample_weight=None) -> dict:
    """Fingerprints of a run's data by name (``train_X``, ``train_y``, and where given
    ``train_w``, ``validation_X``, ``validation_y``, ``validation_w``): what a resume, and the
    ranks of a data-parallel run, compare. ``validation_data`` is ``(X, y)`` or ``(X, y, w)``."""
    prints = {"train_X": fingerprint(np.asarray(X)), "train_y": fingerprint(np.asarray(y))}
    if sample_weight is not None:
        prints["train_w"] = fingerprint(np.asarray(sample_weight))
    if validation_data is not None:
        prints["validation_X"] = fingerprint(np.asarray(validation_data[0]))
        prints["validation_y"] = fingerprint(np.asarray(validation_data[1]))
        if len(validation_data) > 2 and validation_data[2] is not None:
            prints["validation_w"] = fingerprint(np.asarray(validation_data[2]))
    return prints


def _options_from_v1(saved: dict) -> dict:
    """A version-1 options record in version 2's names."""
    hyper = saved.get("optimizer") or {}
    out = {k: saved.get(k) for k in ("batch_size", "dropout", "shuffle", "train_metrics",
                                     "augment", "schedule")}
    out.update(optimizer=hyper.get("optimizer"), lr=hyper.get("lr"),
               weight_decay=hyper.get("weight_decay"), momentum=hyper.get("momentum"),
               early_stopping=saved.get("patience"), validation_split=saved.get("validation"))
    return out


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
        options = self.state["options"]
        self.options = _options_from_v1(options) if self.state["version"] == 1 else options

    @property
    def epoch(self) -> int:
        """The number of completed epochs the checkpoint holds."""
        return int(self.state["epoch"])

    @property
    def split_state(self):
        """The generator's state before the validation split, or None."""
        return self.state.get("split_rng_state")

    def parameters(self, n_layers):
        """``(weights, biases)``: the model's arrays, as :meth:`Network.set_params` takes them."""
        return ([self.arrays[f"W{i}"] for i in range(n_layers)],
                [self.arrays[f"b{i}"] for i in range(n_layers)])

    def network_state(self) -> dict:
        """The network's state without its parameters (:meth:`Network.load_state`)."""
        st = self.state
        return {"steps": int(st["steps"]), "rng": st["rng_state"],
                "stream_key": [int(k) for k in st["stream_key"]]}

    def optimizer_state(self):
        """``(scalars, arrays)`` as the optimizer's ``load_state`` takes them."""
        arrays = {k[len(_OPTIMIZER_PREFIX):]: v for k, v in self.arrays.items()
                  if k.startswith(_OPTIMIZER_PREFIX)}
        return self.state["optimizer"], arrays

    def check_model(self, model) -> None:
        """Raise ConfigError unless ``model`` has the checkpoint's architecture and dtype."""
        saved, mine = self.meta["config"], model.config()
        keys = ("sizes", "activation", "output", "loss", "dtype", "input_scale", "input_shift")
        diff = [f"{k} {saved.get(k)!r} (this model: {mine[k]!r})" for k in keys
                if saved.get(k) != mine[k]]
        if diff:
            raise ConfigError(f"{self.path}: checkpoint is for another network: "
                              + "; ".join(diff))

    def check_options(self, trajectory: dict) -> None:
        """Raise ConfigError unless the options a resume must match (``trajectory``, as
        :meth:`bpgpu.options.FitOptions.trajectory` gives them) are the checkpoint's."""
        saved = self.options
        diff = [f"{k} {saved.get(k)!r} (now {v!r})" for k, v in trajectory.items()
                if saved.get(k) != v]
        if diff:
            raise ConfigError(f"{self.path}: resuming needs the checkpoint's training options; "
                              "different: " + "; ".join(diff))

    def check_data(self, prints: dict) -> None:
        """Raise DataError unless the data fingerprints match the checkpoint's."""
        saved = self.state["data"]
        for name in _DATA_KEYS:
            if saved.get(name) != prints.get(name):
                raise DataError(f"{self.path}: the checkpoint was written for other data "
                                f"({name.replace('_', ' ')} differs)")


def write_checkpoint(path, model, network_state: dict, optimizer_state, progress: dict,
                     best_params=None) -> str:
    """Write ``model`` and a run's state to ``path``, atomically; return the path.

    Parameters
    ----------
    network_state : dict
        :meth:`Network.state` at the end of the epoch (the model's parameters must be its).
    optimizer_state : (dict, dict)
        The optimizer's ``state()``: scalars and host arrays.
    progress : dict
        The run's own record: ``epoch``, ``finished``, ``options``, ``history``,
        ``split_rng_state``, ``early_stopping``, ``schedule``, ``data``, ``backend``, ``info``.
    best_params : ndarray, optional
        The best epoch's flat parameters (early stopping).
    """
    scalars, arrays = optimizer_state
    stored = {f"{_OPTIMIZER_PREFIX}{k}": v for k, v in arrays.items()}
    if best_params is not None:
        stored["best_params"] = best_params
    section = dict(progress, version=CHECKPOINT_VERSION, rng_state=network_state["rng"],
                   steps=int(network_state["steps"]),
                   stream_key=[int(k) for k in network_state["stream_key"]], optimizer=scalars)
    return save(model, path, sections={"checkpoint": section}, arrays=stored)


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
