"""The on/off switch of a backend's compiled epochs, read from one environment variable.

``BPGPU_COMPILED_EPOCH`` (numba: an epoch compiled into one call) and ``BPGPU_CUDA_GRAPH`` (cupy:
an epoch replayed as CUDA graphs) each take "0" (never), "1" (every epoch the path can run) or
"auto" (unset or anything else: the backend's own rule); a block of code may override the
environment (``bpgpu warmup``, tests). One :class:`EpochSwitch` per variable serves both.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["EpochSwitch"]


class EpochSwitch:
    """The mode of the environment variable ``env``, or of the innermost :meth:`override`.

    Parameters
    ----------
    env : str
        The variable's name, e.g. ``"BPGPU_CUDA_GRAPH"``.
    """

    def __init__(self, env: str):
        self.env = env
        self._override: list = []

    def mode(self) -> str:
        """"0", "1" or "auto": the innermost override's, else the environment's (unset or any
        other value: "auto")."""
        if self._override:
            return self._override[-1]
        value = os.environ.get(self.env, "auto").strip().lower()
        return value if value in ("0", "1") else "auto"

    @contextlib.contextmanager
    def override(self, value: str):
        """Within the block :meth:`mode` is ``value`` ("0", "1" or "auto") whatever the
        environment says."""
        self._override.append(value)
        try:
            yield
        finally:
            self._override.pop()

    def enabled(self) -> bool:
        """False when the mode is "0"."""
        return self.mode() != "0"
