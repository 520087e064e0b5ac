"""Sample and class weights: what a weighted fit descends, and the per-row factors a step uses.

The objective of a batch with sample weights ``s`` is scikit-learn's ``sum_i s_i loss_i /
sum_i s_i`` over the batch's rows, so integer weights equal repeated rows and a weight of zero
equals leaving the row out. (Keras divides by the batch's rows instead: ``sum_i s_i loss_i / B``;
the two differ by the batch's mean weight, a per-batch change of the learning rate.) A batch
whose weights sum to zero contributes nothing.

A training step takes per-row *factors* ``f_i = s_i * B / sum_batch(s)`` (``B`` the global
batch's rows): the output delta, which divides by the rows it has, is multiplied by them, which
makes the step's gradient that of the weighted mean (:meth:`bpgpu.network.Network.train_step`).
The factors of an epoch are computed on the host once per epoch from its permutation
(:func:`row_factors`) and sliced per step like the permutation itself, so the compiled epoch, the
GPU and data-parallel ranks (each of which sees its rows of the global batch) all take them as
one more per-row array.

``class_weight`` multiplies each row's sample weight by its class's weight: a dict of label ->
weight, or ``"balanced"``: ``n_samples / (n_classes * count(label))``, as scikit-learn computes it.
"""

from __future__ import annotations

import json

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["check_sample_weight", "class_weights", "class_weight_by_label", "row_factors"]


def check_sample_weight(sample_weight, n_rows, what="sample_weight") -> np.ndarray:
    """``sample_weight`` as a float64 array of shape (n_rows,); DataError unless it is 1-D, of
    the right length, finite, non-negative and not all zero."""
    try:
        s = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numbers, got {type(sample_weight).__name__}") from None
    if s.ndim != 1 or s.shape[0] != n_rows:
        raise DataError(f"{what} must have shape ({n_rows},) (one weight per sample), got "
                        f"{s.shape}")
    if not np.all(np.isfinite(s)):
        raise DataError(f"{what} contains NaN or inf")
    if np.any(s < 0):
        raise DataError(f"{what} must be >= 0, found {float(s.min())}")
    if not np.any(s > 0):
        raise DataError(f"{what} is zero for every sample: nothing to train on")
    return s


def class_weights(class_weight, y, n_outputs) -> np.ndarray | None:
    """Per-row weights of ``class_weight`` for integer labels ``y`` (shape (N,)), or None.

    ``class_weight``: None, ``"balanced"``, a dict of label -> weight, or the JSON text of one
    (the command line's ``--class-weight``; keys are labels as written in the file where the
    caller maps them, else integers).
    """
    if class_weight is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1 and int(n_outputs) > 1 and y.dtype.kind == "f":
        raise ConfigError("class_weight is for single-label classification; weight the rows "
                          "of multi-label (or one-hot) targets with sample_weight")
    if y.ndim != 1 or y.dtype.kind not in "iub":
        raise ConfigError("class_weight needs integer class labels y of shape (N,), got "
                          f"{y.shape} of {y.dtype}")
    n_classes = max(int(n_outputs), 2)
    if isinstance(class_weight, str) and class_weight.strip().startswith("{"):
        try:
            class_weight = json.loads(class_weight)
        except ValueError as exc:
            raise ConfigError(f"class_weight: not a JSON object ({exc})") from None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ConfigError(f"class_weight must be 'balanced' or a dict of label -> weight, "
                              f"got {class_weight!r}")
        counts = np.bincount(y.astype(np.int64), minlength=n_classes).astype(np.float64)
        per_class = np.divide(len(y), n_classes * counts, out=np.zeros(n_classes),
                              where=counts > 0)
        return per_class[y]
    if not isinstance(class_weight, dict):
        raise ConfigError(f"class_weight must be 'balanced' or a dict, got "
                          f"{type(class_weight).__name__}")
    per_class = np.ones(n_classes)
    for label, weight in class_weight.items():
        try:
            index, value = int(label), float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"class_weight: {label!r}: {weight!r} is not an integer label "
                              "and a number") from None
        if not 0 <= index < n_classes or not (np.isfinite(value) and value >= 0):
            raise ConfigError(f"class_weight: label {label!r} must be in [0, {n_classes - 1}] "
                              f"and its weight a finite number >= 0, got {weight!r}")
        per_class[index] = value
    return per_class[y]


def class_weight_by_label(class_weight, classes):
    """``class_weight`` with its keys, labels as a data file wrote them, turned into class
    indices (what :func:`class_weights` takes).

    Parameters
    ----------
    class_weight : None, "balanced", dict, or str
        A dict of label -> weight, or the JSON text of one (``--class-weight``); None and
        ``"balanced"`` are returned unchanged.
    classes : sequence or None
        The labels in output order (a dataset's ``pipeline.classes``); None returns
        ``class_weight`` unchanged (its keys are then integer indices).

    Returns
    -------
    dict or the input unchanged
        ``{index: weight}``; a key that names no class is a :class:`ConfigError` listing them.
    """
    if classes is None or class_weight is None:
        return class_weight
    if isinstance(class_weight, str):
        if not class_weight.strip().startswith("{"):
            return class_weight
        try:
            class_weight = json.loads(class_weight)
        except ValueError as exc:
            raise ConfigError(f"class_weight: not a JSON object ({exc})") from None
    if not isinstance(class_weight, dict):
        return class_weight
    index_of = {str(label): i for i, label in enumerate(classes)}
    unknown = [str(k) for k in class_weight if str(k) not in index_of]
    if unknown:
        raise ConfigError(f"class_weight names {', '.join(map(repr, unknown))}, not among the "
                          f"labels {', '.join(map(repr, index_of))}")
    return {index_of[str(k)]: w for k, w in class_weight.items()}


def row_factors(sample_weight, order, batch, dtype) -> np.ndarray:
    """The per-row factors of an epoch, in the positions of ``order``.

    Parameters
    ----------
    sample_weight : ndarray, shape (N,), float64
    order : ndarray, shape (N,), int
        The epoch's permutation: batch ``j`` is ``order[j * batch:(j + 1) * batch]``.
    batch : int
    dtype : numpy dtype
        The model's.

    Returns
    -------
    ndarray, shape (N,), ``dtype``
        ``f[k] = s[order[k]] * B_j / sum(s over batch j)`` for the batch ``j`` holding position
        ``k`` (``B_j`` its rows; 0 for a batch of zero total weight).
    """
    s = sample_weight[order]
    starts = np.arange(0, s.shape[0], batch)
    sums = np.add.reduceat(s, starts)
    rows = np.minimum(batch, s.shape[0] - starts)
    scale = np.divide(rows, sums, out=np.zeros(len(sums)), where=sums > 0)
    return (s * np.repeat(scale, rows)).astype(dtype)
