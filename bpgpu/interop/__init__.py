"""A model that leaves the trainer: export to ONNX, PyTorch and safetensors, and converters for
skl2onnx.

- :func:`to_onnx` (:mod:`.onnx_export`): an ONNX graph built with the ``onnx`` helper API and
  checked by ``onnx.checker``, its input pipeline inside (uint8 scaling, a CSV model's
  standardisation and one-hot columns).
- :func:`to_torch` / :func:`from_torch` (:mod:`.torch_modules`): a ``torch.nn.Sequential`` of
  ``Linear`` and activation modules, and back.
- :func:`write_safetensors` (:mod:`.safetensors_file`): the parameters under PyTorch's
  state-dict names, loadable with ``load_state_dict(strict=True)`` into :func:`to_torch`'s
  module.
- :func:`register_skl2onnx` (:mod:`.skl2onnx_converters`): ``BPClassifier``/``BPRegressor``
  converters registered through skl2onnx's public API, so scikit-learn pipelines holding them
  convert.

Every library here is optional (``pip install 'bpgpu[export]'``, torch separately): importing
this package imports none of them; each function imports what it needs when called and says
what to install when it is missing.
"""

from __future__ import annotations

__all__ = ["to_onnx", "to_torch", "from_torch", "write_safetensors", "register_skl2onnx",
           "layers_of"]


def to_onnx(net, path=None, **options):
    """See :func:`bpgpu.interop.onnx_export.to_onnx`."""
    from .onnx_export import to_onnx as export
    return export(net, path, **options)


def to_torch(net):
    """See :func:`bpgpu.interop.torch_modules.to_torch`."""
    from .torch_modules import to_torch as export
    return export(net)


def from_torch(module, **options):
    """See :func:`bpgpu.interop.torch_modules.from_torch`."""
    from .torch_modules import from_torch as build
    return build(module, **options)


def write_safetensors(net, path):
    """See :func:`bpgpu.interop.safetensors_file.write_safetensors`."""
    from .safetensors_file import write_safetensors as write
    return write(net, path)


def register_skl2onnx():
    """See :func:`bpgpu.interop.skl2onnx_converters.register_skl2onnx`."""
    from .skl2onnx_converters import register_skl2onnx as register
    return register()


def layers_of(net):
    """See :func:`bpgpu.interop.layers.layers_of`."""
    from .layers import layers_of as layers
    return layers(net)
