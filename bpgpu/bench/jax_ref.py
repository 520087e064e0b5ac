"""JAX (float32) on the identical work, for side-by-side figures: the strongest CPU peer, and on
the GPU beside the cupy backend.

Same initial weights (copied from the bpgpu model), the same per-epoch permutations (drawn from a
copy of the model's seeded numpy generator, so they are the ones the model itself would draw next),
the same uint8 dataset resident on the device, gathered and scaled per batch (``x * scale +
shift``), the same activations and mean loss, plain SGD, no training metrics. The last batch of an
epoch holds the remainder, as in :func:`bpgpu.train.fit`.

Two forms, because they answer different questions:

- ``"scan"``: the whole epoch as ONE jitted call -- a :func:`jax.lax.scan` over the full batches --
  plus one jitted call for the remainder batch. No Python between steps: what a compiled epoch
  can reach.
- ``"step"``: the jitted step called from a Python loop, one call per batch (the batch located by
  a ``dynamic_slice`` of the device-resident permutation): per-step dispatch included, like
  bpgpu's per-step path and PyTorch eager.

The gradient is JAX's autodiff of the mean loss. Losses are written on the output layer's
pre-activation where bpgpu's delta is the closed form (``ce``: log-softmax; ``bce``: softplus),
so the gradient is exactly ``(a - y) / B`` there as in bpgpu, never the clipped log's zero.
Everything runs in float32 (``jax_enable_x64`` stays off) on JAX's CPU device, or beside the cupy
backend on JAX's first GPU (jax with its CUDA plugins; run it with
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that JAX does not take most of the GPU's memory
before CuPy and PyTorch allocate theirs, as bench/gpu.sh does); each epoch's time
ends with ``block_until_ready`` (JAX dispatches asynchronously). Only available when jax is
installed; :func:`jax_status` says why not otherwise.
"""

from __future__ import annotations

import copy
import functools
import time

import numpy as np

from .._compat import optional_import
from ..errors import BackendUnavailable, ConfigError
from ..sysinfo import xla_cpu_threads

__all__ = ["JAX_INSTALL", "jax_status", "jax_unsupported", "describe_jax",
           "JaxTrainer", "FORMS"]

#: How to get the peer: the ``bench`` extra carries jax.
JAX_INSTALL = "pip install 'bpgpu[bench]' (or: pip install jax)"
#: The two forms of the JAX peer (module docstring).
FORMS = ("scan", "step")


def jax_status():
    """``(jax_module_or_None, reason)``."""
    try:
        jax = optional_import("jax")
    except Exception as exc:       # a broken install (jaxlib mismatch, ...) is "unavailable" too
        return None, f"jax failed to import: {type(exc).__name__}: {exc}"
    if jax is None:
        return None, f"jax is not installed; install it with: {JAX_INSTALL}"
    return jax, f"jax {jax.__version__}"


def jax_unsupported(backend, dtype, optimizer="sgd"):
    """Why the JAX peer cannot run beside this case (a string), or None when it can."""
    if backend == "cupy" and _device(jax_status()[0], "gpu") is None:
        return ("JAX has no GPU device here (jax with its CUDA plugins, e.g. "
                "pip install 'jax[cuda13]'), so it is not compared with a GPU backend")
    if np.dtype(dtype) != np.float32:
        return "the JAX peer runs float32 only (jax_enable_x64 stays off)"
    if optimizer != "sgd":
        return "the JAX peer runs plain SGD only"
    return None


def _device(jax, kind):
    """JAX's first device of ``kind`` ("cpu" or "gpu"), or None (no jax, or no such device)."""
    if jax is None:
        return None
    try:
        return jax.devices(kind)[0]
    except (RuntimeError, IndexError):          # "Unknown backend gpu", no device of the kind
        return None


def describe_jax() -> dict:
    """The JAX runtime a peer runs on: versions, device, float32 check, XLA's thread settings."""
    jax, why = jax_status()
    if jax is None:
        return {"available": False, "reason": why}
    import jaxlib
    cpu = jax.devices("cpu")[0]
    return {"available": True, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "device": f"{cpu.platform}:{cpu.id} ({cpu.device_kind})",
            "enable_x64": bool(jax.config.jax_enable_x64), **xla_cpu_threads()}


@functools.lru_cache(maxsize=None)
def _program(sizes, activations, loss, scale, shift):
    """The jitted functions of one network configuration (built once per configuration).

    Returns ``(epoch_scan, step_at)``:

    - ``epoch_scan(params, X, T, order2d, lr)``: SGD over the rows of ``order2d`` (n_batches, B).
    - ``step_at(params, X, T, order, start, lr, size)``: one SGD step on
      ``order[start:start + size]`` (``size`` static).

    ``params`` is ``(weights, biases)``, lists of float32 arrays shaped (n_in, n_out) and (n_out,);
    both functions donate it (the update is in place where XLA can).
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    f32 = jnp.float32
    scale, shift = np.float32(scale), np.float32(shift)
    act = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu,
           "identity": lambda z: z, "softmax": lambda z: jax.nn.softmax(z, axis=1)}

    def gather(X, T, idx):
        # the uint8 rows, cast, then scaled in float32: bpgpu's gather_rows
        xb = X.at[idx].get(mode="promise_in_bounds").astype(f32) * scale
        if shift:
            xb = xb + shift
        return xb, T.at[idx].get(mode="promise_in_bounds")

    def mean_loss(params, xb, tb):
        weights, biases = params
        a = xb
        for l, (w, b) in enumerate(zip(weights, biases)):
            z = a @ w + b
            a = act[activations[l]](z) if l < len(weights) - 1 else z
        if loss == "ce":             # softmax output: -sum y log softmax(z)
            per_row = -jnp.sum(tb * jax.nn.log_softmax(z, axis=1), axis=1)
        elif loss == "bce":          # sigmoid output: -[y ln a + (1-y) ln(1-a)] = softplus(z) - y z
            per_row = jnp.sum(jax.nn.softplus(z) - tb * z, axis=1)
        else:                        # mse: 1/2 |a - y|^2 on any output
            d = act[activations[-1]](z) - tb
            per_row = 0.5 * jnp.sum(d * d, axis=1)
        return jnp.sum(per_row) / f32(xb.shape[0])

    grad = jax.grad(mean_loss)

    def sgd_step(params, X, T, idx, lr):
        xb, tb = gather(X, T, idx)
        g = grad(params, xb, tb)
        return jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g)

    @functools.partial(jax.jit, donate_argnums=0)
    def epoch_scan(params, X, T, order2d, lr):
        def body(p, idx):
            return sgd_step(p, X, T, idx, lr), None
        params, _ = lax.scan(body, params, order2d)
        return params

    @functools.partial(jax.jit, donate_argnums=0, static_argnums=6)
    def step_at(params, X, T, order, start, lr, size):
        return sgd_step(params, X, T, lax.dynamic_slice(order, (start,), (size,)), lr)

    return epoch_scan, step_at


class JaxTrainer:
    """Trains the same MLP as a bpgpu model, in JAX on the CPU, in one of :data:`FORMS`.

    Parameters
    ----------
    model : bpgpu.MLP
        Supplies sizes, activations, loss, initial weights, input scaling and the generator whose
        state (copied now) draws the permutations. Must be float32.
    device : {"cpu", "gpu"}
        JAX's device the peer runs on (its first of the kind).
    form : {"scan", "step"}
        The whole epoch as one jitted ``lax.scan`` (plus one call for the remainder batch), or the
        jitted step called once per batch from Python.

    Raises
    ------
    BackendUnavailable
        jax is not installed (the message says how to install it), or has no ``device``.
    ConfigError
        An unknown ``form``, or a model that is not float32.
    """

    def __init__(self, model, form="scan", device="cpu"):
        jax, why = jax_status()
        if jax is None:
            raise BackendUnavailable(why)
        if form not in FORMS:
            raise ConfigError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        if model.dtype != np.float32:
            raise ConfigError(f"the JAX peer runs float32 only, got a {model.dtype} model")
        self.jax, self.form, self.model = jax, form, model
        self.device = _device(jax, device)
        if self.device is None:
            raise BackendUnavailable(f"JAX has no {device} device here")
        weights, biases = model.get_params()
        self.params = self._put(([np.array(w, np.float32) for w in weights],
                                 [np.array(b, np.float32) for b in biases]))
        self.rng = copy.deepcopy(model.rng)
        self._fns = _program(tuple(model.sizes), tuple(model.activations), model.loss_name,
                             model.input_scale, model.input_shift)
        self._data_key, self._data = None, None

    def _put(self, tree):
        return self.jax.device_put(tree, self.device)

    def _device_data(self, X, y):
        """(X uint8, one-hot targets) on the device, uploaded once per dataset."""
        key = (id(X), id(y), X.shape)
        if self._data_key != key:
            X = np.ascontiguousarray(np.asarray(X).reshape(len(X), -1))
            T = self.model.targets_from(y, X.shape[0]).astype(np.float32)
            self._data = self._put((X, T))
            self._data_key = key
        return self._data

    def fit(self, X, y, epochs=1, batch_size=64, lr=0.1, perms=None):
        """Train with plain SGD; return per-epoch wall times (each ends with
        ``block_until_ready``). ``perms``: the epochs' permutations (default: drawn from the copy
        of the model's generator, inside the timed region as :func:`bpgpu.train.fit` does)."""
        jax = self.jax
        Xd, Td = self._device_data(X, y)
        n = Xd.shape[0]
        batch = min(batch_size, n)
        n_full, rest = divmod(n, batch)
        lr32 = self._put(np.float32(lr))
        epoch_scan, step_at = self._fns
        params = self.params
        times = []
        for e in range(epochs):
            t0 = time.perf_counter()
            perm = perms[e] if perms is not None else self.rng.permutation(n)
            order = np.asarray(perm, np.int32)
            if self.form == "scan":
                full, tail = self._put((order[:n_full * batch].reshape(n_full, batch),
                                        order[n_full * batch:]))
                if n_full:
                    params = epoch_scan(params, Xd, Td, full, lr32)
                if rest:
                    params = step_at(params, Xd, Td, tail, 0, lr32, rest)
            else:
                order_d = self._put(order)
                for start in range(0, n_full * batch, batch):
                    params = step_at(params, Xd, Td, order_d, start, lr32, batch)
                if rest:
                    params = step_at(params, Xd, Td, order_d, n_full * batch, lr32, rest)
            jax.block_until_ready(params)
            times.append(time.perf_counter() - t0)
        self.params = params
        return times

    def get_params(self):
        """Host copies: ``(weights, biases)`` as lists of float32 arrays (bpgpu's layout)."""
        weights, biases = self.params
        return [np.asarray(w) for w in weights], [np.asarray(b) for b in biases]

    @property
    def threads(self) -> int:
        """XLA's intra-op threads (from :func:`xla_cpu_threads`)."""
        return xla_cpu_threads()["intra_op_threads"]
