"""Export a bpgpu model to ONNX, its input pipeline inside the graph.

The graph is built with the ``onnx`` package's helper API (an optional extra) and checked with
``onnx.checker`` (full check, shapes inferred) before it is returned or written. Its batch
dimension is dynamic (``N``); it computes in float32 or float64 (the model's dtype by default).

Inputs (``input=``):

- ``"uint8"`` (image models' default): ``input`` uint8 (N, n_inputs), scaled inside the graph as
  the network's gather does: cast, times ``input_scale``, plus ``input_shift``.
- ``"float"`` (other models' default): ``input`` (N, n_inputs) in the graph's dtype, used as given.
- ``"columns"`` (tabular models' default): one input per CSV column, named by the column, shape
  (N, 1): float64 for a numeric column (standardised in the graph in float64, exactly as
  bpgpu does: ``(x / scale - mean) / std``), string for a categorical one (one-hot in the graph
  by ``Equal`` against the saved categories; a category training never saw gives a row of zeros,
  where ``bpgpu predict`` refuses it).

Outputs: a classifier's ``probabilities`` (N, n_out), its output activations, and ``label`` (N,):
the model's labels (strings for a CSV model with string labels, int64 otherwise) of the argmax,
or of a 0.5 threshold with one output (a multi-label network: the 0/1 indicator of each
output, (N, n_out)); a regression model's ``predictions`` (N, n_out).
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import ConfigError
from .layers import layers_of, need

__all__ = ["to_onnx", "INPUTS", "OPSET", "ACTIVATION_OPS"]

#: The input forms :func:`to_onnx` builds.
INPUTS = ("uint8", "float", "columns")
#: The ONNX operator set the graph uses (19: ``Equal`` on strings).
OPSET = 19
#: IR version written (read by onnxruntime 1.15 and later).
IR_VERSION = 9
#: Each bpgpu activation as an ONNX operator (identity: none).
ACTIVATION_OPS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "identity": None,
                  "softmax": "Softmax"}


class _Graph:
    """Nodes and initializers being collected, each output named once."""

    def __init__(self, onnx, dtype):
        self.onnx, self.helper = onnx, onnx.helper
        self.np_dtype = np.dtype(dtype)
        self.elem = self.helper.np_dtype_to_tensor_dtype(self.np_dtype)
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._count = 0

    def name(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem, array):
        """An initializer holding ``array``; returns its name."""
        name = self.name(stem)
        array = np.asarray(array)
        if array.dtype.kind in "OU":
            tensor = self.helper.make_tensor(name, self.onnx.TensorProto.STRING, array.shape,
                                             [str(v).encode() for v in array.ravel()])
        else:
            tensor = self.onnx.numpy_helper.from_array(array, name)
        self.initializers.append(tensor)
        return name

    def op(self, op_type, inputs, stem=None, out=None, **attrs):
        """Add one node; returns its output's name (``out`` or a fresh one)."""
        out = out or self.name(stem or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out],
                                                name=self.name(op_type), **attrs))
        return out

    def add_input(self, name, elem, width):
        self.inputs.append(self.helper.make_tensor_value_info(name, elem, ["N", width]))
        return name

    def add_output(self, name, elem, shape):
        self.outputs.append(self.helper.make_tensor_value_info(name, elem, shape))


def _input_stage(g, net, form):
    """The graph's inputs up to the network's first layer; returns the features' name."""
    TP = g.onnx.TensorProto
    n_in = net.sizes[0]
    if form == "uint8":
        x = g.op("Cast", [g.add_input("input", TP.UINT8, n_in)], to=g.elem)
        x = g.op("Mul", [x, g.const("input_scale", g.np_dtype.type(net.input_scale))])
        if net.input_shift:
            x = g.op("Add", [x, g.const("input_shift", g.np_dtype.type(net.input_shift))])
        return x
    if form == "float":
        return g.add_input("input", g.elem, n_in)
    blocks = []
    for col in net.pipeline.columns:
        if col["kind"] == "numeric":
            x = g.add_input(col["name"], TP.DOUBLE, 1)
            if col["scale"] != 1.0:
                x = g.op("Div", [x, g.const("scale", np.float64(col["scale"]))])
            x = g.op("Sub", [x, g.const("mean", np.float64(col["mean"]))])
            x = g.op("Div", [x, g.const("std", np.float64(col["std"]))])
        else:
            x = g.add_input(col["name"], TP.STRING, 1)
            cats = np.array([col["categories"]], dtype=object)
            x = g.op("Equal", [x, g.const("categories", cats)])
        blocks.append(g.op("Cast", [x], to=g.elem))
    return blocks[0] if len(blocks) == 1 else g.op("Concat", blocks, axis=1)


def _dense_stack(g, net, x):
    """Every layer: ``Gemm`` (x @ W + b), then its activation; returns the output's name."""
    for i, layer in enumerate(layers_of(net)):
        x = g.op("Gemm", [x, g.const(f"W{i}", layer.W.astype(g.np_dtype)),
                          g.const(f"b{i}", layer.b.astype(g.np_dtype))], stem=f"z{i}")
        op = ACTIVATION_OPS[layer.activation]
        if op == "Softmax":
            x = g.op(op, [x], stem=f"a{i}", axis=1)
        elif op is not None:
            x = g.op(op, [x], stem=f"a{i}")
    return x


def _output_stage(g, net, x, task):
    """``probabilities`` and ``label``, or ``predictions``."""
    TP = g.onnx.TensorProto
    n_out = net.sizes[-1]
    if task == "regression":
        g.op("Identity", [x], out="predictions")
        g.add_output("predictions", g.elem, ["N", n_out])
        return
    g.op("Identity", [x], out="probabilities")
    g.add_output("probabilities", g.elem, ["N", n_out])
    if net.multilabel:                          # each output its own yes/no label, as predict
        half = g.const("half", g.np_dtype.type(0.5))
        g.op("Cast", [g.op("GreaterOrEqual", [x, half])], out="label", to=TP.INT64)
        g.add_output("label", TP.INT64, ["N", n_out])
        return
    if n_out == 1:
        half = g.const("half", g.np_dtype.type(0.5))
        flat = g.op("Squeeze", [x, g.const("axis", np.array([1], np.int64))])
        index = g.op("Cast", [g.op("GreaterOrEqual", [flat, half])], to=TP.INT64)
    else:
        index = g.op("ArgMax", [x], axis=1, keepdims=0)
    classes = None if net.pipeline is None else net.pipeline.classes
    if classes is None:
        g.op("Identity", [index], out="label")
        g.add_output("label", TP.INT64, ["N"])
        return
    strings = any(isinstance(c, str) for c in classes)
    table = np.array(classes, dtype=object if strings else np.int64)
    g.op("Gather", [g.const("classes", table), index], out="label", axis=0)
    g.add_output("label", TP.STRING if strings else TP.INT64, ["N"])


def _default_input(net):
    kind = None if net.pipeline is None else net.pipeline.kind
    return {"tabular": "columns", "image": "uint8"}.get(kind, "float")


def to_onnx(net, path=None, *, dtype=None, input=None):
    """The model as a checked ONNX graph (see the module docstring).

    Parameters
    ----------
    net : bpgpu.MLP (or Network)
    path : path, optional
        Where to write the ``.onnx`` file (atomically).
    dtype : {"float32", "float64"}, optional
        The graph's float type (default: the model's).
    input : {"uint8", "float", "columns"}, optional
        The input form (default: ``columns`` for a CSV model, ``uint8`` for an image model,
        ``float`` otherwise).

    Returns
    -------
    onnx.ModelProto
    """
    onnx = need("onnx")
    dtype = np.dtype(dtype or net.dtype)
    if dtype.name not in ("float32", "float64"):
        raise ConfigError(f"ONNX export computes in float32 or float64, not {dtype}")
    form = input or _default_input(net)
    if form not in INPUTS:
        raise ConfigError(f"input must be one of {', '.join(INPUTS)}, got {form!r}")
    pipeline = getattr(net, "pipeline", None)
    if form == "columns" and (pipeline is None or pipeline.kind != "tabular"):
        raise ConfigError("input='columns' needs a model trained on a CSV (it has no columns)")
    g = _Graph(onnx, dtype)
    x = _dense_stack(g, net, _input_stage(g, net, form))
    task = getattr(net, "task", "regression" if net.output == "identity" else "classification")
    _output_stage(g, net, x, task)
    graph = onnx.helper.make_graph(g.nodes, "bpgpu_mlp", g.inputs, g.outputs, g.initializers)
    model = onnx.helper.make_model(graph, producer_name="bpgpu",
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    meta = {"bpgpu_config": json.dumps(net.config()), "bpgpu_inputs": _describe(net, form)}
    if pipeline is not None:
        meta["bpgpu_pipeline"] = json.dumps(pipeline.record())
    onnx.helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    if path is not None:
        from ..files import atomic_write
        data = model.SerializeToString()
        atomic_write(path, lambda f: f.write(data))
    return model


def _describe(net, form) -> str:
    """One line saying what the graph's inputs are (kept in its metadata)."""
    if form == "columns":
        return "one (N, 1) input per column: " + net.pipeline.describe_inputs()
    if form == "uint8":
        return (f"input: uint8 (N, {net.sizes[0]}), scaled in the graph by {net.input_scale!r}"
                f" plus {net.input_shift!r}")
    what = "standardised and one-hot features" if getattr(net, "pipeline", None) is not None \
        and net.pipeline.kind == "tabular" else "floats used as given"
    return f"input: (N, {net.sizes[0]}) {what}"
