"""What ``bpgpu predict`` reads, in batches: a CSV, an IDX file or MNIST-layout directory, a
``.npy``/``.npz`` array, image files or a folder of them.

:func:`input_batches` yields :class:`Batch` es of at most ``batch_size`` rows, each with the
rows' ids (a CSV's row number, an array's row index, an image's file name) and, when the input
has them, the true class indices or target values. Memory stays bounded by the batch: a CSV is
read block by block, an uncompressed IDX file and a ``.npy`` are memory-mapped, images are read
one batch at a time.

A folder of images may hold sub-folders named by the model's labels (``3/a.png``): their images
are taken to show that label, so accuracy can be measured.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .images import is_image_file, read_image
from .mnist import MNIST_FILES, _find

__all__ = ["Batch", "input_batches", "describe_input"]


@dataclass
class Batch:
    """Rows to predict: ``X`` (features or raw uint8 pixels), their ``ids``, and ``truth``
    (class indices, -1 for a label the model does not know, or target values) or None."""
    X: np.ndarray
    ids: list
    truth: np.ndarray | None = None


def _is_mnist_dir(path) -> bool:
    return all(any(os.path.isfile(os.path.join(path, f + s)) for s in ("", ".gz"))
               for f in MNIST_FILES[2:])


def describe_input(inputs) -> str:
    """The kind of input ``bpgpu predict`` will read (``csv``, ``idx-dir``, ``idx``, ``npy``,
    ``npz``, ``images`` or ``image-dir``)."""
    if len(inputs) > 1:
        return "images"
    path = os.fspath(inputs[0])
    if os.path.isdir(path):
        return "idx-dir" if _is_mnist_dir(path) else "image-dir"
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file or directory")
    low = path.lower()
    for suffix, kind in ((".csv", "csv"), (".npy", "npy"), (".npz", "npz")):
        if low.endswith(suffix):
            return kind
    if is_image_file(path):
        return "images"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b" or (len(head) == 4 and head[:2] == b"\0\0"):
        return "idx"
    raise DataError(f"{path}: not a CSV, IDX, .npy, .npz or image file (by name and content)")


def input_batches(inputs, pipeline, n_inputs, batch_size=4096, preprocess=True, encoding=None):
    """Yield :class:`Batch` es of ``inputs`` (a list of paths) for a model with ``pipeline``
    (or None) and ``n_inputs`` inputs; see the module docstring."""
    kind = describe_input(inputs)
    if kind == "csv":
        yield from _csv(inputs[0], pipeline, batch_size, encoding)
    elif kind in ("idx", "idx-dir"):
        images, labels = _idx(inputs[0], kind)
        yield from _arrays(images, labels, batch_size)
    elif kind in ("npy", "npz"):
        yield from _arrays(*_numpy(inputs[0], kind), batch_size)
    else:
        files = _image_files(inputs, pipeline) if kind == "images" else \
            _image_dir(inputs[0], pipeline)
        yield from _images(files, _image_shape(pipeline, n_inputs), batch_size, preprocess)


def _csv(path, pipeline, batch_size, encoding):
    from .rows import row_blocks
    if pipeline is None or pipeline.kind != "tabular":
        raise DataError(f"{path}: a CSV needs a model trained on a CSV (this one has no columns "
                        "to read)")
    done = 0
    for block in row_blocks(pipeline, path, chunk_rows=batch_size, encoding=encoding):
        truth = None
        if block.target is not None:
            truth = _truth(pipeline, block.target, [f"{path}, line {n}" for n in block.ids])
        ids = list(range(done + 1, done + 1 + len(block.ids)))
        done += len(block.ids)
        yield Batch(block.features, ids, truth)


def _truth(pipeline, values, names):
    """True class indices (-1: not one of the model's labels), target values, or a multi-label
    model's indicators (N, k)."""
    if pipeline.task == "multilabel":
        from .rows import indicators
        return indicators(pipeline, values, names)
    if pipeline.task == "regression":
        try:
            return np.array([float(v) for v in values])
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(values) if not _float_ok(v))
            raise DataError(f"{names[bad]}: target {pipeline.target!r} holds {values[bad]!r}, "
                            "not a number") from None
    return pipeline.indices(values, names, unknown=-1)


def _float_ok(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _idx(path, kind):
    """``(images (N, n), labels or None)`` of an IDX images file or an MNIST directory's test
    split; an uncompressed file is memory-mapped."""
    from .idx import read_idx
    if kind == "idx-dir":
        images_path = _find(path, MNIST_FILES[2])
        labels = read_idx(_find(path, MNIST_FILES[3])).astype(np.int64)
    else:
        images_path, labels = path, None
    with open(images_path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        images = read_idx(images_path)
    else:
        images = _idx_memmap(images_path, head)
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} test images but {len(labels)} labels")
    return images.reshape(images.shape[0], -1), labels


def _idx_memmap(path, head):
    """An uncompressed uint8 IDX file as a read-only memory map (checked like read_idx)."""
    from .idx import read_idx
    if len(head) < 4 or head[2] != 0x08:   # not uint8: the full reader, with its messages
        return read_idx(path)
    ndim = head[3]
    with open(path, "rb") as f:
        dims = tuple(int(d) for d in np.frombuffer(f.read(4 + 4 * ndim)[4:], ">u4"))
    if ndim == 0 or len(dims) != ndim or \
            os.path.getsize(path) != 4 + 4 * ndim + math.prod(dims):
        return read_idx(path)
    return np.memmap(path, np.uint8, "r", offset=4 + 4 * ndim, shape=dims)


def _numpy(path, kind):
    """``(X, y or None)`` of a ``.npy`` (memory-mapped) or ``.npz`` (arrays ``X``/``x``, else
    its only one; ``y`` labels when present)."""
    try:
        if kind == "npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            key = next((k for k in ("X", "x") if k in names), names[0] if len(names) == 1
                       else None)
            if key is None:
                raise DataError(f"{path}: holds {', '.join(names)}: name the inputs X (and "
                                "the labels y)")
            y = z["y"] if "y" in names else None
            return z[key], y
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable {kind} file ({exc})") from None


def _arrays(X, y, batch_size):
    if X.ndim < 2 or X.shape[0] == 0:
        raise DataError(f"expected an array of rows, got shape {X.shape}")
    for start in range(0, X.shape[0], batch_size):
        stop = min(start + batch_size, X.shape[0])
        rows = np.asarray(X[start:stop])
        truth = None if y is None else np.asarray(y[start:stop])
        yield Batch(rows.reshape(rows.shape[0], -1), list(range(start, stop)), truth)


def _image_shape(pipeline, n_inputs):
    if pipeline is not None and pipeline.image_shape is not None:
        return pipeline.image_shape
    side = math.isqrt(n_inputs)
    if (pipeline is None or pipeline.kind != "tabular") and side * side == n_inputs:
        return side, side
    raise DataError(f"this model does not take images (its {n_inputs} inputs are "
                    + ("CSV columns)" if pipeline is not None and pipeline.kind == "tabular"
                       else "no square image)"))


def _image_files(paths, pipeline):
    files = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.isfile(p):
            raise DataError(f"{p}: no such file")
        if not is_image_file(p):
            raise DataError(f"{p}: not an image file (by its name); several inputs must all be "
                            "images")
        files.append((p, p, None))
    return files


def _image_dir(path, pipeline):
    """``(path, id, true label index or None)`` of the images in ``path`` and in its
    sub-folders named by the model's labels."""
    labels = {} if pipeline is None or pipeline.classes is None else \
        {str(c): i for i, c in enumerate(pipeline.classes)}
    files = []
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isfile(full) and is_image_file(entry):
            files.append((full, entry, None))
        elif os.path.isdir(full):
            for name in sorted(os.listdir(full)):
                if is_image_file(name):
                    files.append((os.path.join(full, name), f"{entry}/{name}",
                                  labels.get(entry)))
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_NAMES)}) in it")
    return files


IMAGE_NAMES = ("png", "jpg", "bmp", "gif", "tif", "webp")


def _images(files, shape, batch_size, preprocess):
    for start in range(0, len(files), batch_size):
        part = files[start:start + batch_size]
        X = np.stack([read_image(p, shape, preprocess) for p, _, _ in part])
        known = [t for _, _, t in part]
        truth = None if any(t is None for t in known) else np.array(known)
        yield Batch(X, [i for _, i, _ in part], truth)
