"""Saving and loading models: one ``.npz`` holding the parameters and a JSON metadata record.

The file is written to a temporary file in the target directory and renamed into place, so a crash
or a full disk never leaves a half-written model behind; it gets the permissions any new file gets
(see :func:`atomic_write`). Loading checks the format tag and version, every array's shape against
the recorded sizes, and turns a truncated, corrupt or foreign file into a
:class:`~bpgpu.errors.ModelFileError` that says what is wrong: :func:`read_archive` checks each
array's header against the bytes the file really holds before allocating anything, so a corrupt
header cannot make it allocate gigabytes. A model saved from any backend loads onto any backend.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

from .errors import BpgpuError, ModelFileError

__all__ = ["save", "load", "atomic_write", "read_archive", "model_from_archive", "FORMAT",
           "FORMAT_VERSION"]

FORMAT = "bpgpu-mlp"
FORMAT_VERSION = 1


def _create_temp(directory):
    """Open a new, empty temporary file in ``directory``; return (fd, path).

    It is created with mode 0o666 and the kernel applies the process umask, as for any new file
    (0644 under the usual 022). ``tempfile.mkstemp`` creates 0600, and that mode would survive the
    rename and make every saved file private by accident.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".bpgpu-{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", directory)


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable (POSIX: fsync the directory itself)."""
    if os.name == "nt":   # no directory handles to sync; NTFS journals the rename
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # a few network and FUSE file systems cannot fsync a directory: the file itself is
        # complete and synced, and the rename's durability is then up to them
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def atomic_write(path, write) -> str:
    """Create ``path`` by calling ``write(binary_file)`` on a temporary file, then renaming it.

    Either the whole new file is there afterwards or the old state is untouched (no half-written
    output, whatever ``write`` raises). The data is fsynced before the rename and the directory
    after it, so once this returns the new file survives a crash or power cut.

    Permissions: a new file gets the mode any new file gets under the process umask (0644 under
    the usual 022, 0600 under 077). Replacing an existing file keeps that file's permission bits,
    so a model its owner made private stays private when it is saved again.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        keep_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        keep_mode = None
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mode is not None:
                os.chmod(tmp, keep_mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
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
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {version} is not supported by this bpgpu "
                             f"(it reads version {FORMAT_VERSION})")
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


def model_from_archive(meta, arrays, path, backend="auto"):
    """Build the model that :func:`read_archive` returned, on ``backend``."""
    from .mlp import MLP

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
        model = MLP(cfg["sizes"], activation=cfg["activation"], output=cfg["output"],
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
