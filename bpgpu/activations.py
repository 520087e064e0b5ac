"""Names and properties of the activation functions and the valid (output, loss) pairs.

The math itself is a backend op (``Backend.bias_activation`` / ``Backend.activation_backward``),
written once in :mod:`bpgpu.backends.base`; this module only says which names exist, so a model can
reject a typo before any array is allocated. Every derivative here is expressed through the saved
*output* ``a`` of the activation (sigma' = a(1-a), tanh' = 1-a^2, relu' = [a>0], identity' = 1), which
is what lets the backward pass work in place on the delta without keeping pre-activations.
"""

from __future__ import annotations

from .errors import ConfigError
from .kernels.codes import ACT_CODES, LOSS_CODES   # the kernels' codes of these names

__all__ = ["HIDDEN_ACTIVATIONS", "OUTPUT_ACTIVATIONS", "LOSSES", "VALID_OUTPUT_LOSS",
           "ACT_CODES", "LOSS_CODES", "check_activation", "check_output_loss"]

#: Activations allowed on hidden layers.
HIDDEN_ACTIVATIONS = ("sigmoid", "tanh", "relu", "identity")
#: Activations allowed on the output layer (softmax is row-wise, so output only).
OUTPUT_ACTIVATIONS = HIDDEN_ACTIVATIONS + ("softmax",)
#: Losses: the mean over a batch's samples of the per-sample cost (Backend.loss_sum's formulas).
LOSSES = ("mse", "bce", "ce")
#: Which output activation each loss accepts.
VALID_OUTPUT_LOSS = {
    "mse": OUTPUT_ACTIVATIONS,
    "bce": ("sigmoid",),
    "ce": ("softmax",),
}



def check_activation(name: str, *, output: bool = False) -> str:
    """Return ``name`` if it is a known activation for that position, else raise ConfigError."""
    allowed = OUTPUT_ACTIVATIONS if output else HIDDEN_ACTIVATIONS
    if name not in allowed:
        where = "output" if output else "hidden"
        raise ConfigError(f"unknown {where} activation {name!r}; choose one of {', '.join(allowed)}")
    return name


def check_output_loss(output: str, loss: str) -> None:
    """Raise ConfigError unless ``loss`` can be used with the output activation ``output``."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    check_activation(output, output=True)
    if output not in VALID_OUTPUT_LOSS[loss]:
        ok = " or ".join(VALID_OUTPUT_LOSS[loss])
        raise ConfigError(f"loss {loss!r} needs a {ok} output layer, not {output!r} "
                          f"(mse works with any output)")
