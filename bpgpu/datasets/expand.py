"""Nielsen's offline expansion of a training set: every image plus its copies shifted by one pixel.

*Neural Networks and Deep Learning*, ch. 6, expands MNIST's 50,000 training images to 250,000 with
``expand_mnist.py``: each digit, then the digit moved one pixel down, up, right and left (the
row or column shifted in is zero). This is the same operation written anew, vectorised over the
whole set: the textbook comparison for the on-device augmentation of :mod:`bpgpu.augment`, which
draws a new variation of every image in every epoch instead of storing five fixed ones.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError

__all__ = ["expand_shifted", "SHIFTS"]

#: The four copies after each original, in Nielsen's order: (rows down, columns right).
SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def expand_shifted(X, y, shape=None):
    """Every image followed by its four one-pixel shifts (down, up, right, left; zero fill).

    Parameters
    ----------
    X : array, shape (N, H*W) or (N, H, W)
        Images (any dtype; uint8 stays uint8).
    y : array, shape (N,) or (N, ...)
        Labels or targets, repeated for the copies.
    shape : (int, int), optional
        (H, W) of 2-D ``X``; default: a 3-D ``X``'s, or the square root of a square row.

    Returns
    -------
    X5 : array, shape (5N, H*W) or (5N, H, W), like ``X``
        Rows ``5i .. 5i+4``: image i, then shifted down, up, right, left. Not shuffled
        (:func:`bpgpu.fit` draws a permutation every epoch).
    y5 : array, shape (5N, ...)
    """
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim not in (2, 3) or y.shape[:1] != X.shape[:1]:
        raise DataError(f"expand_shifted needs X of shape (N, H*W) or (N, H, W) and N labels, "
                        f"got X {X.shape} and y {y.shape}")
    n = X.shape[0]
    if X.ndim == 3:
        h, w = X.shape[1:]
    elif shape is not None:
        h, w = (int(v) for v in shape)
    else:
        h = w = math.isqrt(X.shape[1])
    if h * w != int(np.prod(X.shape[1:])) or h < 2 or w < 2:
        raise DataError(f"expand_shifted: rows of {int(np.prod(X.shape[1:]))} values are not "
                        f"images of {h}x{w} pixels (give shape=(H, W))")
    img = X.reshape(n, h, w)
    out = np.zeros((n, 5, h, w), X.dtype)
    out[:, 0] = img
    out[:, 1, 1:, :] = img[:, :-1, :]      # down
    out[:, 2, :-1, :] = img[:, 1:, :]      # up
    out[:, 3, :, 1:] = img[:, :, :-1]      # right
    out[:, 4, :, :-1] = img[:, :, 1:]      # left
    X5 = out.reshape((5 * n,) + X.shape[1:])
    return X5, np.repeat(y, 5, axis=0)
