"""MNIST (shipped with bpgpu, checksummed), Fashion-MNIST, and any directory in the same layout.

MNIST works offline after a plain install: the four gzip IDX files ship inside the package and are
verified against ``SHA256SUMS`` (of the decompressed content) on load. Fashion-MNIST is looked for
in the directory given, then ``$BPGPU_DATA/fashion-mnist`` and ``$BPGPU_DATA``, then the Debian
package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources

import numpy as np

from ..errors import DataError
from .idx import _raw_bytes, is_gzip, map_idx, read_idx_bytes

__all__ = ["mnist", "fashion_mnist", "load_idx_dir", "MNIST_FILES", "FASHION_MNIST_DIRS"]

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise DataError(f"{directory}: missing {stem}(.gz)")


def _read_sums(directory):
    path = os.path.join(directory, "SHA256SUMS")
    if not os.path.isfile(path):
        return {}
    sums = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                digest, name = line.split()
                sums[name.lstrip("*")] = digest
    return sums


def _file_sha256(path) -> str:
    """SHA-256 of a file, read in chunks (a large one is never held whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_idx_dir(directory, n_classes=10, verify=True):
    """Load an MNIST-layout directory: the four (optionally gzipped) IDX files.

    Parameters
    ----------
    directory : path
    n_classes : int
        Labels must lie in ``[0, n_classes)``.
    verify : bool
        Check each file against ``SHA256SUMS`` in the directory, when there is one.

    Returns
    -------
    (X_train, y_train), (X_test, y_test)
        ``X`` uint8 of shape (N, rows*cols), ``y`` int64 of shape (N,). Uncompressed image files
        are memory-mapped read-only (``np.memmap``: training streams them, never reading them
        whole); gzipped ones are decompressed into memory.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError(f"{directory}: not a directory")
    sums = _read_sums(directory) if verify else {}
    arrays = {}
    for stem in MNIST_FILES:
        path = _find(directory, stem)
        want = sums.get(stem)
        if "images" in stem and not is_gzip(path):     # memory-mapped: never read whole
            if want is not None and _file_sha256(path) != want:
                raise DataError(f"{path}: checksum mismatch with SHA256SUMS (file is corrupt)")
            arrays[stem] = map_idx(path)
            continue
        raw = _raw_bytes(path)
        if want is not None and hashlib.sha256(raw).hexdigest() != want:
            raise DataError(f"{path}: checksum mismatch with SHA256SUMS (file is corrupt)")
        arrays[stem] = read_idx_bytes(raw, path)
    out, shapes = [], []
    for split in ("train", "t10k"):
        images = arrays[f"{split}-images-idx3-ubyte"]
        labels = arrays[f"{split}-labels-idx1-ubyte"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{directory}: {split} images must be 3-D uint8, got "
                            f"{images.ndim}-D {images.dtype}")
        if labels.ndim != 1:
            raise DataError(f"{directory}: {split} labels must be 1-D, got {labels.ndim}-D")
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{directory}: {split} has {images.shape[0]} images but "
                            f"{labels.shape[0]} labels")
        if images.shape[0] == 0:
            raise DataError(f"{directory}: {split}-images-idx3-ubyte holds no images")
        if 0 in images.shape[1:]:
            raise DataError(f"{directory}: {split} images are {images.shape[1]}x"
                            f"{images.shape[2]} pixels (empty)")
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise DataError(f"{directory}: {split} labels outside [0, {n_classes - 1}] "
                            f"(found {labels.min()}..{labels.max()})")
        shapes.append(images.shape[1:])
        out.append((images.reshape(images.shape[0], -1), labels.astype(np.int64)))
    if shapes[0] != shapes[1]:
        raise DataError(f"{directory}: the training images are {shapes[0][0]}x{shapes[0][1]} "
                        f"but the test images {shapes[1][0]}x{shapes[1][1]}")
    return tuple(out)


def mnist():
    """The MNIST digits shipped with bpgpu: ``(X_train, y_train), (X_test, y_test)``.

    60,000 / 10,000 images as uint8 rows of 784 pixels, labels 0-9; checksums verified.
    """
    directory = resources.files("bpgpu.datasets") / "data" / "mnist"
    with resources.as_file(directory) as d:
        return load_idx_dir(d)


def fashion_mnist(directory=None):
    """Fashion-MNIST from ``directory``, ``$BPGPU_DATA``, or the Debian package's location.

    Raises
    ------
    DataError
        Listing every place looked in, and how to install the Debian package.
    """
    candidates = [directory] if directory else []
    env = os.environ.get("BPGPU_DATA")
    if env:
        candidates += [os.path.join(env, "fashion-mnist"), env]
    candidates += list(FASHION_MNIST_DIRS)
    for d in candidates:
        if d and os.path.isdir(d):
            try:
                _find(d, MNIST_FILES[0])
            except DataError:
                continue
            return load_idx_dir(d)
    raise DataError("Fashion-MNIST not found in " + ", ".join(c for c in candidates if c)
                    + "; install it with `apt-get install dataset-fashion-mnist`, or pass a "
                    "directory holding the four IDX files")
