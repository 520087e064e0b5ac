"""Throughput of one training step and of a whole epoch: backend × batch × sizes × dtype.

Each timed call ends with a device synchronisation, so GPU timings are real. Kernels are compiled
and workspaces allocated before timing (the fixture runs a warm-up step). Speed is never asserted:
these are measurements; `bpgpu bench` gives the same matrix with PyTorch alongside.
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.backends import available_backends
from bpgpu.optim import make_optimizer

BACKENDS = [pytest.param(b.name, marks=[pytest.mark.skip(reason=b.reason)] if not b.available
                         else [], id=b.name) for b in available_backends()]
BATCHES = [10, 64, 256, 1024, 8192]
SIZES = [(784, 100, 10), (784, 1024, 10), (784, 512, 512, 10)]


def _stepper(backend, sizes, batch, dtype, X, y):
    net = bpgpu.MLP(sizes, dtype=dtype, backend=backend, seed=0)
    be = net.backend
    X_dev = net.prepare_inputs(X)
    T_dev = be.asarray(net.targets_from(y, len(y)))
    order = be.asarray(np.random.default_rng(0).permutation(len(X)))
    ws = net.workspace(batch)
    opt = make_optimizer("sgd", be, net.n_params, net.dtype, lr=0.1)
    position = [0]

    def step():
        start = position[0]
        if start + batch > len(X):
            start = 0
        position[0] = start + batch
        net.train_step(ws, X_dev, T_dev, order[start:start + batch], opt)
        be.synchronize()

    return net, step


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step(benchmark, mnist_train, backend, batch, sizes, dtype):
    X, y = mnist_train
    net, step = _stepper(backend, sizes, batch, dtype, X, y)
    with net.backend.compute_threads(batch):
        step()                                            # warm-up: compile, allocate
        benchmark.extra_info.update(samples_per_step=batch, sizes="-".join(map(str, sizes)))
        benchmark(step)
    benchmark.extra_info["samples_per_s"] = batch / benchmark.stats.stats.median


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_train_epoch(benchmark, mnist_train, backend, batch):
    X, y = mnist_train
    net = bpgpu.MLP([784, 100, 10], backend=backend, seed=0)
    fit = dict(epochs=1, batch_size=batch, lr=0.1, train_metrics=False)
    net.fit(X, y, **fit)                                  # warm-up
    benchmark.pedantic(lambda: net.fit(X, y, **fit), rounds=3, iterations=1)
    benchmark.extra_info["samples_per_s"] = len(X) / benchmark.stats.stats.median
