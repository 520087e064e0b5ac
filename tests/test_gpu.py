"""The CuPy backend: clear errors without a GPU, the probe's reasons, bench/gpu.sh's refusal, and
the GPU-marked checks that need a device (``BPGPU_REQUIRE_GPU=1`` turns their skips into
failures: bench/gpu.sh runs them so)."""

import collections
import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import bpgpu
from bpgpu._compat import cupy_status, probe_cupy
from bpgpu.backends.cupy_graph import STATS as GRAPH_STATS
from bpgpu.backends.cupy_graph import WARM_STEPS

HAVE_GPU = cupy_status()[0] is not None
gpu = pytest.mark.skipif(not HAVE_GPU, reason=f"no usable CUDA device: {cupy_status()[1]}")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(HAVE_GPU, reason="a CUDA device works here")
def test_cupy_backend_unavailable_is_a_clear_error():
    with pytest.raises(bpgpu.BackendUnavailable) as err:
        bpgpu.MLP([2, 2], backend="cupy")
    msg = str(err.value)
    assert "cupy" in msg and ("not installed" in msg or "driver" in msg or "device" in msg)


@pytest.mark.skipif(HAVE_GPU, reason="a CUDA device works here")
def test_cupy_backend_class_refuses_without_device():
    from bpgpu.backends.cupy_backend import CupyBackend, set_tf32, tf32_state
    with pytest.raises(bpgpu.BackendUnavailable, match="not available"):
        CupyBackend()
    assert tf32_state() is None
    with pytest.raises(bpgpu.BackendUnavailable):
        set_tf32(True)


# ------------------------------------------------------------------------------ the probe
class _CudaError(RuntimeError):
    def __init__(self, status, msg):
        super().__init__(msg)
        self.status = status


def _fake_cupy(driver=12040, runtime=12040, count=1, count_error=None, nvrtc_error=None,
               cublas_error=None):
    """A CuPy that fails at one chosen place (the working path: tests/emulation/test_probe.py)."""
    def device_count():
        if count_error is not None:
            raise count_error
        return count

    class Array:
        def __init__(self, value):
            self.value = value

        def __mul__(self, k):
            return Array(self.value * k)

        def __matmul__(self, other):
            if cublas_error is not None:
                raise cublas_error
            return Array(24.0)          # the sum of a (4, 3) @ (3, 2) product of ones

        def sum(self):
            return self.value

        def __float__(self):
            return float(self.value)

    def raw_kernel(code, name):
        if nvrtc_error is not None:
            raise nvrtc_error

        def launch(grid, block, args):     # what the probe kernel computes on 0..31
            args[0].value = 1024.0
        return launch

    runtime_ns = types.SimpleNamespace(driverGetVersion=lambda: driver,
                                       runtimeGetVersion=lambda: runtime,
                                       getDeviceCount=device_count)
    return types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=runtime_ns), float32=np.float32,
        arange=lambda n, dtype=None: Array(1.0), ones=lambda shape, dtype=None: Array(1.0),
        RawKernel=raw_kernel)


def test_probe_says_no_driver_when_the_driver_version_is_zero():
    """CUDA then also reports 'insufficient driver': that must not read as a version mismatch."""
    err = _CudaError(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    module, reason = probe_cupy(_fake_cupy(driver=0, count_error=err))
    assert module is None and reason.startswith("no NVIDIA driver is installed")


def test_probe_names_a_version_mismatch():
    err = _CudaError(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    module, reason = probe_cupy(_fake_cupy(driver=11080, runtime=12040, count_error=err))
    assert module is None and "version mismatch" in reason
    assert "CUDA 11.8" in reason and "CUDA 12.4" in reason


def test_probe_names_a_missing_device():
    module, reason = probe_cupy(_fake_cupy(count_error=_CudaError(100, "cudaErrorNoDevice")))
    assert module is None and reason == "the NVIDIA driver found no CUDA device"
    module, reason = probe_cupy(_fake_cupy(count=0))
    assert module is None and "no CUDA device" in reason


def test_probe_compiles_a_kernel_and_names_missing_headers():
    err = RuntimeError("Failed to find CUDA headers. Please install CUDA toolkit headers")
    module, reason = probe_cupy(_fake_cupy(nvrtc_error=err))
    assert module is None and "NVRTC" in reason and "Failed to find CUDA headers" in reason
    assert "[ctk]" in reason and "bpgpu[cuda12]" in reason


def test_probe_runs_a_cublas_gemm():
    cp = _fake_cupy(cublas_error=OSError("libcublas.so.13: cannot open shared object file"))
    module, reason = probe_cupy(cp)
    assert module is None and reason.startswith("cuBLAS does not work") and "libcublas" in reason


# ------------------------------------------------------------------------------ bench/gpu.sh
def test_gpu_script_stops_at_once_without_a_gpu(tmp_path):
    """No usable GPU (none here, or hidden with CUDA_VISIBLE_DEVICES): one line, status 2."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    t0 = time.perf_counter()
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench/gpu.sh: no usable GPU: ")
    assert res.stdout == ""
    assert time.perf_counter() - t0 < 60
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True,
                         text=True, env=env, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().startswith("usage: bash bench/gpu.sh OUTDIR")


def test_gpu_script_refuses_an_unknown_step(tmp_path):
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path / "out"),
                          "--only", "steps,nonsense"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "unknown step 'nonsense'" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("g++") is None, reason="the host emulation needs g++")
def test_gpu_script_dry_run_on_the_emulated_device(tmp_path):
    """bench/gpu.sh --only steps with the host emulation as ``cupy`` (tests/emulation/stub): the
    probe passes, the step writes steps.json with an eager and a graph row per configuration,
    and the graph's epoch at batch 64 ran as replays (far fewer host calls per step)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "emulation" / "stub"),
               PYTHON=sys.executable, BPGPU_GPU_ROWS="1024", OPENBLAS_NUM_THREADS="1")
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(out), "--only", "steps"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert (out / "steps.txt").read_text().startswith("steps: ok")
    rows = json.loads((out / "steps.json").read_text())["rows"]
    assert [(r["batch"], r["mode"]) for r in rows] == [
        (b, m) for b in (64, 256, 1024, 8192) for m in ("eager", "graph")]
    eager, graph = rows[0], rows[1]
    assert eager["graph_epochs"] == 0 and graph["graph_epochs"] == 1
    assert graph["host_calls_per_step"] < eager["host_calls_per_step"] / 3
    assert not (out / "install.log").exists()          # --only ran that step alone


# ------------------------------------------------------------------------------ on a GPU
@pytest.fixture
def cupy_be():
    be = bpgpu.get_backend("cupy")
    be._launches.clear()
    return be


def _params(net):
    w, b = net.get_params()
    return np.concatenate([x.ravel() for x in w]), np.concatenate([x.ravel() for x in b])


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _per_op(launches):
    """Launches per eager kernel name: a captured step's ``name_at`` counted as ``name``, the
    step state's own kernels (``step_set``, ``step_advance``) left out."""
    folded = collections.Counter()
    for name, count in launches.items():
        if name not in ("step_set", "step_advance"):
            folded[name[:-3] if name.endswith("_at") else name] += count
    return folded


def _cupy_vs_numpy(sizes, dtype, seed, X, y, **fit):
    """The same model trained on numpy and on cupy: relative differences of (weights, biases)."""
    ref = bpgpu.MLP(sizes, dtype=dtype, backend="numpy", seed=seed)
    net = bpgpu.MLP(sizes, dtype=dtype, backend="cupy", seed=seed)
    ref.fit(X, y, **fit)
    net.fit(X, y, **fit)
    (wg, bg), (wr, br) = _params(net), _params(ref)
    return _rel(wg, wr), _rel(bg, br)


@pytest.mark.gpu
@gpu
def test_save_on_gpu_load_on_cpu_and_back(tmp_path):
    net = bpgpu.MLP([5, 4, 3], backend="cupy", seed=1)
    net.save(tmp_path / "g.npz")
    cpu = bpgpu.load(tmp_path / "g.npz", backend="numpy")
    X = np.random.default_rng(0).normal(size=(3, 5))
    np.testing.assert_allclose(cpu.predict_proba(X), net.predict_proba(X), rtol=1e-5)
    cpu.save(tmp_path / "c.npz")
    assert bpgpu.load(tmp_path / "c.npz", backend="cupy").backend.name == "cupy"


@pytest.mark.gpu
@gpu
def test_predict_with_a_model_loaded_onto_cupy(tmp_path, cupy_be):
    (X, y), (Xt, yt) = bpgpu.datasets.mnist()
    ref = bpgpu.MLP([784, 30, 10], backend="numpy", seed=4)
    ref.fit(X[:3000], y[:3000], epochs=1, batch_size=50, lr=0.5)
    ref.save(tmp_path / "m.npz")
    net = bpgpu.load(tmp_path / "m.npz", backend="cupy")
    assert net.backend is cupy_be
    np.testing.assert_allclose(net.predict_proba(Xt), ref.predict_proba(Xt), rtol=1e-4,
                               atol=1e-6)
    assert (net.predict(Xt) == ref.predict(Xt)).mean() > 0.999
    assert net.evaluate(Xt, yt)["accuracy"] == pytest.approx(ref.evaluate(Xt, yt)["accuracy"],
                                                             abs=1e-3)
    assert cupy_be._launches["bias_softmax"] > 0 and cupy_be._launches["gather_scale"] > 0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_100_momentum_steps_match_numpy(dtype, tol, cupy_be):
    """Weights and biases, with weight decay and dropout drawn on the device (Philox)."""
    (X, y), _ = bpgpu.datasets.mnist()
    fit = dict(epochs=1, batch_size=64, optimizer="momentum", lr=0.1, weight_decay=1e-4,
               dropout=0.1)
    assert max(_cupy_vs_numpy([784, 64, 10], dtype, 11, X[:6400], y[:6400], **fit)) < tol
    launched = _per_op(cupy_be._launches)
    assert launched["random_uniform"] == 100 and launched["dropout_forward"] == 100
    assert cupy_be._launches["step_advance"] == 100 - WARM_STEPS       # a CUDA graph ran


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_augmented_training_on_the_device_matches_numpy(dtype, tol, cupy_be):
    """The augmented gather runs as its kernel every step (parameters and elastic noise drawn on
    the device), and training matches the numpy backend's."""
    (X, y), _ = bpgpu.datasets.mnist()
    fit = dict(epochs=1, batch_size=32, optimizer="momentum", lr=0.05,
               augment="shift=2,rotate=10,scale=0.1,elastic=34:4")
    assert max(_cupy_vs_numpy([784, 16, 10], dtype, 12, X[:640], y[:640], **fit)) < tol
    assert cupy_be._launches["gather_augmented_scale"] == 20
    assert cupy_be._launches["random_uniform"] == 40            # parameters and elastic noise


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-4)])
def test_weighted_training_on_the_device_matches_numpy(dtype, tol, cupy_be):
    """Sample and class weights reach the fused output-delta kernel every step (not the generic
    fallback), and training matches the numpy backend's."""
    (X, y), _ = bpgpu.datasets.mnist()
    w = np.random.default_rng(4).uniform(0, 2, 640)
    fit = dict(epochs=1, batch_size=32, optimizer="adam", lr=1e-3, sample_weight=w,
               class_weight="balanced", validation_data=(X[640:800], y[640:800]))
    cupy_be._launches.clear()
    assert max(_cupy_vs_numpy([784, 16, 10], dtype, 13, X[:640], y[:640], **fit)) < tol
    # the fused kernel every step: eager, or its graph form (output_delta_at) in a replay
    assert cupy_be._launches["output_delta"] + cupy_be._launches["output_delta_at"] >= 20


@pytest.mark.gpu
@gpu
def test_a_memory_mapped_dataset_streams_to_the_device_and_trains_the_same(cupy_be, tmp_path):
    """Out of core on the GPU: batches copied from page-locked buffers on a second stream,
    overlapping the step, and parameters equal bit for bit to the data uploaded whole (a copy
    that raced its step would show here)."""
    (X, y), _ = bpgpu.datasets.mnist()
    np.save(tmp_path / "x.npy", X[:6400])
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    kw = dict(epochs=2, batch_size=64, optimizer="adam", lr=1e-3, dropout=0.1)
    params = []
    for source in (X[:6400], mapped):
        net = bpgpu.MLP([784, 256, 10], backend="cupy", seed=2)
        net.fit(source, y[:6400], **kw)
        params.append(_params(net))
    assert cupy_be._copy_stream is not None
    for a, b in zip(params[0], params[1]):
        assert np.array_equal(a, b)


@pytest.mark.gpu
@gpu
def test_every_kernel_the_step_needs_was_launched(cupy_be):
    """The fallbacks would pass every parity test too: count what actually ran."""
    (X, y), _ = bpgpu.datasets.mnist()
    net = bpgpu.MLP([784, 100, 10], backend="cupy", seed=0)
    net.fit(X[:6400], y[:6400], epochs=1, batch_size=64, lr=0.1)           # plain SGD: fused
    assert cupy_be.fuses_sgd("float32")
    steps = 100
    want = {"gather_scale": 1, "gather": 1, "cublas_gemm": 7, "bias_activation": 1,
            "bias_softmax": 1, "count_correct": 1, "output_delta": 1, "activation_backward": 1}
    assert {k: v / steps for k, v in _per_op(cupy_be._launches).items()} == want
    assert cupy_be._launches["step_advance"] == steps - WARM_STEPS      # as a CUDA graph
    cupy_be._launches.clear()
    net = bpgpu.MLP([784, 100, 30, 10], activation=["relu", "tanh"], backend="cupy", seed=0)
    net.fit(X[:6400], y[:6400], epochs=1, batch_size=64, optimizer="adam", lr=1e-3,
            dropout=0.2)
    for kernel in ("gather_scale", "gather", "bias_activation", "bias_softmax", "count_correct",
                   "output_delta", "activation_backward", "random_uniform", "dropout_forward",
                   "multiply_inplace", "adam_update", "cublas_gemm"):
        assert _per_op(cupy_be._launches)[kernel] >= steps, kernel


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fit", [
    dict(optimizer="momentum", lr=0.1, weight_decay=1e-4, dropout=0.1),
    dict(optimizer="adam", lr=1e-3, dropout=0.2, schedule="step:every=1,factor=0.5"),
    dict(optimizer="sgd", lr=0.1, augment="shift=2,rotate=10,scale=0.1"),
], ids=["momentum-dropout", "adam-schedule", "sgd-augment"])
def test_cuda_graph_epochs_equal_eager_epochs_exactly(fit, cupy_be):
    """N replayed steps == N eager steps bit for bit (same kernels, same cuBLAS calls on the
    same handle), over two epochs of 3000 rows in batches of 64: 46 full ones and a remainder
    of 56 rows; the graph's runs counted so a silent fallback cannot pass."""
    (X, y), _ = bpgpu.datasets.mnist()
    nets = []
    for mode in ("1", "0"):
        net = bpgpu.MLP([784, 64, 10], dtype="float32", backend="cupy", seed=7)
        before = GRAPH_STATS["graph_epochs"]
        with cupy_be.compiled_epoch_mode(mode):
            history = net.fit(X[:3000], y[:3000], epochs=2, batch_size=64, **fit)
        assert GRAPH_STATS["graph_epochs"] - before == (2 if mode == "1" else 0)
        nets.append((net, history))
    (g, hg), (e, he) = nets
    assert all(np.array_equal(a, b) for a, b in zip(sum(g.get_params(), []),
                                                    sum(e.get_params(), [])))
    assert hg.loss == he.loss and hg.accuracy == he.accuracy and g.steps == e.steps


@pytest.mark.gpu
@gpu
def test_grid_stride_loops_iterate_on_this_device(cupy_be):
    """Arrays larger than two passes of the capped grid, computed from the device's SM count
    (H100: 132 SMs, 8 blocks each, 256 threads: 270,336 elements or 8,448 rows per pass)."""
    from bpgpu.backends.numpy_backend import NumpyBackend
    ref = NumpyBackend()
    per_pass = cupy_be._max_blocks * 256
    rows_per_pass = cupy_be._max_blocks * 8
    rng = np.random.default_rng(0)
    n = 2 * per_pass + 999
    p, g = rng.normal(size=n), rng.normal(size=n)
    pd, gd = cupy_be.asarray(p), cupy_be.asarray(g)
    cupy_be.sgd_update(pd, gd, 0.1, 0.01, n // 3)
    ref.sgd_update(p, g, 0.1, 0.01, n // 3)
    np.testing.assert_allclose(cupy_be.to_host(pd), p, rtol=1e-12)
    rows = 2 * rows_per_pass + 5
    z, b = rng.normal(size=(rows, 10)), rng.normal(size=10)
    zd = cupy_be.asarray(z)
    cupy_be.bias_activation(zd, cupy_be.asarray(b), "softmax")
    ref.bias_activation(z, b, "softmax")
    np.testing.assert_allclose(cupy_be.to_host(zd), z, rtol=1e-12, atol=1e-15)
    wide = rng.normal(size=(per_pass // 100 + 7, 201))           # > 2 passes of elements
    wd = cupy_be.asarray(wide)
    cupy_be.bias_activation(wd, cupy_be.asarray(np.zeros(201)), "sigmoid")
    ref.bias_activation(wide, np.zeros(201), "sigmoid")
    np.testing.assert_allclose(cupy_be.to_host(wd), wide, rtol=1e-12)
    acc = cupy_be.zeros((1,), np.float64)
    cupy_be.count_correct(zd, zd, acc)
    assert cupy_be.to_host(acc)[0] == rows
    assert cupy_be._launches["sgd_update"] == 1 and cupy_be._launches["bias_softmax"] == 1


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("offset", [0, 3, 8, 1000003])
def test_random_uniform_on_the_device_is_numpys_stream(cupy_be, offset):
    from bpgpu.backends.numpy_backend import NumpyBackend
    key, counter = (2**64 - 1, 7), (2**64 - 2, 2**64 - 1, 5, 9)    # carries across words
    out = cupy_be.empty((301, 7), np.float32)
    want = np.empty((301, 7), np.float32)
    cupy_be.random_uniform(out, key, counter, offset)
    NumpyBackend().random_uniform(want, key, counter, offset)
    np.testing.assert_array_equal(cupy_be.to_host(out), want)
    assert cupy_be._launches["random_uniform"] == 1


@pytest.mark.gpu
@gpu
def test_warmup_compiles_every_kernel(cupy_be):
    from bpgpu.backends.cupy_backend import PLAIN_KERNELS, TEMPLATE_KERNELS
    from bpgpu.warmup import warmup
    res = warmup(cupy_be)
    assert res["kernels"] == 2 * len(TEMPLATE_KERNELS) + len(PLAIN_KERNELS) == 46
    assert res["seconds"] > 0
    assert cupy_be.fuses_sgd("float32") and cupy_be.fuses_sgd("float64")


@pytest.mark.gpu
@gpu
def test_tf32_parity_within_1e3():
    """TF32 is CuPy's process-wide compute type: set, read back, reported, and used."""
    import cupy
    from bpgpu.backends.cupy_backend import set_tf32, tf32_state
    linalg = cupy._core._routines_linalg
    before = tf32_state()
    cc = int(cupy.cuda.Device().compute_capability)
    if cc < 80:
        with pytest.raises(bpgpu.ConfigError):
            set_tf32(True)
        assert tf32_state() is False
        return
    (X, y), _ = bpgpu.datasets.mnist()
    try:
        assert set_tf32(True) is True
        assert cupy._core.get_compute_type(cupy.float32) == linalg.COMPUTE_TYPE_TF32
        be = bpgpu.get_backend("cupy")
        assert "TF32 on" in be.describe()
        net = bpgpu.MLP([784, 64, 10], backend="cupy", seed=11)
        ref = bpgpu.MLP([784, 64, 10], backend="numpy", seed=11)
        for m in (net, ref):
            m.fit(X[:6400], y[:6400], epochs=1, batch_size=64, optimizer="momentum", lr=0.1)
        (wg, bg), (wr, br) = _params(net), _params(ref)
        assert _rel(wg, wr) < 1e-3 and _rel(bg, br) < 1e-3
        assert set_tf32(False) is False
        assert cupy._core.get_compute_type(cupy.float32) == linalg.COMPUTE_TYPE_DEFAULT
        assert "TF32 off" in be.describe()
    finally:
        set_tf32(bool(before))


# ------------------------------------------------------------------------------ --tf32 on the CLI
@pytest.mark.parametrize("argv,message", [
    (["train", "--tf32", "--backend", "numpy", "--epochs", "1"], "applies to the cupy backend"),
    (["train", "--tf32", "--dtype", "float64", "--epochs", "1"], "not --dtype float64"),
    (["bench", "--tf32", "--backends", "numpy", "--quick"], "applies to the cupy backend"),
    (["evaluate", "no-such-model.npz", "--tf32", "--backend", "numba"], "applies to the cupy"),
])
def test_tf32_flag_refuses_where_it_does_not_apply(argv, message, capsys):
    from bpgpu.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.skipif(HAVE_GPU, reason="a CUDA device works here")
def test_tf32_flag_without_a_gpu_says_why(capsys):
    from bpgpu.cli import main
    assert main(["train", "--tf32", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tf32 needs the cupy backend" in err[0]
