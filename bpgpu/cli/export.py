"""``bpgpu export MODEL --format onnx|safetensors OUT``: a saved model for other runtimes.

``onnx``: the graph of :mod:`bpgpu.interop.onnx_export` (checked by ``onnx.checker``; its input
pipeline inside; ``--dtype``, ``--input``); ``safetensors``: the parameters under PyTorch's
state-dict names (:mod:`bpgpu.interop.safetensors_file`). Both need the ``export`` extra; the
file is written atomically, and one line says what the exported model expects.
"""

from __future__ import annotations

import sys

from .common import UsageError, writable

__all__ = ["add_parser", "cmd_export", "FORMATS"]

FORMATS = ("onnx", "safetensors")


def add_parser(sub, names):
    from ..interop.onnx_export import INPUTS
    p = sub.add_parser("export", help="write a saved model as ONNX or safetensors")
    p.add_argument("model")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--dtype", choices=names["dtype"], default=None,
                   help="ONNX: the graph's float type (default: the model's)")
    p.add_argument("--input", choices=INPUTS, default=None,
                   help="ONNX: uint8 pixels scaled in the graph, floats as given, or one input "
                        "per CSV column (default: the model's kind)")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args):
    from ..interop.layers import need
    from ..mlp import load
    need("onnx" if args.format == "onnx" else "safetensors")   # a missing extra: say so first
    writable(args.out, "OUT")
    if args.format == "safetensors" and (args.dtype or args.input):
        raise UsageError("--dtype and --input apply to --format onnx")
    net = load(args.model, backend="numpy")
    if args.format == "onnx":
        model = net.to_onnx(args.out, dtype=args.dtype, input=args.input)
        props = {p.key: p.value for p in model.metadata_props}
        outputs = ", ".join(o.name for o in model.graph.output)
        print(f"wrote {args.out}: ONNX opset {model.opset_import[0].version}; "
              f"{props['bpgpu_inputs']}; outputs {outputs}", file=sys.stderr)
    else:
        from ..interop import write_safetensors
        write_safetensors(net, args.out)
        print(f"wrote {args.out}: {2 * net.n_layers} tensors named as torch.nn.Sequential's "
              "state dict (bpgpu.interop.to_torch builds the module)", file=sys.stderr)
    return 0
