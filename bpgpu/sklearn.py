"""scikit-learn estimators over bpgpu: :class:`BPClassifier` and :class:`BPRegressor`.

They build exactly the :class:`bpgpu.MLP` the same settings would build and call the same ``fit``,
so results match the plain API bit for bit on the same backend. Fitted state is host numpy
(``coefs_``, ``intercepts_``), so an estimator pickles and clones on any backend; the device model
is rebuilt on demand. Requires scikit-learn (in the ``dev`` extra).
"""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .mlp import MLP
from .options import sklearn_parameters

__all__ = ["BPClassifier", "BPRegressor"]


#: The estimators' own parameters (name, default): the network, the early-stopping switch in
#: scikit-learn's spelling, and where it runs. The training options they share with ``fit`` come
#: from bpgpu.options (:func:`~bpgpu.options.sklearn_parameters`): each option declares its name
#: and default here.
_MODEL_PARAMETERS = (("hidden_layer_sizes", (100,)), ("activation", "relu"), ("init", "he"))
_STOPPING_PARAMETERS = (("early_stopping", False), ("validation_fraction", 0.1),
                        ("n_iter_no_change", 10))
_PLACE_PARAMETERS = (("dtype", "float64"), ("backend", "auto"), ("random_state", None))


def _parameters():
    """Every estimator parameter as ``(name, default)``, in signature order."""
    options = [(sk, default) for sk, _, default in sklearn_parameters()]
    return list(_MODEL_PARAMETERS) + options + list(_STOPPING_PARAMETERS) + \
        list(_PLACE_PARAMETERS)


def _init(self, **params):
    for name, default in _parameters():
        setattr(self, name, params.pop(name, default))
    if params:
        raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument "
                        f"{sorted(params)[0]!r}")


_init.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
       for name, default in _parameters()])


class _BPEstimator(BaseEstimator):
    _output = "softmax"
    _loss = "ce"

    __init__ = _init

    # the model: built from the settings, its parameters kept on the host
    def _seed(self):
        rs = self.random_state
        if rs is None:
            return int(np.random.randint(0, 2 ** 31 - 1))
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(0, 2 ** 31 - 1))
        return int(rs)

    def _new_model(self, n_in, n_out, seed):
        hidden = [self.hidden_layer_sizes] if np.isscalar(self.hidden_layer_sizes) else \
            list(self.hidden_layer_sizes)
        return MLP([n_in] + [int(h) for h in hidden] + [n_out], activation=self.activation,
                   output=self._output, loss=self._loss, init=self.init, dtype=self.dtype,
                   backend=self.backend, seed=seed)

    def _model(self):
        model = getattr(self, "_model_cache", None)
        if model is None:
            model = self._new_model(self.n_features_in_, self._n_outputs, self.seed_)
            model.set_params(self.coefs_, self.intercepts_)
            self._model_cache = model
        return model

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_model_cache", None)
        return state

    def _fit_args(self, epochs):
        """``fit``'s options from the estimator's parameters (bpgpu.options declares which)."""
        args = {option: getattr(self, sk) for sk, option, _ in sklearn_parameters()}
        args.update(epochs=epochs,
                    validation_split=self.validation_fraction if self.early_stopping else None,
                    early_stopping=self.n_iter_no_change if self.early_stopping else None)
        return args

    def _train(self, X, T, epochs, fresh):
        if fresh or not hasattr(self, "coefs_"):
            self.seed_ = self._seed()
            self._model_cache = self._new_model(X.shape[1], self._n_outputs, self.seed_)
        model = self._model()
        history = model.fit(X, T, **self._fit_args(epochs))
        self.coefs_, self.intercepts_ = model.get_params()
        self.history_ = history
        self.loss_curve_ = list(getattr(self, "loss_curve_", []) if not fresh else []) + \
            list(history.loss)
        self.n_iter_ = len(history.epoch) + (0 if fresh else getattr(self, "n_iter_", 0))
        return self

    def _X(self, X, reset):
        return validate_data(self, X, reset=reset, dtype=np.float64)


class BPClassifier(ClassifierMixin, _BPEstimator):
    """A back-propagation MLP classifier (softmax output, cross-entropy) on any bpgpu backend.

    Parameters follow :class:`sklearn.neural_network.MLPClassifier` where they overlap
    (``hidden_layer_sizes``, ``activation``, ``alpha`` = L2 weight decay, ``batch_size``,
    ``learning_rate``, ``max_iter`` = epochs, ``early_stopping``, ...); ``backend`` picks
    numpy / numba / cupy ("auto" by default), ``dtype`` float32 or float64.

    Attributes
    ----------
    classes_, n_features_in_, coefs_, intercepts_, history_, loss_curve_, n_iter_
    """

    def fit(self, X, y):
        """Train from scratch for ``max_iter`` epochs."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("BPClassifier needs samples of at least 2 classes; got one class "
                             f"({self.classes_[0]!r})")
        self._n_outputs = len(self.classes_)
        return self._train(X, encoded, self.max_iter, fresh=True)

    def partial_fit(self, X, y, classes=None):
        """One more epoch over ``(X, y)``; ``classes`` is required on the first call."""
        first = not hasattr(self, "coefs_")
        X, y = validate_data(self, X, y, dtype=np.float64, reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes must be given on the first call to partial_fit")
            classes = np.unique(classes)
            if len(classes) < 2:
                raise ValueError("BPClassifier needs at least 2 classes; partial_fit was given "
                                 f"classes={classes.tolist()}")
            self.classes_ = classes
            self._n_outputs = len(self.classes_)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"labels {unknown.tolist()} are not in classes {self.classes_}")
        encoded = np.searchsorted(self.classes_, y)
        return self._train(X, encoded, 1, fresh=first)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes)."""
        check_is_fitted(self, "coefs_")
        return self._model().predict_proba(self._X(X, reset=False)).astype(np.float64)

    def predict(self, X):
        check_is_fitted(self, "coefs_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class BPRegressor(RegressorMixin, _BPEstimator):
    """A back-propagation MLP regressor (linear output, mean of ½‖a − y‖²) on any bpgpu backend."""

    _output = "identity"
    _loss = "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True     # y may be (n_samples, n_targets)
        return tags

    def fit(self, X, y):
        """Train from scratch for ``max_iter`` epochs."""
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        self._one_target = y.ndim == 1
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        self._n_outputs = Y.shape[1]
        return self._train(X, Y.astype(np.float64), self.max_iter, fresh=True)

    def partial_fit(self, X, y):
        """One more epoch over ``(X, y)``."""
        first = not hasattr(self, "coefs_")
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True,
                             reset=first)
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        if first:
            self._one_target = y.ndim == 1
            self._n_outputs = Y.shape[1]
        return self._train(X, Y.astype(np.float64), 1, fresh=first)

    def predict(self, X):
        check_is_fitted(self, "coefs_")
        out = self._model().predict_proba(self._X(X, reset=False)).astype(np.float64)
        return out[:, 0] if self._one_target else out
