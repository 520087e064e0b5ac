"""Saving and loading models: one ``.npz`` holding the parameters and a JSON metadata record.

The file is written through :func:`bpgpu.files.atomic_write`, so a crash or a full disk never
leaves a half-written model behind; it gets the permissions any new file gets. Loading checks the format tag and version, every array's shape against
the recorded sizes, and turns a truncated, corrupt or foreign file into a
:class:`~bpgpu.errors.ModelFileError` that says what is wrong: :func:`read_archive` checks each
array's header against the bytes the file really holds before allocating anything, so a corrupt
header cannot make it allocate gigabytes. A model saved from any backend loads onto any backend.

Format versions: 1 holds the parameters, the network's config and the backend it was saved
from; 2 adds, where the model has them, its input pipeline (``"pipeline"``: feature names and
standardisation, categories, class labels, task, image shape;
:class:`bpgpu.datasets.pipeline.Pipeline`) and the data it was trained on (``"dataset"``: name,
fingerprint, split; :func:`bpgpu.datasets.pipeline.source_record`). Both versions load.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib

import numpy as np

from .errors import BpgpuError, ModelFileError
from .files import atomic_write

__all__ = ["save", "load", "read_archive", "model_from_archive", "FORMAT", "FORMAT_VERSION",
           "READABLE_VERSIONS"]

FORMAT = "bpgpu-mlp"
FORMAT_VERSION = 2
#: The format versions this bpgpu reads (version 1: no pipeline, no dataset record).
READABLE_VERSIONS = (1, 2)


def save(model, path, *, sections=None, arrays=None) -> str:
    """Write ``model`` to ``path`` atomically and return the path.

    The archive holds ``W0..W{L-1}``, ``b0..b{L-1}`` and ``metadata.json`` (format, version, the
    model's config, the backend it was saved from, and the model's ``pipeline`` and
    ``data_source`` when it has them).

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
    pipeline, source = getattr(model, "pipeline", None), getattr(model, "data_source", None)
    if pipeline is not None:
        meta["pipeline"] = pipeline.record()
    if source is not None:
        meta["dataset"] = dict(source)
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
    if "metadata.json" not in archive:
        raise ModelFileError(f"{path}: not a bpgpu model (no metadata.json inside the .npz)")
    try:
        meta = json.loads(archive["metadata.json"].tobytes().decode())
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{path}: metadata.json is corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a bpgpu model (format tag is "
                             f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or type(version) is not int:
        raise ModelFileError(f"{path}: format version {version} is not supported by this bpgpu "
                             f"(it reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    return meta


#: What a damaged archive can raise inside zipfile, zlib and numpy's .npy header parser
#: (NotImplementedError: an unknown compression method; RuntimeError: an "encrypted" flag).
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError, OSError,
            ValueError, KeyError, TypeError, NotImplementedError, RuntimeError, OverflowError)
#: Deflate never expands data by more than this factor (1032:1 in theory).
_MAX_DEFLATE_RATIO = 1100


def _read_npz(path) -> dict:
    """Every ``.npy`` member of the zip archive at ``path`` as a host array, read defensively.

    Before anything is allocated, the zip directory's sizes are checked against the file's size
    and each array header's shape x itemsize against the member's size, so a corrupt header raises
    ModelFileError instead of allocating what it claims. Object arrays are refused (no pickle).
    """
    file_size = os.path.getsize(path)
    arrays = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            if info.compress_type == zipfile.ZIP_STORED:
                most = info.compress_size
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                most = info.compress_size * _MAX_DEFLATE_RATIO + 1024
            else:
                raise ModelFileError(f"{path}: array {name!r} uses zip compression method "
                                     f"{info.compress_type} (a model is stored or deflated)")
            if info.compress_size > file_size or info.file_size > most:
                raise ModelFileError(f"{path}: array {name!r}: the zip directory's sizes "
                                     f"({info.compress_size} -> {info.file_size} bytes) do not "
                                     f"fit a {file_size}-byte file")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ModelFileError(f"{path}: array {name!r} is in .npy format version "
                                         f"{version[0]}.{version[1]} (1.0 and 2.0 are read)")
                if dtype.hasobject:
                    raise ModelFileError(f"{path}: array {name!r} holds Python objects")
                nbytes = math.prod(shape) * dtype.itemsize
                if f.tell() + nbytes != info.file_size:
                    raise ModelFileError(f"{path}: array {name!r}: its header says {shape} "
                                         f"{dtype} ({nbytes} bytes) but the archive holds "
                                         f"{info.file_size - f.tell()}")
                data = f.read(nbytes)   # to the member's end: zipfile checks its CRC-32 here
            if len(data) != nbytes:
                raise ModelFileError(f"{path}: array {name!r} is truncated")
            arrays[name] = np.frombuffer(data, dtype).reshape(
                shape, order="F" if fortran else "C").copy()
    return arrays


def read_archive(path):
    """Read a model archive completely: ``(metadata dict, {name: host array})``.

    Raises
    ------
    ModelFileError
        The file is missing, truncated, corrupt, not a bpgpu model, or of another version.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: " + ("a directory, not a model file" if os.path.isdir(path)
                                            else "no such file"))
    try:
        arrays = _read_npz(path)
        meta = _read_metadata(arrays, path)
    except ModelFileError:
        raise
    except MemoryError:   # a member whose deflated data really expands that far
        raise ModelFileError(f"{path}: corrupt model file (an array too large for memory)") \
            from None
    except _CORRUPT as exc:
        raise ModelFileError(f"{path}: unreadable or truncated model file "
                             f"({type(exc).__name__}: {exc})") from None
    del arrays["metadata.json"]
    return meta, arrays


def model_from_archive(meta, arrays, path, backend="auto", cls=None):
    """Build the model that :func:`read_archive` returned, on ``backend``, as a ``cls``
    (:class:`~bpgpu.network.Network` or a subclass; :func:`bpgpu.load` asks for
    :class:`bpgpu.MLP`)."""
    from .network import Network
    cls = Network if cls is None else cls

    try:
        cfg = meta["config"]
        sizes = cfg["sizes"]
        if not (isinstance(sizes, list) and all(type(n) is int for n in sizes)):
            raise ModelFileError(f"{path}: corrupt metadata: sizes {sizes!r} are not a list of "
                                 "integers")
        n_layers = len(sizes) - 1
        weights = [arrays[f"W{i}"] for i in range(n_layers)]
        biases = [arrays[f"b{i}"] for i in range(n_layers)]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: metadata is incomplete ({exc})") from None
    # the arrays are bounded by the file's size, the recorded sizes are not: compare them before
    # the model allocates anything from the sizes
    for i, (w, b) in enumerate(zip(weights, biases)):
        want = tuple(sizes[i:i + 2])
        if w.shape != want or b.shape != want[1:]:
            raise ModelFileError(f"{path}: inconsistent model file: layer {i} is W {w.shape}, "
                                 f"b {b.shape} but the recorded sizes {sizes} need W {want} "
                                 f"and b {want[1:]}")
        if w.dtype.kind != "f" or b.dtype.kind != "f":
            raise ModelFileError(f"{path}: corrupt model file: layer {i} holds {w.dtype} and "
                                 f"{b.dtype} arrays, not floating point")
    try:
        model = cls(cfg["sizes"], activation=cfg["activation"], output=cfg["output"],
                    loss=cfg["loss"], init=cfg.get("init", "normal"), dtype=cfg["dtype"],
                    backend=backend, seed=cfg.get("seed", 0),
                    input_scale=cfg.get("input_scale", 1 / 255),
                    input_shift=cfg.get("input_shift", 0.0))
        model.set_params(weights, biases)
    except (KeyError, AttributeError) as exc:
        raise ModelFileError(f"{path}: metadata is incomplete ({exc})") from None
    except BpgpuError as exc:
        if isinstance(exc, ModelFileError) or type(exc).__name__ == "BackendUnavailable":
            raise
        raise ModelFileError(f"{path}: inconsistent model file: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:   # values of the wrong kind
        raise ModelFileError(f"{path}: inconsistent model file: {exc}") from None
    model.pipeline, model.data_source = _data_sections(meta, sizes, path)
    return model


def _data_sections(meta, sizes, path):
    """``(Pipeline or None, dataset record or None)`` of a model file, checked."""
    from .datasets.pipeline import Pipeline
    pipeline, source = meta.get("pipeline"), meta.get("dataset")
    if pipeline is not None:
        try:
            pipeline = Pipeline.from_record(pipeline)
            pipeline.check_against(sizes)
        except ValueError as exc:
            raise ModelFileError(f"{path}: corrupt metadata: {exc}") from None
    if source is not None and not (isinstance(source, dict) and
                                   isinstance(source.get("name"), str) and
                                   isinstance(source.get("fingerprint"), (str, type(None)))):
        raise ModelFileError(f"{path}: corrupt metadata: dataset record {source!r} has no name "
                             "and fingerprint")
    split = (source or {}).get("split")
    if split is not None and not (
            isinstance(split, dict) and type(split.get("seed")) is int and split["seed"] >= 0
            and isinstance(split.get("test_fraction", 0.0), (int, float))
            and 0 <= split.get("test_fraction", 0.0) < 1):
        raise ModelFileError(f"{path}: corrupt metadata: dataset split {split!r} is not a seed "
                             "and a test fraction in [0, 1)")
    return pipeline, source


def load(path, backend="auto", cls=None):
    """Load a model written by :func:`save` (or a checkpoint: the model it holds) onto
    ``backend``, as a ``cls`` (default :class:`~bpgpu.network.Network`).

    Raises
    ------
    ModelFileError
        The file is missing, truncated, not a bpgpu model, or of another format version.
    """
    meta, arrays = read_archive(path)
    return model_from_archive(meta, arrays, os.fspath(path), backend, cls)
