"""Every fused kernel, run by the host emulation through the real CupyBackend, against the numpy
backend: shapes with 1 row, 1 column, odd sizes and grid-stride loops that iterate, both dtypes,
NaN and extreme values. Every launch's arguments are type-checked against the kernel's signature
and every buffer has a guard page after it (hostcuda.py, devmem.py)."""

import numpy as np
import pytest

from bpgpu.backends.cupy_backend import (PLAIN_KERNELS, STEP_KERNELS, TEMPLATE_KERNELS,
                                         kernel_source)

from .conftest import SHAPES, delta, emulated, launched, needs_gxx, same, with_specials
from .hostcuda import kernel_signatures

pytestmark = [pytest.mark.emulated, needs_gxx]

ACTS = ["sigmoid", "tanh", "relu", "identity", "softmax"]


def rand(shape, seed, scale=3.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


def pair(be, ref, x, dtype):
    """The same host array on the emulated device and in the numpy backend."""
    return be.asarray(x, dtype=dtype), ref.asarray(x, dtype=dtype)


@pytest.fixture(autouse=True)
def _quiet():
    with np.errstate(all="ignore"):   # the numpy reference meets NaN and inf on purpose
        yield


@pytest.mark.parametrize("sms", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTS)
def test_bias_activation(ref, dtype, shape, activation, sms):
    be = emulated(sm_count=sms)
    z, b = with_specials(rand(shape, 1), 1), rand(shape[1:], 2)
    zd, zr = pair(be, ref, z, dtype)
    bd, br = pair(be, ref, b, dtype)
    before = launched(be)
    be.bias_activation(zd, bd, activation)
    ref.bias_activation(zr, br, activation)
    same(be, zd, zr, dtype)
    kernel = "bias_softmax" if activation == "softmax" else "bias_activation"
    assert delta(before, launched(be)) == {kernel: 1}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "softmax"])
def test_activation_backward(be, ref, dtype, shape, activation):
    a = rand(shape, 3)
    a = ref.bias_activation(a, np.zeros(shape[1]), activation)   # a real saved output
    g = with_specials(rand(shape, 4), 4)
    gd, gr = pair(be, ref, g, dtype)
    ad, ar = pair(be, ref, a, dtype)
    before = launched(be)
    be.activation_backward(gd, ad, activation)
    ref.activation_backward(gr, ar, activation)
    same(be, gd, gr, dtype)
    kernel = "softmax_backward" if activation == "softmax" else "activation_backward"
    assert delta(before, launched(be)) == {kernel: 1}


PAIRS = [("softmax", "ce"), ("sigmoid", "bce"), ("sigmoid", "mse"), ("tanh", "mse"),
         ("relu", "mse"), ("identity", "mse"), ("softmax", "mse")]


def _outputs(ref, shape, output, loss, seed):
    rows, n = shape
    rng = np.random.default_rng(seed)
    a = ref.bias_activation(rand(shape, seed), np.zeros(n), output)
    if loss == "ce":
        y = np.eye(n)[rng.integers(0, n, rows)]
    elif loss == "bce":
        y = rng.integers(0, 2, shape).astype(float)
    else:
        y = rand(shape, seed + 1)
    return a, y


@pytest.mark.parametrize("want_loss", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 70), (65, 3), (300, 13)])
@pytest.mark.parametrize("output,loss", PAIRS)
def test_output_delta(be, ref, dtype, shape, output, loss, want_loss):
    a, y = _outputs(ref, shape, output, loss, 5)
    ad, ar = pair(be, ref, a, dtype)
    yd, yr = pair(be, ref, y, dtype)
    dd, dr = be.empty(shape, np.dtype(dtype)), ref.empty(shape, np.dtype(dtype))
    acc_d, acc_r = be.zeros((1,), np.float64), ref.zeros((1,), np.float64)
    acc_d[0] = acc_r[0] = 1.5                       # added to, not overwritten
    before = launched(be)
    be.output_delta(ad, yd, dd, output, loss, acc_d if want_loss else None)
    ref.output_delta(ar, yr, dr, output, loss, acc_r if want_loss else None)
    assert delta(before, launched(be)) == {"output_delta": 1}
    same(be, dd, dr, dtype)
    terms = np.abs(a - y).sum() + np.abs(np.log(np.clip(a, 1e-30, None))).sum() * (loss != "mse")
    same(be, acc_d, acc_r, dtype, magnitude=terms * 4)


@pytest.mark.parametrize("want_loss", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (3, 70), (65, 3), (300, 13)])
@pytest.mark.parametrize("output,loss", PAIRS)
def test_weighted_output_delta_is_one_launch_equal_to_numpy(be, ref, dtype, shape, output, loss,
                                                           want_loss):
    """Sample weights in the fused kernel: each row's delta and loss times its weight (zeros
    included), one launch, as numpy's generic path computes them."""
    a, y = _outputs(ref, shape, output, loss, 7)
    w = np.random.default_rng(8).uniform(0, 3, shape[0])
    w[::4] = 0.0
    ad, ar = pair(be, ref, a, dtype)
    yd, yr = pair(be, ref, y, dtype)
    wd, wr = pair(be, ref, w, dtype)
    dd, dr = be.empty(shape, np.dtype(dtype)), ref.empty(shape, np.dtype(dtype))
    acc_d, acc_r = be.zeros((1,), np.float64), ref.zeros((1,), np.float64)
    before = launched(be)
    be.output_delta(ad, yd, dd, output, loss, acc_d if want_loss else None, wd)
    ref.output_delta(ar, yr, dr, output, loss, acc_r if want_loss else None, wr)
    assert delta(before, launched(be)) == {"output_delta": 1}
    same(be, dd, dr, dtype)
    assert not be.to_host(dd)[::4].any()             # weight 0: no gradient from the row
    terms = np.abs(a - y).sum() + np.abs(np.log(np.clip(a, 1e-30, None))).sum() * (loss != "mse")
    same(be, acc_d, acc_r, dtype, magnitude=terms * 4 * 3)


@pytest.mark.parametrize("output,loss", [("softmax", "ce"), ("sigmoid", "bce"), ("tanh", "mse")])
def test_output_delta_nan_and_extremes(be, ref, dtype, output, loss):
    """NaN in an output row reaches its deltas and the loss sum, as in numpy; outputs of exactly
    0 and 1 never take log(0)."""
    a, y = _outputs(ref, (40, 7), output, loss, 6)
    a[3, 2] = np.nan
    a[5, :] = 0.0
    a[6, :] = 1.0
    ad, ar = pair(be, ref, a, dtype)
    yd, yr = pair(be, ref, y, dtype)
    dd, dr = be.empty(a.shape, np.dtype(dtype)), ref.empty(a.shape, np.dtype(dtype))
    acc_d, acc_r = be.zeros((1,), np.float64), ref.zeros((1,), np.float64)
    be.output_delta(ad, yd, dd, output, loss, acc_d)
    ref.output_delta(ar, yr, dr, output, loss, acc_r)
    same(be, dd, dr, dtype)
    assert np.isnan(be.to_host(acc_d)[0]) and np.isnan(acc_r[0])
    a[3, 2] = 0.5                                   # without the NaN: finite, and equal
    ad, ar = pair(be, ref, a, dtype)
    acc_d, acc_r = be.zeros((1,), np.float64), ref.zeros((1,), np.float64)
    be.output_delta(ad, yd, dd, output, loss, acc_d)
    ref.output_delta(ar, yr, dr, output, loss, acc_r)
    assert np.isfinite(be.to_host(acc_d)[0])
    same(be, acc_d, acc_r, dtype, magnitude=200 * a.size)


@pytest.mark.parametrize("rows", [1, 5, 65, 300])
@pytest.mark.parametrize("n_out", [1, 2, 10, 40])
def test_count_correct(be, ref, dtype, n_out, rows):
    """numpy's argmax: the first maximum wins ties, NaN counts as the maximum."""
    rng = np.random.default_rng(10 + rows + n_out)
    a = rng.integers(0, 4, (rows, n_out)).astype(float)   # many ties
    y = rng.integers(0, 4, (rows, n_out)).astype(float)
    if n_out == 1:
        a, y = a / 6, y / 6                                 # both sides of 0.5, and 0.5 itself
    if rows > 2:
        a[1, -1] = np.nan
        y[2, 0] = np.nan
    ad, ar = pair(be, ref, a, dtype)
    yd, yr = pair(be, ref, y, dtype)
    acc_d, acc_r = be.zeros((1,), np.float64), ref.zeros((1,), np.float64)
    acc_d[0] = acc_r[0] = 3
    before = launched(be)
    be.count_correct(ad, yd, acc_d)
    ref.count_correct(ar, yr, acc_r)
    assert delta(before, launched(be)) == {"count_correct": 1}
    assert be.to_host(acc_d)[0] == acc_r[0]


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 13), (64, 784), (300, 7), (3, 2100)])
def test_gather_rows(be, ref, dtype, rows, cols):
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (100, cols), dtype=np.uint8)
    idx = rng.integers(0, 100, rows)
    idx[0] = 99
    out_d, out_r = be.empty((rows, cols), np.dtype(dtype)), ref.empty((rows, cols), np.dtype(dtype))
    before = launched(be)
    be.gather_rows(be.asarray(data), be.asarray(idx), out_d, scale=0.98 / 255, shift=0.01)
    ref.gather_rows(data, idx, out_r, scale=0.98 / 255, shift=0.01)
    same(be, out_d, out_r, dtype)
    floats = rand((100, cols), 12)
    be.gather_rows(be.asarray(floats, dtype=dtype), be.asarray(idx), out_d)
    ref.gather_rows(floats.astype(dtype), idx, out_r)
    same(be, out_d, out_r, dtype)
    assert delta(before, launched(be)) == {"gather_scale": 1, "gather": 1}


def test_gather_rows_index_out_of_range(be, dtype):
    """An index out of range raises IndexError (as every backend); the check reads each index
    buffer once, so the slices of one permutation cost nothing more. If a checked buffer is then
    changed in place, the kernel's own guard still never reads out of bounds: NaN rows."""
    data = np.arange(12, dtype=np.uint8).reshape(4, 3)
    out = be.empty((4, 3), np.dtype(dtype))
    with pytest.raises(IndexError, match="row index 4 is out of bounds for 4 rows"):
        be.gather_rows(be.asarray(data), be.asarray(np.array([1, 4, -1, 3])), out, scale=1.0)
    order = be.asarray(np.array([3, 1, 0, 2, 2, 1, 0, 3]))
    be._index_ranges.clear()
    for start in (0, 4):
        be.gather_rows(be.asarray(data), order[start:start + 4], out, scale=1.0)
    assert len(be._index_ranges) == 1                       # one read for the whole buffer
    np.testing.assert_array_equal(be.to_host(out), data[[2, 1, 0, 3]])
    order[5] = 9                                            # stale: changed after the check
    order[6] = -1
    be.gather_rows(be.asarray(data), order[4:8], out, scale=1.0)
    got = be.to_host(out)
    np.testing.assert_array_equal(got[[0, 3]], data[[2, 3]])
    assert np.isnan(got[[1, 2]]).all()


AUGMENTS = {"shift": dict(translate=3), "shift+flip": dict(translate=2, flip=0.5),
            "affine": dict(translate=2, rotate=0.3, zoom=0.2, shear=0.3, flip=0.5),
            "elastic": dict(translate=1, rotate=0.1, field=True)}


@pytest.mark.parametrize("shape", [(28, 28), (5, 3), (1, 1), (20, 40)])
@pytest.mark.parametrize("kind", AUGMENTS)
def test_gather_augmented(ref, dtype, shape, kind):
    """One block per image: 9 images on a 1-SM device (8 blocks) make blocks stride over the
    batch; 28x28 and 20x40 images make threads stride over the pixels. uint8 rows scaled and
    float rows as they are; translation alone equals the reference bit for bit."""
    be = emulated(sm_count=1)
    height, width = shape
    rng = np.random.default_rng(13)
    data = rng.integers(0, 256, (30, height * width), dtype=np.uint8)
    idx = rng.integers(0, 30, 9)
    uniform = rng.random((9, 8), dtype=np.float32)
    args = dict(AUGMENTS[kind])
    field = None
    if args.pop("field", False):
        field = rng.normal(size=(9, 2, height, width)) * 2.0
    for src, scale, shift in ((data, 0.98 / 255, 0.01), (rand(data.shape, 14), 1.0, 0.0)):
        src = src if src.dtype == np.uint8 else src.astype(dtype)
        out_d = be.empty((9, height * width), np.dtype(dtype))
        out_r = ref.empty((9, height * width), np.dtype(dtype))
        f_d = None if field is None else be.asarray(field, dtype=dtype)
        f_r = None if field is None else field.astype(dtype)
        before = launched(be)
        be.gather_augmented(be.asarray(src), be.asarray(idx), out_d, be.asarray(uniform), f_d,
                            height, width, scale=scale, shift=shift, **args)
        ref.gather_augmented(src, idx, out_r, uniform, f_r, height, width, scale=scale,
                             shift=shift, **args)
        name = "gather_augmented_scale" if src.dtype == np.uint8 else "gather_augmented"
        assert delta(before, launched(be)) == {name: 1}
        if kind.startswith("shift"):
            np.testing.assert_array_equal(be.to_host(out_d), out_r)
        else:
            same(be, out_d, out_r, dtype, magnitude=np.abs(out_r).max())


def test_gather_augmented_index_out_of_range(be, dtype):
    """As the plain gather: IndexError before launching; a stale buffer gives NaN rows."""
    data = np.arange(4 * 9, dtype=np.uint8).reshape(4, 9)
    out = be.empty((3, 9), np.dtype(dtype))
    uniform = be.asarray(np.full((3, 8), 0.5, np.float32))
    with pytest.raises(IndexError, match="row index 4 is out of bounds for 4 rows"):
        be.gather_augmented(be.asarray(data), be.asarray(np.array([1, 4, 2])), out, uniform, None,
                            3, 3, translate=1)
    order = be.asarray(np.array([3, 1, 0, 2, 0, 1]))
    be.gather_augmented(be.asarray(data), order[:3], out, uniform, None, 3, 3, rotate=0.2)
    order[4] = 7                                            # stale: changed after the check
    be.gather_augmented(be.asarray(data), order[3:], out, uniform, None, 3, 3, rotate=0.2)
    got = be.to_host(out)
    assert np.isnan(got[1]).all() and not np.isnan(got[[0, 2]]).any()


@pytest.mark.parametrize("offset", [0, 1, 7, 8, 13, 1000003])
@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (2100,), (97, 101)])
def test_random_uniform_bit_identical(be, ref, shape, offset):
    key = (0x0123456789ABCDEF, 42)
    counter = (5, 9, 2, 7)
    out_d, out_r = be.empty(shape, np.float32), ref.empty(shape, np.float32)
    before = launched(be)
    be.random_uniform(out_d, key, counter, offset)
    ref.random_uniform(out_r, key, counter, offset)
    assert delta(before, launched(be)) == {"random_uniform": 1}
    np.testing.assert_array_equal(be.to_host(out_d), out_r)


@pytest.mark.parametrize("counter", [
    (2**64 - 1, 0, 0, 0),                                  # carry into word 1 at the first block
    (2**64 - 3, 2**64 - 1, 2**64 - 1, 11),                 # carries through to word 3 mid-array
    (2**64 - 2, 2**64 - 1, 2**64 - 1, 2**64 - 1),          # the 256-bit counter wraps to 0
])
@pytest.mark.parametrize("offset", [0, 5, 16])
def test_random_uniform_counter_carry(be, ref, counter, offset):
    key = (2**64 - 1, 2**63 + 5)
    out_d, out_r = be.empty((61,), np.float32), ref.empty((61,), np.float32)
    be.random_uniform(out_d, key, counter, offset)
    ref.random_uniform(out_r, key, counter, offset)
    np.testing.assert_array_equal(be.to_host(out_d), out_r)


def test_random_uniform_is_numpys_philox_stream(be):
    """Independently of the reference op: numpy's own Generator(Philox) stream, sliced."""
    key, counter = (11, 22), (33, 44, 55, 66)
    stream = np.random.Generator(np.random.Philox(key=np.array(key, np.uint64),
                                                  counter=np.array(counter, np.uint64)))
    want = stream.random(1000, dtype=np.float32)
    out = be.empty((990,), np.float32)
    be.random_uniform(out, key, counter, 10)
    np.testing.assert_array_equal(be.to_host(out), want[10:])


@pytest.mark.parametrize("shape", [(1, 1), (8, 13), (97, 101)])
def test_dropout(be, ref, dtype, shape):
    a, g = with_specials(rand(shape, 13), 13), rand(shape, 15)
    u = np.random.default_rng(14).random(shape).astype(np.float32)
    ad, ar = pair(be, ref, a, dtype)
    ud = be.asarray(u)
    md, od = be.empty(shape, np.dtype(dtype)), be.empty(shape, np.dtype(dtype))
    mr, orr = ref.empty(shape, np.dtype(dtype)), ref.empty(shape, np.dtype(dtype))
    before = launched(be)
    be.dropout_forward(ad, ud, 0.3, md, od)
    ref.dropout_forward(ar, u, 0.3, mr, orr)
    same(be, od, orr, dtype)
    same(be, md, mr, dtype)
    gd, gr = pair(be, ref, g, dtype)
    be.dropout_backward(gd, md)
    ref.dropout_backward(gr, mr)
    same(be, gd, gr, dtype)
    assert delta(before, launched(be)) == {"dropout_forward": 1, "multiply_inplace": 1}


FLAT = [1, 7, 2100, 9797]


@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_update(be, ref, dtype, n, wd):
    p, g = with_specials(rand(n, 16), 16), rand(n, 17)
    pd, pr = pair(be, ref, p, dtype)
    gd, gr = pair(be, ref, g, dtype)
    be.sgd_update(pd, gd, 0.1, wd, n // 2)
    ref.sgd_update(pr, gr, 0.1, wd, n // 2)
    same(be, pd, pr, dtype)
    assert be._launches["sgd_update"] == 1


@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_momentum_update(be, ref, dtype, n, nesterov, wd):
    p, g, v = rand(n, 18), rand(n, 19), rand(n, 20)
    pd, pr = pair(be, ref, p, dtype)
    gd, gr = pair(be, ref, g, dtype)
    vd, vr = pair(be, ref, v, dtype)
    be.momentum_update(pd, gd, vd, 0.1, 0.9, wd, n, nesterov)
    ref.momentum_update(pr, gr, vr, 0.1, 0.9, wd, n, nesterov)
    same(be, vd, vr, dtype)
    same(be, pd, pr, dtype)
    assert be._launches["momentum_update"] == 1


@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("step", [1, 7])
def test_adam_update(be, ref, dtype, n, step):
    p, g, m = rand(n, 21), rand(n, 22), rand(n, 23)
    v = np.random.default_rng(24).uniform(0, 1, n)
    pd, pr = pair(be, ref, p, dtype)
    gd, gr = pair(be, ref, g, dtype)
    md, mr = pair(be, ref, m, dtype)
    vd, vr = pair(be, ref, v, dtype)
    be.adam_update(pd, gd, md, vd, 0.01, 0.9, 0.999, 1e-8, step, 0.01, 0)
    ref.adam_update(pr, gr, mr, vr, 0.01, 0.9, 0.999, 1e-8, step, 0.01, 0)
    for got, want in ((md, mr), (vd, vr), (pd, pr)):
        same(be, got, want, dtype)
    assert be._launches["adam_update"] == 1


GEMM_SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 4), (17, 33, 9), (64, 100, 10), (3, 2100, 2)]


@pytest.mark.parametrize("mkn", GEMM_SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.1, 1.0), (0.5, 0.999)])
def test_gemm(be, ref, dtype, mkn, ta, tb, alpha, beta):
    """The row-major to column-major mapping of cublasGemmEx, every transpose; beta 0 ignores
    (NaN) contents of the output, as BLAS does."""
    m, k, n = mkn
    A = rand((k, m) if ta else (m, k), 25)
    B = rand((n, k) if tb else (k, n), 26)
    C = np.full((m, n), np.nan) if beta == 0 else rand((m, n), 27)
    Ad, Ar = pair(be, ref, A, dtype)
    Bd, Br = pair(be, ref, B, dtype)
    Cd, Cr = pair(be, ref, C, dtype)
    before = launched(be)
    be.gemm(Ad, Bd, Cd, ta, tb, alpha, beta)
    ref.gemm(Ar, Br, Cr, ta, tb, alpha, beta)
    assert delta(before, launched(be)) == {"cublas_gemm": 1}
    A_, B_ = (A.T if ta else A), (B.T if tb else B)
    same(be, Cd, Cr, dtype, magnitude=(np.abs(A_) @ np.abs(B_)).max() + 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.1, 1.0)])
def test_column_sums(be, ref, dtype, shape, alpha, beta):
    d = rand(shape, 28)
    y = np.full(shape[1], np.nan) if beta == 0 else rand(shape[1], 29)
    dd, dr = pair(be, ref, d, dtype)
    yd, yr = pair(be, ref, y, dtype)
    be.column_sums(dd, yd, alpha, beta)
    ref.column_sums(dr, yr, alpha, beta)
    same(be, yd, yr, dtype, magnitude=np.abs(d).sum(axis=0).max() + 1)
    assert be._launches["cublas_gemm"] == 1
    assert be.xp.cuda.cublas.calls[-1][0] == (68 if dtype == "float32" else 70)  # never TF32


def test_every_instantiation_is_launched(ref):
    """One pass over every op, both dtypes: the set of kernel instantiations launched is exactly
    the set the source defines but for the captured step's own kernels (STEP_KERNELS, launched
    by the graph epochs of test_graph.py), so no kernel escapes the comparisons above."""
    be = emulated()
    for dtype in ("float32", "float64"):
        dt = np.dtype(dtype)
        z = be.asarray(rand((9, 5), 30), dtype=dtype)
        b = be.asarray(np.zeros(5), dtype=dtype)
        be.bias_activation(z, b, "sigmoid")
        be.bias_activation(z, b, "softmax")
        d = be.asarray(rand((9, 5), 31), dtype=dtype)
        be.activation_backward(d, z, "tanh")
        be.activation_backward(d, z, "softmax")
        be.output_delta(z, z, d, "softmax", "ce", be.zeros((1,), np.float64))
        be.count_correct(z, z, be.zeros((1,), np.float64))
        idx = be.asarray(np.array([0, 2]))
        be.gather_rows(be.asarray(np.ones((3, 5), np.uint8)), idx, be.empty((2, 5), dt))
        be.gather_rows(z, idx, be.empty((2, 5), dt))
        warp = be.asarray(np.full((2, 8), 0.5, np.float32))
        be.gather_augmented(be.asarray(np.ones((3, 6), np.uint8)), idx, be.empty((2, 6), dt),
                            warp, None, 2, 3, translate=1)
        be.gather_augmented(be.asarray(np.ones((3, 6)), dtype=dtype), idx, be.empty((2, 6), dt),
                            warp, None, 2, 3, rotate=0.1)
        u = be.empty((9, 5), np.float32)
        be.random_uniform(u, (1, 2), (3, 4, 5, 6))
        mask, out = be.empty((9, 5), dt), be.empty((9, 5), dt)
        be.dropout_forward(z, u, 0.5, mask, out)
        be.dropout_backward(d, mask)
        p, g, m, v = (be.asarray(np.full(7, 0.5), dtype=dtype) for _ in range(4))
        be.sgd_update(p, g, 0.1)
        be.momentum_update(p, g, m, 0.1, 0.9)
        be.adam_update(p, g, m, v, 0.1, 0.9, 0.99, 1e-8, 1)
    defined = set(kernel_signatures(kernel_source()))
    step_only = {e for e in defined if e.split("<")[0] in STEP_KERNELS}
    assert set(be.xp.launches) == defined - step_only
    assert len(defined) == 2 * len(TEMPLATE_KERNELS) + len(PLAIN_KERNELS)


def test_warmup_loads_every_kernel_and_the_gemm_path():
    from bpgpu.warmup import warmup
    be = emulated()
    res = warmup(be)
    assert res["kernels"] == 2 * len(TEMPLATE_KERNELS) + len(PLAIN_KERNELS) == len(be._functions)
    assert res["seconds"] > 0
    assert be.fuses_sgd("float32") and be.fuses_sgd("float64") and not be.fuses_sgd("float16")


def _backends():
    from bpgpu._compat import has_numba
    from bpgpu.backends import get_backend
    names = ["numpy"] + (["numba"] if has_numba() else [])
    return [get_backend(n) for n in names] + [emulated()]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_width_rows_are_refused_by_every_backend(dtype):
    """A softmax or an argmax over rows of no columns: numpy raises, and so must every backend
    (a kernel would read element 0 of an empty row: an illegal address on a GPU)."""
    for be in _backends():
        z = be.zeros((5, 0), dtype)
        with pytest.raises(ValueError):
            be.bias_activation(z, be.zeros((0,), dtype), "softmax")
        with pytest.raises(ValueError):
            be.count_correct(z, be.zeros((5, 0), dtype), be.zeros((1,), np.float64))
        out = be.empty((2, 0), dtype)          # images of no pixels: nothing to write, no crash
        be.gather_augmented(be.asarray(np.ones((3, 0), np.uint8)), be.asarray(np.array([0, 1])),
                            out, be.asarray(np.full((2, 8), 0.5, np.float32)), None, 1, 0,
                            translate=1)
        assert be.to_host(out).shape == (2, 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scaled", [True, False], ids=["uint8", "float"])
def test_a_nan_elastic_field_gives_a_nan_pixel_everywhere(dtype, scaled):
    """The op contract's rule (Backend.gather_augmented): a NaN displacement makes its pixel
    NaN, whatever scale and shift; every other pixel as without the NaN."""
    images = np.arange(1, 33).reshape(2, 16)
    field = np.random.default_rng(0).normal(0, 0.4, (2, 2, 4, 4))
    field[1, 0, 1, 2] = np.nan
    field[0, 1, 3, 0] = np.nan
    results = []
    for be in _backends():
        data = be.asarray(images.astype(np.uint8 if scaled else dtype))
        out = be.empty((2, 16), dtype)
        be.gather_augmented(data, be.asarray(np.array([1, 0])), out,
                            be.asarray(np.full((2, 8), 0.3, np.float32)),
                            be.asarray(field.astype(dtype)), 4, 4, rotate=0.2,
                            **({"scale": 1 / 255, "shift": -0.5} if scaled else {}))
        results.append((be.name, be.to_host(out)))
    lost = np.zeros((2, 16), bool)
    lost[1, 4 + 2] = lost[0, 12] = True
    for name, got in results:
        assert np.array_equal(np.isnan(got), lost), name
        np.testing.assert_allclose(got[~lost], results[0][1][~lost],
                                   rtol=1e-6 if dtype == "float32" else 1e-12, err_msg=name)
