"""Every backend op against plain formulas, over shapes (1 row, 1 column, odd sizes) and dtypes."""

import inspect

import numpy as np
import pytest

from bpgpu.backends import OPS, Backend, get_backend
from bpgpu.backends.numpy_backend import NumpyBackend

from .conftest import TOL
from .reference import act, onehot

# the last shape is above the numba backend's PARALLEL_MIN, so parallel kernels are checked too
SHAPES = [(1, 1), (1, 7), (5, 1), (17, 33), (64, 100), (257, 300)]


@pytest.fixture
def be(backend_name):
    return get_backend(backend_name)


def dev(be, x, dtype=None):
    return be.asarray(np.array(x, copy=True), dtype=dtype)


def close(be, got, want, dtype, magnitude=None):
    """Compare with the dtype's tolerance; for a reduction pass ``magnitude`` (the largest sum of
    absolute terms): its rounding error grows with that, not with the result."""
    tol = dict(TOL[dtype])
    if magnitude is not None:
        tol["atol"] = max(tol["atol"], tol["rtol"] * float(magnitude))
    np.testing.assert_allclose(be.to_host(got), want, **tol)


def rand(shape, seed=0, lo=-3, hi=3):
    return np.random.default_rng(seed).uniform(lo, hi, shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity", "softmax"])
def test_bias_activation(be, dtype, shape, activation):
    z, b = rand(shape, 1), rand(shape[1:], 2)
    zd = dev(be, z, dtype)
    be.bias_activation(zd, dev(be, b, dtype), activation)
    close(be, zd, act(activation, z + b), dtype)


def test_sigmoid_extremes_no_warning(be, dtype):
    z = np.array([[-1000.0, -100.0, 0.0, 100.0, 1000.0]])
    zd = dev(be, z, dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        be.bias_activation(zd, dev(be, np.zeros(5), dtype), "sigmoid")
    got = be.to_host(zd)
    # exact: sigmoid(0) = 1/(1+1) and 1/(1+exp(-1000)) = 1/(1+0) are exact in IEEE arithmetic
    assert np.all(np.isfinite(got)) and got[0, 2] == 0.5 and got[0, 4] == 1.0 and got[0, 0] >= 0


def test_softmax_large_logits_stable(be, dtype):
    z = np.array([[1000.0, 1001.0, 999.0], [-1e4, 0, 1e4]])
    zd = dev(be, z, dtype)
    be.bias_activation(zd, dev(be, np.zeros(3), dtype), "softmax")
    close(be, zd, act("softmax", z), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "identity", "softmax"])
def test_activation_backward(be, dtype, shape, activation):
    z = rand(shape, 3)
    a = act(activation, z)
    g = rand(shape, 4)
    d = dev(be, g, dtype)
    be.activation_backward(d, dev(be, a, dtype), activation)
    if activation == "softmax":
        want = a * (g - (g * a).sum(axis=1, keepdims=True))
    else:
        want = {"sigmoid": g * a * (1 - a), "tanh": g * (1 - a * a), "relu": g * (a > 0),
                "identity": g}[activation]
    close(be, d, want, dtype)


PAIRS = [("softmax", "ce"), ("sigmoid", "bce"), ("sigmoid", "mse"), ("tanh", "mse"),
         ("relu", "mse"), ("identity", "mse"), ("softmax", "mse")]


@pytest.mark.parametrize("rows", [1, 3, 64, 20000])
@pytest.mark.parametrize("output,loss", PAIRS)
def test_output_delta_and_loss(be, dtype, rows, output, loss):
    n = 1 if output == "sigmoid" and loss == "bce" and rows == 3 else 5
    z = rand((rows, n), 5)
    a = act(output, z)
    if loss == "ce":
        y = onehot(np.random.default_rng(6).integers(0, n, rows), n)
    elif loss == "bce":
        y = np.random.default_rng(6).integers(0, 2, (rows, n)).astype(float)
    else:
        y = rand((rows, n), 6)
    ad, yd = dev(be, a, dtype), dev(be, y, dtype)
    delta = be.empty((rows, n), np.dtype(dtype))
    acc = be.zeros((1,), np.float64)
    be.output_delta(ad, yd, delta, output, loss, acc)
    g = (a - y) / rows
    if loss == "mse":
        want = {"sigmoid": g * a * (1 - a), "tanh": g * (1 - a * a), "relu": g * (a > 0),
                "identity": g, "softmax": a * (g - (g * a).sum(1, keepdims=True))}[output]
        value = 0.5 * ((a - y) ** 2).sum()
    elif loss == "ce":
        want, value = g, -(y * np.log(a)).sum()
    else:
        want, value = g, -(y * np.log(a) + (1 - y) * np.log(1 - a)).sum()
    close(be, delta, want, dtype)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(be.to_host(acc)[0], value, rtol=rtol * max(1, np.sqrt(rows / 64)))


def test_loss_never_logs_zero(be, dtype):
    a = dev(be, np.array([[0.0, 1.0]]), dtype)
    y = dev(be, np.array([[1.0, 0.0]]), dtype)
    for loss in ("ce", "bce"):
        acc = be.zeros((1,), np.float64)
        be.loss_sum(a, y, loss, acc)
        assert np.isfinite(be.to_host(acc)[0]) and be.to_host(acc)[0] > 10


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True)])
def test_gemm(be, dtype, shape, ta, tb):
    m, n = shape
    k = 9
    A = rand((k, m) if ta else (m, k), 7)
    B = rand((n, k) if tb else (k, n), 8)
    out = be.empty((m, n), np.dtype(dtype))
    Ad, Bd = dev(be, A, dtype), dev(be, B, dtype)
    be.gemm(Ad, Bd, out, trans_a=ta, trans_b=tb)
    A_, B_ = (A.T if ta else A), (B.T if tb else B)
    close(be, out, A_ @ B_, dtype, magnitude=(np.abs(A_) @ np.abs(B_)).max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("alpha,beta", [(-0.1, 1.0), (-0.05, 0.999), (2.0, 0.0)])
def test_gemm_alpha_beta(be, dtype, shape, ta, tb, alpha, beta):
    """BLAS's ``out = alpha op(a) op(b) + beta out`` (the fused SGD step); beta 0 ignores NaN."""
    m, n = shape
    k = 9
    A = rand((k, m) if ta else (m, k), 17)
    B = rand((n, k) if tb else (k, n), 18)
    C = rand((m, n), 19)
    out = dev(be, np.full((m, n), np.nan) if beta == 0.0 else C, dtype)
    be.gemm(dev(be, A, dtype), dev(be, B, dtype), out, trans_a=ta, trans_b=tb, alpha=alpha,
            beta=beta)
    A_, B_ = (A.T if ta else A), (B.T if tb else B)
    want = alpha * (A_ @ B_) + (beta * C if beta else 0.0)
    close(be, out, want, dtype, magnitude=abs(alpha) * (np.abs(A_) @ np.abs(B_)).max() + 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha,beta", [(-0.1, 1.0), (3.0, 0.0)])
def test_column_sums_alpha_beta(be, dtype, shape, alpha, beta):
    d = rand(shape, 20)
    y = rand((shape[1],), 21)
    out = dev(be, np.full(shape[1], np.nan) if beta == 0.0 else y, dtype)
    be.column_sums(dev(be, d, dtype), out, alpha=alpha, beta=beta)
    want = alpha * d.sum(axis=0) + (beta * y if beta else 0.0)
    close(be, out, want, dtype, magnitude=abs(alpha) * np.abs(d).sum(axis=0).max() + 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_column_sums(be, dtype, shape):
    d = rand(shape, 9)
    out = be.empty((shape[1],), np.dtype(dtype))
    be.column_sums(dev(be, d, dtype), out)
    close(be, out, d.sum(axis=0), dtype, magnitude=np.abs(d).sum(axis=0).max())


@pytest.mark.parametrize("rows", [50, 70000])
@pytest.mark.parametrize("n_out", [1, 4])
def test_count_correct(be, dtype, n_out, rows):
    rng = np.random.default_rng(10)
    a = rng.uniform(0, 1, (rows, n_out))
    y = onehot(rng.integers(0, n_out, rows), n_out) if n_out > 1 else rng.integers(0, 2, (rows, 1))
    acc = be.zeros((1,), np.float64)
    be.count_correct(dev(be, a, dtype), dev(be, y, dtype), acc)
    want = ((a >= 0.5) == (y >= 0.5)).sum() if n_out == 1 else (a.argmax(1) == y.argmax(1)).sum()
    assert be.to_host(acc)[0] == want


@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 13), (64, 784), (256, 784)])
def test_gather_rows_uint8_scaled(be, dtype, rows, cols):
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, (100, cols), dtype=np.uint8)
    idx = rng.integers(0, 100, rows)
    out = be.empty((rows, cols), np.dtype(dtype))
    be.gather_rows(dev(be, data), dev(be, idx), out, scale=0.98 / 255, shift=0.01)
    close(be, out, data[idx] * (0.98 / 255) + 0.01, dtype)


def test_gather_rows_float(be, dtype):
    data = rand((30, 6), 12)
    idx = np.array([29, 0, 5, 5])
    out = be.empty((4, 6), np.dtype(dtype))
    be.gather_rows(dev(be, data, dtype), dev(be, idx), out)
    close(be, out, data[idx], dtype)


@pytest.mark.parametrize("shape", [(1, 1), (8, 13), (300, 300)])
def test_dropout(be, dtype, shape):
    a, u, g = rand(shape, 13), np.random.default_rng(14).random(shape), rand(shape, 15)
    mask = be.empty(shape, np.dtype(dtype))
    out = be.empty(shape, np.dtype(dtype))
    ad = dev(be, a, dtype)
    be.dropout_forward(ad, dev(be, u, np.float32), 0.3, mask, out)
    keep = (u.astype(np.float32) >= 0.3) / 0.7
    close(be, out, a * keep, dtype)
    close(be, ad, a, dtype)   # input left intact for the derivative
    gd = dev(be, g, dtype)
    be.dropout_backward(gd, mask)
    close(be, gd, g * keep, dtype)


@pytest.fixture(params=[23, 70001], ids=["small", "large"])
def flat_n(request):
    return request.param


def _flat(seed, n=23):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=n)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_update(be, dtype, wd, flat_n):
    p, g = _flat(16, flat_n)
    pd, gd = dev(be, p, dtype), dev(be, g, dtype)
    be.sgd_update(pd, gd, 0.1, wd, 10)
    gg = g.copy()
    gg[:10] += wd * p[:10]
    close(be, pd, p - 0.1 * gg, dtype)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_momentum_update(be, dtype, nesterov, wd, flat_n):
    p, g = _flat(17, flat_n)
    v = np.random.default_rng(18).normal(size=p.size)
    pd, gd, vd = dev(be, p, dtype), dev(be, g, dtype), dev(be, v, dtype)
    be.momentum_update(pd, gd, vd, 0.1, 0.9, wd, 10, nesterov)
    gg = g.copy()
    gg[:10] += wd * p[:10]
    v2 = 0.9 * v + gg
    want = p - 0.1 * (gg + 0.9 * v2 if nesterov else v2)
    close(be, vd, v2, dtype)
    close(be, pd, want, dtype)


@pytest.mark.parametrize("step", [1, 7])
def test_adam_update(be, dtype, step, flat_n):
    p, g = _flat(19, flat_n)
    m = np.random.default_rng(20).normal(size=p.size)
    v = np.random.default_rng(21).uniform(0, 1, size=p.size)
    pd, gd, md, vd = (dev(be, x, dtype) for x in (p, g, m, v))
    be.adam_update(pd, gd, md, vd, 0.01, 0.9, 0.999, 1e-8, step, 0.01, 10)
    gg = g.copy()
    gg[:10] += 0.01 * p[:10]
    m2 = 0.9 * m + 0.1 * gg
    v2 = 0.999 * v + 0.001 * gg ** 2
    want = p - 0.01 * (m2 / (1 - 0.9 ** step)) / (np.sqrt(v2 / (1 - 0.999 ** step)) + 1e-8)
    close(be, md, m2, dtype)
    close(be, vd, v2, dtype)
    close(be, pd, want, dtype)


def test_transfer_and_copy(be, dtype):
    x = rand((3, 4), 22)
    d = be.zeros((3, 4), np.dtype(dtype))
    be.upload(x.astype(dtype), d)
    e = be.empty((3, 4), np.dtype(dtype))
    be.copy(d, e)
    be.synchronize()
    out = be.to_host(e)
    assert isinstance(out, np.ndarray)
    close(be, e, x, dtype)


def test_every_backend_keeps_the_base_signatures(backend_name):
    """The contract: an override never drifts from the base class's signature."""
    cls = type(get_backend(backend_name))
    for op in OPS:
        base = inspect.signature(getattr(Backend, op))
        mine = inspect.signature(getattr(cls, op))
        assert list(mine.parameters) == list(base.parameters), f"{cls.__name__}.{op}"
        for name, param in base.parameters.items():
            assert mine.parameters[name].default == param.default, f"{cls.__name__}.{op}({name})"


def test_ops_list_is_complete():
    public = {n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_")}
    assert set(OPS) <= public
    assert public - set(OPS) <= {"describe", "compute_threads", "thread_plan", "fuses_sgd",
                                 "compiled_epoch", "compiles_epochs", "compiled_epoch_mode",
                                 "load_kernels", "compile_stats"}
    assert issubclass(NumpyBackend, Backend)


def test_no_public_method_only_a_subclass_has(backend_name):
    """Code written against one backend runs on every backend: a public method is either in the
    base class (the contract) or private (as thinc's Ops test demands)."""
    cls = type(get_backend(backend_name))
    base_public = {n for n in dir(Backend) if not n.startswith("_") and callable(getattr(Backend, n))}
    mine = {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}
    assert mine - base_public == set()
    for name in base_public - set(OPS):
        assert (list(inspect.signature(getattr(cls, name)).parameters)
                == list(inspect.signature(getattr(Backend, name)).parameters)), name


def test_nan_propagates_like_numpy(be, dtype):
    """A diverging run must show NaN on every backend (fit detects divergence from it)."""
    z = np.array([[np.nan, -1.0, 2.0]])
    for act_name in ("relu", "sigmoid", "tanh"):
        zd = dev(be, z, dtype)
        be.bias_activation(zd, dev(be, np.zeros(3), dtype), act_name)
        assert np.isnan(be.to_host(zd)[0, 0])
    d = dev(be, np.array([[np.inf, np.nan, 1.0]]), dtype)
    with np.errstate(invalid="ignore"):   # inf * 0 is the point of the check
        be.activation_backward(d, dev(be, np.array([[0.0, -1.0, 2.0]]), dtype), "relu")
    got = be.to_host(d)[0]
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 1.0   # exact: 1 * relu'(2) = 1 * 1


def _philox_stream(key, counter, n):
    """numpy's own Generator over a Philox bit generator: the stream random_uniform promises."""
    bitgen = np.random.Philox(key=np.array(key, np.uint64), counter=np.array(counter, np.uint64))
    return np.random.Generator(bitgen).random(n, dtype=np.float32)


@pytest.mark.parametrize("shape,offset", [((1,), 0), ((3, 7), 5), ((64, 100), 0),
                                          ((257, 301), 13), ((9,), 8 * 1000 + 3)])
def test_random_uniform_is_numpys_philox_stream(be, shape, offset):
    """Bit for bit numpy's stream from element ``offset`` on, partial blocks at both ends
    included: every backend must draw the very same dropout masks (exact by definition: integer
    arithmetic and one exact int -> float conversion)."""
    key, counter = (0x0123456789ABCDEF, 42), (0, 17, 2, 99)
    out = be.empty(shape, np.float32)
    be.random_uniform(out, key, counter, offset)
    want = _philox_stream(key, counter, offset + int(np.prod(shape)))[offset:].reshape(shape)
    assert np.array_equal(be.to_host(out), want)


def test_random_uniform_carries_through_the_counter_words(be):
    """A counter about to wrap: the block counter carries into the higher words, as numpy's."""
    key, counter = (2**64 - 1, 5), (2**64 - 3, 2**64 - 1, 2**64 - 1, 9)
    out = be.empty((100,), np.float32)
    be.random_uniform(out, key, counter, 11)
    assert np.array_equal(be.to_host(out), _philox_stream(key, counter, 111)[11:])


def test_random_uniform_is_uniform_on_0_1(be):
    out = be.empty((200, 500), np.float32)
    be.random_uniform(out, (7, 8), (0, 1, 2, 3))
    u = be.to_host(out)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002


def test_one_launch_is_validated_as_a_whole(be, dtype):
    """Mixed dtypes, shapes or a transposed view in ONE op never reach a kernel (which would read
    or write out of bounds): the op gives the reference's answer, or the reference's error."""
    other = "float32" if dtype == "float64" else "float64"
    p, g, v = (rand((50,), s) for s in (1, 2, 3))
    pd = dev(be, p, dtype)
    be.momentum_update(pd, dev(be, g, other), dev(be, v, dtype), 0.1, 0.9)
    close(be, pd, p - 0.1 * (0.9 * v + g), "float32")
    a = rand((6, 4), 4, 0, 1)
    acc = be.zeros((1,), np.float64)
    be.count_correct(dev(be, a, dtype), dev(be, onehot(np.argmax(a, 1), 4), other), acc)
    assert be.to_host(acc)[0] == 6
    u = np.random.default_rng(5).random((4, 6)).astype(np.float32)
    ad, mask, out = dev(be, a, dtype), be.empty((6, 4), np.dtype(dtype)), be.empty((6, 4), np.dtype(dtype))
    be.dropout_forward(ad, dev(be, u).T, 0.5, mask, out)        # a transposed view
    close(be, out, a * (u.T >= 0.5) / 0.5, dtype)
    with pytest.raises((ValueError, IndexError)):
        be.activation_backward(dev(be, rand((6, 4)), dtype), dev(be, rand((6, 5)), dtype), "sigmoid")
    with pytest.raises(IndexError):
        be.gather_rows(dev(be, np.zeros((5, 3), np.uint8)), dev(be, np.array([0, 5])),
                       be.empty((2, 3), np.dtype(dtype)), 1 / 255)
