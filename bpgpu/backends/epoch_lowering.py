"""How each recorded op becomes a call in a compiled epoch's source.

One function per op, registered by name in :data:`LOWERINGS`. Each checks, on every recorded
step, the fast-path condition the numba backend checks before launching the same kernel -- the
same function of ``kernels/launch.py``, so the two cannot drift apart -- plus what only the
compiled call needs (accumulators of the right shape, numpy's dot case of matmul, which is not
compiled); anything else leaves the epoch to the per-step path (:class:`Unsupported`). Then it
emits the call to the function of the same name in ``kernels/epoch.py``.

Each lowering is called as ``lower(src, args, raw, exprs)``: the :class:`EpochSource` being built,
the generalised arguments (:func:`bpgpu.backends.recording.generalise`, in Backend's signature
order), the argument values of each recorded step, and each argument's expression in the source.
"""

from __future__ import annotations

import numpy as np

from ..kernels import launch
from ..kernels.codes import ACT_CODES, LOSS_CODES
from .base import EXP_LIMIT, LOG_CLIP
from .recording import PARAMETER_NAMES as _PARAMETER_NAMES
from .recording import Unsupported, address
from .threads import PARALLEL_MIN

__all__ = ["LOWERINGS", "lower"]


def _check(condition, op):
    if not condition:
        raise Unsupported(f"{op}: arguments outside the numba backend's fast path")


def _accumulator(acc) -> bool:
    """A float64 accumulator of shape (1,), as the compiled calls add to it."""
    return acc.dtype == np.float64 and acc.shape == (1,)


def _gather_rows(src, a, raw, e):
    for data, idx, out, *_ in raw:
        _check(launch.fits_gather(data, idx, out), "gather_rows")
    scaled = raw[0][0].dtype == np.uint8
    src.emit(f"_e.gather_rows({e[0]}, {e[1]}, {e[2]}, {e[3]}, {e[4]}, {scaled}, par, par_min)")


def _gather_augmented(src, a, raw, e):
    for data, idx, out, uniform, field, height, width, translate, *_ in raw:
        _check(field is None and launch.fits_augmented_gather(
            data, idx, out, uniform, field, height, width, translate), "gather_augmented")
    scaled = raw[0][0].dtype == np.uint8
    args = ", ".join(e[k] for k in (0, 1, 2, 3) + tuple(range(5, 14)))
    src.emit(f"_e.gather_augmented({args}, {scaled}, par, par_min)")


def _mnk(a, b, out, trans_a):
    return out.shape[0], out.shape[1], a.shape[0] if trans_a else a.shape[1]


def _overlap(x, y):
    return (address(x) < address(y) + y.nbytes) and (address(y) < address(x) + x.nbytes)


def _gemm(src, a, raw, e):
    for x, y, out, *_ in raw:
        _check(x.ndim == y.ndim == out.ndim == 2 and launch.fits_blas_call(x, y, out)
               and not _overlap(out, x) and not _overlap(out, y), "gemm")
    alpha, beta = a[5][1], a[6][1]
    if alpha == 1.0 and beta == 0.0:           # numpy's matmul: its dot case is not compiled
        for x, y, out, trans_a, *_ in raw:
            m, n, k = _mnk(x, y, out, trans_a)
            _check(not (m == 1 and n == 1 and k > 1), "gemm (numpy's dot case)")
        src.emit(f"_e.matmul(gemm_address, gemv_address, ilp64, {e[0]}, {e[1]}, {e[2]}, "
                 f"{e[3]}, {e[4]})")
    else:
        src.emit(f"_e.gemm(gemm_address, ilp64, {e[0]}, {e[1]}, {e[2]}, {e[3]}, {e[4]}, "
                 f"{e[5]}, {e[6]})")


def _bias_activation(src, a, raw, e):
    activation = a[2][1]
    _check(activation in ACT_CODES, "bias_activation")
    for z, bias, _ in raw:
        _check(launch.rows_and_vector(z, bias), "bias_activation")
    limit = src.float_(EXP_LIMIT[raw[0][0].dtype])
    src.emit(f"_e.bias_activation({e[0]}, {e[1]}, {ACT_CODES[activation]}, {limit}, par, "
             f"par_min)")


def _activation_backward(src, a, raw, e):
    activation = a[2][1]
    if activation == "identity":
        return
    _check(activation in ACT_CODES, "activation_backward")
    for delta, out, _ in raw:
        _check(launch.fits_rows(delta, out), "activation_backward")
    src.emit(f"_e.activation_backward({e[0]}, {e[1]}, {ACT_CODES[activation]}, par, par_min)")


def _output_delta(src, a, raw, e):
    output, loss = a[3][1], a[4][1]
    _check(output in ACT_CODES and loss in LOSS_CODES, "output_delta")
    for out, y, delta, _, _, acc, weights in raw:
        _check(launch.fits_rows(out, y, delta) and (acc is None or _accumulator(acc))
               and launch.fits_row_weights(weights, out), "output_delta")
    tiny, one_minus_eps = (src.float_(v) for v in LOG_CLIP[raw[0][0].dtype])
    want, weighted = a[5][0] == "A", a[6][0] == "A"
    src.emit(f"_e.output_delta({e[0]}, {e[1]}, {e[2]}, {ACT_CODES[output]}, {LOSS_CODES[loss]},"
             f" {tiny}, {one_minus_eps}, {e[5] if want else 'sink'}, {want}, "
             f"{e[6] if weighted else 'ones'}, {weighted}, par, par_min)")


def _column_sums(src, a, raw, e):
    plain = a[2][1] == 1.0 and a[3][1] == 0.0
    for d, out, *_ in raw:
        _check(launch.rows_and_vector(d, out), "column_sums")
        if plain and d.size >= PARALLEL_MIN:      # numpy's matmul(ones, d): not its dot case
            _check(d.shape[1] > 1, "column_sums (numpy's dot case)")
        src.max_cols = max(src.max_cols, d.shape[1])
    src.emit(f"_e.column_sums(gemm_address, gemv_address, ilp64, {e[0]}, {e[1]}, {e[2]}, "
             f"{e[3]}, acc, ones, {PARALLEL_MIN})")


def _count_correct(src, a, raw, e):
    for out, y, acc in raw:
        _check(launch.fits_rows(out, y) and _accumulator(acc), "count_correct")
    src.emit(f"_e.count_correct({e[0]}, {e[1]}, {e[2]}, par, par_min)")


def _random_uniform(src, a, raw, e):
    for out, key, counter, _ in raw:
        _check(launch.fits_random_uniform(out) and len(key) == 2 and len(counter) == 4,
               "random_uniform")
    for k, word in enumerate(e[1] + e[2]):
        src.emit(f"words[{k}] = {word}")
    src.emit(f"_e.random_uniform({e[0]}, words, {e[3]}, par, par_min)")


def _dropout_forward(src, a, raw, e):
    for act, uniform, _, mask, out in raw:
        _check(launch.fits_dropout_forward(act, uniform, mask, out), "dropout_forward")
    src.emit(f"_e.dropout_forward({e[0]}, {e[1]}, {e[2]}, {e[3]}, {e[4]}, par, par_min)")


def _dropout_backward(src, a, raw, e):
    for delta, mask in raw:
        _check(launch.fits_rows(delta, mask), "dropout_backward")
    src.emit(f"_e.dropout_backward({e[0]}, {e[1]}, par, par_min)")


def _update(op, n_arrays):
    """The lowering of the optimizer op ``op`` over its first ``n_arrays`` arguments (flat
    buffers): the same call with every argument, in order."""
    where = _PARAMETER_NAMES[op].index("n_decay")

    def lowering(src, a, raw, e):
        for args in raw:
            _check(launch.fits_flat_update(args[where], *args[:n_arrays]), op)
        src.emit(f"_e.{op}({', '.join(e)})")
    return lowering


#: Op name -> its lowering. An op that is not here runs its epoch step by step.
LOWERINGS = {
    "gather_rows": _gather_rows,
    "gather_augmented": _gather_augmented,
    "gemm": _gemm,
    "bias_activation": _bias_activation,
    "activation_backward": _activation_backward,
    "output_delta": _output_delta,
    "column_sums": _column_sums,
    "count_correct": _count_correct,
    "random_uniform": _random_uniform,
    "dropout_forward": _dropout_forward,
    "dropout_backward": _dropout_backward,
    "sgd_update": _update("sgd_update", 2),
    "momentum_update": _update("momentum_update", 3),
    "adam_update": _update("adam_update", 4),
}


def lower(src, ops):
    """Emit every generalised op of :func:`bpgpu.backends.recording.generalise` into ``src``."""
    for op, args, raw in ops:
        lowering = LOWERINGS.get(op)
        if lowering is None:
            raise Unsupported(f"the op {op} is not compiled into epochs")
        lowering(src, args, raw, [src.argument(g) for g in args])
