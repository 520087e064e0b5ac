"""The model's math against independent references: finite differences, a hand-worked SGD step,
and the plain-NumPy reference implementation in tests/reference.py."""

import itertools

import numpy as np
import pytest

import bpgpu
from bpgpu.activations import HIDDEN_ACTIVATIONS, VALID_OUTPUT_LOSS

from .conftest import TOL, rel_norm
from .reference import forward_backward, onehot

COMBOS = [(out, loss) for loss, outs in VALID_OUTPUT_LOSS.items() for out in outs]


def _data(sizes, output, loss, rows=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, sizes[0]))
    n = sizes[-1]
    if loss == "ce":
        Y = rng.integers(0, n, rows)
    elif loss == "bce" or output == "sigmoid":
        Y = rng.uniform(0.05, 0.95, (rows, n))
    elif output == "softmax":
        Y = rng.dirichlet(np.ones(n), rows)
    else:
        Y = rng.normal(size=(rows, n))
    return X, Y


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("output,loss", COMBOS)
def test_gradcheck_every_activation_output_loss(backend_name, depth, hidden, output, loss):
    """Central differences in float64: max relative error below 1e-6, depths 1-3."""
    sizes = [4] + [5] * (depth - 1) + [3]
    net = bpgpu.MLP(sizes, activation=hidden, output=output, loss=loss, dtype="float64",
                    backend=backend_name, seed=depth)
    X, Y = _data(sizes, output, loss)
    err = bpgpu.gradcheck(net, X, Y)
    assert err < 1e-6, f"{hidden}/{output}/{loss} depth {depth}: {err:.2e}"


@pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("output,loss", COMBOS)
def test_gradients_match_plain_reference(backend_name, dtype, hidden, output, loss):
    sizes = [7, 6, 5, 4]
    net = bpgpu.MLP(sizes, activation=hidden, output=output, loss=loss, dtype=dtype,
                    backend=backend_name, seed=3)
    X, Y = _data(sizes, output, loss, rows=9, seed=4)
    W, b = net.get_params()
    T = onehot(Y, sizes[-1]) if loss == "ce" else Y
    value, dW_ref, db_ref = forward_backward([w.astype(float) for w in W],
                                             [x.astype(float) for x in b],
                                             [hidden] * 2 + [output], loss, X, T)
    dW, db = net.gradients(X, Y)
    tol = 1e-4 if dtype == "float32" else 1e-10
    for got, want in zip(dW + db, dW_ref + db_ref):
        assert rel_norm(got, want) < tol
    assert net.loss(X, Y) == pytest.approx(value, rel=tol)


def test_one_sgd_step_worked_by_hand(backend_name):
    """2-2-1 sigmoid network, quadratic cost, x = (1, 0.5), y = 1, lr = 0.5, worked out by hand:

    z1 = x W1 + b1 = (0.25, 0.5);  a1 = sigma(z1) = (0.5621765009, 0.6224593312)
    z2 = a1 W2 + b2 = 0.1076126517; a2 = 0.5268772303; C = ½(a2 - 1)² = 0.1119225776
    delta2 = (a2 - y) a2 (1 - a2) = -0.1179389154
    delta1 = delta2 W2 * a1 (1 - a1) = (-0.0145143934, 0.0166296498)
    W2 -= lr a1ᵀ delta2; b2 -= lr delta2; W1 -= lr xᵀ delta1; b1 -= lr delta1
    """
    net = _worked_net(backend_name)
    X, Y = np.array([[1.0, 0.5]]), np.array([[1.0]])
    assert net.predict_proba(X)[0, 0] == pytest.approx(0.5268772303265844, abs=1e-12)
    assert net.loss(X, Y) == pytest.approx(0.11192257759172193, abs=1e-12)
    net.step(X, Y, lr=0.5)
    _assert_worked_step(net)


def _worked_net(backend_name):
    """The 2-2-1 network of the hand-worked step, before the step."""
    net = bpgpu.MLP([2, 2, 1], activation="sigmoid", output="sigmoid", loss="mse",
                    dtype="float64", backend=backend_name)
    net.set_params([np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[0.5], [-0.6]])],
                   [np.array([0.0, 0.1]), np.array([0.2])])
    return net


def _assert_worked_step(net):
    """The parameters after the hand-worked step (lr 0.5)."""
    W, b = net.get_params()
    np.testing.assert_allclose(W[0], [[0.10725719668934332, 0.19168517512144312],
                                      [0.30362859834467165, 0.3958425875607216]], atol=1e-12)
    np.testing.assert_allclose(b[0], [0.007257196689343313, 0.09168517512144313], atol=1e-12)
    np.testing.assert_allclose(W[1], [[0.5331512433847245], [-0.5632939108033663]], atol=1e-12)
    np.testing.assert_allclose(b[1], [0.2589694576925387], atol=1e-12)


def test_momentum_training_matches_plain_reference(backend_name, dtype, mnist_data):
    """100 SGD-with-momentum steps on MNIST batches: the engine (flat buffer, in-place ops,
    workspaces, weight decay on weights only) against the plain reference loop."""
    (X, y), _ = mnist_data
    net = bpgpu.MLP([784, 32, 10], dtype=dtype, backend=backend_name, seed=5)
    W, b = [w.astype(float) for w in net.get_params()[0]], [x.astype(float) for x in net.get_params()[1]]
    vW, vb = [np.zeros_like(w) for w in W], [np.zeros_like(x) for x in b]
    rng = np.random.default_rng(6)
    idx = [rng.integers(0, len(X), 64) for _ in range(100)]
    for i in idx:
        xb = X[i] / 255.0
        _, dW, db = forward_backward(W, b, ["sigmoid", "softmax"], "ce", xb, onehot(y[i], 10))
        for l in range(2):
            vW[l] = 0.9 * vW[l] + dW[l] + 1e-4 * W[l]
            vb[l] = 0.9 * vb[l] + db[l]
            W[l] -= 0.1 * vW[l]
            b[l] -= 0.1 * vb[l]
    # the engine, driven through the same batches with its own optimizer
    from bpgpu.optim import make_optimizer
    opt = make_optimizer("momentum", net.backend, net.n_params, net.dtype, lr=0.1, momentum=0.9,
                         weight_decay=1e-4, n_decay=net.n_weights)
    got = _engine_steps(net, X, y, idx, opt)
    want = np.concatenate([a.ravel() for a in itertools.chain(W, b)])
    assert rel_norm(got, want) < (1e-5 if dtype == "float32" else 1e-12)


def _engine_steps(net, X, y, batches, optimizer):
    """Drive the engine's training step through ``batches`` (row-index arrays) with
    ``optimizer``; return the flat parameters."""
    X_dev = net.prepare_inputs(X)
    T_dev = net.backend.asarray(net.targets_from(y, len(y)))
    ws = net.workspace(len(batches[0]))
    for i in batches:
        net.train_step(ws, X_dev, T_dev, net.backend.asarray(i), optimizer)
    return np.concatenate([a.ravel() for a in itertools.chain(*net.get_params())])


class _FusedSGD:
    """An optimizer that always asks for the update inside the gradient GEMMs (on every backend:
    the reference ops do it in two passes), so the fused path is checked everywhere."""

    def __init__(self, lr, weight_decay):
        self.lr, self.weight_decay = lr, weight_decay

    def fused_sgd(self):
        return self.lr, self.weight_decay

    def update(self, params, grads):
        raise AssertionError("the fused path never calls update")


def test_sgd_inside_backward_is_the_worked_step(backend_name):
    """``backward(sgd=(lr, wd))`` (the update inside the gradient GEMMs) lands on the same
    hand-worked weights as gradients-then-update, and leaves the gradient buffer alone."""
    net = _worked_net(backend_name)
    be = net.backend
    be.upload(np.full(net.n_params, 7.0), net.grads)
    ws = net.workspace(1)
    be.upload(np.array([[1.0, 0.5]]), ws.a[0])
    be.upload(np.array([[1.0]]), ws.y)
    net.forward(ws, training=True)
    net.backward(ws, sgd=(0.5, 0.0))
    _assert_worked_step(net)
    assert (be.to_host(net.grads) == 7.0).all()   # never written: exact by construction   # exact: the buffer must not be written


def test_sgd_inside_backward_matches_plain_reference(backend_name, dtype, mnist_data):
    """100 fused SGD steps with weight decay (weights only) against the plain reference loop."""
    (X, y), _ = mnist_data
    net = bpgpu.MLP([784, 32, 16, 10], dtype=dtype, backend=backend_name, seed=8)
    W = [w.astype(float) for w in net.get_params()[0]]
    b = [x.astype(float) for x in net.get_params()[1]]
    rng = np.random.default_rng(9)
    idx = [rng.integers(0, len(X), 64) for _ in range(100)]
    for i in idx:
        _, dW, db = forward_backward(W, b, ["sigmoid", "sigmoid", "softmax"], "ce", X[i] / 255.0,
                                     onehot(y[i], 10))
        for l in range(3):
            W[l] -= 0.1 * (dW[l] + 1e-3 * W[l])
            b[l] -= 0.1 * db[l]
    got = _engine_steps(net, X, y, idx, _FusedSGD(0.1, 1e-3))
    want = np.concatenate([a.ravel() for a in itertools.chain(W, b)])
    assert rel_norm(got, want) < (1e-5 if dtype == "float32" else 1e-12)
