"""The JAX peer of ``bpgpu bench --vs jax`` runs bpgpu's work: same weights, permutations, gather,
activations, mean loss and SGD, so after training its parameters equal bpgpu's to float32 rounding.

The parity runs where jax is installed (``pip install 'bpgpu[bench]'``) and is skipped with that
reason otherwise; the checks of what happens without jax run everywhere.
"""

import os
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu.bench import jax_ref
from bpgpu.errors import BackendUnavailable, ConfigError

from .conftest import backend_params, rel_norm

JAX, JAX_WHY = jax_ref.jax_status()
#: BPGPU_REQUIRE_JAX=1 (set by .ci/run after installing the bench extra) makes a missing jax a
#: failure instead of a skip
needs_jax = pytest.mark.skipif(JAX is None and os.environ.get("BPGPU_REQUIRE_JAX") != "1",
                               reason=JAX_WHY)
#: CPU backends: the JAX peer runs on the CPU and is never compared with a GPU backend
CPU_BACKENDS = [p for p in backend_params() if p.values[0] != "cupy"]
#: the parity bound of tests/test_parity.py: relative norm of the parameter difference, float32
PARITY_F32 = 1e-5
#: (hidden activation, output, loss, init): every loss form of the peer's mean_loss
CONFIGS = [("sigmoid", "softmax", "ce", "normal"), ("tanh", "sigmoid", "bce", "xavier"),
           ("relu", "identity", "mse", "he")]


def _flat(weights, biases):
    return np.concatenate([a.ravel() for a in list(weights) + list(biases)])


@needs_jax
@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
@pytest.mark.parametrize("act,out,loss,init", CONFIGS, ids=[c[2] for c in CONFIGS])
def test_jax_forms_match_bpgpu_after_two_epochs(backend_name, act, out, loss, init, mnist_data):
    """1000 samples at batch 64: 15 full batches and a remainder of 40 per epoch; two epochs, so
    the second permutation must match too. Both forms start from the bpgpu model's weights and a
    copy of its generator, before it trains."""
    (X, y), _ = mnist_data
    X, y = X[:1000], y[:1000]
    net = bpgpu.MLP([784, 32, 10], activation=act, output=out, loss=loss, init=init,
                    backend=backend_name, seed=5)
    peers = [jax_ref.JaxTrainer(net, form) for form in jax_ref.FORMS]
    start = _flat(*net.get_params())
    net.fit(X, y, epochs=2, batch_size=64, lr=0.1, train_metrics=False)
    want = _flat(*net.get_params())
    assert rel_norm(want, start) > 1e-2            # training moved the weights
    for peer in peers:
        times = peer.fit(X, y, epochs=2, batch_size=64, lr=0.1)
        assert len(times) == 2 and all(t > 0 for t in times)
        got = _flat(*peer.get_params())
        assert got.dtype == np.float32
        assert rel_norm(got, want) < PARITY_F32, peer.form


@needs_jax
def test_jax_peer_batch_larger_than_data_is_one_batch(mnist_data):
    """batch >= n: one step on every sample, as bpgpu.fit does (min(batch, n))."""
    (X, y), _ = mnist_data
    X, y = X[:100], y[:100]
    net = bpgpu.MLP([784, 16, 10], backend="numpy", seed=2)
    peers = [jax_ref.JaxTrainer(net, form) for form in jax_ref.FORMS]
    net.fit(X, y, epochs=1, batch_size=256, lr=0.5, train_metrics=False)
    for peer in peers:
        peer.fit(X, y, epochs=1, batch_size=256, lr=0.5)
        assert rel_norm(_flat(*peer.get_params()), _flat(*net.get_params())) < PARITY_F32


@needs_jax
def test_jax_peer_runs_float32_on_the_cpu():
    info = jax_ref.describe_jax()
    assert info["available"] and info["enable_x64"] is False
    assert info["device"].startswith("cpu") and info["intra_op_threads"] >= 1
    peer = jax_ref.JaxTrainer(bpgpu.MLP([4, 3, 2], backend="numpy"), "scan")
    assert all(p.dtype == np.float32 and p.devices() == {JAX.devices("cpu")[0]}
               for p in JAX.tree_util.tree_leaves(peer.params))


@needs_jax
def test_jax_peer_on_a_device_jax_does_not_have_is_unavailable():
    if jax_ref._device(JAX, "gpu") is not None:
        pytest.skip("JAX has a GPU here")
    with pytest.raises(BackendUnavailable, match="no gpu device"):
        jax_ref.JaxTrainer(bpgpu.MLP([4, 3, 2], backend="numpy"), "scan", device="gpu")


@needs_jax
def test_jax_peer_rejects_what_it_cannot_run():
    with pytest.raises(ConfigError, match="float32 only"):
        jax_ref.JaxTrainer(bpgpu.MLP([4, 3, 2], dtype="float64", backend="numpy"))
    with pytest.raises(ConfigError, match="scan, step"):
        jax_ref.JaxTrainer(bpgpu.MLP([4, 3, 2], backend="numpy"), "eager")


def test_unsupported_cases_say_why():
    assert jax_ref.jax_unsupported("numba", "float32") is None
    if jax_ref._device(JAX, "gpu") is None:        # beside cupy only where JAX has a GPU
        assert "no GPU device" in jax_ref.jax_unsupported("cupy", "float32")
    else:
        assert jax_ref.jax_unsupported("cupy", "float32") is None
    assert "float32 only" in jax_ref.jax_unsupported("numpy", "float64")


def test_without_jax_the_peer_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)       # import jax now raises ImportError
    mod, why = jax_ref.jax_status()
    assert mod is None and "not installed" in why and "bpgpu[bench]" in why
    assert jax_ref.describe_jax() == {"available": False, "reason": why}
    with pytest.raises(BackendUnavailable, match=r"bpgpu\[bench\]"):
        jax_ref.JaxTrainer(bpgpu.MLP([4, 3, 2], backend="numpy"))


@pytest.mark.parametrize("flags,threads,eigen,source", [
    (None, None, True, "default"),
    ("--xla_force_host_platform_device_count=1", None, True, "default"),
    ("--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1", 1, False, "XLA_FLAGS"),
    ("intra_op_parallelism_threads=3", 3, True, "XLA_FLAGS"),
])
def test_xla_thread_settings_are_read_from_xla_flags(flags, threads, eigen, source):
    import os

    from bpgpu.sysinfo import xla_cpu_threads
    info = xla_cpu_threads(flags or "")
    assert info["multi_thread_eigen"] is eigen and info["source"].startswith(source)
    assert info["intra_op_threads"] == (threads or len(os.sched_getaffinity(0)))
