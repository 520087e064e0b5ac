"""The parameters as a safetensors file under PyTorch's state-dict names.

The file holds ``0.weight``, ``0.bias``, ``2.weight``, ... exactly as
:func:`bpgpu.interop.to_torch`'s ``Sequential`` names them (weights in PyTorch's (out, in)
layout), so ``nn.Sequential.load_state_dict(safetensors.torch.load_file(path), strict=True)``
loads it; its metadata holds the bpgpu config (sizes, activations) to rebuild the module. Written
with the ``safetensors`` package (an optional extra), atomically.
"""

from __future__ import annotations

import json

from .layers import need
from .torch_modules import state_dict_arrays

__all__ = ["write_safetensors"]


def write_safetensors(net, path) -> str:
    """Write ``net``'s parameters to ``path`` (see the module docstring); returns the path."""
    need("safetensors")
    from safetensors.numpy import save

    from ..files import atomic_write
    meta = {"format": "pt", "bpgpu_config": json.dumps(net.config())}
    pipeline = getattr(net, "pipeline", None)
    if pipeline is not None:
        meta["bpgpu_pipeline"] = json.dumps(pipeline.record())
    data = save(state_dict_arrays(net), metadata=meta)
    return atomic_write(path, lambda f: f.write(data))
