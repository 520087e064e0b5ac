"""bpgpu: back-propagation MLPs on NumPy, Numba or CuPy, with identical results on each.

>>> import bpgpu
>>> net = bpgpu.MLP([784, 100, 10], activation="sigmoid", output="softmax", loss="ce")
>>> (X, y), (Xt, yt) = bpgpu.datasets.mnist()
>>> history = net.fit(X, y, epochs=10, batch_size=64, lr=0.1)
>>> net.evaluate(Xt, yt)["accuracy"]  # doctest: +SKIP

Importing bpgpu never imports numba or cupy: backends are loaded when first asked for.
"""

from . import datasets
from ._version import __version__
from .backends import available_backends, get_backend, use_backend
from .errors import BackendUnavailable, BpgpuError, ConfigError, DataError, ModelFileError
from .gradcheck import gradcheck
from .history import History
from .mlp import MLP, load
from .signals import TrainingInterrupted

__all__ = ["MLP", "History", "TrainingInterrupted", "load", "gradcheck", "datasets",
           "available_backends", "get_backend", "use_backend", "BpgpuError", "BackendUnavailable",
           "ConfigError", "DataError", "ModelFileError", "__version__"]
