"""The textbooks' toy problems: XOR and two interleaving moons, generated here from a seed."""

from __future__ import annotations

import numpy as np

__all__ = ["xor", "moons"]


def xor():
    """The four XOR points.

    Returns
    -------
    X : ndarray, shape (4, 2), float64
    y : ndarray, shape (4,), int64 (0 or 1)
    """
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    return X, np.array([0, 1, 1, 0], dtype=np.int64)


def moons(n=200, noise=0.2, seed=0):
    """Two interleaving half-circles with Gaussian noise.

    The upper moon is the unit half-circle centred at (0, 0), the lower one the same flipped and
    shifted to (1, 0.5); class 0 has ``n // 2`` points (the extra one goes to class 1).

    Parameters
    ----------
    n : int
        Total number of points.
    noise : float
        Standard deviation of the Gaussian noise added to each coordinate.
    seed : int

    Returns
    -------
    X : ndarray, shape (n, 2), float64
    y : ndarray, shape (n,), int64
    """
    rng = np.random.default_rng(seed)
    n0 = n // 2
    n1 = n - n0
    t0 = rng.uniform(0, np.pi, n0)
    t1 = rng.uniform(0, np.pi, n1)
    upper = np.column_stack([np.cos(t0), np.sin(t0)])
    lower = np.column_stack([1 - np.cos(t1), 0.5 - np.sin(t1)])
    X = np.vstack([upper, lower]) + rng.normal(0.0, noise, (n, 2))
    y = np.concatenate([np.zeros(n0, np.int64), np.ones(n1, np.int64)])
    order = rng.permutation(n)
    return X[order], y[order]
