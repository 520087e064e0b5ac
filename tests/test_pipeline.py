"""The input pipeline inside the model file: raw rows in, the model's own labels out.

Checked against the training encoding itself (load_csv's arrays), across every form rows come in
(a CSV path, dicts, a DataFrame, arrays of raw values), through save/load, for a version-1 file
written by the tree before format 2, and for every bad input the issue names.
"""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import bpgpu
from bpgpu import io as bio
from bpgpu.datasets import load_csv
from bpgpu.datasets.pipeline import ExtraColumnsWarning, Pipeline
from bpgpu.datasets.tabular import iter_csv

DATA = Path(__file__).parent / "data"


def write_admissions(path, n=120, seed=0, encoding="utf-8", order=("gre", "gpa", "rank",
                                                                    "city", "admit")):
    """A CSV like the tutorials' admissions data, with a text column and string labels."""
    rng = np.random.default_rng(seed)
    cities = ["Zürich", "Malmö", "Köln"]
    rows = []
    for _ in range(n):
        gre, gpa, rank = int(rng.integers(200, 800)), round(float(rng.uniform(2, 4)), 2), \
            int(rng.integers(1, 5))
        score = gpa * 100 + gre / 5 - rank * 20
        label = "admitted" if score > 330 else ("waitlist" if rank <= 2 else "rejected")
        rows.append({"gre": gre, "gpa": gpa, "rank": rank, "city": cities[int(rng.integers(3))],
                     "admit": label})
    text = ",".join(order) + "\n" + "".join(",".join(str(r[c]) for c in order) + "\n"
                                            for r in rows)
    Path(path).write_bytes(text.encode(encoding))
    return rows


@pytest.fixture
def trained(tmp_path):
    """A model fitted on a CSV through load_csv + fit(data), saved and loaded back."""
    path = tmp_path / "adm.csv"
    rows = write_admissions(path)
    data = load_csv(path, target="admit", categorical=["rank"], seed=3)
    net = bpgpu.MLP([len(data.feature_names), 8, len(data.classes)], backend="numpy", seed=1,
                    dtype="float64")
    net.fit(data, epochs=3, lr=0.3)
    net.save(tmp_path / "m.npz")
    return bpgpu.load(tmp_path / "m.npz", backend="numpy"), data, rows, path


def test_the_file_keeps_the_pipeline_and_the_source(trained):
    net, data, _, path = trained
    p = net.pipeline
    assert p.kind == "tabular" and p.task == "classification" and p.target == "admit"
    assert p.column_names == ["gre", "gpa", "rank", "city"]
    assert p.feature_names == data.feature_names
    assert p.classes == ["admitted", "rejected", "waitlist"]          # strings stay strings
    assert p.columns == data.columns                                  # every statistic exact
    assert net.data_source == {"name": str(path.resolve()), "kind": "csv",
                               "fingerprint": data.fingerprint,
                               "split": {"seed": 3, "test_fraction": 0.2}}
    assert Pipeline.from_record(json.loads(json.dumps(p.record()))) == p


def test_raw_rows_encode_exactly_as_training(trained):
    """Encoding the file's raw rows gives load_csv's arrays bit for bit, so predictions on raw
    rows equal predictions on the training arrays exactly."""
    net, data, rows, path = trained
    features, target = net.encode_rows(path)
    from bpgpu.datasets.tabular import split_rows
    train, test = split_rows(len(rows), 0.2, 3)
    np.testing.assert_array_equal(features[train], data.X_train)
    np.testing.assert_array_equal(features[test], data.X_test)
    assert target == [r["admit"] for r in rows]
    labels = net.predict(path)
    np.testing.assert_array_equal(labels[test], np.array(data.classes)[net.predict(data.X_test)])


def test_every_form_of_rows_gives_the_same_predictions(trained):
    net, _, rows, path = trained
    want = net.predict_proba(path)
    shuffled = [{k: r[k] for k in ("city", "admit", "rank", "gpa", "gre")} for r in rows]
    np.testing.assert_array_equal(net.predict_proba(shuffled), want)
    raw = [[r["gre"], r["gpa"], r["rank"], r["city"]] for r in rows]
    np.testing.assert_array_equal(net.predict_proba(raw), want)
    np.testing.assert_array_equal(net.predict_proba(np.array(raw, dtype=object)), want)
    text = [[str(v) for v in row] for row in raw]
    np.testing.assert_array_equal(net.predict_proba(text), want)
    pd = pytest.importorskip("pandas", reason="DataFrames need pandas (in the dev extra)")
    frame = pd.DataFrame(shuffled)
    np.testing.assert_array_equal(net.predict_proba(frame), want)
    assert list(net.predict(frame)) == list(net.predict(path))


def test_shuffled_windows_1252_export_gives_the_in_process_labels(trained, tmp_path):
    """The same rows, columns reordered, written by a Western-Windows spreadsheet (cp1252):
    exactly the in-process predictions, as the original label strings."""
    net, data, rows, _ = trained
    other = tmp_path / "export.csv"
    write_admissions(other, encoding="cp1252", order=("admit", "city", "gpa", "rank", "gre"))
    assert b"Z\xfcrich" in other.read_bytes() or b"Malm\xf6" in other.read_bytes()
    in_process = np.array(data.classes)[net.predict(net.encode_rows(rows)[0])]
    got = net.predict(other)
    assert got.dtype.kind == "U"
    np.testing.assert_array_equal(got, in_process)
    assert net.evaluate(other)["accuracy"] == pytest.approx(float(np.mean(
        got == np.array([r["admit"] for r in rows]))))


@pytest.mark.parametrize("rows,fragment", [
    ([{"gre": 500, "gpa": 3.0, "city": "Köln"}], "row 0: no column 'rank'"),
    ([{"gre": 500, "gpa": 3.0, "rank": 7, "city": "Köln"}],
     "row 0: column 'rank' holds 7, a category training never saw"),
    ([{"gre": 500, "gpa": 3.0, "rank": 2, "city": "Bern"}],
     "row 0: column 'city' holds 'Bern', a category training never saw"),
    ([{"gre": 500, "gpa": "3,5", "rank": 2, "city": "Köln"}],
     "row 0: column 'gpa' holds '3,5', not a number"),
    ([{"gre": 500, "gpa": 3.0, "rank": 2, "city": "Köln"},
      {"gre": "inf", "gpa": 3.0, "rank": 2, "city": "Köln"}],
     "row 1: column 'gre' holds 'inf', not a finite number"),
    ([{"gre": "", "gpa": 3.0, "rank": 2, "city": "Köln"}], "row 0: missing value in column 'gre'"),
    ([[500, 3.0, 2]], "rows have 3 values, the model reads 4 columns (gre, gpa, rank, city)"),
    (np.zeros((2, 5)), "rows have 5 values, the model reads 4 columns (gre, gpa, rank, city) "
                       "or 9 standardised features"),
])
def test_bad_rows_name_column_row_and_value(trained, rows, fragment):
    net = trained[0]
    with pytest.raises(bpgpu.DataError) as err:
        net.predict(rows)
    assert fragment in str(err.value)


def test_a_missing_csv_column_and_a_bad_line_are_named(trained, tmp_path):
    net = trained[0]
    bad = tmp_path / "bad.csv"
    bad.write_text("gre,gpa,city\n500,3.0,Köln\n")
    with pytest.raises(bpgpu.DataError, match="missing column 'rank'"):
        net.predict(bad)
    bad.write_text("gre,gpa,rank,city\n500,3.0,2,Köln\n510,x,2,Köln\n")
    with pytest.raises(bpgpu.DataError, match=r"bad.csv, line 3: column 'gpa' holds 'x'"):
        net.predict(bad)


def test_extra_columns_are_ignored_and_named(trained):
    net = trained[0]
    row = {"gre": 500, "gpa": 3.0, "rank": 2, "city": "Köln", "age": 30, "admit": "admitted"}
    with pytest.warns(ExtraColumnsWarning, match="age") as record:
        got = net.predict_proba([row])
    assert "admit" not in str(record[0].message)      # the target is known, not extra
    row.pop("age")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(net.predict_proba([row]), got)


def test_features_stay_features(trained):
    """A numeric array of the network's width is its features, as load_csv returns them, and
    predict on them returns class indices as Network does."""
    net, data, _, _ = trained
    idx = net.predict(data.X_test)
    assert idx.dtype.kind == "i"
    np.testing.assert_array_equal(idx, bpgpu.network.Network.predict(net, data.X_test))


def test_evaluate_maps_label_strings(trained):
    net, data, _, _ = trained
    names = np.array(data.classes)[data.y_test]
    assert net.evaluate(data.X_test, names) == net.evaluate(data.X_test, data.y_test)
    with pytest.raises(bpgpu.DataError, match="'maybe' is not one of the model's classes"):
        net.evaluate(data.X_test[:1], ["maybe"])


def test_csv_blocks_are_bounded(tmp_path):
    path = tmp_path / "a.csv"
    write_admissions(path, n=50)
    blocks = list(iter_csv(path, chunk_rows=7))
    assert [len(b) for _, b in blocks] == [7] * 7 + [1]
    assert blocks[0][0] == ["gre", "gpa", "rank", "city", "admit"]


# ------------------------------------------------------------------ regression
def test_regression_reports_mse_mae_r2_never_accuracy(tmp_path):
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn compares")
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (150, 2))
    path = tmp_path / "reg.csv"
    y = 3 * x[:, 0] - x[:, 1] + rng.normal(0, 0.1, 150)
    path.write_text("a,b,y\n" + "".join(f"{a},{b},{t}\n" for (a, b), t in zip(x.tolist(),
                                                                            y.tolist())))
    data = load_csv(path, target="y")
    assert data.task == "regression"
    net = bpgpu.MLP([2, 16, 1], activation="tanh", output="identity", loss="mse",
                    backend="numpy", dtype="float64", seed=0)
    net.fit(data, epochs=30, lr=0.05)
    res = net.evaluate(data.X_test, data.y_test)
    assert set(res) == {"loss", "mse", "mae", "r2"}
    pred = net.predict(data.X_test)
    assert pred.shape == (len(data.y_test),)
    assert res["mse"] == pytest.approx(sklearn_metrics.mean_squared_error(data.y_test, pred))
    assert res["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(data.y_test, pred))
    assert res["r2"] == pytest.approx(sklearn_metrics.r2_score(data.y_test, pred))
    assert res["loss"] == pytest.approx(res["mse"] / 2)         # ½‖a − y‖², one output
    assert res["r2"] > 0.9
    assert net.evaluate(path)["r2"] > 0.9                        # raw rows, the file's own y


def test_an_identity_network_without_pipeline_is_a_regression():
    net = bpgpu.MLP([3, 4, 2], output="identity", loss="mse", backend="numpy", dtype="float64")
    X = np.random.default_rng(0).normal(size=(20, 3))
    Y = np.random.default_rng(1).normal(size=(20, 2))
    res = net.evaluate(X, Y)
    assert "accuracy" not in res and set(res) == {"loss", "mse", "mae", "r2"}
    p = net.predict_proba(X)
    assert res["mse"] == pytest.approx(float(((p - Y) ** 2).mean()))
    assert res["loss"] == pytest.approx(float(((p - Y) ** 2).sum(axis=1).mean() / 2))


# ------------------------------------------------------------------ model files, versions
def test_version_1_file_still_loads():
    """tests/data/model-v1.npz was written by the tree before format 2 (bpgpu at
    /work/before-site): a 4-3-2 tanh/softmax float64 network."""
    net = bpgpu.load(DATA / "model-v1.npz", backend="numpy")
    assert net.pipeline is None and net.data_source is None
    assert net.config()["sizes"] == [4, 3, 2] and net.input_scale == 0.5
    with np.load(DATA / "model-v1.npz") as z:
        meta = json.loads(z["metadata.json"].tobytes())
        W0, b0, W1, b1 = z["W0"], z["b0"], z["W1"], z["b1"]
    assert meta["format_version"] == 1
    X = np.random.default_rng(1).normal(size=(5, 4))
    z = np.tanh(X @ W0 + b0) @ W1 + b1
    want = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(net.predict_proba(X), want / want.sum(axis=1, keepdims=True),
                               rtol=1e-12)


def test_new_files_are_version_2(tmp_path, trained):
    net = trained[0]
    net.save(tmp_path / "again.npz")
    meta, _ = bio.read_archive(tmp_path / "again.npz")
    assert meta["format_version"] == 2 == bio.FORMAT_VERSION
    assert meta["pipeline"] == net.pipeline.record() and meta["dataset"] == net.data_source


def _rewrite(path, change):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["metadata.json"].tobytes())
    change(meta)
    arrays["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


@pytest.mark.parametrize("change,fragment", [
    (lambda m: m["pipeline"].__setitem__("kind", "video"), "pipeline kind 'video'"),
    (lambda m: m["pipeline"]["columns"][0].__setitem__("std", 0), "cannot standardise"),
    (lambda m: m["pipeline"]["columns"][0].__setitem__("mean", "x"), "mean 'x'"),
    (lambda m: m["pipeline"]["columns"].pop(), "features, the network 9 inputs"),
    (lambda m: m["pipeline"].__setitem__("classes", ["a"]), "1 classes for 3 outputs"),
    (lambda m: m["pipeline"]["columns"][2].__setitem__("categories", [1, 2]),
     "categories must be a non-empty list of strings"),
    (lambda m: m["dataset"].__setitem__("split", {"seed": -1}), "dataset split"),
    (lambda m: m.__setitem__("dataset", [1]), "dataset record"),
    (lambda m: m.__setitem__("format_version", 3), "format version 3"),
])
def test_damaged_pipeline_records_are_model_file_errors(tmp_path, trained, change, fragment):
    net = trained[0]
    path = tmp_path / "d.npz"
    net.save(path)
    _rewrite(path, change)
    with pytest.raises(bpgpu.ModelFileError) as err:
        bpgpu.load(path)
    assert fragment in str(err.value)


def test_fit_on_a_dataset_needs_a_fitting_network(tmp_path):
    path = tmp_path / "a.csv"
    write_admissions(path)
    data = load_csv(path, target="admit")
    with pytest.raises(bpgpu.DataError, match="does not fit this network"):
        bpgpu.MLP([3, 4, 3], backend="numpy").fit(data, epochs=1)


# ------------------------------------------------------------------ several target columns
def _multilabel_csv(path, n=300):
    rng = np.random.default_rng(3)
    lines = ["x1,x2,colour,a,b"]
    for _ in range(n):
        x1, x2 = rng.normal(size=2)
        colour = rng.choice(["red", "blue"])
        lines.append(f"{x1:.4f},{x2:.4f},{colour},{int(x1 > 0)},{int(x2 > 0 or colour == 'red')}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_several_target_columns_are_a_multilabel_dataset(tmp_path):
    path = _multilabel_csv(tmp_path / "ml.csv")
    data = load_csv(path, target="a,b")
    assert data.task == "multilabel" and data.classes == ["a", "b"]
    assert data.y_train.shape == (240, 2) and set(np.unique(data.y_train)) <= {0.0, 1.0}
    assert data.feature_names == ["x1", "x2", "colour=blue", "colour=red"]
    assert load_csv(path, target=["a", "b"]).y_train.tolist() == data.y_train.tolist()
    net = bpgpu.MLP([4, 8, 2], activation="tanh", output="sigmoid", loss="bce",
                    backend="numpy", seed=0)
    net.fit(data, epochs=40, batch_size=20, lr=0.5)
    saved = tmp_path / "ml.npz"
    net.save(saved)
    back = bpgpu.load(saved)
    assert back.pipeline.target == ["a", "b"] and back.task == "multilabel"
    rows = [{"x1": 1.0, "x2": -1.0, "colour": "red"}, {"x1": -1.0, "x2": -1.0, "colour": "blue"}]
    np.testing.assert_array_equal(back.predict(rows), net.predict(net.encode_rows(rows)[0]))
    assert back.predict(rows).tolist() == [[1, 1], [0, 0]]
    res = back.evaluate(str(path))                   # the file's own target columns
    assert 0.8 < res["accuracy"] <= 1 and 0 <= res["hamming_loss"] < 0.1


@pytest.mark.parametrize("target, fragment", [
    ("a,colour", "target column 'colour' holds 'red'"),
    ("a,a", "several distinct ones"),
    ("a,zzz", "no column 'zzz'"),
])
def test_bad_multilabel_targets_are_named(tmp_path, target, fragment):
    path = _multilabel_csv(tmp_path / "ml.csv", n=20)
    with pytest.raises(bpgpu.DataError, match=fragment):
        load_csv(path, target=target)


def test_multilabel_csv_on_the_command_line(tmp_path):
    import subprocess
    import sys
    path, model, out = _multilabel_csv(tmp_path / "ml.csv"), tmp_path / "m.npz", tmp_path / "p.csv"

    def bpgpu_cli(*args):
        return subprocess.run([sys.executable, "-m", "bpgpu", *args], capture_output=True,
                              text=True, timeout=300)
    res = bpgpu_cli("train", "--dataset", str(path), "--target", "a,b", "--epochs", "20",
                    "--backend", "numpy", "--quiet", "--save", str(model))
    assert res.returncode == 0, res.stderr
    assert "sigmoid, loss=bce" in res.stderr and "hamming loss" in res.stdout
    res = bpgpu_cli("predict", str(model), str(path), "--proba", "--out", str(out))
    assert res.returncode == 0, res.stderr
    header = out.read_text().splitlines()[0]
    assert header == "id,a,b,proba_a,proba_b"
    assert "every label right, hamming loss" in res.stderr
    res = bpgpu_cli("predict", str(model), str(path), "--top", "1")
    assert res.returncode == 2 and "independent" in res.stderr
    res = bpgpu_cli("train", "--dataset", str(path), "--target", "a,b", "--epochs", "1",
                    "--backend", "numpy", "--class-weight", "balanced")
    assert res.returncode == 2 and "weight the rows" in res.stderr and "Traceback" not in \
        res.stderr


# ------------------------------------------------------------------ bpgpu predict on images
def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "bpgpu", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    (X, y), (Xt, yt) = bpgpu.datasets.mnist()
    net = bpgpu.MLP([784, 64, 10], backend="numpy", seed=0)
    net.fit(X[:12000], y[:12000], epochs=3, batch_size=32, lr=0.5)
    path = tmp_path_factory.mktemp("digits") / "mnist.npz"
    net.save(path)
    return path, Xt[:300], yt[:300]


def _accuracy(csv_path, truth_of_id):
    import csv
    rows = list(csv.DictReader(open(csv_path)))
    return np.mean([int(r["label"]) == truth_of_id(r["id"]) for r in rows]), len(rows)


def test_a_folder_of_png_digits_scores_as_the_array_does(digit_model, tmp_path):
    """MNIST test digits drawn dark on light paper, as PNG files: the preprocessing (inverted,
    boxed, centred by mass) classifies them within a point of the same digits given as pixels."""
    if os.environ.get("BPGPU_REQUIRE_EXPORT") == "1":
        from PIL import Image
    else:
        Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (pip install "
                                    "'bpgpu[export]')")
    model, Xt, yt = digit_model
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(len(Xt)):
        Image.fromarray(255 - Xt[i].reshape(28, 28)).save(folder / f"{i:04d}_{yt[i]}.png")
    np.save(tmp_path / "digits.npy", Xt)
    res = _cli("predict", str(model), str(folder), "--out", str(tmp_path / "png.csv"))
    assert res.returncode == 0, res.stderr
    png_acc, n = _accuracy(tmp_path / "png.csv", lambda i: int(i.split("_")[1].split(".")[0]))
    res = _cli("predict", str(model), str(tmp_path / "digits.npy"), "--out",
               str(tmp_path / "npy.csv"))
    assert res.returncode == 0, res.stderr
    npy_acc, m = _accuracy(tmp_path / "npy.csv", lambda i: int(yt[int(i)]))
    assert n == m == 300 and npy_acc > 0.85
    assert abs(png_acc - npy_acc) <= 0.01, (png_acc, npy_acc)


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "absent.csv", "no such file"),
    (lambda d: (np.save(d / "w.npy", np.zeros((3, 5), np.uint8)), d / "w.npy")[1], "784"),
    (lambda d: ((d / "bad.png").write_bytes(b"not a png"), d / "bad.png")[1], "bad.png"),
])
def test_bad_predict_inputs_are_one_line_errors(digit_model, tmp_path, make, fragment):
    res = _cli("predict", str(digit_model[0]), str(make(tmp_path)))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpgpu: error:") and fragment in lines[0], \
        res.stderr
