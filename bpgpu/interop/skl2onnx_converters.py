"""skl2onnx converters for :class:`bpgpu.sklearn.BPClassifier` and
:class:`~bpgpu.sklearn.BPRegressor`, registered through skl2onnx's public API.

After :func:`register_skl2onnx`, ``skl2onnx.to_onnx(Pipeline([StandardScaler(), BPClassifier()]),
X[:1])`` converts like any scikit-learn pipeline: the estimators' layers become ``Gemm`` nodes and
activations computed in the estimator's dtype (the input is cast to it, the outputs cast back to
the input's type), the classifier's outputs are skl2onnx's ``label`` (the estimator's
``classes_``) and ``probabilities`` (a ZipMap of them unless ``options={"zipmap": False}``), the
regressor's ``variable``. The shape calculators are skl2onnx's own for linear classifiers and
regressors.
"""

from __future__ import annotations

import numpy as np

from .layers import need
from .onnx_export import ACTIVATION_OPS

__all__ = ["register_skl2onnx", "CLASSIFIER_ALIAS", "REGRESSOR_ALIAS"]

CLASSIFIER_ALIAS = "BpgpuBPClassifier"
REGRESSOR_ALIAS = "BpgpuBPRegressor"


def _const(scope, container, stem, array):
    """An initializer holding ``array`` (float, int64 or strings); returns its name."""
    from onnx import TensorProto, helper
    name = scope.get_unique_variable_name(stem)
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        container.add_initializer(name, TensorProto.STRING, list(array.shape),
                                  [str(v).encode() for v in array.ravel()])
    else:
        container.add_initializer(name, helper.np_dtype_to_tensor_dtype(array.dtype),
                                  list(array.shape), array.ravel().tolist())
    return name


def _node(scope, container, op, inputs, **attrs):
    out = scope.get_unique_variable_name(op.lower())
    container.add_node(op, inputs, out, name=scope.get_unique_operator_name(op), **attrs)
    return out


def _network_outputs(scope, operator, container, output):
    """The estimator's network applied to the operator's input; returns ``(name, elem)`` of
    the output activations in the input's float type."""
    from onnx import helper
    from skl2onnx.common.data_types import guess_proto_type
    est = operator.raw_operator
    dtype = np.dtype(est.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    in_elem = guess_proto_type(operator.inputs[0].type)
    x = _node(scope, container, "Cast", [operator.inputs[0].full_name], to=elem)
    n_hidden = len(est.coefs_) - 1
    for i, (W, b) in enumerate(zip(est.coefs_, est.intercepts_)):
        x = _node(scope, container, "Gemm",
                  [x, _const(scope, container, f"W{i}", np.asarray(W, dtype)),
                   _const(scope, container, f"b{i}", np.asarray(b, dtype))])
        op = ACTIVATION_OPS[est.activation if i < n_hidden else output]
        if op is not None:
            x = _node(scope, container, op, [x], **({"axis": 1} if op == "Softmax" else {}))
    return _node(scope, container, "Cast", [x], to=in_elem), in_elem


def _convert_classifier(scope, operator, container):
    est = operator.raw_operator
    probs, _ = _network_outputs(scope, operator, container, "softmax")
    container.add_node("Identity", [probs], operator.outputs[1].full_name,
                       name=scope.get_unique_operator_name("Identity"))
    index = _node(scope, container, "ArgMax", [probs], axis=1, keepdims=0)
    classes = np.asarray(est.classes_)
    table = classes.astype(object) if classes.dtype.kind in "OUS" else classes.astype(np.int64)
    container.add_node("Gather", [_const(scope, container, "classes", table), index],
                       operator.outputs[0].full_name, axis=0,
                       name=scope.get_unique_operator_name("Gather"))


def _convert_regressor(scope, operator, container):
    out, _ = _network_outputs(scope, operator, container, "identity")
    container.add_node("Identity", [out], operator.outputs[0].full_name,
                       name=scope.get_unique_operator_name("Identity"))


def register_skl2onnx():
    """Register the converters with skl2onnx (``update_registered_converter``); safe to call
    more than once. Returns the two estimator classes."""
    skl2onnx = need("skl2onnx")
    from skl2onnx.common.shape_calculator import (calculate_linear_classifier_output_shapes,
                                                  calculate_linear_regressor_output_shapes)

    from ..sklearn import BPClassifier, BPRegressor
    skl2onnx.update_registered_converter(
        BPClassifier, CLASSIFIER_ALIAS, calculate_linear_classifier_output_shapes,
        _convert_classifier, options={"zipmap": [True, False, "columns"], "nocl": [True, False]})
    skl2onnx.update_registered_converter(
        BPRegressor, REGRESSOR_ALIAS, calculate_linear_regressor_output_shapes,
        _convert_regressor)
    return BPClassifier, BPRegressor
