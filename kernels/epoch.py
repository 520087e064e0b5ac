"""The numba backend's ops as Numba functions, for a training epoch compiled into one call.

:mod:`bpgpu.backends.numba_epoch` records the ops ``MLP.train_step`` issues and generates an epoch
loop that calls, for each op, the function of the same name here. Each one does exactly what
:class:`~bpgpu.backends.numba_backend.NumbaBackend`'s method of that name does once its checks
have passed -- the same kernels of kernels/cpu.py, the same scalars cast the same way, the same
serial/parallel choice, the same BLAS calls -- so a compiled epoch is bit-identical to the steps
run one by one (tests/test_compiled_epoch.py). The one op whose per-step form is not a kernel is
the plain GEMM, numpy's ``matmul``: :func:`matmul` makes the CBLAS call numpy's matmul makes for
the same operands (GEMM, or GEMV when a dimension is 1, or its plain loop when the inner
dimension is 1), through the address of numpy's own BLAS (kernels/blas.py).

Arrays arrive C-contiguous and validated by the generator (with the backend's own checks).
``par``/``par_min``: the backend's ``_parallel_ok`` and ``PARALLEL_MIN`` -- an op of ``size``
elements runs the parallel kernel when ``par and size >= par_min``, as the backend decides.

Cached on disk like the kernels; Numba's cache checks only this file, so each cached function is
named after a hash of cpu.py, augment.py, blas.py and intrinsics.py as well (:func:`_fingerprint`).
"""

from __future__ import annotations

import hashlib
import os
import types

import numpy as np
from numba import njit

from . import blas as _blas
from .augment import KERNELS as _AUGMENT_KERNELS
from .cpu import IDENTITY, KERNELS, SIGMOID, SOFTMAX, TANH
from .intrinsics import call_address

__all__ = ["SERIAL", "ADAPTIVE"]

#: The ops each of :data:`SERIAL` and :data:`ADAPTIVE` holds.
OPS = ("gather_rows", "gather_augmented", "gemm", "matmul", "bias_activation",
       "activation_backward", "output_delta", "column_sums", "count_correct", "random_uniform",
       "dropout_forward", "dropout_backward", "sgd_update", "momentum_update", "adam_update")

_JIT = {"error_model": "numpy", "nogil": True, "cache": True}
#: The kernels the ops call, as (serial, parallel) dispatchers ``_<alias>_s``/``_<alias>_p``
#: (kernels/cpu.py's, and kernels/augment.py's warp).
_PAIRED = {"gather": "gather", "add_bias": "add_bias", "relu": "add_bias_relu",
           "sigmoid": "bias_sigmoid", "tanh": "bias_tanh", "softmax": "bias_softmax",
           "act_bwd": "activation_backward", "out_delta": "output_delta",
           "count": "count_correct", "uniform": "random_uniform", "drop_fwd": "dropout_forward",
           "mul": "multiply_inplace", "aug": "gather_augmented"}
#: kernels/cpu.py's and kernels/augment.py's (serial, parallel) dispatchers by name
_ALL_KERNELS = {**KERNELS, **_AUGMENT_KERNELS}
_gather_s, _gather_p = KERNELS["gather"]
_add_bias_s, _add_bias_p = KERNELS["add_bias"]
_relu_s, _relu_p = KERNELS["add_bias_relu"]
_sigmoid_s, _sigmoid_p = KERNELS["bias_sigmoid"]
_tanh_s, _tanh_p = KERNELS["bias_tanh"]
_softmax_s, _softmax_p = KERNELS["bias_softmax"]
_act_bwd_s, _act_bwd_p = KERNELS["activation_backward"]
_out_delta_s, _out_delta_p = KERNELS["output_delta"]
_count_s, _count_p = KERNELS["count_correct"]
_uniform_s, _uniform_p = KERNELS["random_uniform"]
_drop_fwd_s, _drop_fwd_p = KERNELS["dropout_forward"]
_mul_s, _mul_p = KERNELS["multiply_inplace"]
_aug_s, _aug_p = _ALL_KERNELS["gather_augmented"]
_column_sums = KERNELS["column_sums"][0]
_sgd = KERNELS["sgd_update"][0]
_momentum = KERNELS["momentum_update"][0]
_adam = KERNELS["adam_update"][0]

_ROW_MAJOR, _COL_MAJOR, _TRANS = 101, 102, 112


# ------------------------------------------------------------------------------ data
def gather_rows(data, idx, out, scale, shift, scaled, par, par_min):
    """NumbaBackend.gather_rows."""
    t = out.dtype.type
    if par and out.size >= par_min:
        bad = _gather_p(data, idx, out, t(scale), t(shift), scaled)
    else:
        bad = _gather_s(data, idx, out, t(scale), t(shift), scaled)
    if bad >= 0:
        raise IndexError("a row index of the epoch's order is out of bounds for the data")


def gather_augmented(data, idx, out, uniform, height, width, translate, rotate, zoom, shear,
                     flip, scale, shift, scaled, par, par_min):
    """NumbaBackend.gather_augmented without an elastic field (a field is smoothed by GEMMs on
    host arrays between the draws and the warp: such an epoch runs step by step)."""
    t = out.dtype.type
    no_field = np.empty((1, 2, 1, 1), out.dtype)
    if par and out.size >= par_min:
        bad = _aug_p(data, idx, out, uniform, no_field, False, height, width, translate, rotate,
                     zoom, shear, flip, t(scale), t(shift), scaled)
    else:
        bad = _aug_s(data, idx, out, uniform, no_field, False, height, width, translate, rotate,
                     zoom, shear, flip, t(scale), t(shift), scaled)
    if bad >= 0:
        raise IndexError("a row index of the epoch's order is out of bounds for the data")


# ------------------------------------------------------------------------------ GEMM
def gemm(gemm_address, ilp64, a, b, out, trans_a, trans_b, alpha, beta):
    """NumbaBackend.gemm with alpha or beta: one cblas_?gemm call."""
    t = out.dtype.type
    _blas.gemm(gemm_address, ilp64, a, b, out, trans_a, trans_b, t(alpha), t(beta))


def _gemv_trans(address, ilp64, order, rows, cols, mat, lda, x, y):
    """numpy's ``?_gemv``: ``cblas_?gemv(order, CblasTrans, cols, rows, 1, mat, lda, x, 1, 0, y,
    1)`` for the (rows, cols) operand ``mat`` of a matmul with a vector."""
    one = y.dtype.type(1)
    zero = y.dtype.type(0)
    if ilp64:
        call_address(address, np.int32(order), np.int32(_TRANS), np.int64(cols), np.int64(rows),
                     one, mat, np.int64(lda), x, np.int64(1), zero, y, np.int64(1))
    else:
        call_address(address, np.int32(order), np.int32(_TRANS), np.int32(cols), np.int32(rows),
                     one, mat, np.int32(lda), x, np.int32(1), zero, y, np.int32(1))


def matmul(gemm_address, gemv_address, ilp64, a, b, out, trans_a, trans_b):
    """``out = op(a) @ op(b)`` exactly as ``np.matmul`` computes it for these operands.

    numpy's matmul (umath/matmul.c.src) for 2-D operands: no dimension 1 -> one cblas_?gemm
    (RowMajor, the transposes from the strides); inner dimension 1 -> its plain loop
    ``0 + a * b``; one row -> GEMV on op(b); one column -> GEMV on op(a); one row and one column
    with a longer inner dimension -> its dot, which the epoch generator refuses, so never here.
    """
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    zero = out.dtype.type(0)
    if m != 1 and n != 1 and k != 1:
        _blas.gemm(gemm_address, ilp64, a, b, out, trans_a, trans_b, out.dtype.type(1), zero)
    elif k == 1:
        for i in range(m):
            ai = a[0, i] if trans_a else a[i, 0]
            for p in range(n):
                bp = b[p, 0] if trans_b else b[0, p]
                out[i, p] = zero + ai * bp
    elif m == 1:
        # vector @ matrix: op(b) seen as (n, k); C-ordered rows when b is stored (n, k)
        if trans_b:
            _gemv_trans(gemv_address, ilp64, _COL_MAJOR, n, k, b, k, a, out)
        else:
            _gemv_trans(gemv_address, ilp64, _ROW_MAJOR, n, k, b, n, a, out)
    elif n == 1:
        # matrix @ vector: op(a) is (m, k)
        if trans_a:
            _gemv_trans(gemv_address, ilp64, _ROW_MAJOR, m, k, a, m, b, out)
        else:
            _gemv_trans(gemv_address, ilp64, _COL_MAJOR, m, k, a, k, b, out)
    else:
        raise ValueError("matmul: a row-by-column product is numpy's dot (not compiled)")


# ------------------------------------------------------------------------------ activations
def bias_activation(z, bias, code, limit, par, par_min):
    """NumbaBackend.bias_activation (``code``: bpgpu.activations.ACT_CODES)."""
    big = par and z.size >= par_min
    if code == SIGMOID:
        if big:
            _sigmoid_p(z, bias, z.dtype.type(limit))
        else:
            _sigmoid_s(z, bias, z.dtype.type(limit))
    elif code == SOFTMAX:
        if big:
            _softmax_p(z, bias)
        else:
            _softmax_s(z, bias)
    elif code == TANH:
        if big:
            _tanh_p(z, bias)
        else:
            _tanh_s(z, bias)
    elif code == IDENTITY:
        if big:
            _add_bias_p(z, bias)
        else:
            _add_bias_s(z, bias)
    else:                                        # relu
        if big:
            _relu_p(z, bias)
        else:
            _relu_s(z, bias)


def activation_backward(delta, a, code, par, par_min):
    """NumbaBackend.activation_backward."""
    if code == IDENTITY:
        return
    if par and delta.size >= par_min:
        _act_bwd_p(delta, a, code)
    else:
        _act_bwd_s(delta, a, code)


# ------------------------------------------------------------------------------ loss, reductions
def output_delta(a, y, delta, out_code, loss_code, tiny, one_minus_eps, loss_acc, want_loss,
                 w, weighted, par, par_min):
    """NumbaBackend.output_delta; ``loss_acc`` (float64, (1,)) is added to only when
    ``want_loss``, ``w`` (the rows' weights) read only when ``weighted``."""
    t = a.dtype.type
    if par and a.size >= par_min:
        total = _out_delta_p(a, y, delta, out_code, loss_code, t(tiny), t(one_minus_eps),
                             want_loss, w, weighted)
    else:
        total = _out_delta_s(a, y, delta, out_code, loss_code, t(tiny), t(one_minus_eps),
                             want_loss, w, weighted)
    if want_loss:
        loss_acc[0] += total


def column_sums(gemm_address, gemv_address, ilp64, d, out, alpha, beta, acc, ones, par_min):
    """NumbaBackend.column_sums: a Numba pass below ``par_min`` elements; above, one GEMV with
    alpha and beta, or numpy's ``matmul(ones, d)`` when they are 1 and 0."""
    rows, cols = d.shape
    t = out.dtype.type
    if d.size < par_min:
        _column_sums(d, out, t(alpha), t(beta), acc[:cols])
    elif alpha != 1.0 or beta != 0.0:
        _blas.gemv(gemv_address, ilp64, d, ones[:rows], out, True, t(alpha), t(beta))
    else:
        matmul(gemm_address, gemv_address, ilp64, ones[:rows].reshape((1, rows)), d,
               out.reshape((1, cols)), False, False)


def count_correct(a, y, acc, par, par_min):
    """NumbaBackend.count_correct."""
    if par and a.size >= par_min:
        acc[0] += _count_p(a, y)
    else:
        acc[0] += _count_s(a, y)


# ------------------------------------------------------------------------------ dropout
def random_uniform(out, words, offset, par, par_min):
    """NumbaBackend.random_uniform; ``words`` (uint64, (6,)) holds the key, then the counter."""
    flat = out.reshape(-1)
    if par and out.size >= par_min:
        _uniform_p(flat, words[:2], words[2:], offset)
    else:
        _uniform_s(flat, words[:2], words[2:], offset)


def dropout_forward(a, uniform, rate, mask, out, par, par_min):
    """NumbaBackend.dropout_forward."""
    keep = a.dtype.type(1.0 / (1.0 - rate))
    if par and a.size >= par_min:
        _drop_fwd_p(a, uniform, np.float32(rate), keep, mask, out)
    else:
        _drop_fwd_s(a, uniform, np.float32(rate), keep, mask, out)


def dropout_backward(delta, mask, par, par_min):
    """NumbaBackend.dropout_backward."""
    if par and delta.size >= par_min:
        _mul_p(delta, mask)
    else:
        _mul_s(delta, mask)


# ------------------------------------------------------------------------------ optimizers
def sgd_update(params, grads, lr, weight_decay, n_decay):
    """NumbaBackend.sgd_update."""
    t = params.dtype.type
    _sgd(params, grads, t(lr), t(weight_decay), n_decay)


def momentum_update(params, grads, velocity, lr, momentum, weight_decay, n_decay, nesterov):
    """NumbaBackend.momentum_update."""
    t = params.dtype.type
    _momentum(params, grads, velocity, t(lr), t(momentum), t(weight_decay), n_decay, nesterov)


def adam_update(params, grads, m, v, lr, beta1, beta2, eps, step, weight_decay, n_decay):
    """NumbaBackend.adam_update. The bias corrections as Python computes them: ``beta ** step``
    with a float exponent (libm's pow, as CPython's float power; Numba's integer power
    multiplies repeatedly and differs in the last bit)."""
    t = params.dtype.type
    s = np.float64(step)
    _adam(params, grads, m, v, t(lr / (1 - beta1 ** s)), t(beta1), t(1 - beta1), t(beta2),
          t(1 - beta2), t(eps), t(1.0 / (1 - beta2 ** s)), t(weight_decay), n_decay)


def _fingerprint() -> str:
    """Hash of the sources these functions compile in (Numba's cache checks only this file's):
    part of every cached function's name, so a changed kernel never meets a stale cache."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in ("cpu.py", "augment.py", "blas.py", "intrinsics.py"):
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def _build(parallel):
    """The ops as a module of Numba dispatchers; with ``parallel=False`` the parallel kernels
    are the serial ones (on machines where the backend never runs parallel kernels, their
    compilation is skipped)."""
    kind = "adaptive" if parallel else "serial"
    scope = dict(globals())
    for alias, name in _PAIRED.items():
        serial, par = _ALL_KERNELS[name]
        scope[f"_{alias}_s"], scope[f"_{alias}_p"] = serial, (par if parallel else serial)
    module = types.ModuleType(f"{__name__}.{kind}")
    module.__doc__ = _build.__doc__
    tag = f"{kind}_{_fingerprint()}"
    for name in ("_gemv_trans",) + OPS:            # callees before their callers
        fn = globals()[name]
        clone = types.FunctionType(fn.__code__, scope, name, fn.__defaults__, fn.__closure__)
        clone.__qualname__, clone.__doc__ = f"{tag}.{name}", fn.__doc__
        scope[name] = njit(**_JIT)(clone)
        setattr(module, name, scope[name])
    return module


#: The ops calling serial kernels only, and the ops choosing serial or parallel kernels per call
#: as the backend does (``par and size >= par_min``).
SERIAL = _build(False)
ADAPTIVE = _build(True)
