"""Warm-up: compile everything a training step runs before anything is timed or trained for real.

A backend compiles what it can on its own (:meth:`~bpgpu.backends.base.Backend.load_kernels`);
the rest -- Numba's kernels, compiled per argument signature, CuPy's own kernels, the compiled
epochs -- is compiled by training tiny networks of every activation, loss and optimizer, with
dropout, step by step, and then the textbook network's epochs as one compiled call where the
backend compiles epochs. ``bpgpu warmup`` and the benchmarks call :func:`warmup`.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["warmup"]

#: (hidden activation, output, loss) of the tiny networks: every kernel variant a step runs.
_CONFIGS = (("sigmoid", "softmax", "ce"), ("tanh", "sigmoid", "bce"), ("relu", "identity", "mse"))


def warmup(backend="auto", dtypes=("float32", "float64")) -> dict:
    """Compile (or load from the caches) every kernel a training step on ``backend`` runs.

    Returns
    -------
    dict
        ``seconds`` (wall time), ``kernels``, ``cache_hits`` and ``compiled`` (the backend's
        :meth:`~bpgpu.backends.base.Backend.compile_stats`), and, where the backend compiles
        epochs, ``epochs``: compiled epochs made ready (compiled now or loaded).
    """
    from .backends import get_backend
    from .mlp import MLP
    from .optim import OPTIMIZERS
    be = get_backend(backend)
    t0 = time.perf_counter()
    be.load_kernels(dtypes)
    before = be.compile_stats().get("compiled_epochs")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (8, 6), dtype=np.uint8)
    y = rng.integers(0, 3, 8)
    with be.compiled_epoch_mode("0"):            # every kernel, through the per-step path
        for dtype in dtypes:
            for act, out, loss in _CONFIGS:
                net = MLP([6, 5, 3], activation=act, output=out, loss=loss, dtype=dtype,
                          backend=be, seed=0)
                targets = y if loss == "ce" else rng.uniform(0.1, 0.9, (8, 3))
                for opt in OPTIMIZERS:
                    net.fit(X, targets, epochs=1, batch_size=4, optimizer=opt, lr=0.01,
                            dropout=0.1)
                net.evaluate(X, targets)
    if be.compiles_epochs():                     # the textbook network's epochs, compiled
        with be.compiled_epoch_mode("1"):
            for dtype in dtypes:
                net = MLP([6, 5, 3], dtype=dtype, backend=be, seed=0)
                for metrics in (True, False):
                    net.fit(X, y, epochs=1, batch_size=4, train_metrics=metrics)
    be.synchronize()
    stats = be.compile_stats()
    result = {"seconds": time.perf_counter() - t0, "kernels": stats["kernels"],
              "cache_hits": stats["cache_hits"], "compiled": stats["compiled"]}
    if before is not None:
        result["epochs"] = stats["compiled_epochs"] - before
    return result
