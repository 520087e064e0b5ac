"""kernels/cpu.py's own exp and tanh (vexp, vtanh) over their whole range.

The numba backend's sigmoid, tanh and softmax compute exp and tanh inline (so LLVM vectorises
them and a whole epoch can run in compiled code); these tests hold them to a long-double
reference: error in units in the last place of the result, and numpy's answers exactly where
there is no rounding (NaN, infinities, signed zeros, overflow to inf, underflow to 0).
"""

import numpy as np
import pytest

from bpgpu._compat import has_numba

pytestmark = [
    pytest.mark.skipif(not has_numba(), reason="numba is not installed"),
    pytest.mark.skipif(np.finfo(np.longdouble).nmant < 60,
                       reason="long double is no wider than double here: no reference"),
]

#: Largest error allowed, in ulps of the result (measured: exp 0.99 / 1.71, tanh 1.30 / 1.40).
MAX_ULP = {("exp", "float32"): 1.0, ("exp", "float64"): 2.0,
           ("tanh", "float32"): 1.5, ("tanh", "float64"): 1.5}


@pytest.fixture(scope="module")
def fns():
    from numba import njit

    from bpgpu.kernels.cpu import vexp, vtanh

    @njit
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = vexp(x[i])

    @njit
    def tanh_all(x, out):
        for i in range(x.size):
            out[i] = vtanh(x[i])

    def run(f):
        def call(x):
            out = np.empty_like(x)
            f(x, out)
            return out
        return call

    return {"exp": run(exp_all), "tanh": run(tanh_all)}


def _sweep(dtype, lo, hi, n=1_000_003):
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(lo, hi, n), rng.uniform(lo, hi, n)]).astype(dtype)


def _ulp_error(got, x, name, dtype):
    ref = getattr(np, name)(x.astype(np.longdouble))
    with np.errstate(over="ignore", under="ignore"):
        rounded = ref.astype(dtype)
    ok = np.isfinite(rounded) & (np.abs(rounded) >= np.finfo(dtype).tiny)   # normal results
    ulp = np.spacing(np.abs(rounded[ok])).astype(np.longdouble)
    return np.abs(got[ok].astype(np.longdouble) - ref[ok]) / ulp


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_accuracy_over_its_range(fns, dtype):
    lo, hi = (-104.0, 89.0) if dtype == "float32" else (-746.0, 710.0)
    x = _sweep(dtype, lo, hi)
    err = _ulp_error(fns["exp"](x), x, "exp", dtype)
    assert err.max() <= MAX_ULP[("exp", dtype)]
    small = _sweep(dtype, -1e-3, 1e-3, 100_003)                    # exp(x) ~ 1 + x
    assert _ulp_error(fns["exp"](small), small, "exp", dtype).max() <= MAX_ULP[("exp", dtype)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_subnormal_results_round_once(fns, dtype):
    """Results below the smallest normal number: within one subnormal step of the reference."""
    lo, hi = (-103.9, -87.4) if dtype == "float32" else (-745.0, -708.5)
    x = _sweep(dtype, lo, hi, 100_003)
    got = fns["exp"](x).astype(np.longdouble)
    ref = np.exp(x.astype(np.longdouble))
    step = np.longdouble(np.finfo(dtype).smallest_subnormal)
    assert np.max(np.abs(got - ref)) <= step


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tanh_accuracy_over_its_range(fns, dtype):
    for lo, hi in ((-1.0, 1.0), (-25.0, 25.0), (-1e-4, 1e-4)):
        x = _sweep(dtype, lo, hi, 500_003)
        got = fns["tanh"](x)
        nonzero = x != 0
        err = _ulp_error(got[nonzero], x[nonzero], "tanh", dtype)
        assert err.max() <= MAX_ULP[("tanh", dtype)], (lo, hi)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_special_values_as_numpy(fns, dtype):
    info = np.finfo(dtype)
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, info.tiny, -info.tiny,
                  info.smallest_subnormal, 1e30, -1e30, info.max, -info.max,
                  np.log(info.max) * 1.001, np.log(info.tiny) * 1.2], dtype)
    for name in ("exp", "tanh"):
        got = fns[name](x)
        with np.errstate(over="ignore", under="ignore"):
            want = getattr(np, name)(x)
        exact = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1) | (x == 0)
        assert np.array_equal(got[exact], want[exact], equal_nan=True), name
        assert np.array_equal(np.signbit(got[exact]), np.signbit(want[exact])), name
        np.testing.assert_allclose(got[~exact], want[~exact], rtol=4 * info.eps)
