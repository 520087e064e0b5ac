"""An independent, deliberately plain NumPy implementation of the MLP math, for tests only.

Written from the textbook formulas with fresh arrays everywhere (no in-place tricks, no backend ops),
so that comparing the engine against it checks the engine's in-place, fused, flat-buffer machinery.
"""

import numpy as np


def act(name, z):
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "identity":
        return z
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(name)


def act_grad(name, z, a, g):
    """Gradient w.r.t. z given g = dL/da."""
    if name == "sigmoid":
        return g * a * (1 - a)
    if name == "tanh":
        return g * (1 - a ** 2)
    if name == "relu":
        return g * (z > 0)
    if name == "identity":
        return g
    if name == "softmax":
        return a * (g - (g * a).sum(axis=1, keepdims=True))
    raise ValueError(name)


def loss_and_grad(loss, a, y):
    """Mean loss over rows and dL/da."""
    B = a.shape[0]
    if loss == "mse":
        return 0.5 * ((a - y) ** 2).sum() / B, (a - y) / B
    if loss == "ce":
        return -(y * np.log(a)).sum() / B, -y / a / B
    if loss == "bce":
        return (-(y * np.log(a) + (1 - y) * np.log(1 - a)).sum() / B,
                (-(y / a) + (1 - y) / (1 - a)) / B)
    raise ValueError(loss)


def forward_backward(weights, biases, acts, loss, X, Y):
    """Loss and gradients (lists) of the mean batch loss."""
    a_s, z_s = [X], []
    for W, b, name in zip(weights, biases, acts):
        z = a_s[-1] @ W + b
        z_s.append(z)
        a_s.append(act(name, z))
    value, g = loss_and_grad(loss, a_s[-1], Y)
    dW, db = [None] * len(weights), [None] * len(weights)
    for l in range(len(weights) - 1, -1, -1):
        d = act_grad(acts[l], z_s[l], a_s[l + 1], g)
        dW[l] = a_s[l].T @ d
        db[l] = d.sum(axis=0)
        g = d @ weights[l].T
    return value, dW, db


def onehot(y, n):
    out = np.zeros((len(y), n))
    out[np.arange(len(y)), y] = 1
    return out
