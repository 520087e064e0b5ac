"""The integer codes compiled kernels use for activations and losses: the ONE table of them.

Numba kernels (kernels/cpu.py) read them as module constants, which Numba freezes at compile
time; the CUDA kernels (kernels/fused.cu) get them as ``-D`` defines
(:func:`bpgpu.backends.cupy_backend.compile_options`); the backends and the compiled epoch's
lowering translate names through them. :mod:`bpgpu.activations` re-exports them beside the names.
Changing a code changes compiled kernels: the compiled epoch's cache fingerprint includes this
file, and Numba's own kernel cache must be cleared (``kernels/__pycache__``).
"""

ACT_CODES = {"identity": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "softmax": 4}
LOSS_CODES = {"mse": 0, "bce": 1, "ce": 2}

__all__ = ["ACT_CODES", "LOSS_CODES"]
