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
    clf = BPClassifier(hidden_layer_sizes=(8,), learning_rate=0.01, backend="numpy",
                       random_state=0)
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


# ------------------------------------------------------------------------------ issue 22
def test_sample_weight_checks_of_scikit_learn():
    """scikit-learn's sample-weight checks, named (check_estimator runs them too): integer
    weights equal repeated rows, zero weights equal removed rows, lists, shapes, pandas Series,
    weights left unchanged, all-zero weights refused, one weighted label."""
    from sklearn.utils import estimator_checks as ec
    checks = [ec.check_sample_weight_equivalence_on_dense_data, ec.check_sample_weights_list,
              ec.check_sample_weights_shape, ec.check_sample_weights_not_an_array,
              ec.check_sample_weights_not_overwritten, ec.check_all_zero_sample_weights_error,
              ec.check_sample_weights_pandas_series]
    for est in (BPClassifier(hidden_layer_sizes=(8,), max_iter=30, backend="numpy",
                             random_state=0),
                BPRegressor(hidden_layer_sizes=(8,), max_iter=30, backend="numpy",
                            random_state=0)):
        for check in checks:
            check(type(est).__name__, est)
    ec.check_classifiers_one_label_sample_weights("BPClassifier", BPClassifier(
        hidden_layer_sizes=(8,), max_iter=30, backend="numpy", random_state=0))


def test_integer_weights_equal_repeated_rows_on_every_backend(backend_name):
    """Full-batch float64 gradients with integer sample weights equal those of the rows
    repeated, within 1e-12 (the sums run in another order)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 9)), rng.integers(0, 3, 40)
    s = rng.integers(0, 4, 40)
    net = bpgpu.MLP([9, 6, 3], activation="tanh", dtype="float64", backend=backend_name, seed=1)
    weighted = net.gradients(X, y, sample_weight=s)
    repeated = net.gradients(np.repeat(X, s, axis=0), np.repeat(y, s))
    for a, b in zip(weighted[0] + weighted[1], repeated[0] + repeated[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_weights_are_validated():
    X, y = bpgpu.datasets.moons(50, 0.2, seed=0)
    net = bpgpu.MLP([2, 4, 2], backend="numpy")
    for bad, match in ((np.ones(49), "shape"), (-np.ones(50), ">= 0"),
                       (np.full(50, np.nan), "NaN"), (np.zeros(50), "zero for every")):
        with pytest.raises(bpgpu.DataError, match=match):
            net.fit(X, y, epochs=1, sample_weight=bad)
    with pytest.raises(bpgpu.ConfigError, match="class_weight"):
        net.fit(X, y, epochs=1, class_weight="heavy")
    with pytest.raises(bpgpu.ConfigError, match="label"):
        net.fit(X, y, epochs=1, class_weight={5: 2.0})


def test_balanced_class_weight_as_scikit_learn_computes_it():
    from sklearn.utils.class_weight import compute_class_weight
    from bpgpu.weights import class_weights
    y = np.array([0] * 8 + [1] * 2 + [2] * 5)
    want = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(class_weights("balanced", y, 3), want[y])
    np.testing.assert_allclose(class_weights('{"1": 3}', y, 3), np.where(y == 1, 3.0, 1.0))


def _warm(est, X, y, calls):
    for epochs in calls:
        est.set_params(max_iter=epochs)
        est.fit(X, y)
    return est


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_warm_start_and_partial_fit_continue_the_run(optimizer):
    """fit(2) then fit(3) with warm_start == fit(5); 5 partial_fit calls == 5 epochs; a pickle
    between calls changes nothing (the optimizer state travels with the estimator)."""
    X, y = bpgpu.datasets.moons(160, 0.2, seed=3)
    kw = dict(hidden_layer_sizes=(8,), optimizer=optimizer, learning_rate=0.01, dropout=0.1,
              backend="numpy", random_state=0)
    whole = BPClassifier(max_iter=5, **kw).fit(X, y)
    warm = _warm(BPClassifier(warm_start=True, **kw), X, y, (2, 3))
    np.testing.assert_array_equal(warm.coefs_[0], whole.coefs_[0])
    assert warm.n_iter_ == 5
    part = BPClassifier(**kw)
    for i in range(5):
        part.partial_fit(X, y, classes=[0, 1])
        if i == 2:
            part = pickle.loads(pickle.dumps(part))
    np.testing.assert_array_equal(part.coefs_[0], whole.coefs_[0])
    with pytest.raises(ValueError, match="same network"):
        part.set_params(hidden_layer_sizes=(9,)).partial_fit(X, y)


def test_balanced_class_weight_raises_minority_recall():
    """MNIST with digit 5 cut to 5 % of its rows: class_weight='balanced' raises its recall."""
    (X, y), (Xt, yt) = bpgpu.datasets.mnist()
    rng = np.random.default_rng(0)
    keep = (y != 5) | (rng.random(len(y)) < 0.05)
    X, y = X[keep][:12000], y[keep][:12000]
    recalls = {}
    for cw in (None, "balanced"):
        net = bpgpu.MLP([784, 64, 10], activation="relu", init="he", seed=0)
        net.fit(X, y, epochs=3, batch_size=128, optimizer="momentum", lr=0.05, class_weight=cw)
        pred = net.predict(Xt)
        recalls[cw] = float((pred[yt == 5] == 5).mean())
    assert recalls["balanced"] > recalls[None] + 0.02, recalls


def test_predict_proba_multilabel():
    """Port of scikit-learn's test of MLPClassifier: multi-label outputs are independent
    sigmoids (rows do not sum to 1) that fit the training labels."""
    from sklearn.datasets import make_multilabel_classification
    X, Y = make_multilabel_classification(n_samples=50, random_state=0, return_indicator=True)
    n_samples, n_classes = Y.shape
    clf = BPClassifier(hidden_layer_sizes=30, max_iter=400, learning_rate=0.01,
                       backend="numpy", random_state=0)
    clf.fit(X, Y)
    y_proba = clf.predict_proba(X)
    assert y_proba.shape == (n_samples, n_classes)
    np.testing.assert_array_equal(y_proba > 0.5, Y)
    y_log_proba = clf.predict_log_proba(X)
    assert (y_proba.sum(1) - 1).dot(y_proba.sum(1) - 1) > 1e-10
    np.testing.assert_array_equal(y_proba.argmax(axis=1), y_log_proba.argmax(axis=1))
    np.testing.assert_allclose(y_log_proba, np.log(y_proba))
    np.testing.assert_array_equal(clf.predict(X), Y)


def test_grid_search_on_a_multilabel_estimator():
    from sklearn.datasets import make_multilabel_classification
    X, Y = make_multilabel_classification(n_samples=120, random_state=1, return_indicator=True)
    grid = GridSearchCV(BPClassifier(max_iter=60, learning_rate=0.01, backend="numpy",
                                     random_state=0),
                        {"hidden_layer_sizes": [(8,), (32,)]}, cv=3).fit(X, Y)
    assert grid.best_estimator_.predict(X).shape == Y.shape and 0 <= grid.best_score_ <= 1


def test_multilabel_mlp_thresholds_and_reports_subset_accuracy_and_hamming_loss():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 0] + X[:, 2] > 0]).astype(np.int64)
    net = bpgpu.MLP([5, 16, 3], activation="tanh", output="sigmoid", loss="bce",
                    backend="numpy", seed=0)
    history = net.fit(X, Y.astype(float), epochs=60, batch_size=20, lr=0.5,
                      validation_data=(X, Y.astype(float)))
    assert history.accuracy == [None] * 60          # training accuracy: not counted per batch
    res = net.evaluate(X, Y.astype(float))
    pred = net.predict(X)
    assert pred.shape == Y.shape
    assert res["accuracy"] == pytest.approx((pred == Y).all(axis=1).mean())
    assert res["hamming_loss"] == pytest.approx((pred != Y).mean())
    assert history.val_accuracy[-1] == pytest.approx(res["accuracy"])
    assert (net.predict(X, threshold=0.99) <= pred).all()
