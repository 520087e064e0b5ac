"""The model users hold: :class:`MLP`, a :class:`~bpgpu.network.Network` that trains, saves and
loads itself, and applies its input pipeline to raw rows.

The network's math is :mod:`bpgpu.network` (the model layer); training is :mod:`bpgpu.train`, the
file format :mod:`bpgpu.io`, data-parallel runs :mod:`bpgpu.distributed`, the input pipeline
:mod:`bpgpu.datasets.pipeline` (the run layer). This module joins them into the one class of the
public API, so that those layers never import each other upward: ``net.fit`` calls
:func:`bpgpu.train.fit` with the network, ``net.save`` calls :func:`bpgpu.io.save`, ``predict``
encodes raw rows with the saved pipeline before the network sees them, and :func:`load` builds
an :class:`MLP` from a file.

Inputs of ``predict``, ``predict_proba`` and ``evaluate`` take two forms:

- the network's **features**: a numeric array of the network's input width (images as uint8
  pixels or floats; a CSV model's standardised and one-hot columns, as ``load_csv`` returns
  them). ``predict`` returns class indices, as :class:`~bpgpu.network.Network` does.
- **raw rows** of a model that has a tabular pipeline: a CSV path, a list of dicts, a pandas
  DataFrame, or a 2-D array of raw values in the model's column order (strings, or numbers with
  one column per raw column). The pipeline encodes them; ``predict`` returns the model's own
  labels (as the training file wrote them).

A regression model (its pipeline says so, or it has no pipeline and an identity output)
``predict`` s its output values and ``evaluate`` s to MSE, MAE and R², never an accuracy.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError
from .network import Network

__all__ = ["MLP", "load", "regression_metrics"]


class MLP(Network):
    """A fully connected back-propagation network that trains, saves and loads itself.

    Parameters are those of :class:`~bpgpu.network.Network`: ``sizes``, ``activation``,
    ``output``, ``loss``, ``init``, ``dtype``, ``backend``, ``seed``, ``input_scale``,
    ``input_shift``.

    Attributes
    ----------
    pipeline : bpgpu.datasets.pipeline.Pipeline or None
        What the inputs and outputs mean (saved with the model; set by :meth:`record_dataset`,
        by ``fit`` on a dataset, or by hand).
    data_source : dict or None
        The training data's name, fingerprint and split (saved with the model; ``bpgpu
        evaluate`` uses the split and refuses other data).
    """

    pipeline = None
    data_source = None

    # ------------------------------------------------------------------ training and files
    def record_dataset(self, data) -> "MLP":
        """Keep what ``data`` (a :class:`bpgpu.datasets.Dataset` or
        :class:`~bpgpu.datasets.TabularData`) says about itself: its pipeline and source."""
        pipeline = getattr(data, "pipeline", None)
        if pipeline is not None:
            try:
                pipeline.check_against(self.sizes)
            except ValueError as exc:
                raise DataError(f"the dataset does not fit this network: {exc}") from None
        self.pipeline, self.data_source = pipeline, getattr(data, "source", None)
        return self

    def fit(self, X, y=None, *, comm=None, **options):
        """Train with mini-batch gradient descent: :func:`bpgpu.train.fit` with this network
        (every option is described there).

        ``X`` may be a dataset (:func:`bpgpu.datasets.load_csv`'s ``TabularData`` or a
        ``Dataset``) with ``y`` omitted: the model trains on its training split and keeps its
        pipeline and source (:meth:`record_dataset`). ``comm`` (an mpi4py communicator or a
        :class:`bpgpu.distributed.DataParallel`) trains data-parallel on its ranks; every rank
        calls ``fit`` with the same arguments.

        Returns
        -------
        History
        """
        from .train import fit
        if y is None and hasattr(X, "X_train"):
            self.record_dataset(X)
            X, y = X.X_train, X.y_train
        elif y is None:
            raise DataError("fit needs targets y (or a dataset with its own)")
        parallel = None
        if comm is not None:
            from .distributed import DataParallel
            parallel = DataParallel.of(comm)
        return fit(self, X, y, parallel=parallel, **options)

    def save(self, path):
        """Write the model to ``path`` (.npz + JSON metadata, its pipeline included),
        atomically."""
        from .io import save
        return save(self, path)

    def to_onnx(self, path=None, **options):
        """Export to ONNX (:func:`bpgpu.interop.onnx_export.to_onnx`: ``dtype``, ``input``); returns the
        checked ``onnx.ModelProto`` and writes it to ``path`` when given."""
        from .interop.onnx_export import to_onnx
        return to_onnx(self, path, **options)

    # ------------------------------------------------------------------ what the model is
    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``: the pipeline's, else regression exactly for
        an identity output."""
        if self.pipeline is not None:
            return self.pipeline.task
        return "regression" if self.output == "identity" else "classification"

    @property
    def classes(self):
        """The class labels in output order (an array), or None when the model has none."""
        if self.pipeline is None or self.pipeline.classes is None:
            return None
        return np.asarray(self.pipeline.classes)

    def is_rows(self, X) -> bool:
        """Whether ``X`` is raw rows (see the module docstring) rather than features."""
        from .datasets.rows import is_rows
        return is_rows(X, self.pipeline, self.sizes[0])

    def encode_rows(self, X):
        """Raw rows as ``(features (N, n_inputs) float64, target values or None)``."""
        from .datasets.rows import row_blocks
        if self.pipeline is None or self.pipeline.kind != "tabular":
            raise DataError("this model has no tabular pipeline: give it a numeric array of "
                            f"{self.sizes[0]} features per row")
        blocks = list(row_blocks(self.pipeline, X))
        features = np.vstack([b.features for b in blocks])
        targets = [b.target for b in blocks]
        target = None if any(t is None for t in targets) else [v for t in targets for v in t]
        return features, target

    # ------------------------------------------------------------------ inference
    def predict_proba(self, X):
        """Output-layer activations, shape (N, n_out), for features or raw rows."""
        if self.is_rows(X):
            X = self.encode_rows(X)[0]
        return super().predict_proba(X)

    def predict(self, X, threshold=0.5):
        """Classification: class indices for features, the model's labels for raw rows
        (argmax, or ``output >= threshold`` with one output); a multi-label network's 0/1
        indicators, shape (N, n_out). Regression: the output values, shape (N,) with one
        output, else (N, n_out)."""
        rows = self.is_rows(X)
        if rows:
            X = self.encode_rows(X)[0]
        if self.task != "regression":
            indices = super().predict(X, threshold)
            if rows and self.pipeline is not None and indices.ndim == 1:
                return self.pipeline.labels(indices)
            return indices
        p = super().predict_proba(X)
        return p[:, 0] if p.shape[1] == 1 else p

    def evaluate(self, X, y=None, sample_weight=None):
        """Mean loss and the task's figures on ``(X, y)``.

        ``X`` features or raw rows; ``y`` class indices, the model's labels, or target values
        (omitted: the rows' own target column); ``sample_weight`` (N,) weights the mean loss
        (``sum(w loss) / sum(w)``).

        Returns
        -------
        dict
            Classification: ``loss`` and ``accuracy``. Regression: ``loss``, ``mse`` (mean of
            the squared errors over samples and outputs), ``mae`` and ``r2`` (scikit-learn's
            ``r2_score``, outputs averaged uniformly).
        """
        if self.is_rows(X):
            X, target = self.encode_rows(X)
            if y is None:
                if target is None:
                    raise DataError(f"the rows have no target column {self.pipeline.target!r} "
                                    "and no y was given")
                y = target
        elif y is None:
            raise DataError("evaluate needs targets y for features")
        y = self._targets(y)
        result = super().evaluate(X, y, sample_weight=sample_weight)
        if self.task != "regression":
            return result
        return dict(loss=result["loss"], **regression_metrics(super().predict_proba(X), y))

    def _targets(self, y):
        """Labels written as the data wrote them -> class indices; anything else unchanged."""
        y = np.asarray(y) if not isinstance(y, list) else y
        if self.task == "multilabel" and self.pipeline is not None:
            from .datasets.rows import indicators
            return indicators(self.pipeline, y) if isinstance(y, list) else y
        if self.task == "regression":
            return np.asarray(y, dtype=np.float64) if isinstance(y, list) else y
        as_array = np.asarray(y, dtype=object) if isinstance(y, list) else y
        if as_array.dtype.kind in "OUS" and self.pipeline is not None:
            return self.pipeline.indices(list(as_array))
        return np.asarray(y)


def regression_metrics(predicted, targets) -> dict:
    """MSE, MAE and R² of ``predicted`` (N, k) against ``targets`` (N,) or (N, k).

    Returns
    -------
    dict with ``mse``, ``mae`` (means over samples and outputs) and ``r2`` (per output
    ``1 - SS_res / SS_tot``, averaged; 1.0 for a perfect fit of a constant output, 0.0 for a
    wrong one, as scikit-learn's ``r2_score``).
    """
    p = np.asarray(predicted, np.float64)
    t = np.asarray(targets, np.float64).reshape(p.shape[0], -1)
    err = p - t
    ss_res = (err ** 2).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                  np.where(ss_res == 0, 1.0, 0.0))
    return {"mse": float((err ** 2).mean()), "mae": float(np.abs(err).mean()),
            "r2": float(r2.mean())}


def load(path, backend="auto") -> MLP:
    """Load a model written by :meth:`MLP.save` (or a checkpoint: the model it holds) onto
    ``backend``; see :func:`bpgpu.io.load`."""
    from .io import load as load_network
    return load_network(path, backend, cls=MLP)
