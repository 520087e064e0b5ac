"""Numba kernels for the CPU: each op the model needs in ONE pass over memory.

Imported only by the numba backend (``import bpgpu`` never imports numba). Every kernel is written
once, with ``prange`` over rows (or over blocks of a flat buffer), and compiled twice by
:func:`_variants`: a serial version for small arrays, where starting threads costs more than it
saves, and a parallel one for large arrays. ``cache=True`` keeps the machine code between runs.

Precision: transcendental functions (exp, tanh, log) run in the array's dtype, as numpy's do; a
few cheap scalar operations may run in float64 before the result is stored. No ``fastmath``: the
results must match the numpy backend to the dtype's rounding (the parity tests check it).

Activation codes: 0 identity, 1 sigmoid, 2 tanh, 3 relu, 4 softmax. Loss codes: 0 mse, 1 bce, 2 ce.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

__all__ = ["ACT_CODES", "LOSS_CODES", "KERNELS"]

ACT_CODES = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "softmax": 4}
LOSS_CODES = {"mse": 0, "bce": 1, "ce": 2}


def _variants(fn):
    """(serial, parallel) dispatchers of one kernel; distinct names keep their caches apart."""
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                fn.__defaults__, fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    return njit(cache=True)(serial), njit(cache=True, parallel=True)(fn)


# ------------------------------------------------------------------------------ forward
def bias_activation(z, b, code, limit):
    """In place: z = act(z + b). ``limit`` (dtype of z) bounds -z before exp in the sigmoid."""
    rows, cols = z.shape
    for i in prange(rows):
        r = z[i]
        if code == 1:
            for j in range(cols):
                v = -(r[j] + b[j])
                if v > limit:
                    v = limit
                r[j] = 1.0 / (1.0 + np.exp(v))
        elif code == 2:
            for j in range(cols):
                r[j] = np.tanh(r[j] + b[j])
        elif code == 3:
            for j in range(cols):
                v = r[j] + b[j]
                r[j] = 0 if v < 0 else v          # NaN passes through, as in np.maximum
        elif code == 4:
            m = r[0] + b[0]
            for j in range(cols):
                r[j] += b[j]
                if r[j] > m:
                    m = r[j]
            s = 0.0
            for j in range(cols):
                e = np.exp(r[j] - m)
                r[j] = e
                s += e
            inv = 1.0 / s
            for j in range(cols):
                r[j] *= inv
        else:
            for j in range(cols):
                r[j] += b[j]


# ------------------------------------------------------------------------------ backward
def activation_backward(delta, a, code):
    """In place: delta *= act'(from the output a); softmax: a * (delta - sum(delta * a))."""
    rows, cols = delta.shape
    for i in prange(rows):
        d = delta[i]
        o = a[i]
        if code == 1:
            for j in range(cols):
                d[j] *= o[j] * (1 - o[j])
        elif code == 2:
            for j in range(cols):
                d[j] *= 1 - o[j] * o[j]
        elif code == 3:
            for j in range(cols):
                if not o[j] > 0:
                    d[j] *= 0                     # inf/NaN deltas stay NaN, as numpy's product
        elif code == 4:
            s = 0.0
            for j in range(cols):
                s += d[j] * o[j]
            for j in range(cols):
                d[j] = o[j] * (d[j] - s)


def output_delta(a, y, delta, out_code, loss_code, tiny, one_minus_eps, want_loss):
    """delta = dLoss/dz of the mean batch loss, and (if ``want_loss``) the summed loss, one pass.

    ce (softmax) and bce (sigmoid): (a - y) / B. mse: (a - y) / B times act'(a).
    Returns the batch's summed per-sample loss (0 when not wanted), accumulated in float64.
    """
    rows, cols = a.shape
    inv_b = 1.0 / rows
    total = 0.0
    for i in prange(rows):
        ai = a[i]
        yi = y[i]
        di = delta[i]
        part = 0.0
        if loss_code == 2:                       # softmax + cross-entropy
            for j in range(cols):
                di[j] = (ai[j] - yi[j]) * inv_b
                if want_loss and yi[j] != 0:
                    p = tiny if ai[j] < tiny else ai[j]   # NaN stays NaN
                    part -= yi[j] * np.log(p)
        elif loss_code == 1:                     # sigmoid + binary cross-entropy
            for j in range(cols):
                di[j] = (ai[j] - yi[j]) * inv_b
                if want_loss:
                    p = ai[j]
                    if p < tiny:
                        p = tiny
                    if p > one_minus_eps:
                        p = one_minus_eps
                    part -= yi[j] * np.log(p) + (1 - yi[j]) * np.log(1 - p)
        else:                                    # quadratic cost, any output
            s = 0.0
            for j in range(cols):
                g = (ai[j] - yi[j]) * inv_b
                if want_loss:
                    part += 0.5 * (ai[j] - yi[j]) * (ai[j] - yi[j])
                if out_code == 1:
                    g *= ai[j] * (1 - ai[j])
                elif out_code == 2:
                    g *= 1 - ai[j] * ai[j]
                elif out_code == 3:
                    if not ai[j] > 0:
                        g *= 0
                elif out_code == 4:
                    s += g * ai[j]
                di[j] = g
            if out_code == 4:
                for j in range(cols):
                    di[j] = ai[j] * (di[j] - s)
        total += part
    return total


def column_sums(d, out):
    """out[j] = sum_i d[i, j] (accumulated in out's dtype, row by row: vectorises over j)."""
    rows, cols = d.shape
    for j in range(cols):
        out[j] = 0
    for i in range(rows):
        r = d[i]
        for j in range(cols):
            out[j] += r[j]


def count_correct(a, y):
    """Rows whose argmax matches the target's (one output: both on the same side of 0.5)."""
    rows, cols = a.shape
    hits = 0
    for i in prange(rows):
        if cols == 1:
            if (a[i, 0] >= 0.5) == (y[i, 0] >= 0.5):
                hits += 1
        else:
            ka = 0
            ky = 0
            for j in range(1, cols):
                if a[i, j] > a[i, ka]:
                    ka = j
                if y[i, j] > y[i, ky]:
                    ky = j
            if ka == ky:
                hits += 1
    return hits


# ------------------------------------------------------------------------------ data
def gather_scale(data, idx, out, scale, shift):
    """out[i, :] = data[idx[i], :] * scale + shift (uint8 rows straight into the float batch)."""
    rows, cols = out.shape
    for i in prange(rows):
        src = data[idx[i]]
        dst = out[i]
        for j in range(cols):
            dst[j] = src[j] * scale + shift


def gather(data, idx, out):
    """out[i, :] = data[idx[i], :] (same dtype)."""
    rows, cols = out.shape
    for i in prange(rows):
        src = data[idx[i]]
        dst = out[i]
        for j in range(cols):
            dst[j] = src[j]


# ------------------------------------------------------------------------------ dropout
def dropout_forward(a, uniform, rate, keep_scale, mask, out):
    """mask = (uniform >= rate) * keep_scale; out = a * mask."""
    rows, cols = a.shape
    for i in prange(rows):
        for j in range(cols):
            m = keep_scale if uniform[i, j] >= rate else 0
            mask[i, j] = m
            out[i, j] = a[i, j] * m


def multiply_inplace(x, m):
    """x *= m, elementwise (dropout backward)."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            x[i, j] *= m[i, j]


# ------------------------------------------------------------------------------ optimizers
# One pass over the flat buffer; entries below n_decay (the weights) get weight decay.
_BLOCK = 4096


def sgd_update(p, g, lr, wd, n_decay):
    n = p.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for k in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            gk = g[k] + wd * p[k] if k < n_decay else g[k]
            p[k] -= lr * gk


def momentum_update(p, g, v, lr, mu, wd, n_decay, nesterov):
    n = p.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for k in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            gk = g[k] + wd * p[k] if k < n_decay else g[k]
            vk = mu * v[k] + gk
            v[k] = vk
            if nesterov:
                p[k] -= lr * (gk + mu * vk)
            else:
                p[k] -= lr * vk


def adam_update(p, g, m, v, lr_t, b1, c1, b2, c2, eps, inv_bias2, wd, n_decay):
    """lr_t = lr / (1 - b1^t); c1 = 1 - b1; c2 = 1 - b2; inv_bias2 = 1 / (1 - b2^t)."""
    n = p.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for k in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            gk = g[k] + wd * p[k] if k < n_decay else g[k]
            mk = b1 * m[k] + c1 * gk
            vk = b2 * v[k] + c2 * gk * gk
            m[k] = mk
            v[k] = vk
            p[k] -= lr_t * mk / (np.sqrt(vk * inv_bias2) + eps)


#: name -> (serial, parallel) dispatchers
KERNELS = {fn.__name__: _variants(fn) for fn in (
    bias_activation, activation_backward, output_delta, column_sums, count_correct,
    gather_scale, gather, dropout_forward, multiply_inplace, sgd_update, momentum_update,
    adam_update)}
