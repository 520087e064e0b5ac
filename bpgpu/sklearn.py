"""scikit-learn estimators over bpgpu: :class:`BPClassifier` and :class:`BPRegressor`.

They build exactly the :class:`bpgpu.MLP` the same settings would build and call the same ``fit``,
so results match the plain API bit for bit on the same backend. Fitted state is host numpy
(``coefs_``, ``intercepts_``, and the training state a continued fit needs: the optimizer's
buffers, the generator, the step and epoch counts), so an estimator pickles and clones on any
backend and a pickled estimator continues exactly where it stopped; the device model is rebuilt
on demand. Requires scikit-learn (in the ``dev`` extra).

As scikit-learn's MLPs: ``sample_weight`` in ``fit`` and ``partial_fit`` (each batch descends
``sum(s_i loss_i) / sum(s_i)``: integer weights equal repeated rows), ``class_weight``,
``warm_start`` (``fit`` continues from the previous fit: weights and optimizer state), and
``partial_fit`` as one more epoch of the same run (n calls equal n epochs of one ``fit``).
:class:`BPClassifier` takes multi-label indicator targets (N, k): independent sigmoid outputs
with binary cross-entropy, ``predict`` thresholded at ``threshold``.
"""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .mlp import MLP
from .options import sklearn_parameters

__all__ = ["BPClassifier", "BPRegressor"]


#: The estimators' own parameters (name, default): the network, the early-stopping switch in
#: scikit-learn's spelling, continuing, and where it runs. The training options they share with
#: ``fit`` come from bpgpu.options (:func:`~bpgpu.options.sklearn_parameters`): each option
#: declares its estimator name and default there.
_MODEL_PARAMETERS = (("hidden_layer_sizes", (100,)), ("activation", "relu"), ("init", "he"))
_STOPPING_PARAMETERS = (("early_stopping", False), ("validation_fraction", 0.1),
                        ("n_iter_no_change", 10), ("warm_start", False))
_PLACE_PARAMETERS = (("dtype", "float64"), ("backend", "auto"), ("random_state", None))


def _parameters(extra=()):
    """Every estimator parameter as ``(name, default)``, in signature order."""
    options = [(sk, default) for sk, _, default in sklearn_parameters()]
    return (list(_MODEL_PARAMETERS) + options + list(_STOPPING_PARAMETERS) + list(extra)
            + list(_PLACE_PARAMETERS))


def _make_init(parameters):
    """An ``__init__`` that stores ``parameters`` (scikit-learn's convention), with their
    signature, so get_params, set_params and clone see them."""
    def __init__(self, **params):
        for name, default in parameters:
            setattr(self, name, params.pop(name, default))
        if params:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument "
                            f"{sorted(params)[0]!r}")
    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
           for name, default in parameters])
    return __init__


class _BPEstimator(BaseEstimator):
    __init__ = _make_init(_parameters())

    # the model: built from the settings, its parameters kept on the host
    def _seed(self):
        rs = self.random_state
        if rs is None:
            return int(np.random.randint(0, 2 ** 31 - 1))
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(0, 2 ** 31 - 1))
        return int(rs)

    def _layers(self, n_in, n_out):
        hidden = [self.hidden_layer_sizes] if np.isscalar(self.hidden_layer_sizes) else \
            list(self.hidden_layer_sizes)
        return [n_in] + [int(h) for h in hidden] + [n_out]

    def _head(self):
        """(output, loss) of the network this estimator fits."""
        return "softmax", "ce"

    def _new_model(self, n_in, n_out, seed):
        output, loss = self._head()
        return MLP(self._layers(n_in, n_out), activation=self.activation, output=output,
                   loss=loss, init=self.init, dtype=self.dtype, backend=self.backend, seed=seed)

    def _model(self):
        model = getattr(self, "_model_cache", None)
        if model is None:
            model = self._new_model(self.n_features_in_, self._n_outputs, self.seed_)
            model.set_params(self.coefs_, self.intercepts_)
            model.training_state = getattr(self, "_training_state", None)
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

    def _check_same_network(self, n_in):
        """ValueError when continuing would need another network than the fitted one."""
        fitted = [w.shape[0] for w in self.coefs_] + [self.coefs_[-1].shape[1]]
        wanted = self._layers(n_in, self._n_outputs)
        if fitted != wanted or getattr(self, "_fitted_head", None) != self._head() + \
                (self.activation, self.dtype):
            raise ValueError(f"continuing a fit (warm_start or partial_fit) needs the same "
                             f"network: fitted {fitted}, asked for {wanted} (with "
                             f"{self._head() + (self.activation, self.dtype)}); fit it afresh")

    def _train(self, X, T, epochs, fresh, sample_weight=None):
        if fresh:
            self.seed_ = self._seed()
            self._model_cache = self._new_model(X.shape[1], self._n_outputs, self.seed_)
            self._training_state = None
        else:
            self._check_same_network(X.shape[1])
        model = self._model()
        history = model.fit(X, T, sample_weight=sample_weight, continue_training=not fresh,
                            **self._fit_args(epochs))
        self.coefs_, self.intercepts_ = model.get_params()
        self._training_state = model.training_state
        self._fitted_head = self._head() + (self.activation, self.dtype)
        self.history_ = history
        self.loss_curve_ = list(getattr(self, "loss_curve_", []) if not fresh else []) + \
            list(history.loss)
        self.n_iter_ = len(history.epoch) + (0 if fresh else getattr(self, "n_iter_", 0))
        return self

    def _continues(self):
        """True when ``fit`` continues the previous fit (``warm_start`` on a fitted one)."""
        return bool(self.warm_start) and hasattr(self, "coefs_")

    def _X(self, X, reset):
        return validate_data(self, X, reset=reset, dtype=np.float64)


class BPClassifier(ClassifierMixin, _BPEstimator):
    """A back-propagation MLP classifier on any bpgpu backend: softmax output and cross-entropy,
    or for multi-label indicator targets (N, k) independent sigmoids and binary cross-entropy.

    Parameters follow :class:`sklearn.neural_network.MLPClassifier` where they overlap
    (``hidden_layer_sizes``, ``activation``, ``alpha`` = L2 weight decay, ``batch_size``,
    ``learning_rate``, ``max_iter`` = epochs, ``early_stopping``, ``warm_start``, ...);
    ``class_weight`` ("balanced" or {label: weight}, labels as in ``y``; not for multi-label),
    ``threshold`` (a multi-label prediction's cut), ``backend`` numpy / numba / cupy ("auto" by
    default), ``dtype`` float32 or float64.

    Attributes
    ----------
    classes_, n_features_in_, coefs_, intercepts_, history_, loss_curve_, n_iter_
    """

    __init__ = _make_init(_parameters(extra=(("threshold", 0.5),)))

    def _head(self):
        return ("sigmoid", "bce") if getattr(self, "_multilabel", False) else ("softmax", "ce")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _targets(self, y, classes=None, first=True):
        """``(targets for fit, class_weight for fit)``; sets classes_ on the first call."""
        if type_of_target(y) == "multilabel-indicator":
            if first:
                self._multilabel = True
                self.classes_ = np.arange(y.shape[1])
                self._n_outputs = y.shape[1]
            elif not getattr(self, "_multilabel", False) or y.shape[1] != self._n_outputs:
                raise ValueError("y's labels differ from the fitted ones")
            if self.class_weight is not None:
                raise ValueError("class_weight is for single-label targets; weight the rows "
                                 "of a multi-label problem with sample_weight")
            return y.astype(np.float64), None
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if first:
            self._multilabel = False
            self.classes_ = np.unique(y if classes is None else classes)
            self._n_outputs = len(self.classes_)
            if self._n_outputs < 2:
                raise ValueError(f"BPClassifier needs samples of at least 2 classes; got one "
                                 f"class ({self.classes_[0]!r})")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"labels {unknown.tolist()} are not in classes {self.classes_}")
        return np.searchsorted(self.classes_, y), self._class_weight()

    def _class_weight(self):
        """``class_weight`` with keys as indices into classes_ (what fit takes)."""
        cw = self.class_weight
        if cw is None or isinstance(cw, str):
            return cw
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        unknown = [k for k in cw if k not in index]
        if unknown:
            raise ValueError(f"class_weight names labels {unknown} that are not in classes "
                             f"{self.classes_}")
        return {index[k]: v for k, v in cw.items()}

    def _fit_args(self, epochs):
        """As the base's, with ``class_weight`` keyed by index into classes_ (as fit takes it;
        set by the fit that is running, else the parameter as given)."""
        return dict(super()._fit_args(epochs),
                    class_weight=getattr(self, "_fit_class_weight", self.class_weight))

    def fit(self, X, y, sample_weight=None):
        """Train for ``max_iter`` epochs: from scratch, or continuing the previous fit with
        ``warm_start``."""
        first = not self._continues()
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False, multi_output=True,
                             reset=first)
        T, self._fit_class_weight = self._targets(y, first=first)
        return self._train(X, T, self.max_iter, fresh=first, sample_weight=sample_weight)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One more epoch over ``(X, y)``, continuing the run (optimizer state included);
        ``classes`` is required on the first call (not for multi-label targets)."""
        first = not hasattr(self, "coefs_")
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, reset=first)
        if first and classes is None and type_of_target(y) != "multilabel-indicator":
            raise ValueError("classes must be given on the first call to partial_fit")
        T, self._fit_class_weight = self._targets(y, classes, first=first)
        return self._train(X, T, 1, fresh=first, sample_weight=sample_weight)

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes) (independent per label for
        multi-label targets: rows need not sum to 1)."""
        check_is_fitted(self, "coefs_")
        return self._model().predict_proba(self._X(X, reset=False)).astype(np.float64)

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """Labels, shape (n_samples,), or the 0/1 indicator (n_samples, n_labels) of a
        multi-label fit (``predict_proba >= threshold``)."""
        proba = self.predict_proba(X)
        if self._multilabel:
            return (proba >= self.threshold).astype(np.int64)
        return self.classes_[np.argmax(proba, axis=1)]


class BPRegressor(RegressorMixin, _BPEstimator):
    """A back-propagation MLP regressor (linear output, mean of ½‖a − y‖²) on any bpgpu backend.

    Parameters as :class:`BPClassifier` (``class_weight`` does not apply to regression)."""

    def _head(self):
        return "identity", "mse"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True     # y may be (n_samples, n_targets)
        return tags

    def _fit_args(self, epochs):
        if self.class_weight is not None:
            raise ValueError("class_weight applies to classification, not to BPRegressor")
        return super()._fit_args(epochs)

    def _targets(self, y, first):
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        if first:
            self._one_target = y.ndim == 1
            self._n_outputs = Y.shape[1]
        return Y.astype(np.float64)

    def fit(self, X, y, sample_weight=None):
        """Train for ``max_iter`` epochs: from scratch, or continuing the previous fit with
        ``warm_start``."""
        first = not self._continues()
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True,
                             reset=first)
        return self._train(X, self._targets(y, first), self.max_iter, fresh=first,
                           sample_weight=sample_weight)

    def partial_fit(self, X, y, sample_weight=None):
        """One more epoch over ``(X, y)``, continuing the run (optimizer state included)."""
        first = not hasattr(self, "coefs_")
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True,
                             reset=first)
        return self._train(X, self._targets(y, first), 1, fresh=first,
                           sample_weight=sample_weight)

    def predict(self, X):
        check_is_fitted(self, "coefs_")
        out = self._model().predict_proba(self._X(X, reset=False)).astype(np.float64)
        return out[:, 0] if self._one_target else out
