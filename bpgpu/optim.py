"""Optimizers over the model's one flat parameter buffer.

An optimizer owns its state buffers (velocity; Adam's moments) on the device and calls exactly one
backend op per step, so a backend with a fused kernel updates every parameter in one pass. Weight
decay is the L2 coefficient added to the gradient (``g + wd * w``) and applies to weights only: the
flat buffer stores all weights first, so decay covers its first ``n_decay`` entries.
"""

from __future__ import annotations

import contextlib

from .errors import ConfigError

__all__ = ["OPTIMIZERS", "make_optimizer", "SGD", "Momentum", "Adam"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


class SGD:
    """Plain stochastic gradient descent: ``p -= lr * (g + wd * p)``."""

    name = "sgd"

    def __init__(self, backend, n_params, dtype, *, lr, weight_decay=0.0, n_decay=0):
        self.backend, self.dtype, self.lr = backend, dtype, float(lr)
        self.weight_decay, self.n_decay = float(weight_decay), int(n_decay)

    #: names of the device buffers that carry state from step to step (none for plain SGD)
    buffers = ()

    def update(self, params, grads):
        """Apply one update to ``params`` (shape (P,)) in place; ``grads`` may be overwritten."""
        self.backend.sgd_update(params, grads, self.lr, self.weight_decay, self.n_decay)

    def hyperparameters(self) -> dict:
        """The settings that shape the trajectory (saved in checkpoints, compared on resume)."""
        return {"optimizer": self.name, "lr": self.lr, "weight_decay": self.weight_decay}

    def state(self) -> tuple[dict, dict]:
        """``(scalars, arrays)``: the step-to-step state as plain numbers and host arrays of
        shape (P,) -- everything :meth:`load_state` needs to continue bit for bit."""
        arrays = {name: self.backend.to_host(getattr(self, name)) for name in self.buffers}
        return {"t": getattr(self, "t", 0)}, arrays

    def load_state(self, scalars, arrays) -> None:
        """Restore what :meth:`state` returned (onto this optimizer's backend)."""
        for name in self.buffers:
            host = arrays[name]
            buf = getattr(self, name)
            if host.shape != buf.shape:
                raise ConfigError(f"optimizer state {name!r} has shape {host.shape}, this model "
                                  f"needs {buf.shape}")
            self.backend.upload(host.astype(buf.dtype, copy=False), buf)
        if hasattr(self, "t"):
            self.t = int(scalars["t"])

    def copy_state(self, into) -> None:
        """Copy this optimizer's device state buffers into ``into`` (another optimizer of the
        same kind and size) and its step count: a snapshot that stays on the device."""
        for name in self.buffers:
            self.backend.copy(getattr(self, name), getattr(into, name))
        if hasattr(self, "t"):
            into.t = self.t

    def counters(self) -> dict:
        """The integers a training step advances (Adam's step count ``t``; none for SGD)."""
        return {"t": self.t} if hasattr(self, "t") else {}

    def set_counters(self, counters: dict) -> None:
        """Set what :meth:`counters` returned."""
        if "t" in counters:
            self.t = int(counters["t"])

    @contextlib.contextmanager
    def redirected(self, backend):
        """Within the block the update's op goes to ``backend`` (the compiled epoch's recording
        stand-in); afterwards the backend and :meth:`counters` are what they were."""
        saved, counters = self.backend, self.counters()
        self.backend = backend
        try:
            yield self
        finally:
            self.backend = saved
            self.set_counters(counters)

    def fused_sgd(self):
        """``(lr, weight_decay)`` when this update runs inside the gradient GEMMs
        (:meth:`bpgpu.MLP.backward`'s ``sgd``), else None: the one place that decides. Plain SGD
        only (it needs nothing but the gradient, and its weight decay covers exactly the
        weights), and only where the backend applies BLAS's alpha and beta in the same call
        (:meth:`~bpgpu.backends.base.Backend.fuses_sgd`), so fusing saves a pass.

        And only where the model's dtype represents the decay: BLAS takes ``beta = 1 - lr wd``
        in that dtype, and float32's spacing below 1 (2^-24) distorts a small ``lr wd`` (+0.14 %
        at 1e-5, none at all below 2^-25). Fused, the decay actually applied, ``1 - beta``, must
        be within 1e-6 of ``lr wd`` relative; otherwise the separate update (which multiplies
        ``wd`` by each weight in the dtype, no such cancellation) runs."""
        import numpy as np
        if not self.backend.fuses_sgd(self.dtype):
            return None
        decay = self.lr * self.weight_decay
        if decay:
            applied = 1.0 - float(np.dtype(self.dtype).type(1.0 - decay))
            if abs(applied - decay) > 1e-6 * decay:
                return None
        return self.lr, self.weight_decay


class Momentum(SGD):
    """SGD with (optionally Nesterov) momentum, PyTorch's form: ``v = mu v + g``."""

    buffers = ("velocity",)

    def __init__(self, backend, n_params, dtype, *, lr, momentum=0.9, nesterov=False, **kw):
        super().__init__(backend, n_params, dtype, lr=lr, **kw)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.velocity = backend.zeros((n_params,), dtype)

    def fused_sgd(self):
        """None: the velocity needs the gradient itself."""
        return None

    def update(self, params, grads):
        self.backend.momentum_update(params, grads, self.velocity, self.lr, self.momentum,
                                     self.weight_decay, self.n_decay, self.nesterov)

    def hyperparameters(self) -> dict:
        return dict(super().hyperparameters(), momentum=self.momentum)


class Adam(SGD):
    """Adam with bias correction (Kingma & Ba 2015); L2 weight decay added to the gradient."""

    buffers = ("m", "v")

    def __init__(self, backend, n_params, dtype, *, lr, beta1=0.9, beta2=0.999, eps=1e-8, **kw):
        super().__init__(backend, n_params, dtype, lr=lr, **kw)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = backend.zeros((n_params,), dtype)
        self.v = backend.zeros((n_params,), dtype)
        self.t = 0

    def fused_sgd(self):
        """None: the moments need the gradient itself."""
        return None

    def hyperparameters(self) -> dict:
        return dict(super().hyperparameters(), beta1=self.beta1, beta2=self.beta2, eps=self.eps)

    def update(self, params, grads):
        self.t += 1
        self.backend.adam_update(params, grads, self.m, self.v, self.lr, self.beta1, self.beta2,
                                 self.eps, self.t, self.weight_decay, self.n_decay)


def make_optimizer(name, backend, n_params, dtype, *, lr, momentum=0.9, weight_decay=0.0,
                   n_decay=0):
    """Build the optimizer ``name`` (one of :data:`OPTIMIZERS`) for a flat buffer of ``n_params``."""
    if lr is None or not lr > 0:
        raise ConfigError(f"learning rate must be positive, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    common = dict(lr=lr, weight_decay=weight_decay, n_decay=n_decay)
    if name == "sgd":
        opt = SGD(backend, n_params, dtype, **common)
    elif name == "adam":
        opt = Adam(backend, n_params, dtype, **common)
    else:
        opt = Momentum(backend, n_params, dtype, momentum=momentum, nesterov=name == "nesterov",
                       **common)
    opt.name = name
    return opt
