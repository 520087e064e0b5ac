"""A network as the exporters see it: its layers in order, each ``(W, b, activation)``.

One description shared by the ONNX graph, the PyTorch module and the safetensors file, so that
each exporter only says how its format writes a dense layer and an activation. Also the one
place that imports an optional library for them (:func:`need`), with the install hint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["Layer", "layers_of", "need", "EXTRA_HINT"]

#: How to get the optional libraries of this package.
EXTRA_HINT = {"onnx": "pip install 'bpgpu[export]'", "onnxruntime": "pip install 'bpgpu[export]'",
              "skl2onnx": "pip install 'bpgpu[export]'",
              "safetensors": "pip install 'bpgpu[export]'",
              "torch": "pip install torch (a CPU build: pip install torch==2.13.0)"}


@dataclass
class Layer:
    """One dense layer: ``activation(x @ W + b)``.

    Attributes
    ----------
    W : ndarray, shape (n_in, n_out)
    b : ndarray, shape (n_out,)
    activation : str
        ``sigmoid``, ``tanh``, ``relu``, ``identity`` or (the output layer only) ``softmax``.
    """
    W: np.ndarray
    b: np.ndarray
    activation: str


def layers_of(net) -> list:
    """The layers of ``net`` (host copies of its parameters, in its dtype), input first."""
    weights, biases = net.get_params()
    return [Layer(np.array(w), np.array(b), a)
            for w, b, a in zip(weights, biases, net.activations)]


def need(name: str):
    """Import the optional library ``name`` or raise ConfigError saying how to install it."""
    from .._compat import optional_import
    module = optional_import(name)
    if module is None:
        raise ConfigError(f"this needs {name}, which is not installed: {EXTRA_HINT[name]}")
    return module
