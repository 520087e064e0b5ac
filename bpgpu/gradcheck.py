"""Gradient checking: back-propagated gradients against central finite differences.

The check runs on a float64 copy of the model (float32 finite differences are too coarse to mean
anything) on the same backend, perturbing each checked parameter by ±eps and differencing the mean
batch loss. The error of a layer is the relative error of norms,
``‖g_bp − g_fd‖ / (‖g_bp‖ + ‖g_fd‖)``, which is insensitive to entries whose gradient is ~0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gradcheck", "gradcheck_layers"]


def _relative_error(a, b):
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def gradcheck_layers(net, X, Y, eps=1e-6, max_per_layer=None, seed=0):
    """Per-layer relative errors of the back-propagated gradient.

    Parameters
    ----------
    net : Network
    X : array, shape (B, n_0)
    Y : labels (B,) or targets (B, n_out)
    eps : float
        Finite-difference step.
    max_per_layer : int, optional
        Check at most this many randomly chosen entries of each W and b (all when None).

    Returns
    -------
    list of dict
        One per layer: ``{"layer", "weights", "biases"}`` (relative errors).
    """
    from .network import Network

    cfg = net.config()
    probe = Network(cfg["sizes"], activation=cfg["activation"], output=cfg["output"],
                loss=cfg["loss"], dtype="float64", backend=net.backend, seed=cfg["seed"],
                input_scale=cfg["input_scale"], input_shift=cfg["input_shift"])
    weights, biases = net.get_params()
    probe.set_params(weights, biases)
    dW, db = probe.gradients(X, Y)
    dW, db = [g.copy() for g in dW], [g.copy() for g in db]
    rng = np.random.default_rng(seed)
    flat = probe.params
    host = probe.backend.to_host(flat)
    offsets_w, offsets_b, off = [], [], 0
    for w in weights:
        offsets_w.append(off)
        off += w.size
    for b in biases:
        offsets_b.append(off)
        off += b.size

    def numeric(index):
        original = host[index]
        flat[index] = original + eps
        plus = probe.loss(X, Y)
        flat[index] = original - eps
        minus = probe.loss(X, Y)
        flat[index] = original
        return (plus - minus) / (2 * eps)

    def check(offset, grad):
        n = grad.size
        pick = np.arange(n) if max_per_layer is None or n <= max_per_layer else \
            np.sort(rng.choice(n, max_per_layer, replace=False))
        fd = np.array([numeric(offset + i) for i in pick])
        return _relative_error(grad.ravel()[pick], fd)

    return [{"layer": l, "weights": check(offsets_w[l], dW[l]), "biases": check(offsets_b[l], db[l])}
            for l in range(len(weights))]


def gradcheck(net, X, Y, eps=1e-6, max_per_layer=None) -> float:
    """Maximum relative error over layers between back-propagation and finite differences."""
    rows = gradcheck_layers(net, X, Y, eps=eps, max_per_layer=max_per_layer)
    return max(max(r["weights"], r["biases"]) for r in rows)
