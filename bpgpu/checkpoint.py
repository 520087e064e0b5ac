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

The model a checkpoint holds (what ``bpgpu.load`` and ``bpgpu evaluate`` read) is the model
``fit`` would return if training ended there: with early stopping, the best epoch's parameters,
as ``--save`` writes them. The last epoch's parameters, where a resumed run continues from, are
then the array ``train_params``.

Reading checks the whole section (:mod:`bpgpu.checkpoint_schema`): a checkpoint edited by hand is
a :class:`~bpgpu.errors.ModelFileError` naming the field, never a failure later in the resume.

Files are written atomically (:func:`bpgpu.files.atomic_write`): a crash, ``kill -9`` or a full disk
leaves the previous checkpoint intact.

Versions: 3 holds the best epoch's parameters as the model (``train_params`` the last epoch's);
2 held the last epoch's as the model and the best as ``best_params``; both record the options as
:class:`~bpgpu.options.FitOptions` names them; version 1 (its ``optimizer`` a dict of
hyperparameters, ``patience`` and ``validation``) is read and translated.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .checkpoint_schema import validate
from .errors import ConfigError, DataError, ModelFileError
from .io import model_from_archive, read_archive, save
from .rows import in_memory, read_rows

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "CheckpointNotWritten", "write_checkpoint",
           "read_checkpoint", "fingerprint", "data_fingerprints"]

#: Version of the ``"checkpoint"`` section this bpgpu writes (it reads this one and older).
CHECKPOINT_VERSION = 3
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


class CheckpointNotWritten(OSError):
    """Training stopped because its checkpoint could not be written (a full disk, a lost
    mount): raised by ``fit`` after the epoch whose checkpoint failed. The model is left as
    ``fit`` would have returned it after that epoch (nothing is lost: save it), the previous
    checkpoint file is intact.

    Attributes
    ----------
    filename : str
        The checkpoint.
    errno, strerror
        Why the write failed (``errno.ENOSPC``: the disk is full).
    epoch : int
        The completed epochs the model holds.
    history : History
        Those epochs.
    """

    def __init__(self, error: OSError, path, epoch, history):
        super().__init__(error.errno, error.strerror or str(error), os.fspath(path))
        self.epoch, self.history = epoch, history

    def __str__(self):
        return (f"checkpoint {self.filename} not written after epoch {self.epoch} "
                f"({self.strerror}): training stopped there")


def _flat(weights, biases):
    """The flat parameter layout (every weight, then every bias) of per-layer arrays."""
    return np.concatenate([np.ravel(w) for w in weights] + [np.ravel(b) for b in biases])


def _layers(flat, sizes):
    """Per-layer ``(weights, biases)`` of a flat parameter array (the inverse of _flat)."""
    weights, biases, at = [], [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        weights.append(flat[at:at + n_in * n_out].reshape(n_in, n_out))
        at += n_in * n_out
    for n_out in sizes[1:]:
        biases.append(flat[at:at + n_out])
        at += n_out
    return weights, biases


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

    def _model_arrays(self):
        n_layers = len(self.meta["config"]["sizes"]) - 1
        return ([self.arrays[f"W{i}"] for i in range(n_layers)],
                [self.arrays[f"b{i}"] for i in range(n_layers)])

    @property
    def _best_is_the_model(self) -> bool:
        """Version 3 with early stopping: the file's model is the best epoch's."""
        return self.state["version"] >= 3 and "train_params" in self.arrays

    def parameters(self, n_layers=None):
        """``(weights, biases)`` of the last completed epoch (where a resumed run continues),
        as :meth:`Network.set_params` takes them."""
        if self._best_is_the_model:
            return _layers(self.arrays["train_params"], self.meta["config"]["sizes"])
        return self._model_arrays()

    def best_parameters(self):
        """The best epoch's flat parameters (early stopping), or None."""
        if self._best_is_the_model:
            return _flat(*self._model_arrays())
        return self.arrays.get("best_params")

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
        The best epoch's flat parameters (early stopping): the file's model, while the last
        epoch's (the model's own) go to ``train_params``.

    Raises
    ------
    bpgpu.files.WriteError
        An OSError naming ``path``: the previous file is intact.
    """
    scalars, arrays = optimizer_state
    stored = {f"{_OPTIMIZER_PREFIX}{k}": v for k, v in arrays.items()}
    section = dict(progress, version=CHECKPOINT_VERSION, rng_state=network_state["rng"],
                   steps=int(network_state["steps"]),
                   stream_key=[int(k) for k in network_state["stream_key"]], optimizer=scalars)
    sections = {"checkpoint": section}
    if best_params is None:
        return save(model, path, sections=sections, arrays=stored)
    be = model.backend
    stored["train_params"] = be.to_host(model.params).copy()
    be.upload(np.asarray(best_params).astype(model.dtype, copy=False), model.params)
    try:                                       # the file's model: the best epoch's
        return save(model, path, sections=sections, arrays=stored)
    finally:
        be.upload(stored["train_params"], model.params)


def read_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    ModelFileError
        Missing, truncated or corrupt file; a model file that is not a checkpoint; a checkpoint
        of a newer version; a field of the checkpoint's section that is missing, of the wrong
        type or out of range (the message names it).
    """
    path = os.fspath(path)
    meta, arrays = read_archive(path)
    section = meta.get("checkpoint")
    if section is None:
        raise ModelFileError(f"{path}: a model file, not a checkpoint (it has no training state "
                             "to resume from)")
    if not isinstance(section, dict) or type(section.get("version")) is not int:
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
    model = model_from_archive(meta, arrays, path, backend="numpy")   # the model part's checks
    has_best = "best_params" in arrays or (section["version"] >= 3 and "train_params" in arrays)
    validate(path, section, arrays, model.n_params, has_best)
    return Checkpoint(path, meta, arrays)
