"""Weight initialisation schemes, drawn on the host from one seeded generator.

Drawing on the host (in float64, then cast) is what makes every backend and both dtypes start from
the same numbers. The schemes are the textbooks':

``normal``  W ~ N(0, 1/fan_in), b ~ N(0, 1)     Nielsen's network2 default / Rashid's recogniser
``large``   W ~ N(0, 1),        b ~ N(0, 1)     Nielsen's first network (saturates sigmoids)
``xavier``  W ~ U(±sqrt(6/(fan_in+fan_out))), b = 0   Glorot & Bengio, for tanh/sigmoid
``he``      W ~ N(0, 2/fan_in), b = 0           He et al., for relu
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

__all__ = ["INITS", "init_params"]

INITS = ("normal", "large", "xavier", "he")


def init_params(rng: np.random.Generator, sizes, scheme: str = "normal"):
    """Draw initial weights and biases.

    Parameters
    ----------
    rng : numpy.random.Generator
        The model's generator; advanced by the draw.
    sizes : sequence of int
        Layer widths ``(n_0, ..., n_L)``.
    scheme : {"normal", "large", "xavier", "he"}

    Returns
    -------
    weights : list of ndarray, shapes (n_{l-1}, n_l), float64
    biases : list of ndarray, shapes (n_l,), float64
    """
    if scheme not in INITS:
        raise ConfigError(f"unknown init {scheme!r}; choose one of {', '.join(INITS)}")
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if scheme == "normal":
            w = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
            b = rng.standard_normal(fan_out)
        elif scheme == "large":
            w = rng.standard_normal((fan_in, fan_out))
            b = rng.standard_normal(fan_out)
        elif scheme == "xavier":
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, (fan_in, fan_out))
            b = np.zeros(fan_out)
        else:  # he
            w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            b = np.zeros(fan_out)
        weights.append(w)
        biases.append(b)
    return weights, biases
