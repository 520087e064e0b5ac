"""The scikit-learn estimators: scikit-learn's own checks, pipelines, grid search, parity."""

import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator  # noqa: E402

import bpgpu  # noqa: E402
from bpgpu.sklearn import BPClassifier, BPRegressor  # noqa: E402

# Checks we skip, each with its reason: none. (scikit-learn itself skips its array-API checks
# unless SCIPY_ARRAY_API=1 is set; these estimators take numpy-convertible input only. Its
# DataFrame checks need pandas, which the dev extra installs.)
EXPECTED_FAILED = {}


@pytest.mark.parametrize("estimator", [BPClassifier(hidden_layer_sizes=(16,), max_iter=60,
                                                    backend="numpy", random_state=0),
                                       BPRegressor(hidden_layer_sizes=(16,), max_iter=60,
                                                   backend="numpy", random_state=0)],
                         ids=["classifier", "regressor"])
def test_check_estimator(estimator):
    check_estimator(estimator, expected_failed_checks=EXPECTED_FAILED)


def test_matches_plain_mlp_exactly(backend_name):
    X, y = bpgpu.datasets.moons(120, 0.2, seed=0)
    clf = BPClassifier(hidden_layer_sizes=(8,), activation="tanh", init="xavier", max_iter=20,
                       batch_size=16, learning_rate=0.01, backend=backend_name, random_state=3)
    clf.fit(X, y)
    net = bpgpu.MLP([2, 8, 2], activation="tanh", init="xavier", dtype="float64",
                    backend=backend_name, seed=3)
    net.fit(X, y, epochs=20, batch_size=16, optimizer="adam", lr=0.01)
    for a, b in zip(clf.coefs_ + clf.intercepts_, net.get_params()[0] + net.get_params()[1]):
        np.testing.assert_array_equal(a, b)   # exact: the same fit, same calls and shapes
    # exact: the estimator drives the same MLP through the same calls on the same shapes and backend
    np.testing.assert_array_equal(clf.predict_proba(X), net.predict_proba(X))


def test_pipeline_grid_search_and_pickle():
    X, y = bpgpu.datasets.moons(200, 0.2, seed=1)
    pipe = make_pipeline(StandardScaler(), BPClassifier(max_iter=40, backend="numpy",
                                                        random_state=0))
    grid = GridSearchCV(pipe, {"bpclassifier__hidden_layer_sizes": [(4,), (16,)]}, cv=3)
    grid.fit(X, y)
    assert grid.best_score_ > 0.85
    clone = pickle.loads(pickle.dumps(grid.best_estimator_))
    np.testing.assert_array_equal(clone.predict(X), grid.predict(X))   # labels, same weights


def test_partial_fit_and_string_labels():
    X, y = bpgpu.datasets.moons(200, 0.2, seed=2)
    labels = np.array(["left", "right"])[y]
    clf = BPClassifier(hidden_layer_sizes=(8,), backend="numpy", random_state=0)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, labels)
    for _ in range(30):
        clf.partial_fit(X, labels, classes=["left", "right"])
    assert clf.n_iter_ == 30 and set(clf.predict(X)) <= {"left", "right"}
    assert clf.score(X, labels) > 0.8


def test_regressor_two_targets():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (300, 3))
    Y = np.column_stack([X.sum(1), X[:, 0] - X[:, 2]])
    reg = BPRegressor(hidden_layer_sizes=(32,), max_iter=150, learning_rate=0.01,
                      backend="numpy", random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (300, 2) and reg.score(X, Y) > 0.95
