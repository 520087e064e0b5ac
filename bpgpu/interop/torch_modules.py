"""A bpgpu network as a ``torch.nn.Sequential``, and back.

:func:`to_torch` builds ``Sequential(Linear, activation, Linear, activation, ...)``: every layer a
``Linear`` (its ``weight`` is bpgpu's ``W`` transposed, PyTorch's (out, in) layout) followed by
its activation module (``Sigmoid``, ``Tanh``, ``ReLU``, ``Identity``, or ``Softmax(dim=1)`` on the
output), so the state-dict names are ``0.weight``, ``0.bias``, ``2.weight``, ... The module takes
the network's float inputs (uint8 images already scaled: ``x * input_scale + input_shift``) in
the model's dtype. :func:`from_torch` reads such a Sequential (a ``Linear`` followed by at most
one activation module, no other kind of module) into an :class:`bpgpu.MLP`. PyTorch is optional:
it is imported when these are called.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .layers import layers_of, need

__all__ = ["to_torch", "from_torch", "state_dict_arrays", "TORCH_ACTIVATIONS"]

#: bpgpu activation -> the name of its torch.nn module (Softmax takes dim=1)
TORCH_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "ReLU", "identity": "Identity",
                     "softmax": "Softmax"}


def state_dict_arrays(net) -> dict:
    """The parameters under :func:`to_torch`'s state-dict names, as host arrays (C order)."""
    arrays = {}
    for i, layer in enumerate(layers_of(net)):
        arrays[f"{2 * i}.weight"] = np.ascontiguousarray(layer.W.T)
        arrays[f"{2 * i}.bias"] = np.ascontiguousarray(layer.b)
    return arrays


def _module_of(nn, activation):
    cls = getattr(nn, TORCH_ACTIVATIONS[activation])
    return cls(dim=1) if activation == "softmax" else cls()


def to_torch(net):
    """``torch.nn.Sequential`` computing ``net.predict_proba`` on float inputs (see the module
    docstring), its parameters copies of the network's in its dtype."""
    torch = need("torch")
    nn = torch.nn
    modules = []
    arrays = state_dict_arrays(net)
    for i, layer in enumerate(layers_of(net)):
        linear = nn.Linear(layer.W.shape[0], layer.W.shape[1],
                           dtype=getattr(torch, net.dtype.name))
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(arrays[f"{2 * i}.weight"]))
            linear.bias.copy_(torch.from_numpy(arrays[f"{2 * i}.bias"]))
        modules += [linear, _module_of(nn, layer.activation)]
    return nn.Sequential(*modules)


def _activation_name(nn, module):
    """The bpgpu activation of an activation module, or None if it is not one."""
    for name, cls in TORCH_ACTIVATIONS.items():
        if type(module) is getattr(nn, cls):
            if name == "softmax" and module.dim not in (1, -1):
                raise ConfigError(f"Softmax(dim={module.dim}): bpgpu's softmax is over the "
                                  "outputs of each row (dim=1)")
            return name
    return None


def _read_layers(nn, module):
    """``[(weight (out, in), bias (out,), activation)]`` of a Sequential of the supported form."""
    if not isinstance(module, nn.Sequential):
        raise ConfigError(f"from_torch reads a torch.nn.Sequential, not {type(module).__name__}")
    layers = []
    for i, m in enumerate(module):
        if isinstance(m, nn.Linear) and type(m) is nn.Linear:
            w = m.weight.detach().cpu().numpy()
            b = m.bias.detach().cpu().numpy() if m.bias is not None else np.zeros(w.shape[0],
                                                                                  w.dtype)
            layers.append([w, b, "identity"])
            continue
        act = _activation_name(nn, m)
        if act is None:
            raise ConfigError(f"module {i} is {type(m).__name__}: from_torch reads Linear layers "
                              "and Sigmoid, Tanh, ReLU, Identity or Softmax(dim=1) after them")
        if not layers or layers[-1][2] != "identity" or \
                (i > 0 and not isinstance(module[i - 1], nn.Linear)):
            raise ConfigError(f"module {i} ({type(m).__name__}) does not follow a Linear layer")
        layers[-1][2] = act
    if not layers:
        raise ConfigError("the Sequential holds no Linear layer")
    if any(a == "softmax" for _, _, a in layers[:-1]):
        raise ConfigError("Softmax is only possible on the output layer")
    for (w, _, _), (w_next, _, _) in zip(layers, layers[1:]):
        if w_next.shape[1] != w.shape[0]:
            raise ConfigError(f"Linear layers do not chain: {w.shape[0]} outputs into "
                              f"{w_next.shape[1]} inputs")
    return layers


def from_torch(module, *, loss=None, backend="auto", input_scale=1.0 / 255, input_shift=0.0):
    """An :class:`bpgpu.MLP` with the parameters of a ``torch.nn.Sequential`` of
    :func:`to_torch`'s form (a ConfigError names the first module that is not).

    Parameters
    ----------
    loss : {"ce", "bce", "mse"}, optional
        The loss to train it with (default: ``ce`` after a softmax, ``mse`` otherwise).
    backend, input_scale, input_shift
        As :class:`bpgpu.MLP` takes them.
    """
    torch = need("torch")
    from ..mlp import MLP
    layers = _read_layers(torch.nn, module)
    dtype = np.result_type(*[w.dtype for w, _, _ in layers])
    if dtype.name not in ("float32", "float64"):
        raise ConfigError(f"parameters are {dtype}: bpgpu computes in float32 or float64")
    sizes = [layers[0][0].shape[1]] + [w.shape[0] for w, _, _ in layers]
    output = layers[-1][2]
    net = MLP(sizes, activation=[a for _, _, a in layers[:-1]], output=output,
              loss=loss or ("ce" if output == "softmax" else "mse"), dtype=dtype.name,
              backend=backend, input_scale=input_scale, input_shift=input_shift)
    net.set_params([w.T for w, _, _ in layers], [b for _, b, _ in layers])
    return net
