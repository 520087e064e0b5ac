"""Saving and loading models: one ``.npz`` holding the parameters and a JSON metadata record.

The file is written to a temporary file in the target directory and renamed into place, so a crash
or a full disk never leaves a half-written model behind. Loading checks the format tag and version,
every array's shape against the recorded sizes, and turns a truncated or foreign file into a
:class:`~bpgpu.errors.ModelFileError` that says what is wrong. A model saved from any backend loads
onto any backend.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import BpgpuError, ModelFileError

__all__ = ["save", "load", "atomic_write", "read_archive", "model_from_archive", "FORMAT",
           "FORMAT_VERSION"]

FORMAT = "bpgpu-mlp"
FORMAT_VERSION = 1


def atomic_write(path, write) -> str:
    """Create ``path`` by calling ``write(binary_file)`` on a temporary file, then renaming it.

    Either the whole new file is there afterwards or the old state is untouched (no half-written
    output, whatever ``write`` raises).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".bpgpu-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save(model, path, *, sections=None, arrays=None) -> str:
    """Write ``model`` to ``path`` atomically and return the path.

    The archive holds ``W0..W{L-1}``, ``b0..b{L-1}`` and ``metadata.json`` (format, version, the
    model's config, the backend it was saved from).

    Parameters
    ----------
    sections : dict, optional
        Extra top-level metadata entries (a checkpoint adds its ``"checkpoint"`` section).
    arrays : dict of str -> ndarray, optional
        Extra host arrays stored beside the parameters (names must not clash with them).
    """
    path = os.fspath(path)
    weights, biases = model.get_params()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config(),
            "saved_from_backend": model.backend.name}
    meta.update(sections or {})
    stored = {f"W{i}": w for i, w in enumerate(weights)}
    stored.update({f"b{i}": b for i, b in enumerate(biases)})
    for name, value in (arrays or {}).items():
        if name in stored or name == "metadata.json":
            raise ValueError(f"array name {name!r} is reserved for the model")
        stored[name] = value
    stored["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **stored))


def _read_metadata(archive, path):
    if "metadata.json" not in archive.files:
        raise ModelFileError(f"{path}: not a bpgpu model (no metadata.json inside the .npz)")
    try:
        meta = json.loads(archive["metadata.json"].tobytes().decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: metadata.json is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a bpgpu model (format tag is "
                             f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {version} is not supported by this bpgpu "
                             f"(it reads version {FORMAT_VERSION})")
    return meta


def read_archive(path):
    """Read a model archive completely: ``(metadata dict, {name: host array})``.

    Raises
    ------
    ModelFileError
        The file is missing, truncated, corrupt, not a bpgpu model, or of another version.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = _read_metadata(archive, path)
            arrays = {name: archive[name] for name in archive.files if name != "metadata.json"}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: unreadable or truncated model file "
                             f"({type(exc).__name__}: {exc})") from None
    return meta, arrays


def model_from_archive(meta, arrays, path, backend="auto"):
    """Build the model that :func:`read_archive` returned, on ``backend``."""
    from .mlp import MLP

    try:
        cfg = meta["config"]
        n_layers = len(cfg["sizes"]) - 1
        weights = [arrays[f"W{i}"] for i in range(n_layers)]
        biases = [arrays[f"b{i}"] for i in range(n_layers)]
        model = MLP(cfg["sizes"], activation=cfg["activation"], output=cfg["output"],
                    loss=cfg["loss"], init=cfg.get("init", "normal"), dtype=cfg["dtype"],
                    backend=backend, seed=cfg.get("seed", 0),
                    input_scale=cfg.get("input_scale", 1 / 255),
                    input_shift=cfg.get("input_shift", 0.0))
        model.set_params(weights, biases)
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: metadata is incomplete ({exc})") from None
    except BpgpuError as exc:
        if isinstance(exc, ModelFileError) or type(exc).__name__ == "BackendUnavailable":
            raise
        raise ModelFileError(f"{path}: inconsistent model file: {exc}") from None
    return model


def load(path, backend="auto"):
    """Load a model written by :func:`save` (or a checkpoint: the model it holds) onto
    ``backend``.

    Raises
    ------
    ModelFileError
        The file is missing, truncated, not a bpgpu model, or of another format version.
    """
    meta, arrays = read_archive(path)
    return model_from_archive(meta, arrays, os.fspath(path), backend)
