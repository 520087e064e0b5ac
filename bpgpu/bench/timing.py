"""Timing a backend's GEMMs without touching it: :class:`GemmTimer`, a wrapper backend.

A benchmark measures the share of an epoch spent in GEMMs by running one instrumented epoch with
the model's ops sent to a :class:`GemmTimer` (the network's documented ``redirected``): every op
goes to the wrapped backend unchanged, and ``gemm`` is timed around the call (synchronised on a
GPU). The shared backend instance is never modified. The wrapper has no compiled epoch (it would
bypass the timer), so such an epoch runs step by step -- the same BLAS calls either way.
"""

from __future__ import annotations

import time

from ..backends.base import Backend

__all__ = ["GemmTimer"]


def _delegate(name):
    def method(self, *args, **kwargs):
        return getattr(self.inner, name)(*args, **kwargs)
    method.__name__ = name
    method.__doc__ = f"The wrapped backend's ``{name}``."
    return method


class GemmTimer(Backend):
    """Every op of ``inner``, with the seconds spent in ``gemm`` added up in :attr:`seconds`.

    Parameters
    ----------
    inner : Backend
    """

    def __init__(self, inner):
        super().__init__()
        self.inner, self.name, self.xp = inner, inner.name, inner.xp
        self.seconds = 0.0
        self._sync = inner.xp.__name__ != "numpy"

    def gemm(self, a, b, out, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0):
        if self._sync:
            self.inner.synchronize()
        t0 = time.perf_counter()
        result = self.inner.gemm(a, b, out, trans_a, trans_b, alpha, beta)
        if self._sync:
            self.inner.synchronize()
        self.seconds += time.perf_counter() - t0
        return result

    def compiled_epoch(self, model, ws, X_dev, T_dev, optimizer, **step_options):
        """None: a compiled epoch would bypass the timer."""
        return None

    def compiles_epochs(self) -> bool:
        return False


for _name in [n for n in dir(Backend) if not n.startswith("_") and callable(getattr(Backend, n))
              and n not in vars(GemmTimer)]:
    setattr(GemmTimer, _name, _delegate(_name))
del _name
