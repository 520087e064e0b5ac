"""The cupy backend's CUDA-graph epoch (bpgpu.backends.cupy_graph) on the emulated device.

A graph replays the kernels and GEMMs captured from one eager step, against the same buffers, so
N replayed steps must equal N eager steps bit for bit, float32 included (same kernels, same
cuBLAS calls, same order): parameters, History and the model's step counter. Every comparison
also checks that the graph really ran (cupy_graph.STATS), so a silent fallback cannot pass as a
match. The emulation refuses, as a GPU does, an allocation or a host transfer inside a capture,
and cuBLAS through CuPy's handle (cupy issue 6290).
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.backends import cupy_graph
from bpgpu.backends.cupy_backend import STEP_KERNELS

from .conftest import emulated, needs_gxx
from .devmem import CaptureError

pytestmark = [pytest.mark.emulated, needs_gxx]


@pytest.fixture(scope="module")
def digits():
    (X, y), _ = bpgpu.datasets.mnist()
    return X[:200], y[:200]                # batches of 32: 6 full ones and a remainder of 8


def _flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


def _train(mode, X, y, *, dtype="float64", epochs=2, net=None, **fit):
    """Train (a fresh 784-16-10 model unless ``net``) with graphs in ``mode``; return the model,
    its History and how STATS moved."""
    if net is None:
        net = bpgpu.MLP([784, 16, 10], dtype=dtype, backend=emulated(), seed=3)
    before = dict(cupy_graph.STATS)
    with net.backend.compiled_epoch_mode(mode):
        history = net.fit(X, y, epochs=epochs, batch_size=32, **fit)
    moved = {k: cupy_graph.STATS[k] - before[k] for k in before}
    return net, history, moved


def _same(graph, eager):
    (g, hg, _), (e, he, _) = graph, eager
    assert np.array_equal(_flat(g), _flat(e))
    assert g.steps == e.steps
    for field in ("epoch", "loss", "accuracy"):
        assert getattr(hg, field) == getattr(he, field), field


FITS = {
    "sgd": dict(optimizer="sgd", lr=0.1),
    "sgd-wd": dict(optimizer="sgd", lr=0.1, weight_decay=1e-3),
    "momentum": dict(optimizer="momentum", lr=0.1, weight_decay=1e-4),
    "nesterov": dict(optimizer="nesterov", lr=0.05),
    "adam": dict(optimizer="adam", lr=0.003),
    "dropout": dict(optimizer="momentum", lr=0.1, dropout=0.2),
    "adam-dropout": dict(optimizer="adam", lr=0.003, dropout=0.2),
    "augment": dict(optimizer="momentum", lr=0.05, augment="shift=2,rotate=10,scale=0.1"),
    "schedule": dict(optimizer="sgd", lr=0.2, schedule="step:every=1,factor=0.5"),
    "adam-schedule": dict(optimizer="adam", lr=0.01, schedule="cosine:warmup=1"),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(FITS))
def test_replayed_steps_equal_eager_steps(digits, name, dtype):
    X, y = digits
    epochs = 3 if "schedule" in name else 2
    graph = _train("1", X, y, dtype=dtype, epochs=epochs, **FITS[name])
    eager = _train("0", X, y, dtype=dtype, epochs=epochs, **FITS[name])
    assert graph[2]["graph_epochs"] == epochs and graph[2]["fallback_epochs"] == 0
    assert eager[2]["graph_epochs"] == 0
    # SGD's rate is a GEMM's alpha, captured: a new rate, a new capture (Adam's per-batch
    # scalars are a table the graph reads, uploaded per epoch)
    if name == "schedule":
        assert graph[2]["captures"] == epochs
    elif "schedule" not in name:
        assert graph[2]["captures"] == 1
    assert graph[2]["replays"] == 6 * epochs - cupy_graph.WARM_STEPS
    _same(graph, eager)


def test_the_graph_launches_the_step_kernels(digits):
    X, y = digits
    net, _, _ = _train("1", X, y, **FITS["adam-dropout"])
    launched = {name for name, count in net.backend._launches.items() if count}
    assert {"step_set", "step_advance", "random_uniform_at", "adam_update_at"} <= launched
    assert launched & set(STEP_KERNELS)
    assert net.backend._launches["step_advance"] == 6 * 2 - cupy_graph.WARM_STEPS


def test_continued_training_resumes_the_graph_in_the_middle(digits):
    """fit(epochs=1) then fit(epochs=2, continue_training=True) on graphs == 3 eager epochs: the
    step counter on the device is set from the model's on every epoch."""
    X, y = digits
    fit = FITS["adam-dropout"]
    first = _train("1", X, y, epochs=1, **fit)
    graph = _train("1", X, y, epochs=2, net=first[0], continue_training=True, **fit)
    eager = _train("0", X, y, epochs=3, **fit)
    assert graph[2]["graph_epochs"] == 2
    assert np.array_equal(_flat(graph[0]), _flat(eager[0])) and graph[0].steps == eager[0].steps
    assert graph[1].loss == eager[1].loss[1:]


def test_a_checkpoint_resumed_on_graphs_equals_the_run_that_never_stopped(digits, tmp_path):
    """2 epochs with a checkpoint, then a fresh model resuming it to 4, all on graphs == 4
    eager epochs in one run, bit for bit (dropout's stream and Adam's state included)."""
    X, y = digits
    fit = dict(FITS["adam-dropout"], checkpoint=str(tmp_path / "c.npz"))
    _train("1", X, y, epochs=2, **fit)
    resumed = _train("1", X, y, epochs=4, resume=str(tmp_path / "c.npz"), **fit)
    eager = _train("0", X, y, epochs=4, **FITS["adam-dropout"])
    assert resumed[2]["graph_epochs"] == 2
    assert np.array_equal(_flat(resumed[0]), _flat(eager[0]))
    assert resumed[0].steps == eager[0].steps


def test_remainder_only_and_exact_batches(digits):
    """No remainder (192 rows) and a remainder batch (200 rows) alike equal the eager steps."""
    X, y = digits
    for n in (192, 200):
        _same(_train("1", X[:n], y[:n], **FITS["momentum"]),
              _train("0", X[:n], y[:n], **FITS["momentum"]))


def test_stop_part_way_abandons_the_epoch(digits, monkeypatch):
    """should_stop() True after the first slice: None, the slice's steps done (exactly the
    eager steps'), the model's step counter not advanced by the runner."""
    from bpgpu.optim import make_optimizer
    X, y = digits
    monkeypatch.setattr(cupy_graph, "SLICE", 1)
    nets = [bpgpu.MLP([784, 16, 10], dtype="float64", backend=emulated(), seed=3)
            for _ in range(2)]
    opts = [make_optimizer("momentum", n.backend, n.n_params, n.dtype, lr=0.1) for n in nets]
    order = np.random.default_rng(2).permutation(200)
    net, twin = nets
    ws, X_dev = net.workspace(32), net.prepare_inputs(X)
    T_dev = net.backend.asarray(net.targets_from(y, 200))
    with net.backend.compiled_epoch_mode("1"):
        runner = net.backend.compiled_epoch(net, ws, X_dev, T_dev, opts[0])
        before = cupy_graph.STATS["abandoned_epochs"]
        assert runner(net.backend.asarray(order), should_stop=lambda: True) is None
    assert cupy_graph.STATS["abandoned_epochs"] == before + 1
    done = cupy_graph.WARM_STEPS + 1            # eager warm-up steps, then one replayed slice
    tws, tX = twin.workspace(32), twin.prepare_inputs(X)
    tT = twin.backend.asarray(twin.targets_from(y, 200))
    tord = twin.backend.asarray(order)
    for k in range(done):
        twin.train_step(tws.view(32), tX, tT, tord[32 * k:32 * (k + 1)], opts[1])
    assert np.array_equal(_flat(net), _flat(twin))


def test_the_environment_switch(digits, monkeypatch):
    X, y = digits
    be = emulated()
    monkeypatch.setenv(cupy_graph.ENV, "0")
    assert not be.compiles_epochs()
    net = bpgpu.MLP([784, 16, 10], backend=be, seed=3)
    assert be.compiled_epoch(net, net.workspace(32), None, None, None) is None
    monkeypatch.setenv(cupy_graph.ENV, "auto")
    assert be.compiles_epochs() and cupy_graph.mode() == "auto"
    before = dict(cupy_graph.STATS)
    net.fit(X, y, epochs=1, batch_size=32)      # 6 full batches < MIN_BATCHES: eager
    assert cupy_graph.STATS["fallback_epochs"] == before["fallback_epochs"] + 1
    assert cupy_graph.STATS["graph_epochs"] == before["graph_epochs"]
    net.fit(X, y, epochs=1, batch_size=8)       # 25 full batches: a graph
    assert cupy_graph.STATS["graph_epochs"] == before["graph_epochs"] + 1
    monkeypatch.setenv(cupy_graph.ENV, "1")
    with be.compiled_epoch_mode("0"):           # the override wins over the environment
        assert cupy_graph.mode() == "0"
    assert cupy_graph.mode() == "1"


def test_a_gradient_hook_or_elastic_field_falls_back_and_trains_eagerly(digits):
    X, y = digits
    fit = dict(optimizer="momentum", lr=0.05, augment="shift=1,elastic=20:3")
    graph = _train("1", X, y, **fit)
    eager = _train("0", X, y, **fit)
    assert graph[2]["graph_epochs"] == 0 and graph[2]["fallback_epochs"] == 2
    _same(graph, eager)


def _capturing(be):
    stream = be.xp.cuda.Stream(non_blocking=True)
    stream.begin_capture()
    return stream


def test_capture_refuses_allocation_and_host_transfers():
    be = emulated()
    x = be.asarray(np.ones((4, 4)))
    stream = _capturing(be)
    try:
        with stream:
            with pytest.raises(CaptureError, match="allocation"):
                be.empty((3,), np.float64)
            with pytest.raises(CaptureError, match="device-to-host"):
                be.to_host(x)
            with pytest.raises(CaptureError, match="device-to-host"):
                x.get()
            with pytest.raises(CaptureError):
                be.upload(np.zeros((4, 4)), x)
            with pytest.raises(CaptureError):
                x + 1                              # a CuPy kernel the emulation cannot capture
    finally:
        stream.end_capture()


def test_cupys_cublas_is_refused_in_a_capture_and_the_ctypes_one_is_captured():
    be = emulated()
    a = be.asarray(np.arange(6.0).reshape(2, 3))
    b = be.asarray(np.arange(12.0).reshape(3, 4))
    c = be.zeros((2, 4), np.float64)
    assert be.capture_ready("float64") is None                     # the ctypes route works
    stream = be.xp.cuda.Stream(non_blocking=True)
    be._ctypes_blas().bind(stream.ptr)
    stream.begin_capture()
    with stream:
        be.gemm(a, b, c)
    graph = stream.end_capture()
    assert np.array_equal(be.to_host(c), np.zeros((2, 4)))        # captured, not run
    graph.launch(stream)
    assert np.array_equal(be.to_host(c), np.arange(6.0).reshape(2, 3) @ np.arange(12.0)
                          .reshape(3, 4))
    blas, be._blas = be._blas, None                                 # CuPy's own route
    stream.begin_capture()
    try:
        with stream, pytest.raises(NotImplementedError, match="stream capture"):
            be.gemm(a, b, c)
    finally:
        stream.end_capture()
        be._blas = blas


def test_weighted_rows_replay_as_eager_steps_and_match_numpy(digits):
    """Per-row weights in the captured step: output_delta_at reads the batch's slice of the
    epoch's factors (rewritten in place every epoch) from the step state. Graph == eager cupy
    exactly, both == numpy to rounding, and the graph really ran."""
    X, y = digits
    w = np.random.default_rng(0).uniform(0.5, 2.0, 200)
    nets, moved = [], []
    for backend, mode in ((emulated(), "1"), (emulated(), "0"), ("numpy", "0")):
        net = bpgpu.MLP([784, 16, 10], dtype="float64", backend=backend, seed=3)
        before = dict(cupy_graph.STATS)
        with net.backend.compiled_epoch_mode(mode):
            net.fit(X, y, epochs=2, batch_size=32, sample_weight=w, optimizer="momentum",
                    lr=0.1)
        moved.append({k: cupy_graph.STATS[k] - before[k] for k in before})
        nets.append(net)
    assert moved[0]["graph_epochs"] == 2 and moved[0]["fallback_epochs"] == 0
    assert nets[0].backend._launches["output_delta_at"] == 2 * 6 - cupy_graph.WARM_STEPS
    assert np.array_equal(_flat(nets[0]), _flat(nets[1]))
    np.testing.assert_allclose(_flat(nets[0]), _flat(nets[2]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("output,loss", [("softmax", "ce"), ("sigmoid", "bce"),
                                         ("softmax", "mse"), ("identity", "mse")])
def test_weighted_output_delta_kernel_matches_the_reference(dtype, output, loss):
    """The output_delta kernel with per-row weights (and the weighted loss sum) against the
    reference op on the host, to rounding; the kernel, not the fallback, ran."""
    from bpgpu.backends import get_backend
    ref = get_backend("numpy")
    be = emulated()
    rng = np.random.default_rng(5)
    a = rng.uniform(0.05, 0.95, (37, 4))
    if output == "softmax":
        a /= a.sum(axis=1, keepdims=True)
    y = np.eye(4)[rng.integers(0, 4, 37)]
    w = rng.uniform(0.2, 3.0, 37)
    results = []
    for b in (be, ref):
        delta, acc = b.empty((37, 4), dtype), b.zeros((1,), np.float64)
        b.output_delta(b.asarray(a.astype(dtype)), b.asarray(y.astype(dtype)), delta, output,
                       loss, acc, b.asarray(w.astype(dtype)))
        results.append((b.to_host(delta), float(b.to_host(acc)[0])))
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=tol, atol=tol * 1e-2)
    assert results[0][1] == pytest.approx(results[1][1], rel=tol)
    assert be._launches["output_delta"] == 1
