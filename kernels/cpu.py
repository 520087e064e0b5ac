"""Numba kernels for the CPU: each op the model needs in ONE pass over memory.

Imported only by the numba backend (``import bpgpu`` never imports numba). Every kernel is written
once, with ``prange`` over rows (or over blocks of a flat buffer), and compiled twice by
:func:`_variants`: a serial version for small arrays, where starting threads costs more than it
saves, and a parallel one for large arrays. ``cache=True`` keeps the machine code between runs.

Precision and speed: constants are built in the array's dtype (``x.dtype.type(1)``) so float32
stays float32 and loops vectorise. This llvmlite has no SVML, so ``np.exp``/``np.tanh`` inside a
Numba loop are scalar libm calls (~3x slower than numpy's SIMD ufuncs). :func:`vexp` and
:func:`vtanh` are exp and tanh written here in plain arithmetic (Cody-Waite reduction, the
polynomials and rational forms of Moshier's Cephes library, ``2**n`` from its exponent bits), so
LLVM vectorises them inside the fused loops: sigmoid, tanh and softmax are each ONE pass, with no
call out of Numba -- which is also what lets a whole epoch run inside compiled code
(:mod:`bpgpu.backends.numba_epoch`). Measured against a long-double reference over their whole
range (tests/test_vmath.py): exp <= 1 ulp in float32 (numpy's AVX2 float32 exp: 2.5), <= 2 ulp in
float64, tanh <= 1.5 ulp; NaN, infinities, signed zeros, overflow and subnormal results as numpy;
and faster than numpy's own loops on this AVX2 machine (bench/NOTES.md step 17). No ``fastmath``:
results must match numpy to the dtype's rounding (the parity tests check it).

Activation and loss codes are :data:`bpgpu.kernels.codes.ACT_CODES` / ``LOSS_CODES`` (the one table
the CUDA kernels share); the kernels read them as module constants, which Numba freezes at compile.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

from numba import types as nbtypes
from numba.extending import overload

from .codes import ACT_CODES, LOSS_CODES
from .intrinsics import float_from_bits, mulhilo64, prefetch_row

__all__ = ["ACT_CODES", "LOSS_CODES", "KERNELS", "vexp", "vtanh"]

# the codes as plain globals: Numba compiles them in as constants (its on-disk cache keys on this
# file, not on codes.py: clear __pycache__ if those codes ever change)
IDENTITY, SIGMOID, TANH, RELU, SOFTMAX = (ACT_CODES[n] for n in ("identity", "sigmoid", "tanh",
                                                          "relu", "softmax"))
MSE, BCE, CE = (LOSS_CODES[n] for n in ("mse", "bce", "ce"))


#: Compile options of every kernel. ``error_model="numpy"``: a float division by zero gives inf or
#: NaN as in numpy instead of raising ZeroDivisionError -- the check Python's error model puts
#: before every division stopped LLVM vectorising any loop that divides (sigmoid's 1 / (1 + e):
#: 7.5 us scalar vs 1.4 us vectorised on 64x100 float32, bench/NOTES.md step 12).
_OPTIONS = {"cache": True, "error_model": "numpy"}


def _variants(fn):
    """(serial, parallel) dispatchers of one kernel; distinct names keep their caches apart."""
    serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                fn.__defaults__, fn.__closure__)
    serial.__qualname__ = fn.__qualname__ + "_serial"
    return njit(**_OPTIONS)(serial), njit(parallel=True, **_OPTIONS)(fn)


# ------------------------------------------------------------------------------ exp and tanh
# Written so that LLVM vectorises them inside the kernels' loops: no calls, no data-dependent
# branches (both sides are computed and one is selected), 2**n from the exponent bits. The four
# implementations are plain Python functions compiled inside their caller by the overloads below.
_F32, _F64, _I32, _I64 = np.float32, np.float64, np.int32, np.int64


def _exp_f32(x):
    """exp in float32: x = n ln2 + r (|r| <= ln2/2, ln2 in two parts so n ln2 is exact), a
    degree-6 polynomial for exp(r), times 2**n applied as two factors so that neither overflows
    before the product does (subnormal results round once)."""
    v = x
    if v < _F32(-150.0):                 # exp underflows to 0 below -103.97 ...
        v = _F32(-150.0)
    if v > _F32(100.0):                  # ... and overflows to inf above 88.72: n stays small
        v = _F32(100.0)
    if not v == v:                       # NaN: compute anything, return x below
        v = _F32(0.0)
    n = np.floor(v * _F32(1.44269504088896341) + _F32(0.5))
    r = v - n * _F32(0.693359375)
    r = r - n * _F32(-2.12194440e-4)
    p = _F32(1.9875691500e-4)
    p = p * r + _F32(1.3981999507e-3)
    p = p * r + _F32(8.3334519073e-3)
    p = p * r + _F32(4.1665795894e-2)
    p = p * r + _F32(1.6666665459e-1)
    p = p * r + _F32(5.0000001201e-1)
    p = p * (r * r) + r + _F32(1.0)
    k = _I32(n)
    k1 = _I32(k >> 1)
    k2 = _I32(k - k1)
    y = p * float_from_bits(_I32((k1 + 127) << 23)) * float_from_bits(_I32((k2 + 127) << 23))
    return y if x == x else x


def _exp_f64(x):
    """exp in float64: the same reduction, and exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2))."""
    v = x
    if v < _F64(-760.0):
        v = _F64(-760.0)
    if v > _F64(720.0):
        v = _F64(720.0)
    if not v == v:
        v = _F64(0.0)
    n = np.floor(v * _F64(1.4426950408889634073599) + _F64(0.5))
    r = v - n * _F64(6.93145751953125e-1)
    r = r - n * _F64(1.42860682030941723212e-6)
    rr = r * r
    p = _F64(1.26177193074810590878e-4)
    p = p * rr + _F64(3.02994407707441961300e-2)
    p = p * rr + _F64(9.99999999999999999910e-1)
    p = p * r
    q = _F64(3.00198505138664455042e-6)
    q = q * rr + _F64(2.52448340349684104192e-3)
    q = q * rr + _F64(2.27265548208155028766e-1)
    q = q * rr + _F64(2.00000000000000000009e0)
    e = _F64(1.0) + _F64(2.0) * (p / (q - p))
    k = _I64(n)
    k1 = k >> 1
    k2 = k - k1
    y = e * float_from_bits((k1 + 1023) << 52) * float_from_bits((k2 + 1023) << 52)
    return y if x == x else x


def _tanh_f32(x):
    """tanh in float32: x + x^3 P(x^2) for |x| <= 0.625, else sign(x) (1 - 2 / (exp(2|x|) + 1))."""
    ax = abs(x)
    big = _F32(1.0) - _F32(2.0) / (vexp(ax + ax) + _F32(1.0))
    big = big if x >= _F32(0.0) else -big
    z = x * x
    p = _F32(-5.70498872745e-3)
    p = p * z + _F32(2.06390887954e-2)
    p = p * z - _F32(5.37397155531e-2)
    p = p * z + _F32(1.33314422036e-1)
    p = p * z - _F32(3.33332819422e-1)
    small = p * z * x + x
    small = small if x != _F32(0.0) else x          # keeps -0.0
    return big if ax > _F32(0.625) else small


def _tanh_f64(x):
    """tanh in float64: x + x^3 P(x^2) / Q(x^2) for |x| < 0.625, else as in float32."""
    ax = abs(x)
    big = _F64(1.0) - _F64(2.0) / (vexp(ax + ax) + _F64(1.0))
    big = big if x >= _F64(0.0) else -big
    z = x * x
    p = _F64(-9.64399179425052238628e-1)
    p = p * z - _F64(9.92877231001918586564e1)
    p = p * z - _F64(1.61468768441708447952e3)
    q = z + _F64(1.12811678491632931402e2)
    q = q * z + _F64(2.23548839060100448583e3)
    q = q * z + _F64(4.84406305325125486048e3)
    small = x + x * (z * (p / q))
    small = small if x != _F64(0.0) else x
    return big if ax >= _F64(0.625) else small


def vexp(x):
    """exp of a float32 or float64 scalar, vectorisable inside Numba loops (numpy's meaning)."""
    return np.exp(x)


def vtanh(x):
    """tanh of a float32 or float64 scalar, vectorisable inside Numba loops (numpy's meaning)."""
    return np.tanh(x)


@overload(vexp, inline="always")
def _vexp_impl(x):
    if x == nbtypes.float32:
        return _exp_f32
    if x == nbtypes.float64:
        return _exp_f64
    return None


@overload(vtanh, inline="always")
def _vtanh_impl(x):
    if x == nbtypes.float32:
        return _tanh_f32
    if x == nbtypes.float64:
        return _tanh_f64
    return None


# ------------------------------------------------------------------------------ forward
def add_bias(z, b):
    """z += b (broadcast over rows)."""
    rows, cols = z.shape
    for i in prange(rows):
        r = z[i]
        for j in range(cols):
            r[j] += b[j]


def add_bias_relu(z, b):
    """z = max(z + b, 0); NaN passes through, as in np.maximum."""
    rows, cols = z.shape
    zero = z.dtype.type(0)
    for i in prange(rows):
        r = z[i]
        for j in range(cols):
            v = r[j] + b[j]
            r[j] = zero if v < zero else v


def bias_sigmoid(z, b, limit):
    """z = 1 / (1 + exp(min(-(z + b), limit))), one pass (the clip avoids exp's overflow)."""
    rows, cols = z.shape
    one = z.dtype.type(1)
    for i in prange(rows):
        r = z[i]
        for j in range(cols):
            v = -(r[j] + b[j])
            v = limit if v > limit else v
            r[j] = one / (one + vexp(v))


def bias_tanh(z, b):
    """z = tanh(z + b), one pass."""
    rows, cols = z.shape
    for i in prange(rows):
        r = z[i]
        for j in range(cols):
            r[j] = vtanh(r[j] + b[j])


def bias_softmax(z, b):
    """z = softmax(z + b) per row: shifted by the row max (log-sum-exp), exponentiated, divided by
    the row sum -- each row in one visit while it sits in L1."""
    rows, cols = z.shape
    one = z.dtype.type(1)
    for i in prange(rows):
        r = z[i]
        m = r[0] + b[0]
        for j in range(cols):
            v = r[j] + b[j]
            r[j] = v
            if v > m:
                m = v
        for j in range(cols):                    # vectorises (no reduction in it) ...
            r[j] = vexp(r[j] - m)
        s = z.dtype.type(0)
        for j in range(cols):                    # ... the sum, in order, does not
            s += r[j]
        inv = one / s
        for j in range(cols):
            r[j] *= inv


# ------------------------------------------------------------------------------ backward
def activation_backward(delta, a, code):
    """In place: delta *= act'(from the output a); softmax: a * (delta - sum(delta * a))."""
    rows, cols = delta.shape
    one = delta.dtype.type(1)
    zero = delta.dtype.type(0)
    for i in prange(rows):
        d = delta[i]
        o = a[i]
        if code == SIGMOID:
            for j in range(cols):
                d[j] *= o[j] * (one - o[j])
        elif code == TANH:
            for j in range(cols):
                d[j] *= one - o[j] * o[j]
        elif code == RELU:
            for j in range(cols):
                if not o[j] > zero:
                    d[j] *= zero                  # inf/NaN deltas stay NaN, as numpy's product
        elif code == SOFTMAX:
            s = zero
            for j in range(cols):
                s += d[j] * o[j]
            for j in range(cols):
                d[j] = o[j] * (d[j] - s)


def output_delta(a, y, delta, out_code, loss_code, tiny, one_minus_eps, want_loss, w,
                 weighted):
    """delta = dLoss/dz of the mean batch loss, and (if ``want_loss``) the summed loss, one pass.

    ce (softmax) and bce (sigmoid): (a - y) / B. mse: (a - y) / B times act'(a). With
    ``weighted``, row i's delta is then multiplied by ``w[i]`` and its loss counts ``w[i]``
    times (Backend.output_delta's ``weights``; ``w`` is not read otherwise).
    Returns the batch's summed per-sample loss (0 when not wanted), accumulated in float64.
    """
    rows, cols = a.shape
    one = a.dtype.type(1)
    zero = a.dtype.type(0)
    half = a.dtype.type(0.5)
    inv_b = one / a.dtype.type(rows)
    total = 0.0
    for i in prange(rows):
        ai = a[i]
        yi = y[i]
        di = delta[i]
        part = 0.0
        if loss_code == CE:                      # softmax + cross-entropy
            for j in range(cols):
                di[j] = (ai[j] - yi[j]) * inv_b
                if want_loss and yi[j] != 0:
                    p = tiny if ai[j] < tiny else ai[j]   # NaN stays NaN
                    part -= yi[j] * np.log(p)
        elif loss_code == BCE:                   # sigmoid + binary cross-entropy
            for j in range(cols):
                di[j] = (ai[j] - yi[j]) * inv_b
                if want_loss:
                    p = ai[j]
                    if p < tiny:
                        p = tiny
                    if p > one_minus_eps:
                        p = one_minus_eps
                    part -= yi[j] * np.log(p) + (one - yi[j]) * np.log(one - p)
        else:                                    # quadratic cost, any output
            s = zero
            for j in range(cols):
                g = (ai[j] - yi[j]) * inv_b
                if want_loss:
                    part += half * (ai[j] - yi[j]) * (ai[j] - yi[j])
                if out_code == SIGMOID:
                    g *= ai[j] * (one - ai[j])
                elif out_code == TANH:
                    g *= one - ai[j] * ai[j]
                elif out_code == RELU:
                    if not ai[j] > zero:
                        g *= zero
                elif out_code == SOFTMAX:
                    s += g * ai[j]
                di[j] = g
            if out_code == SOFTMAX:
                for j in range(cols):
                    di[j] = ai[j] * (di[j] - s)
        if weighted:
            wi = w[i]
            for j in range(cols):
                di[j] *= wi
            part *= wi
        total += part
    return total


def column_sums(d, out, alpha, beta, acc):
    """out[j] = alpha * sum_i d[i, j] + beta * out[j] (beta 0: out's old values are ignored).

    Summed row by row into ``acc`` (scratch of out's shape and dtype), which vectorises over j.
    """
    rows, cols = d.shape
    zero = out.dtype.type(0)
    for j in range(cols):
        acc[j] = zero
    for i in range(rows):
        r = d[i]
        for j in range(cols):
            acc[j] += r[j]
    if beta == zero:
        for j in range(cols):
            out[j] = alpha * acc[j]
    else:
        for j in range(cols):
            out[j] = alpha * acc[j] + beta * out[j]


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
#: The gathers prefetch the row this many iterations ahead: rows of a shuffled epoch are scattered
#: over the dataset, and overlapping their cache misses took the 64-row MNIST gather from 29 to
#: 16-19 us (2 to 16 rows ahead all helped; bench/NOTES.md step 14).
PREFETCH_AHEAD = 16


def gather(data, idx, out, scale, shift, scaled):
    """out[i, :] = data[idx[i], :], times ``scale`` plus ``shift`` when ``scaled`` (uint8 rows
    straight into the float batch); unscaled rows are copied exactly (-0.0 stays -0.0).

    Returns -1, or the position in ``idx`` of an index outside ``data``'s rows (nothing is read
    for it; the caller raises).
    """
    rows, cols = out.shape
    n_data = data.shape[0]
    for i in range(rows):                        # validate first: never read out of bounds
        if idx[i] < 0 or idx[i] >= n_data:
            return i
    for i in range(min(PREFETCH_AHEAD, rows)):
        prefetch_row(data, idx[i])
    for i in prange(rows):
        if i + PREFETCH_AHEAD < rows:
            prefetch_row(data, idx[i + PREFETCH_AHEAD])
        src = data[idx[i]]
        dst = out[i]
        if scaled:
            for j in range(cols):
                dst[j] = src[j] * scale + shift
        else:
            for j in range(cols):
                dst[j] = src[j]
    return -1


# ------------------------------------------------------------------------------ random numbers
# Philox4x64-10 (Salmon et al. 2011) exactly as numpy's Philox bit generator runs it: the counter
# is incremented before each block, a block gives four 64-bit words, each word two 32-bit draws
# (low half first), and a float32 is (draw >> 8) * 2**-24.
_PHILOX_M0 = np.uint64(0xD2E7470EE14C6C93)
_PHILOX_M1 = np.uint64(0xCA5A826395121157)
_PHILOX_W0 = np.uint64(0x9E3779B97F4A7C15)
_PHILOX_W1 = np.uint64(0xBB67AE8584CAA73B)


@njit(**_OPTIONS)
def _philox_block(c0, c1, c2, c3, k0, k1):
    for _ in range(10):
        hi0, lo0 = mulhilo64(_PHILOX_M0, c0)
        hi1, lo1 = mulhilo64(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 += _PHILOX_W0
        k1 += _PHILOX_W1
    return c0, c1, c2, c3


def random_uniform(out, key, counter, offset):
    """out[e] = float32 number offset + e of the Philox stream (key, counter); ``out`` is 1-D.

    ``key`` (2,) and ``counter`` (4,) are uint64 arrays; stream element k comes from block
    k // 8 (counter + 1 + k // 8, carried across the four words), 32-bit draw k % 8 of it.
    """
    flat = out
    n = flat.size
    first = offset // 8
    last = (offset + n + 7) // 8
    one = np.uint64(1)
    shift = np.uint64(32)
    low = np.uint64(0xFFFFFFFF)
    eight = np.uint64(8)
    scale = np.float32(1.0 / 16777216.0)
    for blk in prange(first, last):
        # counter + 1 + blk, with the carry through the four 64-bit words
        c0 = counter[0] + np.uint64(blk) + one
        carry = one if c0 < counter[0] else np.uint64(0)
        c1 = counter[1] + carry
        carry = one if carry == one and c1 == np.uint64(0) else np.uint64(0)
        c2 = counter[2] + carry
        carry = one if carry == one and c2 == np.uint64(0) else np.uint64(0)
        c3 = counter[3] + carry
        w0, w1, w2, w3 = _philox_block(c0, c1, c2, c3, key[0], key[1])
        base = blk * 8 - offset
        if 0 <= base and base + 8 <= n:          # a whole block inside out: no checks
            flat[base] = np.float32((w0 & low) >> eight) * scale
            flat[base + 1] = np.float32(w0 >> (shift + eight)) * scale
            flat[base + 2] = np.float32((w1 & low) >> eight) * scale
            flat[base + 3] = np.float32(w1 >> (shift + eight)) * scale
            flat[base + 4] = np.float32((w2 & low) >> eight) * scale
            flat[base + 5] = np.float32(w2 >> (shift + eight)) * scale
            flat[base + 6] = np.float32((w3 & low) >> eight) * scale
            flat[base + 7] = np.float32(w3 >> (shift + eight)) * scale
        else:                                    # the partial blocks at either end
            for lane in range(8):
                e = base + lane
                if 0 <= e < n:
                    word = w0 if lane < 2 else (w1 if lane < 4 else (w2 if lane < 6 else w3))
                    draw = (word >> shift) if lane % 2 == 1 else (word & low)
                    flat[e] = np.float32(draw >> eight) * scale


# ------------------------------------------------------------------------------ dropout
def dropout_forward(a, uniform, rate, keep_scale, mask, out):
    """mask = (uniform >= rate) * keep_scale; out = a * mask."""
    rows, cols = a.shape
    zero = a.dtype.type(0)
    for i in prange(rows):
        for j in range(cols):
            m = keep_scale if uniform[i, j] >= rate else zero
            mask[i, j] = m
            out[i, j] = a[i, j] * m


def multiply_inplace(x, m):
    """x *= m, elementwise (dropout backward)."""
    rows, cols = x.shape
    for i in prange(rows):
        for j in range(cols):
            x[i, j] *= m[i, j]


# ------------------------------------------------------------------------------ optimizers
# One pass over the flat buffer: the weights (first n_decay entries) with weight decay, then the
# biases without, so no loop carries a branch and both vectorise. Serial only: a prange over
# blocks stopped LLVM vectorising the inner loop (98 us vs 15 us for 79,510 float32 parameters,
# bench/NOTES.md), and a serial pass over even 814k parameters (~150 us) is small beside the
# large-batch steps where threads would matter. Scalars arrive in the buffer's dtype.
# The decayed and undecayed parts are passed to one zero-based loop each: LLVM did not vectorise
# a loop starting at a runtime offset (76 us vs 13 us for 79,510 parameters).
def _sgd_part(p, g, lr, wd):
    for k in range(p.shape[0]):
        p[k] -= lr * (g[k] + wd * p[k])


def _momentum_part(p, g, v, lr, mu, wd, nesterov):
    if nesterov:
        for k in range(p.shape[0]):
            gk = g[k] + wd * p[k]
            vk = mu * v[k] + gk
            v[k] = vk
            p[k] -= lr * (gk + mu * vk)
    else:
        for k in range(p.shape[0]):
            vk = mu * v[k] + (g[k] + wd * p[k])
            v[k] = vk
            p[k] -= lr * vk


def _adam_part(p, g, m, v, lr_t, b1, c1, b2, c2, eps, inv_bias2, wd):
    for k in range(p.shape[0]):
        gk = g[k] + wd * p[k]
        mk = b1 * m[k] + c1 * gk
        vk = b2 * v[k] + c2 * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] -= lr_t * mk / (np.sqrt(vk * inv_bias2) + eps)


_sgd_part, _momentum_part, _adam_part = (njit(**_OPTIONS)(f) for f in
                                         (_sgd_part, _momentum_part, _adam_part))


def sgd_update(p, g, lr, wd, n_decay):
    d = n_decay
    _sgd_part(p[:d], g[:d], lr, wd)
    _sgd_part(p[d:], g[d:], lr, wd - wd)


def momentum_update(p, g, v, lr, mu, wd, n_decay, nesterov):
    d = n_decay
    _momentum_part(p[:d], g[:d], v[:d], lr, mu, wd, nesterov)
    _momentum_part(p[d:], g[d:], v[d:], lr, mu, wd - wd, nesterov)


def adam_update(p, g, m, v, lr_t, b1, c1, b2, c2, eps, inv_bias2, wd, n_decay):
    """lr_t = lr / (1 - b1^t); c1 = 1 - b1; c2 = 1 - b2; inv_bias2 = 1 / (1 - b2^t)."""
    d = n_decay
    _adam_part(p[:d], g[:d], m[:d], v[:d], lr_t, b1, c1, b2, c2, eps, inv_bias2, wd)
    _adam_part(p[d:], g[d:], m[d:], v[d:], lr_t, b1, c1, b2, c2, eps, inv_bias2, wd - wd)


#: name -> (serial, parallel) dispatchers
KERNELS = {fn.__name__: _variants(fn) for fn in (
    add_bias, add_bias_relu, bias_sigmoid, bias_tanh, bias_softmax, activation_backward,
    output_delta, count_correct, gather, random_uniform, dropout_forward, multiply_inplace)}
for _fn in (column_sums, sgd_update, momentum_update, adam_update):   # serial by design
    KERNELS[_fn.__name__] = (njit(**_OPTIONS)(_fn),) * 2
